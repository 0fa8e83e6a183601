"""Every config in configs/ is valid for every registered baseline and fits its dataset's partition limits.

That each one trains its baselines above the accuracy its header states is checked by
``make bench-configs`` (bench/configs.py), on the full number of rounds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.configs import BASELINES, THRESHOLDS
from mmfl.config import grid_configs, read_config_file
from mmfl.data.limits import check_partition_limits, train_size
from mmfl.methods import resolve

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid_and_fits_its_dataset(path):
    cells = grid_configs(read_config_file(path), BASELINES)
    for cfg in cells:
        resolve(cfg)
        assert check_partition_limits(cfg) == []  # no error, and more than one optimiser step per local epoch
    assert train_size(cells[0]) is not None  # a shipped dataset: its size is known without reading it
    fedprox = next(c for c in cells if c.method.name == "fedprox")
    assert fedprox.method.params["mu"] == 0.01  # per-method params from the config's `methods:` section


def test_every_dataset_config_states_a_threshold():
    assert {p.name for p in CONFIGS} - {"quickstart.yaml"} == set(THRESHOLDS)
    for name, threshold in THRESHOLDS.items():
        header = (CONFIGS[0].parent / name).read_text().split("\nname:")[0]
        assert f">= {100 * threshold:.0f}% test accuracy" in header


def test_a_partition_with_one_step_per_epoch_is_warned_about():
    from mmfl.methods import parse_experiment

    cfg = parse_experiment({"data": {"name": "basicmotions"}, "partition": {"num_clients": 5, "min_client_size": 8}})
    (warning,) = check_partition_limits(cfg)
    assert warning == ("train.batch_size = 32: a client holds 13 samples on average (basicmotions has 64 training "
                       "samples, 5 clients), so a local epoch is 1 optimiser step; lower train.batch_size or "
                       "partition.num_clients")
