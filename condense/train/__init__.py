"""Training: one loop (`fit`) used by every technique that trains (fine-tuning, QAT, distillation, ...).

Importing this package registers the `FineTuneConfig` pipeline step."""
from condense.train.finetune import FineTuneConfig
from condense.train.loop import FitConfig, fit

__all__ = ["FitConfig", "fit", "FineTuneConfig"]
