"""Pruning. Importing this package registers every pruning technique's handlers."""
from condense.prune.api import PRUNERS, prune_, register_pruner

__all__ = ["prune_", "PRUNERS", "register_pruner"]
