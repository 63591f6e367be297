"""Early exit for CNNs built of stages/blocks (a torchvision-style ResNet), found by structure, not by name.

The blocks are the model's block list (`condense.prune.layers.find_block_list`: the ModuleList named
layers/blocks/layer, else the one list of same-class blocks). Stage 0's input is what the model's own forward
hands its first block (the stem's output, taken with a hook that stops the forward there). The model's head is
taken to be global average pooling then its last Linear (torchvision's `avgpool`, `flatten`, `fc`); that is
checked on an example input against the model's own output, so a model whose head does something else is refused
with the reason instead of getting wrong exits. Each exit is global average pooling plus a new Linear from that
block's channels to the classes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from condense.early_exit.hf import _Stop, is_hf_model, run_to_first_block, tail_modules
from condense.early_exit.model import Split, _Fn, register_generic_splitter
from condense.errors import CondenseError, ConfigError
from condense.prune.layers import find_block_list

EXAMPLE_SIZE = 32  # height and width of the input that sizes the heads and checks the head


class GapHead(nn.Module):
    """CNN exit: global average pooling, then one Linear to the classes: (B, C, H, W) -> (B, K)."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.mean(dim=(2, 3)))


def is_block_cnn(model: nn.Module) -> bool:
    """A PyTorch CNN (not a Hugging Face model) with one list of blocks and a Linear after it."""
    if is_hf_model(model) or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    try:
        name, _ = find_block_list(model)
    except ConfigError:
        return False
    tail = tail_modules(model, name)
    return bool(tail) and isinstance(tail[-1], nn.Linear)


def split_block_cnn(model: nn.Module) -> Split:
    """A stage per block; the final head is global average pooling + the model's last Linear (checked)."""
    name, blocks = find_block_list(model)
    tail = tail_modules(model, name)
    fc = tail[-1]
    if len(tail) != 1:
        raise ConfigError(f"early exit on {type(model).__name__}: after its blocks ({name}) come "
                          f"{[type(m).__name__ for m in tail]}, not one Linear; register a splitter for it "
                          "(condense.early_exit.model.SPLITTERS)")
    state: dict[str, Any] = {}

    def grab(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        state["h"] = args[0]
        raise _Stop

    def begin(x: Any) -> torch.Tensor:
        return run_to_first_block(model, blocks[0], grab, state, f"{name}.0", x)

    def final(h: torch.Tensor) -> torch.Tensor:
        return fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))  # (B, C, H, W) -> (B, K)

    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    dev = first.weight.device
    example = torch.randn(2, first.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE, generator=torch.Generator().manual_seed(0)
                          ).to(dev)
    _check_head(model, begin, list(blocks), final, example)
    return Split(list(blocks), _Fn(final), lambda i, h: GapHead(h.shape[1], fc.out_features).to(h.device),
                 begin=begin, example=example)


def _check_head(model: nn.Module, begin: Any, blocks: list[nn.Module], final: Any, x: torch.Tensor) -> None:
    """Raise a ConfigError unless the blocks then `final` reproduce `model(x)` (its head is pool + Linear)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            h = begin(x)
            for b in blocks:
                h = b(h)
            got, ref = final(h), model(x)
    except (RuntimeError, CondenseError) as e:
        raise ConfigError(f"early exit on {type(model).__name__}: running its blocks one by one failed ({e}); "
                          "register a splitter for it (condense.early_exit.model.SPLITTERS)") from None
    finally:
        model.train(was)
    if not isinstance(ref, torch.Tensor) or ref.shape != got.shape or not torch.allclose(got, ref, atol=1e-4,
                                                                                          rtol=1e-4):
        raise ConfigError(f"early exit on {type(model).__name__}: its output is not global average pooling then "
                          f"its last Linear after the blocks (checked on an example input); register a splitter "
                          "for it (condense.early_exit.model.SPLITTERS)")


register_generic_splitter(is_block_cnn)(split_block_cnn)
