"""Early exit for Hugging Face causal LMs and classifiers, found by structure (transformers is never imported).

The blocks are the model's block list (`condense.prune.layers.find_block_list`: the ModuleList named
layers/h/layer, else the largest list of same-class blocks). The exit-head template is what runs after the last
block: the modules with parameters registered after the block list on the way up to the model (Llama: `model.norm`,
`lm_head`; GPT-2: `transformer.ln_f`, `lm_head`; BERT classifier: `bert.pooler`, `classifier`), copied per exit.
Stage 0's input and the keyword arguments each block gets (attention mask, rotary position embeddings) are taken
from the model's own forward, stopped at its first block, so masks and positions are exactly the model's. Inputs
are what the model takes (input_ids, attention_mask, a dict batch); the result is a `ModelOutput` with `logits`.
No KV cache is used (one forward over the whole sequence).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from condense.early_exit.model import Split, _Fn, register_generic_splitter
from condense.errors import ConfigError
from condense.prune.layers import find_block_list


def run_to_first_block(model: nn.Module, block: nn.Module, grab: Any, state: dict[str, Any], name: str,
                       *args: Any, **kwargs: Any) -> torch.Tensor:
    """Run `model(*args, **kwargs)` until `block`'s forward pre-hook `grab` (with kwargs) puts the block's input in
    `state["h"]` and raises `_Stop`; returns that input (a ConfigError if the forward never reached the block)."""
    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(*args, **kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in state:
        raise ConfigError(f"{type(model).__name__}'s forward never reached its first block {name}")
    return state.pop("h")


class _Stop(Exception):
    """Raised by the hook on the first block: the model's forward has prepared everything stage 0 needs."""


def is_hf_model(model: nn.Module) -> bool:
    """A Hugging Face `PreTrainedModel` (by attributes: a config with a model type, `base_model`)."""
    return type(model).__module__.startswith("transformers.") and hasattr(getattr(model, "config", None),
                                                                          "model_type") and hasattr(model, "base_model")


def tail_modules(model: nn.Module, container: str) -> list[nn.Module]:
    """Modules with parameters registered after the block list, from its parent up to the model, in call order."""
    parts = container.split(".")
    tail: list[nn.Module] = []
    for depth in range(len(parts), 0, -1):
        parent = model.get_submodule(".".join(parts[:depth - 1]))
        names = list(parent._modules)
        after = names[names.index(parts[depth - 1]) + 1:]
        tail += [parent._modules[k] for k in after if parent._modules[k] is not None
                 and any(True for _ in parent._modules[k].parameters())]
    return tail


def _shrink(x: Any, keep: torch.Tensor, n: int) -> Any:
    """`x` with rows `keep` where it is a batch tensor (2+ dims, first dim `n`); tuples, lists, dicts element-wise."""
    if isinstance(x, torch.Tensor):
        return x[keep] if x.dim() >= 2 and x.shape[0] == n else x
    if isinstance(x, (tuple, list)):
        return type(x)(_shrink(v, keep, n) for v in x)
    if isinstance(x, dict):
        return {k: _shrink(v, keep, n) for k, v in x.items()}
    return x


def split_hf(model: nn.Module) -> Split:
    """A stage per block; exits start as copies of the model's own tail (final norm + lm_head, or pooler + classifier)."""
    name, blocks = find_block_list(model)
    tail = tail_modules(model, name)
    last = tail[-1] if tail else None
    if not isinstance(last, nn.Linear):
        raise ConfigError(f"early exit needs a model with an output head (a causal LM or a classifier): a sample "
                          f"leaves an exit when that exit's class/token probabilities are confident, and "
                          f"{type(model).__name__} returns hidden states, no logits (it ends with "
                          f"{type(last).__name__}), so no exit can say it is confident. Give the model with its head "
                          "(AutoModelForSequenceClassification, AutoModelForCausalLM); to make an embedding model "
                          "faster on every input, use layer drop (LayerDropConfig) or a distilled student "
                          "(DistillConfig(layers=...))")
    causal = model.get_output_embeddings() is last
    state: dict[str, Any] = {}
    no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def grab(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs.pop("hidden_states")
        state.update(h=h, args=args[1:], kwargs={k: v for k, v in kwargs.items() if k != "hidden_states"},
                     n=h.shape[0])
        raise _Stop

    def begin(*args: Any, **kwargs: Any) -> torch.Tensor:
        if no_cache:
            kwargs.setdefault("use_cache", False)
        return run_to_first_block(model, blocks[0], grab, state, f"{name}.0", *args, **kwargs)

    def select(keep: torch.Tensor) -> None:
        n = state["n"]
        state.update(args=_shrink(state["args"], keep, n), kwargs=_shrink(state["kwargs"], keep, n),
                     n=int(keep.sum()))

    def stage(block: nn.Module) -> nn.Module:
        def run(h: torch.Tensor) -> torch.Tensor:
            out = block(h, *state["args"], **state["kwargs"])
            return out[0] if isinstance(out, (tuple, list)) else out
        return _Fn(run)

    def final(h: torch.Tensor) -> torch.Tensor:
        for m in tail:
            h = m(h)
        return h

    def finish(logits: torch.Tensor) -> Any:
        from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput  # the model's own library

        return (CausalLMOutput if causal else SequenceClassifierOutput)(logits=logits)

    def head(i: int, h: torch.Tensor) -> nn.Module:
        return nn.Sequential(*(copy.deepcopy(m) for m in tail))  # starts as the final head: a good first guess

    dev = next(model.parameters()).device
    example = {"input_ids": torch.zeros(1, 4, dtype=torch.long, device=dev)}
    return Split([stage(b) for b in blocks], _Fn(final), head, begin=begin, select=select, finish=finish,
                 example=example)


register_generic_splitter(is_hf_model)(split_hf)
