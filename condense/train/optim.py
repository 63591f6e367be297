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


def build_optimizer(params: Iterable[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` over `params` (already filtered to those requiring grad).

    Example:
        >>> from condense.train.loop import FitConfig
        >>> type(build_optimizer(nn.Linear(2, 2).parameters(), FitConfig(optimizer="rmsprop"))).__name__
        'RMSprop'
    """
    params = list(params)
    if cfg.decay_matrices_only and cfg.weight_decay:
        groups = [{"params": [p for p in params if p.dim() >= 2]},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params}]
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg)
