"""Loading official checkpoints strictly, and our own safetensors + config format."""

from __future__ import annotations

import pickle

import pytest
import torch

from model import create_model, load_checkpoint, save_checkpoint
from model.checkpoint import CheckpointError, official_to_ours


def _official_state(reference_dir) -> dict[str, torch.Tensor]:
    return torch.load(reference_dir / "anysat_tiny_seed0.pth", weights_only=True)["state_dict"]


def test_official_keys_map_one_to_one(reference_dir, tiny) -> None:
    state = _official_state(reference_dir)
    renamed = {official_to_ours(k, depth=2) for k in state}
    assert renamed == set(tiny.state_dict())
    assert official_to_ours("blocks.2.attn.q_learned", 2) == "combiner.attn.q_learned"
    assert official_to_ours("projector_s1-asc.pad_parameter", 2) == "projectors.s1-asc.pad_parameter"


def test_size_inferred_and_weights_loaded(reference_dir, tiny) -> None:
    state = _official_state(reference_dir)
    assert tiny.config.embed_dim == 256 and tiny.config.depth == 2
    assert torch.equal(tiny.combiner.attn.q_learned, state["blocks.2.attn.q_learned"])


def test_missing_key_fails_naming_it(reference_dir, tmp_path) -> None:
    state = _official_state(reference_dir)
    del state["blocks.1.mlp.fc2.bias"]
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['joint_blocks.1.mlp.fc2.bias'\]"):
        create_model(checkpoint=tmp_path / "broken.pth")


def test_unexpected_key_fails_naming_it(reference_dir, tmp_path) -> None:
    state = _official_state(reference_dir)
    state["blocks.2.attn.extra"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['combiner.attn.extra'\]"):
        create_model(checkpoint=tmp_path / "extra.pth")


def test_wrong_size_fails_with_shapes(reference_dir) -> None:
    with pytest.raises(CheckpointError, match="shape mismatch"):
        create_model("small", checkpoint=reference_dir / "anysat_tiny_seed0.pth")


def test_subset_model_ignores_other_projectors_only(reference_dir, treesat, tiny) -> None:
    sub = create_model(checkpoint=reference_dir / "anysat_tiny_seed0.pth", modalities=("aerial", "s2", "s1-asc"))
    assert set(sub.projectors) == {"aerial", "s1-asc", "s2"}
    with torch.no_grad():
        assert torch.equal(sub(treesat, patch_size=20), tiny(treesat, patch_size=20))


def test_pickled_objects_are_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match="cannot read as a tensor-only checkpoint"):
        create_model("tiny", checkpoint=tmp_path / "evil.pth")


def test_safetensors_round_trip_rebuilds_model(tmp_path, tiny, treesat) -> None:
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors", metadata={"source": "seed0 fixture"})
    model, meta = load_checkpoint(path)
    assert meta == {"source": "seed0 fixture"}
    assert model.config == tiny.config
    again = create_model(checkpoint=path)
    with torch.no_grad():
        ref = tiny(treesat, patch_size=30, output="all")
        assert torch.equal(model(treesat, patch_size=30, output="all"), ref)
        assert torch.equal(again(treesat, patch_size=30, output="all"), ref)


def test_foreign_safetensors_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an anysat-serve checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_missing_file_and_missing_name() -> None:
    with pytest.raises(FileNotFoundError):
        create_model(checkpoint="/nonexistent/AnySat.pth")
    with pytest.raises(ValueError, match="needs a model name or a checkpoint"):
        create_model()
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        create_model("huge")
