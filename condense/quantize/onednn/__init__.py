"""Static int8 on oneDNN's int8 matmul kernels (AMX / VNNI) in eager PyTorch; see `config.OneDnnInt8Config`."""
from condense.quantize.onednn.config import OneDnnInt8Config  # noqa: F401  (registers the transform)
from condense.quantize.onednn.kernels import Int8Linear, Int8Matmul, onednn_int8  # noqa: F401

__all__ = ["OneDnnInt8Config", "Int8Linear", "Int8Matmul", "onednn_int8"]
