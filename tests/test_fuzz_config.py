"""Fuzzing the config loader: every bad input is a ConfigError naming the field, never a deep traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfl.config import ExperimentConfig
from mmfl.errors import ConfigError, MmflError
from mmfl.methods import load_experiment, parse_experiment
from tests.conftest import tiny_config_dict

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
BASE = tiny_config_dict(Path("/tmp/mmfl-fuzz"))

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["", "auto", "full", "only:a", "missing:b", "-1", "1e9", "fedavg", "x" * 5000]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def leaf_paths(node: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in node.items():
        path = prefix + (key,)
        out.append(path)
        if isinstance(value, dict):
            out += leaf_paths(value, path)
    return out


PATHS = leaf_paths(BASE) + [("reliability", "quorum"), ("reliability", "client_timeout_s"),
                            ("reliability", "max_update_norm"), ("reliability", "fault_injection"),
                            ("train", "clients_per_round"), ("model", "fusion"), ("method", "params")]


def check_config_error(exc: ConfigError) -> str:
    msg = str(exc)
    assert isinstance(exc, MmflError) and isinstance(exc, ValueError)
    assert msg and "Traceback" not in msg
    assert all(len(line) < 600 for line in msg.splitlines()), "error lines must stay readable"
    return msg


@FUZZ
@given(root=values)
def test_any_structure_at_the_root(root):
    try:
        cfg = parse_experiment(root)
    except ConfigError as exc:
        check_config_error(exc)
    else:
        assert isinstance(cfg, ExperimentConfig)


@FUZZ
@given(path=st.sampled_from(PATHS), value=values)
def test_one_field_set_to_anything(path, value):
    raw = copy.deepcopy(BASE)
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    try:
        cfg = parse_experiment(raw)
    except ConfigError as exc:
        msg = check_config_error(exc)
        # the message names the changed field, or the mapping field it is an entry of (data.synthetic.dims)
        named = [".".join(path[:k]) for k in range(len(path), min(2, len(path)) - 1, -1)]
        assert any(n in msg for n in named), (path, msg)
    else:
        assert cfg.model_dump(mode="json")  # a config that validates serialises again


@FUZZ
@given(section=st.sampled_from(sorted(k for k, v in BASE.items() if isinstance(v, dict)) + ["reliability"]),
       key=st.text(min_size=1, max_size=20).filter(lambda k: k.isidentifier()), value=scalars)
def test_unknown_fields_are_named(section, key, value):
    raw = copy.deepcopy(BASE)
    known = set(ExperimentConfig.model_fields[section].annotation.model_fields)
    if key in known:
        return
    raw.setdefault(section, {})[key] = value
    try:
        parse_experiment(raw)
    except ConfigError as exc:
        assert f"{section}.{key}: unknown field" in check_config_error(exc)
    else:
        raise AssertionError(f"{section}.{key} was accepted")


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
       | values.map(lambda v: yaml.safe_dump(v)) | st.integers(1, 200).map(lambda n: "[" * n + "]" * n)
       | st.integers(1, 200).map(lambda n: "a: " * n + "1"))
def test_config_file_with_any_text(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    try:
        load_experiment(path)
    except ConfigError as exc:
        check_config_error(exc)


@FUZZ
@given(overrides=st.lists(st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    [".".join(p) for p in PATHS] + ["", ".", "a..b", "train.rounds.x", "data", "seed"]), st.text(max_size=30)),
    max_size=4))
def test_command_line_overrides(tmp_path, overrides):
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(BASE))
    try:
        load_experiment(path, overrides)
    except ConfigError as exc:
        check_config_error(exc)


def test_pathological_inputs(tmp_path):
    cases = {
        "missing file": tmp_path / "nope.yaml",
        "a folder": tmp_path,
        "NUL in the path": str(tmp_path / "a\x00b.yaml"),
    }
    for label, path in cases.items():
        try:
            load_experiment(path)
        except ConfigError as exc:
            check_config_error(exc)
        else:
            raise AssertionError(label)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    try:
        load_experiment(deep)
    except ConfigError as exc:
        assert "deep.yaml" in check_config_error(exc)
    # a billion-laughs document: the error message must not expand it
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                     for p, c in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(laughs) + "\n")
    try:
        load_experiment(bomb)
    except ConfigError as exc:
        assert "i: unknown field" in check_config_error(exc)
    huge = {**BASE, "name": "n" * 1_000_000}
    try:
        parse_experiment(huge)
    except ConfigError as exc:
        assert "name = 'nnnn" in check_config_error(exc)
    for bad_float in (float("nan"), float("inf"), -float("inf")):
        try:
            parse_experiment({**BASE, "train": {**BASE["train"], "lr": bad_float}})
        except ConfigError as exc:
            assert "train.lr" in check_config_error(exc) and "finite" in str(exc)
        else:
            raise AssertionError(f"train.lr = {bad_float} accepted")
