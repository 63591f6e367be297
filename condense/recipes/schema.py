"""Build a config object from plain YAML / `--set` values: a thin wrapper over the one decoder,
`condense.core.config.decode_config` (its module `config_codec` documents how each value is read).

Every error names where it is (`steps[1] (prune)`, `--set`), the field, what was expected and an example. Nested
configs are written as plain mappings: `finetune: {steps: 200, lr: 1.0e-3}`.

Example:
    >>> from condense.train.loop import FitConfig
    >>> build_config(FitConfig, {"steps": 5, "lr": "1e-3"}, where="steps[0] (fine-tune)").lr
    0.001
"""
from __future__ import annotations

from typing import Any

from condense.core.config import decode_config

__all__ = ["build_config"]


def build_config(cls: type, params: dict[str, Any], *, where: str) -> Any:
    """An instance of the config class `cls` from `params` (a "type" key, if any, must name `cls`), every field
    checked; errors start with `where`."""
    return decode_config(cls, params, where=where)
