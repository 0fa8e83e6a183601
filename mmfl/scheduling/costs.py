"""Per-encoder training cost, measured in FLOPs, and the encoder FLOPs a local step spends.

FlexMod allocates training "based on importance and training complexity"; here the complexity of
modality m's encoder is measured, not assumed: ``torch.utils.flop_counter.FlopCounterMode``
counts the forward FLOPs of one sample through the encoder and the backward FLOPs of training it
(the gradients of its parameters). In a FlexMod step every encoder runs forward (the fusion needs
all embeddings) and only the encoders of the step's combination run backward, so

    encoder FLOPs of a step on B samples = B * (sum_m forward_m + sum_{m in S} backward_m)

and the cost that the schedule controls, an encoder's *training* cost, is its backward FLOPs.
An Entire Update step (FedAvg) spends ``B * sum_m (forward_m + backward_m)``.
FLOPs of matrix products and convolutions are counted (what FlopCounterMode covers); element-wise
operations are not, which is negligible for these encoders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmfl.data.dataset import ModalitySpec


@dataclass(frozen=True)
class EncoderCost:
    """FLOPs per sample of one encoder: forward pass and backward pass (parameter gradients)."""

    forward: float
    backward: float

    @property
    def train(self) -> float:
        return self.forward + self.backward

    def to_json(self) -> dict:
        return {"forward": self.forward, "backward": self.backward}

    @staticmethod
    def from_json(d: dict) -> "EncoderCost":
        return EncoderCost(float(d["forward"]), float(d["backward"]))


def example_input(spec: ModalitySpec, batch: int) -> torch.Tensor:
    """A batch of zeros of the modality's shape (FLOPs of dense layers do not depend on values)."""
    dtype = torch.long if spec.kind == "tokens" else torch.float32
    return torch.zeros(batch, *spec.shape, dtype=dtype)


def measure_encoder(encoder: nn.Module, spec: ModalitySpec, batch: int = 8) -> EncoderCost:
    """Forward and backward FLOPs per sample of ``encoder`` on a batch of ``batch`` inputs."""
    x = example_input(spec, batch)
    was_training = encoder.training
    encoder.train()
    with FlopCounterMode(display=False) as fwd:
        out = encoder(x)
    with FlopCounterMode(display=False) as bwd:
        out.float().sum().backward()
    encoder.zero_grad(set_to_none=True)
    encoder.train(was_training)
    return EncoderCost(fwd.get_total_flops() / batch, bwd.get_total_flops() / batch)


def measure_encoders(encoders: nn.ModuleDict, modalities: Iterable[ModalitySpec], batch: int = 8) -> dict[str, EncoderCost]:
    return {m.name: measure_encoder(encoders[m.name], m, batch) for m in modalities}


def step_encoder_flops(costs: list[EncoderCost], trained: Iterable[int], batch: int) -> float:
    """Encoder FLOPs of one step on ``batch`` samples: every encoder forward, the ``trained`` ones backward."""
    trained = set(trained)
    return batch * sum(c.forward + (c.backward if j in trained else 0.0) for j, c in enumerate(costs))


__all__ = ["EncoderCost", "example_input", "measure_encoder", "measure_encoders", "step_encoder_flops"]
