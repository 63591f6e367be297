"""Low-rank factorization (truncated SVD, plain or activation-aware) of Linear and Conv2d layers."""
from condense.factorize.api import FactorizeConfig, factorize_
from condense.factorize.svd import LowRankConv2d, LowRankLinear, factor

__all__ = ["factorize_", "FactorizeConfig", "LowRankLinear", "LowRankConv2d", "factor"]
