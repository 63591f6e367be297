"""Layers that compute y = x Wᵀ + b but are not `nn.Linear`, and weights shared between layers (ties).

Why: models condense did not write hold their projections in other classes. Hugging Face GPT-2's
`transformers.pytorch_utils.Conv1D` stores W as (in, out) and computes `addmm(b, x, W)`; skipping it leaves every
block of GPT-2 in float. One registry keyed by type says how such a layer becomes an `nn.Linear` (weight
transposed to (out, in)) and back, so a technique that knows Linear handles it by converting first: dynamic int8,
weight-only, pruning and factorization all do.

Conv1D's adapter registers itself lazily, the first time the registry is read after `transformers.pytorch_utils`
has been imported (a model holding a Conv1D implies it was): core never imports transformers.

Ties: GPT-2 and Llama share the lm_head weight with the token embedding (one Parameter, or one storage).
`tied_weights` finds them, so a technique can skip a tied layer or say what happens to the tie.

Example:
    >>> lin = nn.Linear(3, 2)
    >>> linear_like_types()[0] is nn.Linear, linear_weight(lin).shape
    (True, torch.Size([2, 3]))
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from condense.core.registry import TypeRegistry


@dataclass(frozen=True)
class LinearAdapter:
    """How a linear-like layer type maps to `nn.Linear`.

    Attributes:
        weight: the layer's weight as an (out, in) tensor (a view where possible).
        to_linear: an `nn.Linear` computing the same function (weights copied).
        from_linear: the layer type again, from an `nn.Linear` (weights copied), to give back the user's layout.
    """

    weight: Callable[[nn.Module], torch.Tensor]
    to_linear: Callable[[nn.Module], nn.Linear]
    from_linear: Callable[[nn.Linear], nn.Module]


LINEAR_LIKE: TypeRegistry[LinearAdapter] = TypeRegistry("linear-like layer")


def register_linear_like(layer_type: type, adapter: LinearAdapter) -> LinearAdapter:
    """Let every Linear-aware technique handle `layer_type` through `adapter`."""
    return LINEAR_LIKE.register(layer_type)(adapter)


LINEAR_LIKE.register(nn.Linear)(LinearAdapter(weight=lambda m: m.weight, to_linear=lambda m: m,
                                              from_linear=lambda lin: lin))


def _conv1d_to_linear(m: nn.Module) -> nn.Linear:
    lin = nn.Linear(m.nx, m.nf, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(m.weight.T)  # (in, out) -> (out, in)
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    lin.train(m.training)
    return lin


def _register_optional() -> None:
    """Register adapters of optional libraries already imported (never imports them)."""
    mod = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(mod, "Conv1D", None)
    if conv1d is None or LINEAR_LIKE.find(conv1d) is not None:
        return

    def from_linear(lin: nn.Linear) -> nn.Module:
        m = conv1d(lin.out_features, lin.in_features)  # Conv1D(nf=out, nx=in), always with a bias
        with torch.no_grad():
            m.weight.copy_(lin.weight.T)  # (out, in) -> (in, out)
            m.bias.copy_(lin.bias if lin.bias is not None else torch.zeros_like(m.bias))
        return m.to(lin.weight.device).train(lin.training)

    register_linear_like(conv1d, LinearAdapter(weight=lambda m: m.weight.T, to_linear=_conv1d_to_linear,
                                               from_linear=from_linear))


def linear_like_types() -> tuple[type, ...]:
    """`nn.Linear` and every registered linear-like type (Conv1D once transformers is imported)."""
    _register_optional()
    return LINEAR_LIKE.types()


def find_adapter(module: nn.Module) -> LinearAdapter | None:
    _register_optional()
    return LINEAR_LIKE.find(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a Linear or linear-like layer."""
    adapter = find_adapter(module)
    if adapter is None:
        raise TypeError(f"{type(module).__name__} is not a linear-like layer; register one with "
                        "condense.core.linear_like.register_linear_like")
    return adapter.weight(module)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def linearize_(model: nn.Module, names: list[str]) -> dict[str, type]:
    """Replace each named linear-like layer that is not an `nn.Linear` by an equal `nn.Linear` (in place);
    other layers (Linear, Conv2d) are left as they are.

    Returns {name: original type} of the layers replaced (for `restore_`). A bare layer ("") cannot be replaced in
    place: it is skipped here, and the caller converts it itself.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> linearize_(net, ["0"])
        {}
    """
    done: dict[str, type] = {}
    for n in names:
        if not n:
            continue
        m = model.get_submodule(n)
        adapter = find_adapter(m)
        if adapter is None or isinstance(m, nn.Linear):  # a Linear already, or not linear-like (Conv2d)
            continue
        _set(model, n, adapter.to_linear(m))
        done[n] = type(m)
    return done


def restore_(model: nn.Module, originals: dict[str, type]) -> None:
    """Give layers `linearize_` replaced their original types back (weights copied, transposed as needed)."""
    for n, t in originals.items():
        _set(model, n, LINEAR_LIKE.find(t).from_linear(model.get_submodule(n)))


def _storage_key(t: torch.Tensor) -> tuple | None:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # meta or quantized tensors
        return None
    return (t.device.type, ptr) if ptr else None


def tied_weights(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """For each named layer whose weight is shared (same Parameter or same storage) with a parameter of another
    module: the names of those parameters. Layers with a weight of their own are left out.

    Example:
        >>> emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        >>> head.weight = emb.weight
        >>> tied_weights(nn.ModuleDict({"emb": emb, "head": head}), ["head"])
        {'head': ['emb.weight']}
    """
    owners: dict[object, list[str]] = {}
    for pn, p in model.named_parameters(remove_duplicate=False):
        for key in (("id", id(p)), _storage_key(p)):
            if key is not None:
                owners.setdefault(key, []).append(pn)
    out: dict[str, list[str]] = {}
    for n in names:
        w = getattr(model.get_submodule(n) if n else model, "weight", None)
        if not isinstance(w, torch.Tensor):
            continue
        prefix = f"{n}." if n else ""
        others: list[str] = []
        for key in (("id", id(w)), _storage_key(w)):
            for pn in owners.get(key, []) if key is not None else []:
                if not pn.startswith(prefix) and pn not in others:
                    others.append(pn)
        if others:
            out[n] = others
    return out


def warn_tied(tied: dict[str, list[str]], what: str) -> None:
    """Say that quantizing these tied layers gives each its own quantized copy (the tie is broken)."""
    if tied:
        pairs = "; ".join(f"{n} with {', '.join(o)}" for n, o in tied.items())
        warnings.warn(f"{what}: {len(tied)} layer(s) share their weight with another module ({pairs}); each gets "
                      "its own quantized copy, so the tie is broken (the other module keeps the float weight and "
                      f"the matrix is stored twice); exclude them (exclude={tuple(tied)!r}) to keep the tie",
                      stacklevel=3)


def prepare_linears_(model: nn.Module, names: list[str], what: str) -> dict[str, Any]:
    """Before quantizing the selected layers: warn about tied weights (`warn_tied`) and turn linear-like layers into
    `nn.Linear` (`linearize_`); returns the lineage details to record ("linearized", "tied"; empty ones left out)."""
    tied = tied_weights(model, names)
    warn_tied(tied, what)
    converted = linearize_(model, names)
    return {k: v for k, v in (("linearized", sorted(converted)), ("tied", tied)) if v}
