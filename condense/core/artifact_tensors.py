"""How a model's state becomes the named plain tensors of an artifact, and back.

A module type with packed or quantized state registers a `TensorCodec` in `CODECS`; a lossless smaller way to
store one tensor (e.g. sparse: bitmask + non-zero values) registers a `TensorEncoding` in `ENCODINGS`. (Transform
replays are registered with their transform: `condense.core.transforms.register_transform`.)
"""
from __future__ import annotations


import torch
from torch import nn

from condense.core import plugins
from condense.core.registry import Registry, TypeRegistry
from condense.errors import ArtifactError


class TensorCodec:
    """How a module type's state becomes named plain tensors and back (for packed/quantized modules)."""

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load(self, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


CODECS: TypeRegistry[TensorCodec] = TypeRegistry("tensor codec")


class TensorEncoding:
    """A lossless way to store one tensor as smaller named parts (e.g. sparse: bitmask + non-zero values)."""

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The parts, or None when this encoding does not apply or would not make the tensor smaller."""
        raise NotImplementedError

    def decode(self, parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError


# encoding name -> TensorEncoding; `save` stores each tensor with the first (by name) that applies.
ENCODINGS: Registry[TensorEncoding] = Registry("tensor encoding")
_PART_SEP = "::"


def _encode_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    out: dict[str, torch.Tensor] = {}
    encoded: dict[str, dict] = {}
    for k, v in tensors.items():
        for enc_name, enc in ENCODINGS.items():
            parts = enc.encode(v)
            if parts is not None:
                out.update({f"{k}{_PART_SEP}{p}": t.contiguous() for p, t in parts.items()})
                encoded[k] = {"encoding": enc_name, "shape": list(v.shape)}
                break
        else:
            out[k] = v
    return out, encoded


def _decode_tensors(tensors: dict[str, torch.Tensor], encoded: dict[str, dict]) -> dict[str, torch.Tensor]:
    for k, info in encoded.items():
        prefix = f"{k}{_PART_SEP}"
        parts = {n[len(prefix):]: tensors.pop(n) for n in [n for n in tensors if n.startswith(prefix)]}
        if info["encoding"] not in ENCODINGS:
            raise ArtifactError(f"tensor {k!r} is stored with encoding {info['encoding']!r}, unknown to this "
                                f"condense (known: {', '.join(ENCODINGS)}); upgrade condense")
        tensors[k] = ENCODINGS.get(info["encoding"]).decode(parts, tuple(info["shape"]))
    return tensors


def _import_techniques() -> None:
    plugins.load_all()  # every declared technique registers its tensor codecs and transform replays


# -- model state -----------------------------------------------------------------------------------------------
def _own_state(module: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in module._parameters.items() if v is not None}
    for k, v in module._buffers.items():
        if v is not None and k not in module._non_persistent_buffers_set:
            out[k] = v
    return out


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of `model` as plain (non-quantized) tensors keyed by qualified name."""
    _import_techniques()
    out: dict[str, torch.Tensor] = {}
    skip_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        prefix = f"{name}." if name else ""
        codec = CODECS.find(mod)
        if codec is not None:
            tensors = codec.export(mod)
            skip_prefixes.append(prefix)  # the codec owns the whole sub-tree
        else:
            tensors = _own_state(mod)
        for k, v in tensors.items():
            out[prefix + k] = v.detach()
    return out


def _load_state_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    used: set[str] = set()
    missing: list[str] = []
    skip_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        prefix = f"{name}." if name else ""
        codec = CODECS.find(mod)
        if codec is not None:
            skip_prefixes.append(prefix)
            sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            codec.load(mod, sub)
            used.update(prefix + k for k in sub)
            continue
        for k, target in _own_state(mod).items():
            key = prefix + k
            if key not in tensors:
                missing.append(key)
                continue
            src = tensors[key]
            if tuple(src.shape) != tuple(target.shape):
                raise ArtifactError(f"tensor {key!r} has shape {tuple(src.shape)} in the artifact but "
                                    f"{tuple(target.shape)} in the model; the artifact was made from a different "
                                    "architecture: load it with the task (or model) that produced it")
            with torch.no_grad():
                target.copy_(src.to(dtype=target.dtype))
            used.add(key)
    unexpected = sorted(set(tensors) - used)
    if missing or unexpected:
        raise ArtifactError(f"artifact does not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                            f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; load it with the "
                            "task (or a fresh model) that produced it")


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one copy and record the others as aliases."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() > 0 and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            unique[k] = v.contiguous().cpu()
    return unique, aliases
