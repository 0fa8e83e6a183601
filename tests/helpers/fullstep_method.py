"""A method that uses every round step, for pipeline tests: clients upload class counts as
"prototypes", the server sums them in aggregation and turns them into a schedule."""

import torch

from mmfl.state import RoundState
from mmfl.methods.fedavg import FedAvg


class FullSteps(FedAvg):
    uses_prototypes = True
    uses_schedule = True

    def client_prototypes(self, state, update, shard, ctx):
        return {"proto/class_counts": torch.bincount(shard.labels, minlength=ctx.spec.num_classes).float()}

    def aggregate(self, state, updates, ctx):
        new = super().aggregate(state, updates, ctx)
        counts = torch.stack([u.tensors["proto/class_counts"] for u in updates]).sum(0)
        return RoundState(new.round, {**new.tensors, "server/class_counts": counts}, new.meta)

    def schedule(self, state, ctx, eval_metrics=None):
        counts = state.tensors["server/class_counts"]
        meta = {**state.meta, "schedule": {"round": state.round, "class_weights": (counts / counts.sum()).tolist()}}
        return RoundState(state.round, state.tensors, meta)

