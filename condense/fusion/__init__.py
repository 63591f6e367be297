"""Fusion: leaner equivalents of a model's blocks (same outputs, fewer calls). Importing registers `FuseConfig`."""
from condense.fusion.api import FUSERS, FuseConfig
from condense.fusion.gpt import FusedBlock

__all__ = ["FuseConfig", "FusedBlock", "FUSERS"]
