"""The in-memory form of a multimodal dataset: one tensor per modality, labels and a presence mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

ModalityKind = Literal["vector", "image", "series", "tokens"]  # tokens: int64 token ids, pad = 0


@dataclass(frozen=True)
class ModalitySpec:
    """Name, per-sample shape and kind of one modality; the kind picks the encoder."""

    name: str
    shape: tuple[int, ...]
    kind: ModalityKind = "vector"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind}

    @staticmethod
    def from_json(d: dict) -> "ModalitySpec":
        return ModalitySpec(name=str(d["name"]), shape=tuple(int(x) for x in d["shape"]), kind=d["kind"])


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data: modalities in order, the number of classes and,
    where the dataset names them, the class names in label order (for class-name prompts)."""

    modalities: tuple[ModalitySpec, ...]
    num_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def to_json(self) -> dict:
        out = {"modalities": [m.to_json() for m in self.modalities], "num_classes": self.num_classes}
        if self.class_names:
            out["class_names"] = list(self.class_names)
        return out

    @staticmethod
    def from_json(d: dict) -> "DataSpec":
        return DataSpec(tuple(ModalitySpec.from_json(m) for m in d["modalities"]), int(d["num_classes"]),
                        tuple(str(c) for c in d.get("class_names", ())))


@dataclass
class MultimodalDataset:
    """Samples with several modalities; ``present[i, j]`` says whether sample i has modality j.

    Missing modalities keep their slot in ``inputs`` (filled with zeros) so that tensors stay
    rectangular; what a model does with a missing slot is decided by ``present``, never by the
    zeros alone.
    """

    spec: DataSpec
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    present: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0])
        if self.present is None:
            self.present = torch.ones(n, len(self.spec.modalities), dtype=torch.bool)
        for m in self.spec.modalities:
            x = self.inputs[m.name]
            if x.shape[0] != n or tuple(x.shape[1:]) != m.shape:
                raise ValueError(f"modality {m.name!r}: tensor shape {tuple(x.shape)} does not match ({n}, *{m.shape})")
        if tuple(self.present.shape) != (n, len(self.spec.modalities)):
            raise ValueError(f"present mask shape {tuple(self.present.shape)} != ({n}, {len(self.spec.modalities)})")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        return self.spec.names

    def subset(self, index: torch.Tensor) -> "MultimodalDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return MultimodalDataset(
            self.spec, {k: v[index] for k, v in self.inputs.items()}, self.labels[index], self.present[index]
        )

    def with_present(self, present: torch.Tensor) -> "MultimodalDataset":
        """Same samples, new presence mask; inputs of absent modalities are zeroed (nothing leaks)."""
        present = present.to(torch.bool)
        inputs = {}
        for j, name in enumerate(self.names):
            x = self.inputs[name]
            keep = present[:, j].reshape(-1, *([1] * (x.dim() - 1)))
            inputs[name] = torch.where(keep, x, torch.zeros((), dtype=x.dtype))
        return MultimodalDataset(self.spec, inputs, self.labels, present)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensor dict for safetensors."""
        out = {f"x/{k}": v.contiguous() for k, v in self.inputs.items()}
        out["labels"] = self.labels.contiguous()
        out["present"] = self.present.to(torch.uint8).contiguous()
        return out

    @staticmethod
    def from_tensors(spec: DataSpec, tensors: dict[str, torch.Tensor]) -> "MultimodalDataset":
        inputs = {m.name: tensors[f"x/{m.name}"] for m in spec.modalities}
        return MultimodalDataset(spec, inputs, tensors["labels"].long(), tensors["present"].bool())


@dataclass
class RawData:
    specs: list[ModalitySpec]
    arrays: dict[str, np.ndarray]
    labels: np.ndarray  # int64 in [0, num_classes)
    num_classes: int
    class_names: list[str] | None = None  # in label order, where the dataset has names
