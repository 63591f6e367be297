"""A model with exit heads after intermediate stages that stops, per sample, at the first confident exit.

Why per sample: easy inputs are recognised early, hard ones go on; a batch shrinks as its samples leave, so the
work saved is real (rows that exited are not computed further). How a model splits into stages is its
architecture's business: `SPLITTERS` maps a model type to a function giving its stages, final head and exit-head
factory, registered by the module defining the model (condense/tasks/digits.py registers `split_digits_cnn`,
condense/tasks/gpt.py `split_gpt`). The wrapper keeps the original model as `backbone`, so its
tensors keep their names (`backbone.<name>`), plus `heads.<k>`.

Confidence of one sample's logits (..., K): the maximum softmax probability ("max_prob") or one minus the
normalised entropy ("entropy"), averaged over positions for sequence outputs (one decision per sequence).
A sample exits when its confidence is above the threshold; threshold 0 always exits at the first head and
threshold 1 never exits early.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.registry import TypeRegistry
from condense.errors import ConfigError

CRITERIA = ("max_prob", "entropy")


@dataclass
class Split:
    """A model cut into stages: stage i maps the previous hidden state to the next; `final` gives the logits."""

    stages: list[nn.Module]
    final: nn.Module
    make_head: Callable[[int, torch.Tensor], nn.Module]  # (stage index, an example hidden state) -> exit head
    begin: Callable[..., torch.Tensor] | None = None  # the model's call arguments -> stage 0's input (None: the input)
    select: Callable[[torch.Tensor], None] | None = None  # rows (bool mask) still running: shrink per-call state
    finish: Callable[[torch.Tensor], Any] | None = None  # logits -> what the model returns (e.g. a ModelOutput)
    example: Any = None  # an input to size the exit heads with (None: guessed from the first layer)


SPLITTERS: TypeRegistry[Callable[[nn.Module], Split]] = TypeRegistry("early-exit splitter")
GENERIC_SPLITTERS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module], Split]]] = []


def register_generic_splitter(applies: Callable[[nn.Module], bool]) -> Callable:
    """Register a splitter for every model `applies(model)` accepts (tried, in order, after the type registry)."""
    def deco(fn: Callable[[nn.Module], Split]) -> Callable[[nn.Module], Split]:
        GENERIC_SPLITTERS.append((applies, fn))
        return fn
    return deco


def find_splitter(model: nn.Module) -> Callable[[nn.Module], Split] | None:
    """The splitter registered for `model`'s type, else the first generic one that accepts it."""
    fn = SPLITTERS.find(model)
    return fn if fn is not None else next((f for ok, f in GENERIC_SPLITTERS if ok(model)), None)


class _Fn(nn.Module):
    """A stage or head that is a plain function of modules owned elsewhere (not registered here)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class PoolHead(nn.Module):
    """CNN exit: average-pool the feature map to `pool` x `pool`, then one Linear to the classes."""

    def __init__(self, channels: int, n_classes: int, pool: int = 4) -> None:
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(channels * pool * pool, n_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(h, self.pool).flatten(1))  # (B, C, H, W) -> (B, C*p*p) -> (B, K)


class TokenHead(nn.Module):
    """Transformer exit: LayerNorm then a Linear to the vocabulary, at every position."""

    def __init__(self, width: int, n_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, n_out, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(h))  # (B, T, C) -> (B, T, V)


def split_digits_cnn(model: nn.Module) -> Split:
    """The digits CNN (`features` of three conv blocks, `classifier`): an exit after each of the first two."""
    f = model.features
    stages = [f[0], f[1], nn.Sequential(*f[2:])]  # the last stage: pool, then the third conv block
    final = _Fn(lambda h: model.classifier(h.mean(dim=(2, 3))))  # (B, C3, 4, 4) -> (B, K)
    n_classes = model.classifier.out_features
    return Split(stages, final, lambda i, h: PoolHead(h.shape[1], n_classes, pool=min(4, h.shape[-1])))


def split_gpt(model: nn.Module) -> Split:
    """A GPT (`wte`, `wpe`, `blocks`, `ln_f`, `lm_head`): a stage per block; exit heads start as the final head."""
    def embed_and_first(idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
        return model.blocks[0](model.wte(idx) + model.wpe(pos))  # (B, T, C)

    stages = [_Fn(embed_and_first), *model.blocks[1:]]
    final = _Fn(lambda h: model.lm_head(model.ln_f(h)))  # (B, T, V)

    def head(i: int, h: torch.Tensor) -> nn.Module:
        hd = TokenHead(h.shape[-1], model.lm_head.out_features)
        hd.norm.load_state_dict(model.ln_f.state_dict())  # start from the final head: already a good guess
        hd.proj.weight.data.copy_(model.lm_head.weight.detach())
        return hd

    return Split(stages, final, head)


def confidence(logits: torch.Tensor, criterion: str = "max_prob") -> torch.Tensor:
    """Per-sample confidence in [0, 1] of logits (B, ..., K), averaged over the middle dimensions.

    Example:
        >>> confidence(torch.tensor([[0.0, 0.0], [100.0, 0.0]])).tolist()
        [0.5, 1.0]
    """
    logits = logits.float()
    if criterion == "max_prob":
        c = (logits.max(dim=-1).values - logits.logsumexp(dim=-1)).exp()  # the largest softmax probability
    else:
        logp = F.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        c = 1 - ent / math.log(logits.shape[-1])
    return c if c.dim() == 1 else c.reshape(c.shape[0], -1).mean(1)  # (B,)


class EarlyExitModel(nn.Module):
    """`backbone` plus exit heads after the stages in `exits`; in eval mode each sample leaves at the first exit
    whose confidence is above `threshold` (in train mode, and with extra arguments, it is the backbone).

    `exit_counts[k]` counts samples that left at exit k (the last entry: the backbone's own head).

    Example:
        >>> from condense.tasks.digits import DigitsCNN
        >>> m = EarlyExitModel(DigitsCNN((8, 16, 32)), exits=(0, 1), threshold=0.0).eval()
        >>> m(torch.zeros(2, 1, 8, 8)).shape, m.exit_counts
        (torch.Size([2, 10]), [2, 0, 0])
    """

    def __init__(self, backbone: nn.Module, exits: tuple[int, ...] | None = None, *, threshold: float = 0.9,
                 criterion: str = "max_prob", example: Any = None) -> None:
        super().__init__()
        split = find_splitter(backbone)
        if split is None:
            raise ConfigError(f"no early-exit splitter is registered for {type(backbone).__name__}: register one "
                              "in the module that defines it, condense.early_exit.model.SPLITTERS.register("
                              f"{type(backbone).__name__})(fn) with fn(model) -> Split (the built-in tasks' DigitsCNN "
                              "and GPT register theirs; Hugging Face causal LMs and classifiers have a generic one)")
        self.backbone = backbone
        s = self._split
        n = len(s.stages)
        exits = tuple(range(n - 1)) if exits is None else tuple(sorted(exits))
        if not exits or any(not 0 <= i < n - 1 for i in exits):
            raise ConfigError(f"exits must be stage indices in 0..{n - 2} (the last stage has the model's own head), "
                              f"got {exits}")
        self.exits = exits
        self.threshold = threshold
        self.criterion = criterion
        if example is None:
            example = s.example if s.example is not None else _example_input(backbone)
        hidden = self._hidden_states(example)
        self.heads = nn.ModuleList(s.make_head(i, hidden[i]) for i in exits)
        dev = next(backbone.parameters()).device
        self.heads.to(dev)
        self.exit_counts = [0] * (len(exits) + 1)

    @property
    def _split(self) -> Split:
        """The backbone's stages and final head, rebuilt whenever the backbone object changes (e.g. after
        `copy.deepcopy`, whose copied closures would still point at the original's layers)."""
        backbone = self._modules["backbone"]
        cached = self.__dict__.get("_split_cache")
        if cached is None or cached[0] != id(backbone):
            cached = (id(backbone), find_splitter(backbone)(backbone))
            self.__dict__["_split_cache"] = cached  # a plain attribute: the stages are the backbone's modules
        return cached[1]

    @property
    def _stages(self) -> list[nn.Module]:
        return self._split.stages

    @property
    def _final(self) -> nn.Module:
        return self._split.final

    def _begin(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """Stage 0's input from the model's call arguments (a dict batch is keyword arguments)."""
        begin = self._split.begin
        if begin is None:
            return args[0]
        if len(args) == 1 and not kwargs and isinstance(args[0], dict):
            return begin(**args[0])
        return begin(*args, **kwargs)

    @torch.no_grad()
    def _hidden_states(self, x: Any) -> list[torch.Tensor]:
        out, h = [], self._begin((x,), {})
        for stage in self._stages:
            h = stage(h)
            out.append(h)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("config", "blocks"):  # what generate() reads: the backbone's
                return getattr(self._modules["backbone"], name)
            raise

    def all_exits(self, x: Any, *, frozen: bool = False) -> list[torch.Tensor]:
        """Logits of every exit, then of the final head, for every sample (training; `frozen`: backbone no grad)."""
        heads = dict(zip(self.exits, self.heads))
        backbone_grad = torch.no_grad() if frozen else contextlib.nullcontext()
        with backbone_grad:
            outs, h = [], self._begin((x,), {})
        for i, stage in enumerate(self._stages):
            with backbone_grad:
                h = stage(h)
            if i in heads:
                outs.append(heads[i](h))
        with backbone_grad:
            outs.append(self._final(h))
        return outs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        split = self._split
        if self.training or (split.begin is None and (len(args) != 1 or kwargs)):
            return self.backbone(*args, **kwargs)
        finish = split.finish or (lambda t: t)
        heads = dict(zip(self.exits, self.heads))
        out: torch.Tensor | None = None
        rows: torch.Tensor | None = None  # original row of each sample still running
        h = self._begin(args, kwargs)
        n = h.shape[0]
        for i, stage in enumerate(self._stages):
            h = stage(h)
            if i not in heads:
                continue
            logits = heads[i](h)
            done = confidence(logits, self.criterion) > self.threshold if self.threshold > 0 else \
                torch.ones(h.shape[0], dtype=torch.bool, device=logits.device)
            k = self.exits.index(i)
            n_done = int(done.sum())
            self.exit_counts[k] += n_done
            if n_done == 0:
                continue
            if out is None and n_done == h.shape[0]:
                return finish(logits)  # everyone left here: nothing to assemble
            if out is None:
                out = logits.new_empty((n, *logits.shape[1:]))
                rows = torch.arange(n, device=logits.device)
            out[rows[done]] = logits[done]
            if n_done == h.shape[0]:
                return finish(out)
            rows, h = rows[~done], h[~done]
            if split.select is not None:
                split.select(~done)
        logits = self._final(h)
        self.exit_counts[-1] += h.shape[0]
        if out is None:
            return finish(logits)
        out[rows] = logits
        return finish(out)


def _example_input(model: nn.Module) -> torch.Tensor:
    """A small input of the right kind for a built-in backbone (to size the exit heads)."""
    dev = next(model.parameters()).device
    if hasattr(model, "wte"):
        return torch.zeros(1, 4, dtype=torch.long, device=dev)
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    if isinstance(first, nn.Conv2d):
        return torch.zeros(1, first.in_channels, 8, 8, device=dev)
    return torch.zeros(1, first.in_features, device=dev)


def with_exits(model: nn.Module, exits: tuple[int, ...] | None, threshold: float, criterion: str) -> EarlyExitModel:
    """`model` wrapped with fresh exit heads (the lineage moves to the wrapper)."""
    from condense.core import lineage

    wrapped = EarlyExitModel(model, exits, threshold=threshold, criterion=criterion)
    lineage.copy_lineage(model, wrapped)
    return wrapped.train(model.training)
