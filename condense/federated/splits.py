"""How a task's training data is shared out among simulated clients: IID, or label-skewed (Dirichlet alpha).

A split is a list of index tensors, one per client, that together cover every sample exactly once. Both kinds are
deterministic functions of (labels or sample count, clients, seed): rerunning or resuming a run gives each client
the same data.
"""
from __future__ import annotations

from typing import Any

import torch

from condense.core.task import batch_tensors
from condense.errors import ConfigError


def iid_split(n: int, clients: int, seed: int = 0) -> list[torch.Tensor]:
    """Shuffle `n` sample indices and deal them into `clients` near-equal parts.

    Example:
        >>> [p.numel() for p in iid_split(10, 3)]
        [4, 3, 3]
    """
    _check(n, clients)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [part.sort().values for part in torch.tensor_split(perm, clients)]


def dirichlet_split(labels: torch.Tensor, clients: int, alpha: float, seed: int = 0) -> list[torch.Tensor]:
    """Label-skewed split: each class is shared out by proportions drawn from Dirichlet(alpha) over the clients.

    Small alpha gives each client few classes; large alpha approaches an IID split. A client left with no sample
    takes one from the largest client, so every client trains.

    Example:
        >>> parts = dirichlet_split(torch.arange(100) % 10, 5, alpha=0.5)
        >>> sorted(torch.cat(parts).tolist()) == list(range(100))
        True
    """
    if not alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}; e.g. alpha=0.5 (smaller: more label skew)")
    labels = labels.reshape(-1)
    _check(labels.numel(), clients)
    g = torch.Generator().manual_seed(seed)
    conc = torch.full((clients,), float(alpha), dtype=torch.float64)
    owned: list[list[torch.Tensor]] = [[] for _ in range(clients)]
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().reshape(-1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        # torch.distributions draws from the global RNG: fork it so the split depends only on `seed`
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            props = torch.distributions.Dirichlet(conc).sample()
        cuts = (props.cumsum(0) * idx.numel()).round().long().clamp(max=idx.numel())[:-1].tolist()
        for c, part in enumerate(torch.tensor_split(idx, cuts)):
            owned[c].append(part)
    parts = [torch.cat(p) if p else torch.empty(0, dtype=torch.long) for p in owned]
    for c in range(clients):  # nobody is left without data
        if parts[c].numel() == 0:
            big = max(range(clients), key=lambda j: parts[j].numel())
            parts[c], parts[big] = parts[big][-1:], parts[big][:-1]
    return [p.sort().values for p in parts]


def group_split(task: Any, n: int, clients: int) -> list[torch.Tensor]:
    """One client per group of `task.extras["client_groups"]` (a group id per training sample, in `train_data`
    order), groups in sorted order.

    Example:
        >>> from types import SimpleNamespace
        >>> t = SimpleNamespace(name="t", extras={"client_groups": torch.tensor([1, 0, 1, 2])})
        >>> [p.tolist() for p in group_split(t, 4, 3)]
        [[1], [0, 2], [3]]
    """
    groups = task.extras.get("client_groups")
    if groups is None:
        raise ConfigError(f"task {task.name!r} defines no client groups (extras['client_groups']); use split='iid' "
                          "or 'dirichlet'")
    groups = torch.as_tensor(groups).reshape(-1)
    if groups.numel() != n:
        raise ConfigError(f"task {task.name!r}: client_groups has {groups.numel()} ids for {n} training samples")
    ids = torch.unique(groups)
    if ids.numel() != clients:
        raise ConfigError(f"task {task.name!r} has {ids.numel()} client groups; set clients={ids.numel()}")
    return [(groups == g).nonzero().reshape(-1) for g in ids.tolist()]


def label_skew(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one (0: IID).

    Example:
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> label_skew(y, [torch.tensor([0, 1]), torch.tensor([2, 3])])
        0.5
    """
    labels = labels.reshape(-1)
    k = int(labels.max()) + 1
    glob = torch.bincount(labels, minlength=k).double() / labels.numel()
    tv = [0.5 * (torch.bincount(labels[p], minlength=k).double() / p.numel() - glob).abs().sum()
          for p in parts if p.numel()]
    return float(torch.stack(tv).mean())


def gather(task: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a task's training samples as (inputs, targets) tensors, from its `train_data` batches."""
    if task.train_data is None or task.loss is None:
        raise ConfigError(f"task {task.name!r} has no train_data/loss; federated training needs a task with both "
                          "(e.g. digits)")
    xs, ys = [], []
    for b in task.train_data():
        t = batch_tensors(b, "federated training needs (inputs, targets) tensor batches from train_data, got "
                             "{type}")
        if len(t) != 2:
            raise ConfigError(f"federated training needs (inputs, targets) batches, got {len(t)} tensors")
        xs.append(t[0])
        ys.append(t[1])
    if not xs:
        raise ConfigError(f"task {task.name!r}: train_data yielded no batches")
    return torch.cat(xs), torch.cat(ys)


def _check(n: int, clients: int) -> None:
    if clients < 1:
        raise ConfigError(f"clients must be >= 1, got {clients}")
    if clients > n:
        raise ConfigError(f"{clients} clients but only {n} training samples; use at most {n} clients")
