"""Write a model back as a Hugging Face folder that `AutoModel*.from_pretrained` opens.

Only a model whose shape its `config.json` can express can be written: the same module types and tensor shapes
a fresh model built from its config has. Dynamic int8 layers, ONNX Runtime sessions, factorized or per-layer
narrowed layers are not expressible (transformers would build the original layers and fail to load, or load
wrong); those models are saved with `condense.save`, and `save_hf` says which layer stands in the way.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from condense.core import lineage
from condense.errors import CondenseError
from condense.tasks.hf.loading import TOKENIZER_FILES, require_transformers

_TOKENIZER_EXTRA = ("tokenizer_config.json", "special_tokens_map.json", "merges.txt", "added_tokens.json")
_INSTEAD = "save it with condense.save(model, path) (loaded with condense.load) instead"


def why_not_hf(model: nn.Module) -> str | None:
    """Why `model` cannot be written as a Hugging Face folder, or None when it can."""
    transformers = require_transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        return f"the model is a {type(model).__name__}, not a transformers PreTrainedModel"
    with torch.device("meta"):  # the architecture its config describes, without allocating weights
        fresh = type(model)(model.config)
    want = dict(fresh.named_modules())
    for name, mod in model.named_modules():
        ref = want.pop(name, None)
        if ref is None:
            return f"layer {name!r} ({type(mod).__name__}) is not in the architecture its config describes"
        if type(ref) is not type(mod):
            got, want_ = type(mod).__name__, type(ref).__name__
            if got == want_:  # torch's dynamic int8 Linear is a "Linear" too
                got, want_ = f"{type(mod).__module__}.{got}", f"{type(ref).__module__}.{want_}"
            return (f"layer {name!r} is a {got} where the config builds a {want_} "
                    "(a compressed layer type config.json cannot express)")
    if want:
        return f"layer {next(iter(want))!r} of the architecture its config describes is missing"
    shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    for k, v in model.state_dict().items():
        if shapes.get(k) != tuple(v.shape):
            return (f"tensor {k!r} has shape {tuple(v.shape)} where the config says {shapes.get(k)} (per-layer "
                    "widths config.json cannot express)")
    return None


def save_hf(model: nn.Module, path: str | os.PathLike, *, tokenizer_from: str | os.PathLike | None = None) -> Path:
    """Write `model` as a Hugging Face folder (config.json + model.safetensors) at `path`, a new or empty folder.

    The folder's tokenizer files are copied from `tokenizer_from` (default: the `hf:` folder the model's task was
    built from, when it has one). Raises a CondenseError saying why when the config cannot express the model.

    Example:
        >>> import condense
        >>> task = condense.hf_task("runs/my-llama")  # doctest: +SKIP
        >>> model = condense.prune_(task.build_model(), condense.UnstructuredConfig(0.5))  # doctest: +SKIP
        >>> save_hf(model, "runs/my-llama-sparse")  # doctest: +SKIP
    """
    reason = why_not_hf(model)
    if reason is not None:
        raise CondenseError(f"cannot write this model as a Hugging Face folder: {reason}; {_INSTEAD}")
    out = Path(path).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CondenseError(f"{out} exists and is not an empty folder; give a new folder to write the model to")
    if tokenizer_from is None:
        spec = lineage.lineage(model).get("task") or {}
        name = spec.get("name") if isinstance(spec, dict) else None
        tokenizer_from = name[3:] if isinstance(name, str) and name.startswith("hf:") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer_from is not None and Path(tokenizer_from).is_dir():
            for f in TOKENIZER_FILES + _TOKENIZER_EXTRA:
                src = Path(tokenizer_from) / f
                if src.is_file():
                    shutil.copyfile(src, tmp / f)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
