"""Early exit (dynamic inference): exit heads on intermediate stages; easy samples stop at the first confident one."""
from condense.early_exit.api import EarlyExitConfig, early_exit_
from condense.early_exit.model import EarlyExitModel, confidence
from condense.early_exit.sweep import ExitCurve, sweep_thresholds

__all__ = ["early_exit_", "EarlyExitConfig", "EarlyExitModel", "confidence", "sweep_thresholds", "ExitCurve"]
from condense.early_exit import hf  # noqa: F401,E402  (registers the generic Hugging Face splitter)
from condense.early_exit import cnn  # noqa: F401,E402  (registers the generic splitter for block-list CNNs)
