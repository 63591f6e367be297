"""Pruning. Importing this package registers every pruning technique's handlers."""
from condense.prune.api import prune_, register_pruner
from condense.prune import unstructured, nm, schedule, sparse_storage  # noqa: F401,E402  (register handlers)
from condense.prune import structured, layers  # noqa: F401,E402  (register handlers)
from condense.prune.layers import LayerDropConfig  # noqa: F401,E402
from condense.prune.structured import StructuredConfig  # noqa: F401,E402

__all__ = ["prune_", "register_pruner"]
