"""Run identity: stored results are reused only for the same result settings; eval and tracking
changes are honoured on the stored checkpoints; one run per experiment at a time."""

from __future__ import annotations

import json

import pytest

from mmfl.cli import main
from mmfl.methods import parse_experiment
from mmfl.engine import identity
from mmfl.io.layout import load_metrics
from mmfl.local import run_experiment
from mmfl.errors import ConfigError
from mmfl.io.lock import ExperimentBusy, experiment_lock
from mmfl.io.minio_store import MinioStore
from mmfl.io.store import LocalStore
from tests.conftest import tiny_config_dict

FLIP = [{"client": 0, "mode": "scale", "scale": -1.0}]  # client 0 sends sign-flipped weights every round


def test_manifest_groups_every_setting(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    m = identity.manifest(cfg)
    assert m["experiment_id"] == cfg.experiment_id()
    assert "reliability.aggregation.rule" in m["result"] and "reliability.fault_injection" in m["result"]
    assert "seed" in m["result"] and "train.lr" in m["result"] and "train.engine" in m["result"]
    assert set(m["eval"]) == {"eval.every", "eval.patterns"}
    assert set(m["tracking"]) == {"tracking.enabled", "tracking.uri", "tracking.experiment"}
    assert not any(k.startswith("storage.") or k == "train.threads" for group in ("result", "eval", "tracking")
                   for k in m[group])


def test_experiment_id_and_manifest_share_one_rule(tmp_path):
    """Every manifest result setting the id hashes changes the id; every other setting does not."""
    from mmfl.config import is_result_setting, setting_group

    cfg = parse_experiment(tiny_config_dict(tmp_path))
    m = identity.manifest(cfg)
    for group in ("result", "eval", "tracking"):
        assert all(setting_group(k) == group for k in m[group])
    hashed = {k for k in m["result"] if is_result_setting(k)}
    assert hashed and hashed < set(m["result"])
    assert {k.split(".")[0] for k in set(m["result"]) - hashed} <= {"reliability", "methods"}
    assert not any(is_result_setting(k) for group in ("eval", "tracking") for k in m[group])
    moved = parse_experiment(tiny_config_dict(tmp_path, train={"lr": 0.123}, eval={"every": 3},
                                              reliability={"quorum": 0.9}))
    assert moved.experiment_id() != cfg.experiment_id()
    assert parse_experiment(tiny_config_dict(tmp_path, eval={"every": 3}, reliability={"quorum": 0.9})
                            ).experiment_id() == cfg.experiment_id()


def test_poisoned_then_clean_rerun_is_refused_or_recomputed_never_reused(tmp_path, capsys):
    poisoned = tiny_config_dict(tmp_path, reliability={"fault_injection": FLIP})
    path = tmp_path / "poisoned.json"
    path.write_text(json.dumps(poisoned))
    assert main(["run", str(path), "--no-progress"]) == 0
    capsys.readouterr()
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(tiny_config_dict(tmp_path)))
    assert main(["run", str(clean), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: experiment tiny-fedavg-")
    assert "reliability.fault_injection (stored [{" in err and "now [])" in err and "--new-experiment" in err
    # asked for a new experiment: computed from scratch, equal to a clean run in a fresh store
    assert main(["run", str(clean), "--no-progress", "--new-experiment"]) == 0
    capsys.readouterr()
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    fresh = identity.new_experiment(cfg)
    assert fresh.experiment_id() != cfg.experiment_id() and fresh.name.startswith("tiny-x")
    store = LocalStore(tmp_path / "store")
    reference = run_experiment(parse_experiment(tiny_config_dict(tmp_path / "ref")), progress=False)
    assert load_metrics(store, fresh.experiment_id(), 3)["eval"] == reference.final
    poisoned_final = load_metrics(store, cfg.experiment_id(), 3)["eval"]
    assert poisoned_final != reference.final


def test_new_eval_patterns_are_evaluated_on_the_stored_checkpoints(tmp_path):
    narrow = parse_experiment(tiny_config_dict(tmp_path, eval={"every": 3, "patterns": ["full"]}))
    first = run_experiment(narrow, progress=False)
    assert set(first.final) == {"full"}
    wide = parse_experiment(tiny_config_dict(tmp_path, eval={"every": 1, "patterns": "auto"}))
    again = run_experiment(wide, progress=False)
    assert again.resumed_from == 3 and set(again.final) == {"full", "only:a", "only:b"}
    assert again.final["full"] == first.final["full"]  # kept, not recomputed
    history = {h["round"]: h["eval"] for h in again.history}
    assert all(set(history[r]) == {"full", "only:a", "only:b"} for r in (1, 2, 3))  # eval.every = 1 now
    reference = run_experiment(parse_experiment(tiny_config_dict(tmp_path / "ref", eval={"every": 1})), progress=False)
    assert again.final == reference.final
    stored = LocalStore(tmp_path / "store").get_json(f"{narrow.experiment_id()}/manifest.json")
    assert stored["eval"]["eval.patterns"] == "auto"


def test_second_run_of_a_running_experiment_stops_with_one_line(tmp_path, capsys):
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(tiny_config_dict(tmp_path)))
    store = LocalStore(tmp_path / "store")
    with experiment_lock(store, cfg.experiment_id()):
        assert main(["run", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is already being run (pid" in err and "wait for that run" in err
        with pytest.raises(ExperimentBusy):
            run_experiment(cfg, progress=False)
    assert run_experiment(cfg, progress=False).rounds_done == 3  # released


def test_s3_lease_admits_one_run_and_lapses(s3_server):
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket="leases", prefix="p")
    with experiment_lock(store, "exp-1", ttl_s=30):
        with pytest.raises(ExperimentBusy, match="lease expires in"):
            with experiment_lock(store, "exp-1", ttl_s=30):
                pass
        with experiment_lock(store, "exp-2", ttl_s=30):  # other experiments are free
            pass
    with experiment_lock(store, "exp-1", ttl_s=30):  # released
        pass
    store.put_json("exp-1/lease.json", {"owner": "crashed", "host": "h", "pid": 1, "expires": 0})
    with experiment_lock(store, "exp-1", ttl_s=30):  # an expired lease of a dead run is taken over
        pass


def test_identity_refusal_names_every_differing_field(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    other = parse_experiment(tiny_config_dict(tmp_path, reliability={"max_norm_ratio": 10, "aggregation": {"rule": "median"}},
                                          tracking={"enabled": True, "experiment": "elsewhere"}))
    with pytest.raises(ConfigError) as info:
        identity.refuse_if_different(identity.manifest(cfg), other, "LocalStore('x')")
    msg = str(info.value)
    assert "reliability.aggregation.rule (stored \"mean\", now \"median\")" in msg
    assert "reliability.max_norm_ratio (stored 3.0, now 10.0)" in msg and "tracking" not in msg


def test_drills_that_cannot_change_weights_are_not_result_settings(tmp_path):
    base = parse_experiment(tiny_config_dict(tmp_path))
    slow = parse_experiment(tiny_config_dict(tmp_path, reliability={"fault_injection": [
        {"round": 2, "client": 0, "mode": "sleep", "seconds": 1}, {"round": 3, "client": 1, "mode": "exit"}]}))
    assert identity.result_differences(identity.manifest(slow), base) == []
    timed = parse_experiment(tiny_config_dict(tmp_path, reliability={"client_timeout_s": 5, "fault_injection": [
        {"round": 2, "client": 0, "mode": "sleep", "seconds": 10}]}))
    assert [d.split(" ")[0] for d in identity.result_differences(identity.manifest(timed), base)] == [
        "reliability.client_timeout_s", "reliability.fault_injection"]
