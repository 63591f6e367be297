"""Device names a user may type (`--device cuda:1`), checked against this machine before any work starts.

torch accepts `cpu:99` or `cuda:7` as device strings and fails (or silently ignores the index) only when a tensor
moves; a run should instead stop at once and say which devices exist.

Example:
    >>> check_device("cpu")
    'cpu'
"""
from __future__ import annotations

from condense.errors import ConfigError


def check_device(spec: str) -> str:
    """`spec` if it names a device this machine has ('cpu', 'cpu:0', 'cuda', 'cuda:N'); else a ConfigError."""
    import torch

    text = str(spec)
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"unknown device {text!r}; use 'cpu' or 'cuda' (or 'cuda:N' for GPU N)") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise ConfigError(f"device {text!r}: there is one CPU device; use 'cpu'")
        return text
    if dev.type != "cuda":
        raise ConfigError(f"device {text!r} is not supported; use 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {text!r} was asked for but no CUDA GPU is available; use --device cpu")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise ConfigError(f"device {text!r}: this machine has {n} CUDA GPU{'s' if n != 1 else ''} "
                          f"(cuda:0..cuda:{n - 1}); use one of those")
    return text
