"""Check a pickle names only harmless globals before a library we rely on unpickles it.

torch.distributed.checkpoint reads a sharded checkpoint's `.metadata` with `pickle.load`: a crafted file would run
any function it names. Before resuming, `check_pickle` unpickles the file with an `Unpickler` whose `find_class`
admits only the plain data types that file holds (torch.distributed.checkpoint's dataclasses and enums, torch
dtypes, `torch.Size`, layouts, OrderedDict); every global of a pickle goes through `find_class`, so a file that
passes names nothing else. The object built here is thrown away. `safe_dcp_load` does that and also reads the
shards' non-tensor items with `torch.load(weights_only=True)` (dcp's own planner uses weights_only=False).
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch

from condense.errors import ArtifactError

_DCP_PREFIX = "torch.distributed.checkpoint."
_PLAIN = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
          ("builtins", "frozenset"): frozenset, ("torch", "Size"): torch.Size,
          ("pathlib", "PosixPath"): pathlib.PosixPath, ("pathlib", "PurePosixPath"): pathlib.PurePosixPath}


class _Refused(Exception):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return _PLAIN[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return super().find_class(module, name)
        if module.startswith(_DCP_PREFIX) and "." not in name:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {pid!r}")


def check_pickle(path: str | Path, *, what: str, fix: str) -> None:
    """Raise ArtifactError (naming `fix`) unless the pickle at `path` names only plain checkpoint data types.

    Example:
        >>> import os, pickle, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "bad.pickle")
        >>> _ = open(p, "wb").write(pickle.dumps(os.system))
        >>> check_pickle(p, what="test file", fix="delete it")
        Traceback (most recent call last):
        condense.errors.ArtifactError: test file ... names posix.system, which is not checkpoint data; ...
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{what} {path} cannot be read ({e}); {fix}") from None
    try:
        _DataOnlyUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise ArtifactError(f"{what} {path} names {e}, which is not checkpoint data; condense does not open it "
                            f"(it could run code): {fix}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise ArtifactError(f"{what} {path} is corrupt ({type(e).__name__}: {e}); {fix}") from None




def safe_dcp_load(state: dict[str, Any], folder: str | Path) -> None:
    """`torch.distributed.checkpoint.load(state, folder)` that runs no pickle from the checkpoint: `.metadata` is
    checked by `check_pickle` first and non-tensor items are read with `torch.load(weights_only=True)`.

    A refused item raises ArtifactError (dcp wraps it in a CheckpointException per rank; it is unwrapped here).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    fix = "resume from a checkpoint written by condense train"
    check_pickle(Path(folder) / ".metadata", what="sharded checkpoint metadata", fix=fix)
    try:
        dcp.load(state, checkpoint_id=str(folder), planner=_weights_only_planner())
    except CheckpointException as e:
        refused = [exc for exc, _ in e.failures.values() if isinstance(exc, ArtifactError)]
        if refused:
            raise refused[0] from None
        raise


def _weights_only_planner() -> Any:
    """dcp's DefaultLoadPlanner, reading non-tensor items (optimizer param_groups, steps) with
    `torch.load(weights_only=True)`; the default planner uses `weights_only=False`, which would run whatever a crafted
    `.distcp` shard names."""
    from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner.load_bytes uses
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise ArtifactError(f"sharded checkpoint item {fqn!r} holds more than plain data "
                                    f"({str(e).splitlines()[0][:120]}); condense does not open it (it could run "
                                    "code): resume from a checkpoint written by condense train") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return _WeightsOnlyLoadPlanner()
