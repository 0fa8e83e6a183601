"""Byte format of states, updates and tensors: safetensors + JSON, with a sha256 tying the halves.

Never pickle: tensors are safetensors, everything else JSON. A torn or mixed pair (the JSON half of
one write with the tensors of another) is refused by its digest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mmfl.errors import ArtifactError
from mmfl.state import ClientUpdate, RoundState


def tensors_to_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> bytes:
    """safetensors bytes; tensors are copied so views and shared storage serialise safely."""
    return st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=meta)


def tensors_from_bytes(data: bytes, what: str = "tensors") -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # safetensors raises several internal error types, a Rust panic included
        raise ArtifactError(f"{what}: not a valid safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from None


def json_to_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False).encode()


def json_from_bytes(data: bytes, what: str = "metadata") -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{what}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ArtifactError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ArtifactError(f"{what}: not usable JSON ({str(exc).split(':')[0][:120]})") from None
    except (AttributeError, TypeError):
        raise ArtifactError(f"{what}: expected bytes, got {type(data).__name__}") from None


def _json_int(doc: dict[str, Any], key: str, what: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(f"{what}: {key!r} must be an integer, got {value!r:.60}")
    return value


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_digest(doc: dict[str, Any], tensor_bytes: bytes, what: str) -> None:
    """The JSON half names the exact tensor file it belongs to: a torn or mixed pair is refused."""
    expected = doc.get("sha256")
    if expected is not None and expected != _digest(tensor_bytes):
        raise ArtifactError(f"{what}: tensors do not match their metadata (sha256 differs): partial, mixed or damaged write")


def state_to_bytes(state: RoundState) -> tuple[bytes, bytes]:
    tensors = tensors_to_bytes(state.tensors)
    return tensors, json_to_bytes({"round": state.round, "meta": state.meta, "sha256": _digest(tensors)})


def state_from_bytes(tensor_bytes: bytes, json_bytes: bytes, what: str = "state") -> RoundState:
    doc = json_from_bytes(json_bytes, what)
    if (not isinstance(doc, dict) or isinstance(doc.get("round"), bool) or not isinstance(doc.get("round"), int)
            or doc["round"] < 0 or not isinstance(doc.get("meta"), dict)):
        raise ArtifactError(f"{what}: metadata must be an object with integer 'round' >= 0 and object 'meta'")
    _check_digest(doc, tensor_bytes, what)
    return RoundState(doc["round"], tensors_from_bytes(tensor_bytes, what), doc["meta"])


def update_to_bytes(update: ClientUpdate) -> tuple[bytes, bytes]:
    doc = {
        "client_id": update.client_id,
        "num_samples": update.num_samples,
        "metrics": update.metrics,
        "meta": update.meta,
    }
    tensors = tensors_to_bytes(update.tensors)
    return tensors, json_to_bytes({**doc, "sha256": _digest(tensors)})


def update_from_bytes(tensor_bytes: bytes, json_bytes: bytes, what: str = "update") -> ClientUpdate:
    doc = json_from_bytes(json_bytes, what)
    if not isinstance(doc, dict):
        raise ArtifactError(f"{what}: update metadata must be a JSON object, got {type(doc).__name__}")
    metrics, meta = doc.get("metrics", {}), doc.get("meta", {})
    if not isinstance(metrics, dict) or not isinstance(meta, dict):
        raise ArtifactError(f"{what}: 'metrics' and 'meta' must be JSON objects")
    try:
        metrics = {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError, OverflowError) as exc:
        raise ArtifactError(f"{what}: metrics must be numbers ({exc})") from None
    _check_digest(doc, tensor_bytes, what)
    return ClientUpdate(
        client_id=_json_int(doc, "client_id", what),
        num_samples=_json_int(doc, "num_samples", what),
        tensors=tensors_from_bytes(tensor_bytes, what),
        metrics=metrics,
        meta=meta,
    )
