"""The shared vocabulary of every layer: server state, client updates, stacked client rows.

Everything a round step needs from an earlier step is in ``RoundState`` / ``ClientUpdate``, so a
step can run in this process (local engine) or in another pod (KFP task) after a round trip
through ``mmfl.io.codec`` (safetensors + JSON). This module imports nothing else of mmfl.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RoundState:
    """Server state after ``round`` completed rounds (``round = 0``: initial model)."""

    round: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def model_weights(self) -> dict[str, torch.Tensor]:
        return {k[len("model/"):]: v for k, v in self.tensors.items() if k.startswith("model/")}

    def with_model(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of ``tensors`` whose model part is replaced by ``weights``."""
        out = {k: v for k, v in self.tensors.items() if not k.startswith("model/")}
        out.update({f"model/{k}": v.detach() for k, v in weights.items()})
        return out


@dataclass(frozen=True)
class RowSummary:
    """Screening statistics of one client's tensors against a reference (e.g. the global model).

    ``nonfinite``: the first tensor (in key order) holding NaN or inf, as (key, NaNs, infs), or
    None. ``sq_distance``: the squared L2 distance to the reference over the floating-point
    tensors the reference also holds (float64, may be inf).
    """

    nonfinite: tuple[str, int, int] | None
    sq_distance: float


class StackedRow(Mapping[str, torch.Tensor]):
    """The declared interface of a client's tensors kept as one row of a stack of many clients.

    An engine that trains clients together (``engine/vectorized``) can hand its rows to the
    server without copying each client to the host. Aggregation and screening see only this
    interface: they reduce the rows of one ``group`` together and ask a row for its summary.
    Reading an item gives a host tensor (a copy where the stack lives on an accelerator).
    """

    @property
    @abstractmethod
    def group(self) -> Hashable:
        """Rows with equal ``group`` belong to one stack and can be reduced together."""

    @abstractmethod
    def strip(self, prefix: str) -> StackedRow:
        """The row of the keys that start with ``prefix``, named without it."""

    @abstractmethod
    def shape_dtype(self, name: str) -> tuple[torch.Size, torch.dtype]:
        """Shape and dtype of one tensor, without reading it."""

    @abstractmethod
    def summary(self, reference: Mapping[str, torch.Tensor]) -> RowSummary:
        """``RowSummary`` of this row against ``reference`` (keyed like this row)."""

    @classmethod
    @abstractmethod
    def accumulate(cls, acc: dict[str, torch.Tensor], rows: Sequence[StackedRow], fractions: Sequence[float]) -> None:
        """``acc[key] += sum_j fractions[j] * rows[j][key]`` (float64, host) for rows of one group."""


def shape_dtype(tensors: Mapping[str, torch.Tensor], key: str) -> tuple[torch.Size, torch.dtype]:
    """Shape and dtype of ``tensors[key]``, without reading a stacked row."""
    if isinstance(tensors, StackedRow):
        return tensors.shape_dtype(key)
    return tensors[key].shape, tensors[key].dtype


@dataclass
class ClientUpdate:
    """What one client sends back after local training."""

    client_id: int
    num_samples: int
    tensors: Mapping[str, torch.Tensor]  # a dict, or a StackedRow of an engine that trains clients together
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def model_weights(self) -> Mapping[str, torch.Tensor]:
        if isinstance(self.tensors, StackedRow):  # stays where it is
            return self.tensors.strip("model/")
        return {k[len("model/"):]: v for k, v in self.tensors.items() if k.startswith("model/")}
