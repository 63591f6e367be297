"""`FederatedConfig`: one frozen, JSON-round-tripping config for a federated run."""
from __future__ import annotations

from condense.core.config import check_choice, check_float, check_int, config

SPLITS = ("iid", "dirichlet", "groups", "same")
LR_SCHEDULES = ("constant", "cosine")
ENGINES = ("inprocess", "flower")
CODEC_NAMES = ("none", "int8", "topk", "lowrank")


@config
class FederatedConfig:
    """How to train federated.

    Args:
        clients: simulated clients, all taking part in every round. rounds: communication rounds.
        local_steps: optimizer steps each client takes per round (condense's training engine, `fit`).
        batch_size, lr, optimizer, momentum: the clients' local training (the optimizer restarts each round).
        lr_schedule: constant | cosine: the clients' lr over rounds, cosine from lr down to 0.1 x lr at the last
            round (a run resumed with more rounds follows the new, longer schedule from there).
        split: iid | dirichlet (label skew, Dirichlet(alpha) class proportions per client) | groups (the task's
            own grouping, `task.extras["client_groups"]`: a group id per training sample, one group per client,
            e.g. one stdlib package per client) | same (every client holds all the data: for checks).
            alpha: > 0, smaller is more skewed.
        codec: none | int8 | topk | lowrank, applied to each client's update (local - global weights).
        per_row: int8 with a scale per row instead of per tensor. topk_fraction: share of entries top-k keeps.
        rank: rank of lowrank updates. error_feedback: carry what a lossy codec dropped into the next round.
        engine: inprocess (condense drives the rounds, Flower's messages and aggregation) | flower (Flower's
            simulation engine, `flwr.simulation.run_simulation`, on Ray).
        seed: initial weights, the split and the local batch order.

    Example:
        >>> FederatedConfig(clients=4, rounds=2, codec="topk").topk_fraction
        0.01
    """

    clients: int = 20
    rounds: int = 20
    local_steps: int = 10
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    split: str = "dirichlet"
    alpha: float = 0.5
    codec: str = "none"
    per_row: bool = False
    topk_fraction: float = 0.01
    rank: int = 4
    error_feedback: bool = True
    engine: str = "inprocess"
    seed: int = 0

    def __post_init__(self) -> None:  # the shared validators every config uses (finite, integral, in range)
        for name, example in (("clients", 20), ("rounds", 10), ("local_steps", 10), ("batch_size", 32),
                              ("rank", 4)):
            check_int(self, name, lo=1, example=example)
        check_int(self, "seed", lo=0, hi=2**32 - 1, example=0)
        check_float(self, "lr", lo=0, lo_open=True, example=0.05)
        check_float(self, "momentum", lo=0, hi=1, hi_open=True, example=0.9)
        check_float(self, "alpha", lo=0, lo_open=True, example=0.5)  # smaller: more label skew
        check_float(self, "topk_fraction", lo=0, hi=1, lo_open=True, example=0.01)
        from condense.train.optim import OPTIMIZERS  # the clients train with condense's engine

        for name, choices in (("lr_schedule", LR_SCHEDULES), ("split", SPLITS), ("engine", ENGINES),
                              ("codec", CODEC_NAMES), ("optimizer", sorted(OPTIMIZERS))):
            check_choice(self, name, choices)
