"""The model behind the engine: modality configurations (the batch keys), the on-disk export cache, and the
runners (PyTorch eager, ONNX Runtime, TorchScript, Triton) that turn a batch of one configuration into one
forward pass. Imports ``model`` and ``service.engine``; nothing of the gateway.
"""
