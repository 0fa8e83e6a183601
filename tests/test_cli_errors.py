"""Bad input on the command line: one clear ``error:`` line, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmfl.cli import main
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def test_bad_config_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\ntrain:\n  rounds: -3\n")
    proc = subprocess.run([sys.executable, "-m", "mmfl", "run", str(bad), "--no-progress"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert f"{bad}: invalid configuration: train.rounds = -3: Input should be greater than or equal to 1" in lines[0]


@pytest.mark.parametrize("text, extra, expected", [
    ("train: [1, 2\n", [], "not valid YAML"),
    ("- a\n- b\n", [], "expected a mapping at the top level, got list"),
    ("method: {name: nosuch}\n", [], "method.name = 'nosuch': unknown method"),
    ("method: {name: ''}\n", [], "method.name = ''"),
    ("{}\n", ["--seed", "-1"], "seed = -1: Input should be greater than or equal to 0"),
    ("data: {split_seed: -5}\n", [], "data.split_seed = -5"),
    ("data: {split_seed: 4294967296}\n", [], "data.split_seed = 4294967296: Input should be less than 4294967296"),
    ("data: {modalities: []}\n", [], "data.modalities = []: List should have at least 1 item"),
    ("eval: {patterns: []}\n", [], "eval.patterns = []: needs at least one test pattern"),
    ("model: {embed_dim: 100000000}\n", [], "model.embed_dim = 100000000: Input should be less than or equal to 8192"),
    ("train: {rounds: 1, rounds: 2}\n", [], "duplicate key 'rounds' (first at line 1)"),
    ("train:\n  rounds: 1\ntrain:\n  lr: 0.1\n", [], "line 3, column 1: duplicate key 'train' (first at line 1)"),
    ("train: {rounds: 1" + "0" * 5000 + "}\n", [], "not a usable YAML value: Exceeds the limit (4300 digits)"),
    ("{}\n", ["--set", "tracking.uri=http://h:5000/?token=QueryTok3n"], "found token"),
    ("{}\n", ["--set", "tracking.uri=postgresql:///db?user=a&password=hunter2"], "password=***"),
    ("partition: {alpha: .nan}\n", [], "partition.alpha = nan: Input should be a finite number"),
    ("storage: {kind: s3}\n", [], "storage.kind = 's3'"),
    ("reliability: {quorum: 2}\n", [], "reliability.quorum = 2: Input should be less than or equal to 1"),
    ("{}\n", ["--set", "train.rounds.x=1"], "train.rounds = {'x': 1}: Input should be a valid integer"),
    ("train: {rounds: 2}\n", ["--set", "train.rounds.x=1"], "'rounds' is not a section"),
    ("{}\n", ["--set", "train.rounds"], "expected key=value"),
    ("{}\n", ["--set", "train.lr=fast"], "train.lr = 'fast'"),
    ("{}\n", ["--rounds", "0"], "train.rounds = 0"),
])
def test_bad_configs_give_one_error_line(tmp_path, capsys, text, extra, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err


def test_several_problems_are_listed_together(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({**tiny_config_dict(tmp_path), "seed": "x", "train": {"rounds": 0, "lr": -1}}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(f in err for f in ("seed = 'x'", "train.rounds = 0", "train.lr = -1"))
    assert "Traceback" not in err


def test_secrets_never_reach_the_error_line(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("tracking: {uri: 'http://alice:S3cretPw@127.0.0.1:5000/?token=QueryTok3n'}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "user:password, token" in err and "S3cretPw" not in err and "QueryTok3n" not in err


def test_config_files_are_capped_in_size(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    assert main(["run", str(big)]) == 2
    assert capsys.readouterr().err.strip() == f"error: config file {big}: larger than 1024 KiB; not a config file"
    assert main(["run", "/dev/zero"]) == 2  # an endless file: read up to the cap, never further
    assert "larger than 1024 KiB" in capsys.readouterr().err


@pytest.mark.parametrize("sets, expected", [
    (["data.test_fraction=0.999"], "data.test_fraction = 0.999: leaves 0 of 240 samples of synthetic for training"),
    (["storage.root=/proc/self/mmfl"], "storage.root = '/proc/self/mmfl': cannot write there"),
])
def test_bad_values_found_when_the_run_starts(tmp_path, capsys, sets, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(tiny_config_dict(tmp_path)))
    assert main(["run", str(path), "--no-progress", *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: config file not found: {tmp_path / 'nope.yaml'}"
