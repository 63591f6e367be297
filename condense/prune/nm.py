"""N:M semi-structured pruning: in every group of M consecutive weights along the input dimension, keep N.

Why: 2:4 is the pattern sparse tensor cores (NVIDIA Ampere and later) run at up to 2x dense speed, and 4:8 and
other N:M patterns are studied for the same reason; on CPU it is a storage/quality trade like unstructured
pruning, with the same masks (`WeightMask`) and the same criteria. Groups run along the input dimension of each
output row: Linear weight (out, in) in runs of M along `in`; Conv2d weight (out, in, kh, kw) in runs of M
input channels at each kernel position (the layout sparse kernels use for convolutions).

Example:
    >>> import torch
    >>> from condense.prune import prune_
    >>> from condense.prune.nm import NMConfig
    >>> net = prune_(torch.nn.Linear(8, 3), NMConfig(n=2, m=4))
    >>> (net.weight.view(3, 2, 4) != 0).sum(-1).tolist()
    [[2, 2], [2, 2], [2, 2]]
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from condense.core.config import config, show
from condense.core.linear_like import restore_
from condense.core.transforms import TransformContext, register_transform
from condense.errors import ConfigError
from condense.prune.importance import score
from condense.prune.unstructured import apply_masks, check_common, choose_layers, current_mask, finish, replay_masks


DEFAULT_INCLUDE = ("*",)


@config
class NMConfig:
    """Keep the `n` most important of every `m` consecutive weights along each row's input dimension.

    Args:
        n, m: the pattern, 0 < n < m (2:4 zeroes half the weights, 1:4 three quarters).
        criterion: importance criterion (magnitude, l1, l2, taylor, wanda).
        calibration_batches: batches used by data-driven criteria.
        include / exclude: module-name patterns choosing among Linear and Conv2d layers. With the default
            include ("*"), layers whose input dimension (Conv2d: input channels per group) is not a multiple of `m`
            (a CNN's first conv) stay dense, warned and recorded as `nm_skipped`; layers an explicit include
            chooses must all be multiples (else a ConfigError names the layer).
        permanent: bake the zeros into the weights (default) or keep the masks.

    Example:
        >>> NMConfig(n=4, m=8).to_dict()["m"]
        8
    """

    n: int = 2
    m: int = 4
    criterion: str = "magnitude"
    calibration_batches: int = 8
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    permanent: bool = True

    def __post_init__(self) -> None:
        for k in ("n", "m"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) > 1024:
                raise ConfigError(f"NMConfig.{k} must be an integer (at most 1024), got {show(v)}; e.g. n=2, m=4")
        if not 0 < self.n < self.m:
            raise ConfigError(f"NMConfig needs 0 < n < m, got n={self.n}, m={self.m}; e.g. n=2, m=4 for 2:4")
        check_common(self, "NMConfig")


def _rows_of_groups(w: torch.Tensor) -> torch.Tensor:
    """(out, in) -> itself; (out, in, kh, kw) -> (out, kh, kw, in) so the last dim is the input channels."""
    return w if w.dim() == 2 else w.permute(0, 2, 3, 1)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask shaped like `scores` (Linear or Conv2d weight) with exactly `n` kept in each run of `m`.

    Ties go to the lower index.

    Example:
        >>> nm_mask(torch.tensor([[1., 4., 3., 2., 0., 0., 5., 6.]]), 2, 4).int().tolist()
        [[0, 1, 1, 0, 0, 0, 1, 1]]
    """
    s = _rows_of_groups(scores.detach().float())
    groups = s.reshape(*s.shape[:-1], s.shape[-1] // m, m)  # (..., in/m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    keep = keep.reshape(s.shape)
    return keep if scores.dim() == 2 else keep.permute(0, 3, 1, 2)


def check_layer(name: str, module: nn.Module, m: int) -> None:
    """Raise a ConfigError naming the layer and the fix if its input dimension cannot be split into runs of m."""
    w = module.weight
    if w.dim() not in (2, 4):
        raise ConfigError(f"NMConfig: layer {name!r} has a {w.dim()}-d weight; only Linear and Conv2d are supported")
    k = w.shape[1]
    if k % m:
        raise ConfigError(f"NMConfig: layer {name!r} has {k} input {'features' if w.dim() == 2 else 'channels'}, "
                          f"not a multiple of m={m}; exclude it, e.g. exclude=({name!r},), or pick an m dividing {k}")


def prune_nm(model: nn.Module, cfg: NMConfig, ctx: TransformContext) -> nn.Module:
    """N:M-mask the selected layers (in place); every layer is checked before any is changed."""
    names, originals = choose_layers(model, cfg.include, cfg.exclude, ctx, what="NMConfig")
    skipped: dict[str, str] = {}
    try:
        for n in names:
            try:
                check_layer(n, model.get_submodule(n), cfg.m)
            except ConfigError as e:
                if tuple(cfg.include) != DEFAULT_INCLUDE:  # the user named the layers: each must hold N:M
                    raise
                w = model.get_submodule(n).weight
                skipped[n] = f"{w.shape[1]} input {'features' if w.dim() == 2 else 'channels'}"
        if skipped and len(skipped) == len(names):
            raise ConfigError(f"NMConfig: no chosen layer can hold {cfg.n}:{cfg.m} ({len(names)} layers, e.g. "
                              f"{next(iter(skipped.values()))}); pick an m dividing their input dimension")
    except ConfigError:
        restore_(model, originals)  # a bad layer leaves the model as it was
        raise
    if skipped:  # the default include ("*"): layers whose shape cannot hold the pattern are left dense, said so
        restore_(model, {n: t for n, t in originals.items() if n in skipped})
        originals = {n: t for n, t in originals.items() if n not in skipped}
        names = [n for n in names if n not in skipped]
        warnings.warn(f"NMConfig: left {len(skipped)} layer(s) dense, their input dimension is not a multiple of "
                      f"m={cfg.m}: {', '.join(f'{n} ({why})' for n, why in skipped.items())} (recorded in the "
                      "lineage as nm_skipped)", stacklevel=3)
        ctx.record(nm_skipped=skipped)
    scores = score(model, names, ctx, criterion=cfg.criterion, batches=cfg.calibration_batches)
    masks = {}
    for n, s in scores.items():
        keep = nm_mask(s, cfg.n, cfg.m)
        old = current_mask(model.get_submodule(n))
        masks[n] = keep if old is None else keep & old
    apply_masks(model, masks)
    return finish(model, ctx, names, permanent=cfg.permanent, originals=originals, pattern=f"{cfg.n}:{cfg.m}")


# -- registered transforms ----------------------------------------------------------------------------------------
register_transform(NMConfig, family="prune", name="nm", replay=replay_masks)(prune_nm)
