"""engine="flower": the federation as a Flower ClientApp and ServerApp, run by `flwr.simulation.run_simulation`.

The ServerApp runs Flower's FedAvg strategy (sampling, message passing, the round loop); the subclass only decodes
the compressed updates before averaging (`Federation.aggregate`) and measures each reply's serialized bytes. The
server evaluates the global model on the task's test split each round (`evaluate_fn`) and writes the round's row and
state. Error-feedback residuals live in each client's `Context.state`; a resumed run starts them at zero.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from condense.federated import messages
from condense.federated.rounds import Federation, RoundBook


def run_flower(fed: Federation, book: RoundBook, start: int, flat: torch.Tensor,
               residuals: dict[int, torch.Tensor]) -> torch.Tensor:
    """Rounds start+1..cfg.rounds in Flower's simulation engine (Ray, one CPU per client actor)."""
    import time

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    cfg = fed.cfg
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        c = int(context.node_config["partition-id"])
        rnd = start + int(msg.content["config"]["server-round"])
        g = torch.from_numpy(msg.content["arrays"]["global"].numpy().copy())
        held = context.state.array_records.get("residual")
        res = torch.from_numpy(held["r"].numpy().copy()) if held is not None else residuals.get(c)
        content, res = fed.client_update(c, rnd, g, res)
        if res is not None:
            context.state["residual"] = ArrayRecord({"r": Array(res.numpy())})
        return Message(content=content, reply_to=msg)

    seen: dict[str, Any] = {"flat": flat, "sizes": {}, "losses": {}, "t": time.perf_counter()}

    class CompressedFedAvg(FedAvg):
        """FedAvg whose clients send encoded updates (local - global) instead of weights."""

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Any:
            seen["global"] = torch.from_numpy(arrays["global"].numpy().copy())
            seen["t"] = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any) -> tuple[Any, Any]:
            valid, _ = self._check_and_log_replies(list(replies), is_train=True)
            if not valid:
                return None, None
            contents = [m.content for m in valid]
            seen["sizes"][server_round] = [messages.message_bytes(c) for c in contents]
            seen["losses"][server_round] = [float(c["metrics"]["train-loss"]) for c in contents]
            new = fed.aggregate(seen["global"], contents)
            return ArrayRecord({"global": Array(new.numpy())}), MetricRecord({})

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        rnd = start + server_round
        g = torch.from_numpy(arrays["global"].numpy().copy())
        metrics = fed.evaluate(g)
        book.record(rnd, metrics, seen["sizes"].get(server_round, []), seen["losses"].get(server_round, []),
                    time.perf_counter() - seen["t"])
        book.save_state(rnd, g, {})
        seen["flat"] = g
        return MetricRecord(metrics)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = CompressedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg.clients,
                                    min_available_nodes=cfg.clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord({"global": Array(np.asarray(flat.numpy()))}),
                       num_rounds=cfg.rounds - start, evaluate_fn=evaluate)

    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return seen["flat"]
