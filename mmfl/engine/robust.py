"""Fault tolerance of a round: failed clients, timeouts, update screening and the quorum.

A client that raises or runs past ``reliability.client_timeout_s`` does not sink the round: it is
turned into a *failed update* (no tensors, ``meta.status = "failed"`` plus the reason), which
travels through the same channel as a real update (a list in the local engine, an artifact
between Kubeflow tasks). Before aggregation every update is screened: non-finite tensors,
parameters that do not match the global model and absurd distances from the global model are
rejected with a reason. The round aggregates the accepted updates if enough of the sampled
clients are left (``quorum``, ``min_clients``), and otherwise fails with one clear error.

Timeouts: each client runs in a worker thread and the round waits for it up to the deadline.
A thread cannot be killed, so on expiry the round (1) raises ``ClientTimeout`` inside the worker
at its next Python instruction, which stops local training between two batches, (2) waits a short
grace period for it to unwind (torch's RNG state is restored on the way out, so later clients stay
reproducible) and (3) records the client as failed either way. This works on CPU and GPU without a
process per client (which would re-import torch and copy the model for every client); a client
stuck inside one long native call is abandoned as a daemon thread. A process that dies outright is
handled one level up: by resume from the last checkpoint (local engine) or by task retries (KFP).
"""

from __future__ import annotations

import ctypes
import logging
import math
import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from mmfl.aggregation.robust_mean import delta_stats
from mmfl.config import ExperimentConfig
from mmfl.engine import faults
from mmfl.state import ClientUpdate, RoundState, StackedRow, shape_dtype
from mmfl.errors import MmflError

log = logging.getLogger(__name__)

T = TypeVar("T")
STOP_GRACE_S = 5.0


class ClientTimeout(RuntimeError):
    """A client did not finish within ``reliability.client_timeout_s``."""


class RoundFailedError(MmflError, ValueError):
    """Too few clients of a round produced an acceptable update to aggregate."""

    def __init__(self, message: str, round_index: int, summary: dict[str, Any]):
        super().__init__(message)
        self.round = round_index
        self.summary = summary


# ---- failed updates --------------------------------------------------------------------------
def failed_update(client_id: int, reason: str) -> ClientUpdate:
    """A placeholder update saying that ``client_id`` failed, and why."""
    return ClientUpdate(int(client_id), 0, {}, {}, {"status": "failed", "error": reason})


def is_failed(update: ClientUpdate) -> bool:
    return update.meta.get("status") == "failed"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


# ---- running clients with a deadline ------------------------------------------------------------
def _interrupt(thread: threading.Thread) -> None:
    """Raise ClientTimeout inside ``thread`` at its next Python instruction (best effort)."""
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(ClientTimeout))


def call_with_deadline(fn: Callable[[], T], timeout_s: float | None, what: str) -> T:
    """``fn()``, or ClientTimeout if it has not returned after ``timeout_s`` seconds (None: no limit)."""
    if timeout_s is None:
        return fn()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the waiting thread, which decides what to do
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"mmfl-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        _interrupt(worker)
        worker.join(STOP_GRACE_S)
        if worker.is_alive():
            log.warning("%s: still running %.0fs after its timeout; abandoned", what, STOP_GRACE_S)
        raise ClientTimeout(f"no result within client_timeout_s = {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def guarded(cfg: ExperimentConfig, round_index: int, client_id: int, work: Callable[[], ClientUpdate],
            stage: str = "client_train", reference: Mapping[str, torch.Tensor] | None = None,
            pre_faults: bool = True) -> ClientUpdate:
    """Run one client's ``work`` under the timeout; an exception or timeout becomes a failed update.

    Injected faults (``reliability.fault_injection``) strike in the ``client_train`` stage only;
    ``reference`` is the global model the poisoning modes ``boost`` and ``noise`` start from;
    ``pre_faults`` False when the pre-training faults already struck (a batch retried one by one).
    """
    def attempt() -> ClientUpdate:
        if stage != "client_train":
            return work()
        if pre_faults:
            faults.before_training(cfg, round_index, client_id)
        return faults.after_training(cfg, round_index, work(), reference)

    try:
        return call_with_deadline(attempt, cfg.reliability.client_timeout_s, f"round{round_index}-client{client_id}")
    except Exception as exc:
        reason = f"{stage}: {_describe(exc)}"
        log.warning("round %d client %d failed: %s", round_index, client_id, reason)
        log.info("round %d client %d: traceback of the failure", round_index, client_id, exc_info=exc)
        return failed_update(client_id, reason)


def train_clients(cfg: ExperimentConfig, round_index: int, client_ids: Sequence[int],
                  train_one: Callable[[int], ClientUpdate],
                  reference: Mapping[str, torch.Tensor] | None = None) -> list[ClientUpdate]:
    """One guarded call of ``train_one(client)`` per client, in order."""
    return [guarded(cfg, round_index, cid, lambda cid=cid: train_one(cid), reference=reference) for cid in client_ids]


def train_batch(cfg: ExperimentConfig, round_index: int, client_ids: Sequence[int],
                train_many: Callable[[list[int]], list[ClientUpdate]],
                reference: Mapping[str, torch.Tensor] | None = None,
                train_one: Callable[[int], ClientUpdate] | None = None) -> list[ClientUpdate]:
    """Clients trained together (vectorised engine): one deadline for the batch, failures per client.

    The batch may take ``client_timeout_s`` times its number of clients, the time the loop engine
    would give them one after another, so a batch of healthy clients is not cut short just for
    training several at once. Pre-training faults strike each client under its own deadline. If
    the batch fails or runs out of time and ``train_one`` is given, its clients are trained again
    one by one, each in its own guard, so one failing or hanging client fails alone (as with the
    loop engine).
    """
    failed: dict[int, ClientUpdate] = {}
    timeout = cfg.reliability.client_timeout_s
    for cid in client_ids:
        try:
            call_with_deadline(lambda cid=cid: faults.before_training(cfg, round_index, cid), timeout,
                               f"round{round_index}-client{cid}")
        except Exception as exc:
            failed[cid] = failed_update(cid, f"client_train: {_describe(exc)}")
    ids = [c for c in client_ids if c not in failed]
    trained: dict[int, ClientUpdate] = {}
    if ids:
        try:
            updates = call_with_deadline(lambda: train_many(ids), None if timeout is None else timeout * len(ids),
                                         f"round{round_index}-batch")
            trained = {u.client_id: faults.after_training(cfg, round_index, u, reference) for u in updates}
        except Exception as exc:
            reason = f"client_train (batch of {len(ids)}): {_describe(exc)}"
            if train_one is not None:
                log.warning("round %d: batch training failed (%s); training its clients one by one", round_index, reason)
                trained = {u.client_id: u for u in
                           [guarded(cfg, round_index, cid, lambda cid=cid: train_one(cid), reference=reference,
                                    pre_faults=False) for cid in ids]}
            else:
                log.warning("round %d: batch training failed: %s", round_index, reason)
                trained = {cid: failed_update(cid, reason) for cid in ids}
    out = []
    for cid in client_ids:
        out.append(failed.get(cid) or trained.get(cid) or failed_update(cid, "client_train: no update returned"))
    return out


# ---- screening updates ------------------------------------------------------------------------
def update_distance(update: ClientUpdate, global_weights: dict[str, torch.Tensor]) -> float:
    """L2 norm of (update - global model) over the floating-point parameters both share."""
    weights = update.model_weights()
    if isinstance(weights, StackedRow):  # computed for the whole stack at once, where it lives
        total = weights.summary(global_weights).sq_distance
        return math.sqrt(total) if math.isfinite(total) else math.inf
    total = 0.0
    for name, value in weights.items():
        ref = global_weights.get(name)
        if ref is None or not value.is_floating_point():
            continue
        total += float(torch.sum((value.to(torch.float64) - ref.to(torch.float64)) ** 2))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def _nonfinite(update: ClientUpdate, global_weights: dict[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """The first tensor of the update holding NaN or inf, as (key, NaNs, infs), or None."""
    if isinstance(update.tensors, StackedRow):
        return update.model_weights().summary(global_weights).nonfinite
    for key, value in update.tensors.items():
        if value.is_floating_point() or value.is_complex():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                nans = int(torch.isnan(value).sum())
                return key, nans, int(bad.sum()) - nans
    return None


def _static_problem(update: ClientUpdate, global_weights: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with one update on its own, or None."""
    if not isinstance(update.num_samples, int) or update.num_samples <= 0:
        return f"num_samples = {update.num_samples!r} (must be a positive integer)"
    bad = _nonfinite(update, global_weights)
    if bad is not None:
        return f"non-finite values in {bad[0]} ({bad[1]} NaN, {bad[2]} inf)"
    weights = update.model_weights()
    for name in weights:
        ref = global_weights.get(name)
        if ref is None:
            return f"parameter model/{name} is not in the global model"
        shape = tuple(shape_dtype(weights, name)[0])
        if tuple(ref.shape) != shape:
            return f"parameter model/{name} has shape {shape}, global model {tuple(ref.shape)}"
    return None


def validate_updates(
    updates: Sequence[ClientUpdate], state: RoundState, cfg: ExperimentConfig
) -> tuple[list[ClientUpdate], list[dict[str, Any]]]:
    """Split non-failed updates into (accepted, rejected [{client, reason}]); nothing rejected is averaged.

    Each update is first checked on its own (finite, matching shapes, positive ``num_samples``,
    distance to the global model below ``max_update_norm``), then against the round's other
    updates: its distance must stay within ``max_norm_ratio`` times the median distance of the
    others, and its delta's cosine with the coordinate-wise median delta at or above ``min_cosine``.
    """
    rel = cfg.reliability
    global_weights = state.model_weights()
    rejected: list[dict[str, Any]] = []
    candidates: list[tuple[ClientUpdate, float]] = []
    seen: set[int] = set()
    for u in updates:
        if is_failed(u):
            continue
        problem = f"duplicate update from client {u.client_id}" if u.client_id in seen else None
        problem = problem or _static_problem(u, global_weights)
        distance = update_distance(u, global_weights) if problem is None else math.nan
        if problem is None and not math.isfinite(distance):
            problem = "update norm overflows"
        if problem is None and rel.max_update_norm is not None and distance > rel.max_update_norm:
            problem = f"update norm {distance:.4g} exceeds reliability.max_update_norm = {rel.max_update_norm:g}"
        seen.add(u.client_id)
        if problem is None:
            candidates.append((u, distance))
        else:
            rejected.append({"client": u.client_id, "reason": problem})
    accepted = []
    compare = len(candidates) >= rel.norm_ratio_min_updates
    cos = None
    if compare and rel.min_cosine is not None:
        cos = delta_stats([u.model_weights() for u, _ in candidates], global_weights).centre_cosines.tolist()
    for i, (u, distance) in enumerate(candidates):
        if compare and rel.max_norm_ratio is not None:
            reference = statistics.median(d for j, (_, d) in enumerate(candidates) if j != i)
            if reference > 0 and distance > rel.max_norm_ratio * reference:
                rejected.append({"client": u.client_id, "reason": (
                    f"update norm {distance:.4g} is {distance / reference:.3g}x the median of the other clients "
                    f"({reference:.4g}); limit reliability.max_norm_ratio = {rel.max_norm_ratio:g}")})
                continue
        if cos is not None and cos[i] < rel.min_cosine:
            rejected.append({"client": u.client_id, "reason": (
                f"update direction has cosine {cos[i]:.3f} with the median update of the round; "
                f"limit reliability.min_cosine = {rel.min_cosine:g}")})
            continue
        accepted.append(u)
    for item in rejected:
        log.warning("round %d: rejected update of client %d: %s", state.round + 1, item["client"], item["reason"])
    return accepted, rejected


def cap_samples(updates: Sequence[ClientUpdate], shard_sizes: Mapping[int, int] | None,
                round_index: int) -> tuple[list[ClientUpdate], list[dict[str, Any]]]:
    """Updates whose claimed ``num_samples`` exceeds the server's record of the client's shard, capped to it.

    The sample count is an aggregation weight, so a client that claims 10^9 samples would
    otherwise dictate the average. Returns the updates and ``[{client, claimed, known}]``.
    """
    if shard_sizes is None:
        return list(updates), []
    out, capped = [], []
    for u in updates:
        known = shard_sizes.get(u.client_id)
        if known is not None and u.num_samples > known:
            capped.append({"client": u.client_id, "claimed": u.num_samples, "known": int(known)})
            log.warning("round %d: client %d claims %d samples, its shard holds %d; weighted as %d",
                        round_index, u.client_id, u.num_samples, known, known)
            u = ClientUpdate(u.client_id, int(known), u.tensors, u.metrics, {**u.meta, "claimed_samples": u.num_samples})
        out.append(u)
    return out, capped


# ---- the quorum ---------------------------------------------------------------------------------
def required_updates(cfg: ExperimentConfig, sampled: int) -> int:
    """Accepted updates a round needs: ceil(quorum * sampled), and at least min_clients."""
    rel = cfg.reliability
    return max(rel.min_clients, math.ceil(rel.quorum * sampled - 1e-9))


def screen_round(
    cfg: ExperimentConfig, state: RoundState, updates: Sequence[ClientUpdate],
    expected_clients: Sequence[int] | None = None, shard_sizes: Mapping[int, int] | None = None,
) -> tuple[list[ClientUpdate], dict[str, Any]]:
    """Accepted updates and the round's client summary; RoundFailedError if the quorum is not met.

    ``expected_clients`` (the sampled clients) lets a caller that collects updates from separate
    tasks count a client whose update never arrived as failed. ``shard_sizes`` (client -> samples
    the server gave it) caps each accepted update's claimed ``num_samples``.
    """
    round_index = state.round + 1
    failed = [{"client": u.client_id, "reason": str(u.meta.get("error", "failed"))} for u in updates if is_failed(u)]
    sampled = list(dict.fromkeys(int(c) for c in expected_clients)) if expected_clients is not None else list(
        dict.fromkeys(u.client_id for u in updates))
    strangers: list[ClientUpdate] = []
    if expected_clients is not None:
        arrived = {u.client_id for u in updates}
        failed += [{"client": c, "reason": "no update received"} for c in sampled if c not in arrived]
        strangers = [u for u in updates if u.client_id not in set(sampled)]
    known = [u for u in updates if all(u is not s for s in strangers)]
    accepted, rejected = validate_updates(known, state, cfg)
    accepted, capped = cap_samples(accepted, shard_sizes, round_index)
    rejected += [{"client": u.client_id, "reason": "client was not sampled in this round"} for u in strangers]
    needed = required_updates(cfg, len(sampled))
    summary = {
        "sampled": sampled,
        "aggregated": [u.client_id for u in accepted],
        "failed": failed,
        "rejected": rejected,
        "needed": needed,
    }
    if capped:
        summary["capped"] = capped
    if not updates and expected_clients is None:
        raise RoundFailedError(f"round {round_index}: no client updates to aggregate", round_index, summary)
    if len(accepted) < needed:
        problems = [f"client {f['client']} failed ({f['reason']})" for f in failed]
        problems += [f"client {r['client']} rejected ({r['reason']})" for r in rejected]
        raise RoundFailedError(
            f"round {round_index}: only {len(accepted)} of {len(sampled)} sampled clients gave an acceptable "
            f"update, {needed} needed (reliability.quorum = {cfg.reliability.quorum:g}, "
            f"reliability.min_clients = {cfg.reliability.min_clients}); " + ("; ".join(problems) or "no updates"),
            round_index, summary,
        )
    return accepted, summary


def clients_summary(state: RoundState) -> dict[str, Any]:
    """{sampled, aggregated, failed, rejected} of the round that produced ``state`` (for metrics.json)."""
    entry = state.meta["history"][-1]
    out = {"sampled": entry.get("sampled", entry["clients"]), "aggregated": entry["clients"],
           "failed": entry.get("failed", []), "rejected": entry.get("rejected", [])}
    if entry.get("capped"):
        out["capped"] = entry["capped"]
    return out


def round_client_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Counts for the tracker, logged with step = round."""
    return {
        "clients/sampled": float(len(summary["sampled"])),
        "clients/aggregated": float(len(summary["aggregated"])),
        "clients/failed": float(len(summary["failed"])),
        "clients/rejected": float(len(summary["rejected"])),
    }


def record_round_clients(tracker: Any, round_index: int, summary: dict[str, Any],
                         metrics: dict[str, float] | None = None) -> None:
    """Log client counts (step = round), in one batch with the round's other ``metrics``, and, when
    something went wrong, which clients and why."""
    tracker.log_metrics({**(metrics or {}), **round_client_metrics(summary)}, step=round_index)
    if summary["failed"] or summary["rejected"] or summary.get("capped"):
        tracker.log_dict({"round": round_index, **summary}, f"clients/round_{round_index:05d}.json")
