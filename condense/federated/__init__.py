"""Federated learning on Flower: FedAvg over simulated clients, with compressed client updates.

`federated(task, cfg, out_dir=...)` and `FederatedConfig` (api.py, config.py); data splits (splits.py); update
codecs (compress.py); Flower messages and measured bytes (messages.py); the rounds (rounds.py, flower.py).
Importing this package does not import flwr; running a federation does.
"""
from condense.federated.api import FederatedResult, federated
from condense.federated.config import FederatedConfig

__all__ = ["FederatedConfig", "FederatedResult", "federated"]


class _CallableModule(__import__("types").ModuleType):
    """`condense.federated` is both this package and the function `federated`: once the package is imported, the
    attribute `condense.federated` is the package, so calling it must run the function."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return federated(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
