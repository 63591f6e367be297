"""Exporting models that take keyword inputs (Hugging Face models: `model(input_ids=..., attention_mask=...)`).

A dict batch is what `condense.core.task.run_batch` passes as keywords; the export traces the same call with the
batch's keys as the graph's input names, and names the graph's outputs after the fields of the `ModelOutput` the
model returns (`logits`, `last_hidden_state`, ...). `OrtModule` reads those names back: it takes the same keywords
(or positional inputs in that order) and returns the same ModelOutput class, so code written against the original
model (`model(**batch).logits`) keeps working on the ONNX Runtime one.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.errors import CondenseError


class KeywordGraph(nn.Module):
    """`model` called with keywords (a dict batch, as `run_batch` does) from positional tensors in `names` order,
    its output flattened to a tuple of tensors: a ModelOutput's (or dict's) tensor fields, a tuple's tensors.

    Hugging Face models get `use_cache=False` (one forward pass; a `DynamicCache` cannot be traced) and
    `return_dict=True` (named outputs) when their config has those switches.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names
        self.train(model.training)  # a wrapper's mode restored after export must be the model's own
        cfg = getattr(model, "config", None)
        self.extra = {k: v for k, v in (("use_cache", False), ("return_dict", True)) if hasattr(cfg, k)}

    def call(self, *tensors: torch.Tensor) -> Any:
        return self.model(**dict(zip(self.names, tensors)), **self.extra)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for _, t in output_fields(self.call(*tensors)))


class NamedGraph(nn.Module):
    """`graph` (a KeywordGraph) called with its input names as keywords, returning {output name: tensor}.

    `forward`'s signature names the inputs (torch.export binds by it), so a converter tracing it with
    `sample_kwargs` (litert-torch) names the graph's inputs and outputs after the batch's keys and the ModelOutput's
    fields, instead of `args_0`, `output_0`.
    """

    def __init__(self, graph: KeywordGraph) -> None:
        super().__init__()
        self.keyword = graph  # not `graph`: the name of an exported program's FX graph
        self.train(graph.training)

    def forward(self, **named: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(output_fields(self.keyword.call(*(named[n] for n in self.keyword.names))))


def named_graph(graph: KeywordGraph) -> NamedGraph:
    """A NamedGraph whose `forward` signature lists `graph`'s input names (a subclass per call: the signature is
    a class attribute)."""
    import inspect

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD

    def forward(self: NamedGraph, **named: torch.Tensor) -> dict[str, torch.Tensor]:
        return NamedGraph.forward(self, **named)

    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", kind)] + [inspect.Parameter(n, kind) for n in graph.names])
    return type("NamedGraph", (NamedGraph,), {"forward": forward})(graph)


def output_fields(out: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of each tensor a model returned: a ModelOutput's/dict's fields, a tuple's items, one tensor."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, dict):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    raise CondenseError(f"ONNX export needs a model returning tensors (a tensor, tuple, dict or ModelOutput), got "
                        f"{type(out).__name__}; register an ExportAdapter for it in EXPORT_ADAPTERS")


def keyword_parts(model: nn.Module, batch: dict[str, Any]) -> tuple[KeywordGraph, tuple[str, ...], tuple[str, ...],
                                                                  dict[str, dict[int, str]], str | None]:
    """How to export a model taking a dict batch as keywords: (the traced module, input names = the batch's keys,
    output names = the returned ModelOutput's fields, dynamic axes (batch, sequence), the transformers ModelOutput
    class as "module:Class" or None)."""
    names = tuple(k for k, v in batch.items() if isinstance(v, torch.Tensor))
    if not names or len(names) != len(batch):
        raise CondenseError(f"ONNX export takes dict batches of tensors only, got keys {list(batch)} with "
                            f"{sorted({type(v).__name__ for v in batch.values()})}; pass tensors only")
    graph = KeywordGraph(model, names)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = graph.call(*(batch[k] for k in names))
    except TypeError as e:  # the dict's keys are not the model's keywords
        raise CondenseError(f"{type(model).__name__} does not take the dict batch's keys {list(names)} as keywords "
                            f"({e}); pass batches the model takes, or register an ExportAdapter in "
                            "condense.export.onnx.EXPORT_ADAPTERS that turns them into its inputs") from None
    finally:
        model.train(was)
    fields = output_fields(out)
    axes = {k: {d: ("batch", "sequence")[d] for d in range(min(batch[k].dim(), 2))} for k in names}
    axes.update({k: {d: ("batch", "sequence")[d] for d in range(min(v.dim(), 2))} for k, v in fields})
    cls = type(out)
    output_class = f"{cls.__module__}:{cls.__qualname__}" if (
        cls.__module__.startswith("transformers.") and isinstance(out, dict)) else None
    return graph, names, tuple(k for k, _ in fields), axes, output_class


def build_output(output_class: str | None, names: list[str], outs: list[torch.Tensor]) -> Any:
    """What the source model returned, rebuilt from the graph's outputs: its transformers ModelOutput class (only
    classes of the `transformers` package are imported, and only a ModelOutput, a dict subclass, is built) with the
    named fields, else one tensor or a tuple."""
    if output_class and output_class.startswith("transformers.") and ":" in output_class:
        import importlib

        mod, _, qual = output_class.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), qual)
        except (ImportError, AttributeError):
            cls = None  # transformers missing or changed: plain tensors are still the outputs
        if not (isinstance(cls, type) and issubclass(cls, dict)):  # a graph's metadata names it: only a
            cls = None  # ModelOutput (a dict subclass) is built, never another callable of the package
        if cls is not None:
            return cls(**dict(zip(names, outs)))
    return outs[0] if len(outs) == 1 else tuple(outs)


def order_inputs(names: list[str], tensors: tuple, named: dict[str, Any], what: str) -> tuple:
    """Positional `tensors` and keyword `named` inputs as one tuple in the graph's input order `names`; keywords
    set to None or a bool that the graph does not take (e.g. `use_cache=False`) are ignored. `what` names the
    graph in errors ("this ONNX graph")."""
    extra = [k for k, v in named.items() if k not in names and not (v is None or isinstance(v, bool))]
    if extra:
        raise CondenseError(f"{what} takes inputs {names}, not {extra}; pass only those (it was made with the "
                            "inputs of the example batch)")
    given = dict(zip(names, tensors))
    given.update({k: v for k, v in named.items() if k in names and v is not None})
    missing = [n for n in names if n not in given]
    if missing or len(tensors) > len(names):
        raise CondenseError(f"{what} takes inputs {names}; {missing} missing: pass them (by name or in that order)")
    return tuple(given[n] for n in names)
