"""Optimizers by name: a registry of builders `fn(param_groups, cfg) -> torch.optim.Optimizer`.

Weight decay applies to matrices and embeddings only (dim >= 2) when `cfg.decay_matrices_only` is set, the usual
choice for transformers; otherwise to every parameter (the historical behaviour of `fit`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from condense.core.registry import Registry

OPTIMIZERS: Registry[Callable[[list[dict], Any], torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adagrad")
def _adagrad(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups: list[dict], cfg: Any) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_optimizer(params: Iterable[nn.Parameter] | Iterable[dict], cfg: Any) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` over `params` (already filtered to those requiring grad), or over parameter
    groups: dicts {"params": [...], "lr_scale": s} whose learning rate is s x cfg.lr (discriminative learning
    rates, `condense.train.transfer`).

    Example:
        >>> from condense.train.loop import FitConfig
        >>> type(build_optimizer(nn.Linear(2, 2).parameters(), FitConfig(optimizer="rmsprop"))).__name__
        'RMSprop'
    """
    params = list(params)
    given = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = []
    for g in given:
        extra = {k: v for k, v in g.items() if k not in ("params", "lr_scale")}
        if "lr_scale" in g:
            extra["lr"] = cfg.lr * g["lr_scale"]
        ps = list(g["params"])
        if cfg.decay_matrices_only and cfg.weight_decay:
            groups += [{**extra, "params": [p for p in ps if p.dim() >= 2]},
                       {**extra, "params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]
        else:
            groups.append({**extra, "params": ps})
    groups = [g for g in groups if g["params"]]
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg)
