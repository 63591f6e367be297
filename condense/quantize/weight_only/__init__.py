"""Weight-only quantization (RTN, GPTQ, AWQ) to really packed 2/3/4/8-bit Linears, for generative models.

Example:
    >>> import torch
    >>> from condense.quantize import quantize_
    >>> from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear
    >>> m = torch.nn.Sequential(torch.nn.Linear(64, 16))
    >>> isinstance(quantize_(m, WeightOnlyConfig(bits=4, group_size=32))[0], WeightOnlyLinear)
    True
"""
from condense.quantize.weight_only.api import WeightOnlyConfig, WeightOnlyMethod, quantize_weight_only
from condense.quantize.weight_only.awq import awq_scale_, register_scale_fold
from condense.quantize.weight_only.gptq import gptq_quantize
from condense.quantize.weight_only.kernels import KERNELS, WeightKernel, kernel_names, register_kernel
from condense.quantize.weight_only.linear import SharedInputLinears, WeightOnlyLinear
from condense.quantize.weight_only.packing import pack, packed_nbytes, unpack
from condense.quantize.weight_only.rtn import QuantizedWeight, rtn_quantize

__all__ = [
    # configure and apply
    "WeightOnlyConfig", "WeightOnlyMethod", "quantize_weight_only",
    # the module, and q/k/v-style layers on one input run as one stacked matmul
    "WeightOnlyLinear", "SharedInputLinears",
    # algorithms on one weight
    "rtn_quantize", "gptq_quantize", "QuantizedWeight",
    # AWQ's scales on a float model, and where they fold
    "awq_scale_", "register_scale_fold",
    # packing
    "pack", "unpack", "packed_nbytes",
    # low-bit kernels the packed layers run on
    "KERNELS", "WeightKernel", "register_kernel", "kernel_names",
]
