"""The same workload on Flower's simulation engine (Ray backend), timed per round.

Each virtual client rebuilds its shard from (seed, client id) and trains with the project's own
per-client loop (``Method.client_update``), so the difference to the in-process loop is what
Flower's simulation adds (actors, message passing, NumPy parameter conversion) and the gain of
the vectorized engine is measured against a real FL framework on the same machine.
"""

from __future__ import annotations

import logging
import os
import time
from functools import lru_cache

import numpy as np
import torch

from bench.workloads import WORKLOADS, Workload, WorkloadMethod, initial_state, make_config, make_shard
from mmfl.state import RoundState
from mmfl.methods.base import Context

ROUND_TIMES: list[tuple[float, float]] = []
ROUND_CPU: list[float] = []  # CPU seconds: every client's fit (in its actor) + the driver process


@lru_cache(maxsize=2)
def _setup(name: str):
    torch.set_num_threads(1)  # one core per Ray actor: the actors run side by side
    w = WORKLOADS[name]
    state = initial_state(w)
    return w, WorkloadMethod(w), make_config(w), list(state.model_weights()), state.meta


def _client_fn_for(name: str):
    from flwr.client import NumPyClient

    class BenchClient(NumPyClient):
        def __init__(self, cid: int):
            self.cid = cid

        def fit(self, parameters, config):
            w, method, cfg, keys, meta = _setup(name)
            shard = make_shard(w, self.cid)
            cpu0 = time.process_time()
            state = RoundState(0, {f"model/{k}": torch.from_numpy(np.asarray(v)) for k, v in zip(keys, parameters)}, meta)
            ctx = Context(cfg, w.spec, int(config.get("round", 1)), self.cid)
            update = method.client_update(state, shard, ctx)
            out = [update.tensors[f"model/{k}"].numpy() for k in keys]
            return out, update.num_samples, {**update.metrics, "cpu_s": time.process_time() - cpu0}

    def client_fn(context):
        return BenchClient(int(context.node_config["partition-id"])).to_client()

    return client_fn


def run_flower(w: Workload, rounds: int, threads: int = 2) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per round of FedAvg over all ``w.clients`` clients, ``threads`` single-core actors.

    CPU seconds count each client's ``fit`` in its actor and the driver process (server, strategy,
    simulation engine); Ray's own daemons are not included, so it is a lower bound.
    """
    from flwr.client import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    state = initial_state(w)
    init = ndarrays_to_parameters([v.numpy() for v in state.model_weights().values()])
    ROUND_TIMES.clear()
    ROUND_CPU.clear()

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            self._t0, self._cpu0 = time.perf_counter(), time.process_time()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"Flower round {server_round}: {len(failures)} clients failed: {failures[0]!r}")
            out = super().aggregate_fit(server_round, results, failures)
            ROUND_TIMES.append((self._t0, time.perf_counter()))
            clients_cpu = sum(float(fit.metrics.get("cpu_s", 0.0)) for _, fit in results)
            ROUND_CPU.append(clients_cpu + time.process_time() - self._cpu0)
            return out

    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=w.clients, min_available_clients=w.clients,
        initial_parameters=init, on_fit_config_fn=lambda r: {"round": r},
    )
    server = ServerApp(server_fn=lambda context: ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds)))
    client = ClientApp(client_fn=_client_fn_for(w.name))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server, client_app=client, num_supernodes=w.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": threads, "include_dashboard": False}},
    )
    if len(ROUND_TIMES) != rounds:
        raise RuntimeError(f"Flower simulation finished {len(ROUND_TIMES)} of {rounds} rounds")
    return [b - a for a, b in ROUND_TIMES], list(ROUND_CPU)
