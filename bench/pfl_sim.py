"""The same workload on pfl-research's simulation (``pfl`` 0.6.0, PyTorch backend), timed per round.

pfl runs in the bench-only environment ``.venv-bench`` (``bench/requirements.txt``; ``make bench``
creates it): its dependencies pin versions that differ from the project's lock (``attrs``), so
it is not installed into the main environment. Each sampled user's dataset is rebuilt from
(seed, client id) by ``make_shard``, the model is ``WorkloadNet`` with the same initial weights,
local training is pfl's own loop (1 epoch, batch 32, ``torch.optim.SGD`` lr 0.05 momentum 0.9)
and the server is pfl's ``FederatedAveraging`` with central SGD at learning rate 1 (the mean of
the clients' weights; every W client holds 128 samples, so weighting by user equals weighting by
samples).
"""

from __future__ import annotations

import functools
import time

import torch
from torch.nn import functional as F

from bench.workloads import Workload, WorkloadNet, class_means, initial_state, make_shard


class PflWorkloadNet(WorkloadNet):
    """``WorkloadNet`` with the ``loss`` and ``metrics`` methods pfl's PyTorch model calls."""

    def _split(self, args):
        *xs, present, labels = args
        return dict(zip(self.names, xs)), present, labels

    def loss(self, *args, eval: bool = False):  # noqa: A002 (pfl's keyword)
        inputs, present, labels = self._split(args)
        return F.cross_entropy(self(inputs, present), labels)

    def metrics(self, *args, eval: bool = False):  # noqa: A002
        from pfl.metrics import Weighted

        inputs, present, labels = self._split(args)
        with torch.no_grad():
            loss = F.cross_entropy(self(inputs, present), labels, reduction="sum")
        return {"loss": Weighted(float(loss), len(labels))}


def run_pfl(w: Workload, rounds: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per round of FedAvg over all ``w.clients`` clients with pfl's simulated backend."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    means = class_means(w)

    def make_dataset(user_id: int) -> Dataset:
        shard = make_shard(w, user_id, means)
        raw = [shard.inputs[n] for n in shard.names] + [shard.present, shard.labels]
        return Dataset(raw_data=raw, user_id=user_id)

    users = list(range(w.clients))
    data = FederatedDataset(make_dataset, get_user_sampler("minimize_reuse", users))
    net = PflWorkloadNet(w.spec, w.hidden)
    net.load_state_dict({k.removeprefix("model/"): v for k, v in initial_state(w).tensors.items()
                         if k.startswith("model/")})
    model = PyTorchModel(net, functools.partial(torch.optim.SGD, momentum=w.momentum),
                         torch.optim.SGD(net.parameters(), lr=1.0))
    marks: list[tuple[float, float]] = []

    class Clock(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            marks.append((time.perf_counter(), time.process_time()))
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            marks.append((time.perf_counter(), time.process_time()))
            return False, Metrics()

    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=10**9,
                                           train_cohort_size=w.clients, val_cohort_size=0),
        backend=SimulatedBackend(training_data=data, val_data=None),
        model=model,
        model_train_params=NNTrainHyperParams(local_num_epochs=1, local_learning_rate=w.lr,
                                              local_batch_size=w.batch_size),
        callbacks=[Clock()],
        send_metrics_to_platform=False,
    )
    if len(marks) != rounds + 1:
        raise RuntimeError(f"pfl simulation finished {len(marks) - 1} of {rounds} rounds")
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return wall, cpu
