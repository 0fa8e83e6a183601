"""Failed clients, timeouts, update screening and the quorum (mmfl/engine/robust.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from mmfl.cli import main as cli_main
from mmfl.engine import robust, steps
from mmfl.local import run_experiment
from mmfl.state import ClientUpdate
from mmfl.errors import ConfigError, MmflError
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


@pytest.fixture(scope="module")
def round_one(tmp_path_factory):
    """Global state, shards and the four real client updates of round 1 of the tiny experiment."""
    cfg = parse_experiment(tiny_config_dict(tmp_path_factory.mktemp("r1")))
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    shards = dict(enumerate(data.clients))
    updates = steps.client_train(cfg, state, shards, steps.sample_clients(cfg, 1))
    return cfg, state, shards, updates


def with_reliability(cfg, **rel):
    raw = cfg.model_dump(mode="json")
    raw["reliability"] = {**raw["reliability"], **rel}
    return parse_experiment(raw)


def poisoned(update: ClientUpdate, how: str) -> ClientUpdate:
    tensors = dict(update.tensors)
    key = next(k for k in tensors if k.startswith("model/") and tensors[k].is_floating_point())
    if how == "scale":
        tensors = {k: v * 1e6 if k.startswith("model/") else v for k, v in tensors.items()}
    else:
        t = tensors[key].clone()
        t.view(-1)[t.numel() // 2] = float(how)
        tensors[key] = t
    return ClientUpdate(update.client_id, update.num_samples, tensors, update.metrics, update.meta)


# ---- screening -----------------------------------------------------------------------------------
def test_real_updates_are_all_accepted(round_one):
    cfg, state, _, updates = round_one
    accepted, rejected = robust.validate_updates(updates, state, cfg)
    assert rejected == []
    assert [u.client_id for u in accepted] == [0, 1, 2, 3]


@pytest.mark.parametrize("how, reason", [("nan", "non-finite"), ("inf", "non-finite"), ("-inf", "non-finite"),
                                         ("scale", "max_update_norm")])
def test_poisoned_update_is_rejected_and_never_averaged(round_one, how, reason, caplog):
    cfg, state, _, updates = round_one
    bad = [poisoned(u, how) if u.client_id == 2 else u for u in updates]
    accepted, rejected = robust.validate_updates(bad, state, cfg)
    assert [r["client"] for r in rejected] == [2] and reason in rejected[0]["reason"]
    assert "client 2" in caplog.text and reason in caplog.text
    new = steps.aggregate(cfg, state, bad)
    clean = steps.aggregate(cfg, state, [u for u in updates if u.client_id != 2])
    for key, value in new.tensors.items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True
        assert torch.equal(value, clean.tensors[key]), key  # exactly the average of the other three
    entry = new.meta["history"][-1]
    assert entry["clients"] == [0, 1, 3] and entry["rejected"][0]["client"] == 2 and entry["sampled"] == [0, 1, 2, 3]


def test_relative_norm_limit_catches_what_the_absolute_one_lets_through(round_one):
    cfg, state, _, updates = round_one
    g = state.model_weights()
    scaled = []
    for u in updates:  # client 1 moves 2000x farther from the global model than it did
        factor = 2000.0 if u.client_id == 1 else 1.0
        tensors = {k: (g[k[6:]] + factor * (v - g[k[6:]])) if k.startswith("model/") and v.is_floating_point() else v
                   for k, v in u.tensors.items()}
        scaled.append(ClientUpdate(u.client_id, u.num_samples, tensors, u.metrics))
    distances = [robust.update_distance(u, g) for u in scaled]
    assert max(distances) < 1e5  # below the absolute limit
    compare = with_reliability(cfg, norm_ratio_min_updates=3)
    accepted, rejected = robust.validate_updates(scaled, state, compare)
    assert [r["client"] for r in rejected] == [1] and "median of the other clients" in rejected[0]["reason"]
    off = with_reliability(compare, max_norm_ratio=None)
    assert robust.validate_updates(scaled, state, off)[1] == []
    assert cfg.reliability.norm_ratio_min_updates == 5  # the default: only 4 updates, no relative check
    assert robust.validate_updates(scaled, state, cfg)[1] == []


def test_malformed_updates_are_rejected_with_reasons(round_one):
    cfg, state, _, updates = round_one
    u0, u1, u2, u3 = updates
    wrong_shape = dict(u1.tensors)
    key = next(k for k in wrong_shape if k.startswith("model/"))
    wrong_shape[key] = torch.zeros(3, 3, 3)
    bad = [
        u0,
        ClientUpdate(1, u1.num_samples, wrong_shape, u1.metrics),
        ClientUpdate(2, 0, u2.tensors, u2.metrics),
        ClientUpdate(3, u3.num_samples, {**u3.tensors, "model/extra.weight": torch.zeros(2)}, u3.metrics),
        ClientUpdate(0, u0.num_samples, u0.tensors, u0.metrics),
    ]
    accepted, rejected = robust.validate_updates(bad, state, cfg)
    reasons = {(r["client"], r["reason"].split(" ")[0]) for r in rejected}
    assert [u.client_id for u in accepted] == [0]
    assert reasons == {(1, "parameter"), (2, "num_samples"), (3, "parameter"), (0, "duplicate")}


# ---- failures and the quorum ----------------------------------------------------------------------
def test_quorum_met_aggregates_the_rest_and_records_the_failure(round_one):
    cfg, state, _, updates = round_one
    mixed = [robust.failed_update(1, "client_train: OSError: disk full")] + [u for u in updates if u.client_id != 1]
    new = steps.aggregate(cfg, state, mixed, expected_clients=[0, 1, 2, 3])
    entry = new.meta["history"][-1]
    assert entry["clients"] == [0, 2, 3]
    assert entry["failed"] == [{"client": 1, "reason": "client_train: OSError: disk full"}]
    # an update that never arrived counts as failed too
    new = steps.aggregate(cfg, state, [u for u in updates if u.client_id != 3], expected_clients=[0, 1, 2, 3])
    assert new.meta["history"][-1]["failed"] == [{"client": 3, "reason": "no update received"}]


def test_quorum_not_met_fails_clearly(round_one):
    cfg, state, _, updates = round_one
    strict = with_reliability(cfg, quorum=0.75)
    mixed = [robust.failed_update(0, "client_train: boom"), poisoned(updates[1], "nan"), updates[2], updates[3]]
    with pytest.raises(robust.RoundFailedError) as info:
        steps.aggregate(strict, state, mixed)
    msg = str(info.value)
    assert isinstance(info.value, MmflError)
    assert msg.startswith("round 1: only 2 of 4 sampled clients")
    assert "3 needed" in msg and "reliability.quorum = 0.75" in msg
    assert "client 0 failed (client_train: boom)" in msg and "client 1 rejected (non-finite" in msg
    assert info.value.summary["aggregated"] == [2, 3]
    with pytest.raises(robust.RoundFailedError, match="min_clients = 4"):
        steps.aggregate(with_reliability(cfg, min_clients=4), state, updates[:3], expected_clients=[0, 1, 2, 3])
    with pytest.raises(robust.RoundFailedError, match="round 1: no client updates to aggregate"):
        steps.aggregate(cfg, state, [])
    with pytest.raises(robust.RoundFailedError, match="only 0 of 2 sampled clients.*no update received"):
        steps.aggregate(cfg, state, [], expected_clients=[0, 1])


def test_required_updates():
    cfg = parse_experiment(tiny_config_dict(Path("/nonexistent"), partition={"num_clients": 10}))
    assert [robust.required_updates(cfg, n) for n in (1, 2, 3, 4, 10)] == [1, 1, 2, 2, 5]
    full = with_reliability(cfg, quorum=1.0, min_clients=2)
    assert [robust.required_updates(full, n) for n in (2, 3, 10)] == [2, 3, 10]


def test_client_exception_becomes_a_failed_update(round_one):
    cfg, state, shards, _ = round_one
    shards = {k: v for k, v in shards.items() if k != 2}  # client 2's data is gone: KeyError inside training
    updates = steps.client_train(cfg, state, shards, [0, 2, 3])
    assert [robust.is_failed(u) for u in updates] == [False, True, False]
    assert updates[1].client_id == 2 and updates[1].meta["error"].startswith("client_train: KeyError")


def test_timeout_stops_a_stalled_client_and_keeps_the_others(round_one):
    cfg, state, shards, updates = round_one
    timed = with_reliability(cfg, client_timeout_s=4.0,
                             fault_injection=[{"round": 1, "client": 1, "mode": "sleep", "seconds": 300}])
    t0 = time.monotonic()
    out = steps.client_train(timed, state, shards, [0, 1, 2])
    elapsed = time.monotonic() - t0
    assert elapsed < 30  # not the 300 s the client stalls for
    assert [robust.is_failed(u) for u in out] == [False, True, False]
    assert "ClientTimeout" in out[1].meta["error"] and "client_timeout_s = 4s" in out[1].meta["error"]
    for got, ref in ((out[0], updates[0]), (out[2], updates[2])):  # clients in worker threads: same result
        assert all(torch.equal(got.tensors[k], ref.tensors[k]) for k in ref.tensors)


def test_call_with_deadline_passes_results_and_errors_through():
    assert robust.call_with_deadline(lambda: 7, 5.0, "x") == 7
    assert robust.call_with_deadline(lambda: 7, None, "x") == 7
    with pytest.raises(ZeroDivisionError):
        robust.call_with_deadline(lambda: 1 / 0, 5.0, "x")

    def spin():
        while True:  # pure-Python busy loop: interrupted by the asynchronous ClientTimeout
            math.sqrt(2.0)

    t0 = time.monotonic()
    with pytest.raises(robust.ClientTimeout):
        robust.call_with_deadline(spin, 0.5, "spin")
    assert time.monotonic() - t0 < robust.STOP_GRACE_S


def test_batch_training_failures_are_per_client(round_one):
    cfg, state, _, updates = round_one
    by_id = {u.client_id: u for u in updates}
    faulty = with_reliability(cfg, fault_injection=[{"round": 1, "client": 2, "mode": "raise"},
                                                    {"round": 1, "client": 3, "mode": "inf"}])
    seen = []

    def train_many(ids):
        seen.append(list(ids))
        return [by_id[i] for i in ids]

    out = robust.train_batch(faulty, 1, [0, 1, 2, 3], train_many)
    assert seen == [[0, 1, 3]]  # the client that failed before training is not in the batch
    assert [robust.is_failed(u) for u in out] == [False, False, True, False]
    assert robust.validate_updates(out, state, cfg)[1][0]["client"] == 3

    def broken(ids):
        raise RuntimeError("CUDA error: out of memory")

    out = robust.train_batch(cfg, 1, [0, 1], broken)
    assert all(robust.is_failed(u) and "out of memory" in u.meta["error"] for u in out)


def test_batch_deadline_is_the_clients_limit_times_their_number(round_one):
    """A batch of healthy clients gets the time the loop would give them; a hanging one fails alone."""
    cfg, _, _, updates = round_one
    by_id = {u.client_id: u for u in updates}
    timed = with_reliability(cfg, client_timeout_s=0.4)
    calls = []

    def slow_batch(ids):  # longer than one client's limit, shorter than the batch's (3 x 0.4 s)
        calls.append(("batch", list(ids)))
        time.sleep(0.6)
        return [by_id[i] for i in ids]

    out = robust.train_batch(timed, 1, [0, 1, 2], slow_batch, train_one=lambda cid: calls.append(("one", cid)))
    assert calls == [("batch", [0, 1, 2])] and not any(robust.is_failed(u) for u in out)

    def hanging_batch(ids):
        while True:  # pure-Python loop: interrupted by the asynchronous ClientTimeout
            math.sqrt(2.0)

    def one(cid):
        if cid == 1:
            hanging_batch([cid])
        return by_id[cid]

    t0 = time.monotonic()
    out = robust.train_batch(timed, 1, [0, 1, 2], hanging_batch, train_one=one)
    assert time.monotonic() - t0 < 3 * 0.4 + 0.4 + 4 * robust.STOP_GRACE_S
    assert [robust.is_failed(u) for u in out] == [False, True, False]
    assert "client_timeout_s = 0.4s" in out[1].meta["error"]


# ---- end to end through the local engine -----------------------------------------------------------
@pytest.mark.parametrize("engine", ["loop", "vectorized"])
def test_run_with_faults_completes_and_records_clients(tmp_path, engine):
    # With the vectorized engine, accepted updates are rows of the stacks and the poisoned ones
    # are host copies altered by fault injection: screening and the mean see both kinds.
    faults = [{"round": 2, "client": 1, "mode": "raise"}, {"round": 3, "client": 2, "mode": "scale"},
              {"round": 3, "client": 0, "mode": "nan"}]
    cfg = parse_experiment(tiny_config_dict(tmp_path, reliability={"fault_injection": faults},
                                        train={"engine": engine, "vector_chunk": 2}))
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 3
    clients = {h["round"]: h["clients"] for h in result.history}
    assert clients[1]["failed"] == [] and clients[1]["rejected"] == [] and clients[1]["aggregated"] == [0, 1, 2, 3]
    assert [f["client"] for f in clients[2]["failed"]] == [1] and clients[2]["aggregated"] == [0, 2, 3]
    assert sorted(r["client"] for r in clients[3]["rejected"]) == [0, 2] and clients[3]["aggregated"] == [1, 3]
    state = LocalStore(tmp_path / "store").get_state(f"{cfg.experiment_id()}/rounds/00003")
    assert all(torch.isfinite(v).all() for v in state.tensors.values() if v.is_floating_point())
    assert state.meta["history"][1]["failed"][0]["reason"].startswith("client_train: InjectedFault")
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_quorum_failure_stops_the_run_with_one_error_line(tmp_path, capsys):
    faults = [{"round": 2, "client": c, "mode": "raise"} for c in (0, 1, 3)]
    raw = tiny_config_dict(tmp_path, eval={"every": 5}, reliability={"fault_injection": faults})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(raw))
    assert cli_main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: round 2: only 1 of 4 sampled clients") and "2 needed" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    cfg = parse_experiment(raw)
    store = LocalStore(tmp_path / "store")
    assert store.exists(f"{cfg.experiment_id()}/rounds/00001/metrics.json")  # round 1 kept for a resume
    assert not store.exists(f"{cfg.experiment_id()}/rounds/00002/metrics.json")


def test_failed_and_rejected_clients_are_recorded_in_mlflow(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    faults = [{"round": 1, "client": 3, "mode": "raise"}, {"round": 2, "client": 0, "mode": "inf"}]
    cfg = parse_experiment(tiny_config_dict(
        tmp_path, train={"rounds": 2}, reliability={"fault_injection": faults},
        tracking={"enabled": True, "uri": mlflow_uri, "experiment": "reliability-test"}))
    result = run_experiment(cfg, progress=False)
    client = MlflowClient(mlflow_uri)
    failed = {m.step: m.value for m in client.get_metric_history(result.run_id, "clients/failed")}
    rejected = {m.step: m.value for m in client.get_metric_history(result.run_id, "clients/rejected")}
    aggregated = {m.step: m.value for m in client.get_metric_history(result.run_id, "clients/aggregated")}
    assert failed == {1: 1.0, 2: 0.0} and rejected == {1: 0.0, 2: 1.0} and aggregated == {1: 3.0, 2: 3.0}
    names = {a.path for a in client.list_artifacts(result.run_id, "clients")}
    assert names == {"clients/round_00001.json", "clients/round_00002.json"}
    local = client.download_artifacts(result.run_id, "clients/round_00001.json", str(tmp_path))
    doc = json.loads(Path(local).read_text())
    assert doc["failed"][0]["client"] == 3 and "InjectedFault" in doc["failed"][0]["reason"]


# ---- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rel, field", [
    ({"quorum": 0}, "reliability.quorum"),
    ({"quorum": 1.5}, "reliability.quorum"),
    ({"client_timeout_s": -1}, "reliability.client_timeout_s"),
    ({"max_update_norm": float("nan")}, "reliability.max_update_norm"),
    ({"max_norm_ratio": 0.5}, "reliability.max_norm_ratio"),
    ({"min_clients": 5}, "reliability.min_clients = 5 exceeds the 4 clients"),
    ({"fault_injection": [{"round": 1, "client": 9, "mode": "raise"}]}, "fault_injection.0.client = 9"),
    ({"fault_injection": [{"round": 1, "client": 0, "mode": "explode"}]}, "fault_injection.0.mode"),
    ({"retries": 3}, "reliability.retries: unknown field"),
])
def test_reliability_config_errors_name_the_field(tmp_path, rel, field):
    with pytest.raises(ConfigError) as info:
        parse_experiment(tiny_config_dict(tmp_path, reliability=rel))
    assert field in str(info.value)


def test_reliability_settings_keep_the_experiment_id_but_are_result_settings(tmp_path):
    from mmfl.engine import identity

    base = parse_experiment(tiny_config_dict(tmp_path))
    other = parse_experiment(tiny_config_dict(tmp_path, reliability={
        "quorum": 1.0, "client_timeout_s": 9, "fault_injection": [{"round": 1, "client": 0, "mode": "raise"}]}))
    assert base.experiment_id() == other.experiment_id()  # same experiment: a re-run compares the manifest
    diffs = identity.result_differences(identity.manifest(base), other)
    assert [d.split(" ")[0] for d in diffs] == ["reliability.client_timeout_s", "reliability.fault_injection",
                                                "reliability.quorum"]
