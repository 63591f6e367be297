"""Quantization. Importing this package registers every quantization technique's handlers."""
from condense.quantize import dynamic  # noqa: F401  (registers handlers)
from condense.quantize import backends, bf16, ort, static  # noqa: F401  (register handlers)
from condense.quantize import onednn  # noqa: F401  (registers OneDnnInt8Config)
from condense.quantize import qat  # noqa: F401  (registers QATConfig)
from condense.quantize.weight_only import api as _weight_only  # noqa: F401  (registers handlers)
from condense.quantize import sensitivity  # noqa: F401  (registers MixedPrecisionConfig)
from condense.quantize.api import quantize_

__all__ = ["quantize_"]
