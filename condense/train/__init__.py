"""Training: one loop (`fit`) used by every technique that trains (fine-tuning, QAT, distillation, ...)."""
from condense.train.loop import FitConfig, fit

__all__ = ["FitConfig", "fit"]
