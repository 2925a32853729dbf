"""AnySat encoder for any sensor stack. ``model`` knows nothing of ``training`` or ``service``."""

from .checkpoint import create_model, load_checkpoint, load_official_state_dict, save_checkpoint
from .config import AnySatConfig, list_models, model_config, register_model
from .encoder import AnySat
from .inputs import Plan, plan_inputs
from .sensors import MODALITIES, SENSORS, NormStats, Sensor, get_sensor

__all__ = [
    "MODALITIES", "SENSORS", "AnySat", "AnySatConfig", "NormStats", "Plan", "Sensor", "create_model",
    "get_sensor", "list_models", "load_checkpoint", "load_official_state_dict", "model_config",
    "plan_inputs", "register_model", "save_checkpoint",
]
