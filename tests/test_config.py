"""Configuration: defaults, YAML loading, overrides, and errors that name field and value."""

from pathlib import Path

import pytest

from mmfl.config import ExperimentConfig
from mmfl.errors import ConfigError
from mmfl.methods import load_experiment, parse_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_config_loads_with_expected_settings():
    cfg = load_experiment(ROOT / "configs" / "quickstart.yaml")
    assert cfg.data.name == "mfeat"
    assert cfg.partition.scheme == "dirichlet" and cfg.partition.num_clients == 35 and cfg.partition.alpha == 0.1
    assert (cfg.missing.pattern, cfg.missing.rate, cfg.missing.drop_all_missing) == ("independent", 0.5, True)
    assert cfg.storage.kind == "local"


def test_method_params_are_completed_with_defaults():
    cfg = parse_experiment({"method": {"name": "fedprox"}})
    assert cfg.method.params == {"mu": 0.01}


@pytest.mark.parametrize(
    "data, needles",
    [
        ({"partition": {"alpha": -1}}, ["partition.alpha", "-1"]),
        ({"partition": {"num_clients": "ten"}}, ["partition.num_clients", "'ten'"]),
        ({"missing": {"rate": 1.5}}, ["missing.rate", "1.5"]),
        ({"missing": {"pattern": "sometimes"}}, ["missing.pattern", "'sometimes'"]),
        ({"data": {"name": "imagenet"}}, ["data.name", "'imagenet'"]),
        ({"train": {"rounds": 0}}, ["train.rounds", "0"]),
        ({"trian": {"rounds": 3}}, ["trian", "unknown field"]),
        ({"method": {"name": "fedsomething"}}, ["method", "fedsomething", "fedavg"]),
        ({"method": {"name": "fedprox", "params": {"mu": -2}}}, ["method.params.mu", "-2"]),
        ({"method": {"name": "fedprox", "params": {"nu": 1}}}, ["method.params.nu", "unknown field"]),
        ({"eval": {"patterns": ["only:"]}}, ["eval.patterns", "only:"]),
    ],
)
def test_bad_field_error_names_field_and_value(data, needles):
    with pytest.raises(ConfigError) as info:
        parse_experiment(data)
    for needle in needles:
        assert needle in str(info.value)


def test_client_rates_must_match_number_of_clients():
    with pytest.raises(ConfigError, match=r"client_rates has 2 entries but partition.num_clients = 10"):
        parse_experiment({"missing": {"client_rates": [0.1, 0.2]}})


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_experiment({"partition": {"alpha": 0}, "train": {"batch_size": -1}})
    assert "partition.alpha" in str(info.value) and "train.batch_size" in str(info.value)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(listy)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    cfg = load_experiment(path, ["partition.alpha=0.1", "train.rounds=7", "missing.pattern=missing:pix"])
    assert cfg.partition.alpha == 0.1 and cfg.train.rounds == 7 and cfg.missing.pattern == "missing:pix"
    with pytest.raises(ConfigError, match="partition.alpha"):
        load_experiment(path, ["partition.alpha=zero"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_experiment(path, ["partition.alpha"])


def test_experiment_id_depends_on_results_not_on_where_they_go():
    base = parse_experiment({})
    same = parse_experiment({"tracking": {"experiment": "other"}, "storage": {"root": "/elsewhere"}, "eval": {"every": 2},
                         "train": {"threads": 3, "vector_chunk": 7, "compile": True}})
    different = parse_experiment({"partition": {"alpha": 0.3}})
    assert base.experiment_id() == same.experiment_id()
    assert base.experiment_id() != different.experiment_id()
    assert base.experiment_id().startswith("experiment-fedavg-")


@pytest.mark.parametrize(("raw", "message"), [
    ({"train": {"device": "bogus"}}, "train.device = 'bogus': unknown torch device"),
    ({"missing": {"pattern": "mixed", "rates": {"a": 0.9}}}, "rates applies only to pattern: independent"),
])
def test_settings_that_would_be_ignored_or_fail_later_are_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_experiment(raw)


def test_a_cuda_device_this_machine_lacks_is_named_before_training(tmp_path):
    import torch

    from mmfl.local import run_experiment
    from tests.conftest import tiny_config_dict

    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"device": f"cuda:{torch.cuda.device_count()}"}))
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:\d+'"):
        run_experiment(cfg, progress=False)


@pytest.mark.parametrize("field", [("missing", "pattern"), ("train", "device"), ("eval", "patterns")])
def test_a_huge_bad_value_gives_one_short_line(field):
    """Validators quote the bad value; a 5,000-character one is shortened, the line stays readable."""
    section, key = field
    value = "x" * 5000
    with pytest.raises(ConfigError) as info:
        parse_experiment({section: {key: [value] if key == "patterns" else value}})
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and len(msg) < 600, msg[:200]
    assert f"{section}.{key}" in msg and "xxxxxxxx" in msg
