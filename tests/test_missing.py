"""Missing-modality masks have the requested statistics; test patterns are what they say."""

import numpy as np
import pytest
import torch

from mmfl.config import MissingConfig
from mmfl.data.missing import client_missing_rates, eval_patterns, pattern_presence, sample_presence, simulate_missing
from mmfl.errors import ConfigError

NAMES = ("img", "txt")


def test_full_pattern_keeps_everything():
    p = sample_presence(50, NAMES, MissingConfig(pattern="full"), 0.9, np.random.default_rng(0))
    assert p.all()


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_mixed_pattern_drops_exactly_one_modality_from_the_requested_fraction(rate):
    n = 201
    p = sample_presence(n, NAMES, MissingConfig(pattern="mixed", rate=rate), rate, np.random.default_rng(1))
    missing_rows = ~p.all(axis=1)
    assert missing_rows.sum() == round(rate * n)
    assert p.any(axis=1).all()  # never both missing
    dropped = (~p).sum(axis=0)
    assert abs(int(dropped[0]) - int(dropped[1])) <= 1  # balanced between modalities


def test_missing_one_modality_pattern():
    p = sample_presence(100, NAMES, MissingConfig(pattern="missing:txt", rate=0.4), 0.4, np.random.default_rng(2))
    assert p[:, 0].all()
    assert (~p[:, 1]).sum() == 40
    with pytest.raises(ConfigError, match="'audio' not in"):
        sample_presence(10, NAMES, MissingConfig(pattern="missing:audio"), 0.4, np.random.default_rng(2))


def test_independent_pattern_matches_per_modality_rates_and_keeps_one_modality():
    cfg = MissingConfig(pattern="independent", rates={"img": 0.2, "txt": 0.5})
    p = sample_presence(20000, NAMES, cfg, 0.0, np.random.default_rng(3))
    assert p.any(axis=1).all()
    miss = 1 - p.mean(axis=0)
    # both missing (prob 0.1) is resolved by restoring one uniformly: expected 0.2-0.05, 0.5-0.05
    assert abs(miss[0] - 0.15) < 0.015 and abs(miss[1] - 0.45) < 0.015


def test_per_client_rates_spread_and_explicit():
    cfg = MissingConfig(pattern="mixed", rate=0.5, client_rate_spread=0.3)
    rates = client_missing_rates(cfg, 200, seed=0)
    assert min(rates) >= 0.2 and max(rates) <= 0.8
    assert abs(np.mean(rates) - 0.5) < 0.03 and np.std(rates) > 0.1
    explicit = MissingConfig(pattern="mixed", client_rates=[0.0, 1.0, 0.5])
    masks = simulate_missing([10, 10, 10], NAMES, explicit, seed=0)
    realised = [float((~m.all(dim=1)).float().mean()) for m in masks]
    assert realised == [0.0, 1.0, 0.5]


def test_masks_are_deterministic_in_the_seed():
    cfg = MissingConfig(pattern="mixed", rate=0.5)
    a = simulate_missing([30, 40], NAMES, cfg, seed=5)
    b = simulate_missing([30, 40], NAMES, cfg, seed=5)
    c = simulate_missing([30, 40], NAMES, cfg, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_eval_patterns_and_presence():
    assert eval_patterns(NAMES) == ["full", "only:img", "only:txt"]
    assert pattern_presence("only:txt", NAMES, 3).tolist() == [[False, True]] * 3
    assert pattern_presence("full", NAMES, 2).all()
    with pytest.raises(ConfigError, match="only:audio"):
        eval_patterns(NAMES, ["only:audio"])


def test_with_present_zeroes_absent_inputs(tiny_cfg):
    from mmfl.data import build_federated_data

    data = build_federated_data(tiny_cfg)
    for shard in data.clients:
        for j, name in enumerate(shard.names):
            absent = ~shard.present[:, j]
            assert torch.all(shard.inputs[name][absent] == 0)
    assert data.test.present.all()


def test_drop_all_missing_keeps_empty_rows_and_the_shards_lose_them(tmp_path):
    from mmfl.config import parse_config
    from mmfl.data import build_federated_data
    from tests.conftest import tiny_config_dict

    cfg = MissingConfig(pattern="independent", rate=0.5, drop_all_missing=True)
    p = sample_presence(4000, NAMES, cfg, 0.5, np.random.default_rng(7))
    # independent Bernoulli(0.5) per modality: a quarter of the rows miss both (and stay so)
    assert abs((~p.any(axis=1)).mean() - 0.25) < 0.02
    # the same draws without the option: identical wherever a modality is left
    q = sample_presence(4000, NAMES, MissingConfig(pattern="independent", rate=0.5), 0.5, np.random.default_rng(7))
    assert np.array_equal(p[p.any(axis=1)], q[p.any(axis=1)])

    raw = tiny_config_dict(tmp_path, missing={"pattern": "independent", "rate": 0.5})
    keep = build_federated_data(parse_config(raw))
    drop = build_federated_data(parse_config({**raw, "missing": {**raw["missing"], "drop_all_missing": True}}))
    for k, (a, b) in enumerate(zip(keep.clients, drop.clients)):
        assert b.present.any(dim=1).all()
        rng = np.random.default_rng([0, 3, k])
        mask = sample_presence(len(a), tuple(a.names), MissingConfig(**raw["missing"], drop_all_missing=True), 0.5, rng)
        kept = torch.from_numpy(mask.any(axis=1))
        assert len(b) == int(kept.sum()) < len(a)
        assert torch.equal(b.labels, a.labels[kept]) and torch.equal(b.present, torch.from_numpy(mask[mask.any(axis=1)]))
    # the other patterns never leave a sample without modalities: the option changes nothing there
    mixed = MissingConfig(pattern="mixed", rate=0.5, drop_all_missing=True)
    assert np.array_equal(sample_presence(50, NAMES, mixed, 0.5, np.random.default_rng(1)),
                          sample_presence(50, NAMES, MissingConfig(pattern="mixed", rate=0.5), 0.5, np.random.default_rng(1)))


def test_test_patterns_grammar_and_masks():
    from mmfl.config import parse_test_pattern

    assert parse_test_pattern("~train") == ("~train", None, None)
    assert parse_test_pattern("mixed@0.7") == ("mixed", None, 0.7)
    assert parse_test_pattern("missing:txt@0.3") == ("missing", "txt", 0.3)
    assert parse_test_pattern("independent@0.5") == ("independent", None, 0.5)
    for bad, why in (("mixed@1.5", "rate after @"), ("mixed@x", "rate after @"), ("mixed", "unknown test pattern"),
                     ("missing:@0.5", "unknown test pattern"), ("both@0.5", "unknown test pattern")):
        with pytest.raises(ValueError, match=why):
            parse_test_pattern(bad)
    with pytest.raises(ConfigError, match="missing:audio@0.5"):
        eval_patterns(NAMES, ["full", "missing:audio@0.5"])

    n = 200
    mixed = pattern_presence("mixed@0.7", NAMES, n, seed=3)
    assert (~mixed.all(dim=1)).sum() == 140 and mixed.any(dim=1).all()  # 70% miss exactly one
    assert (~mixed[:, 0]).sum() == 70 and (~mixed[:, 1]).sum() == 70  # half image, half text: "missing both"
    miss = pattern_presence("missing:txt@0.3", NAMES, n, seed=3)
    assert miss[:, 0].all() and (~miss[:, 1]).sum() == 60
    # same (seed, pattern) -> same mask for every method; another seed -> another mask
    assert torch.equal(mixed, pattern_presence("mixed@0.7", NAMES, n, seed=3))
    assert not torch.equal(mixed, pattern_presence("mixed@0.7", NAMES, n, seed=4))

    # ~train: the training configuration applied to the test set
    train = MissingConfig(pattern="missing:img", rate=0.25)
    like = pattern_presence("~train", NAMES, n, train, seed=3)
    assert like[:, 1].all() and (~like[:, 0]).sum() == 50
    ind = MissingConfig(pattern="independent", rate=0.5, drop_all_missing=True)
    like = pattern_presence("~train", NAMES, 4000, ind, seed=3)
    assert abs((~like.any(dim=1)).float().mean().item() - 0.25) < 0.03  # rows left out of the evaluation


def test_metric_names_round_trip():
    from mmfl.config import pattern_of_metric
    from mmfl.results import metric_key

    for p in ("full", "only:img", "~train", "mixed@0.7", "missing:txt@0.3", "independent@0.5", "only:my_mod"):
        key = metric_key("acc", p)
        assert "@" not in key and "~" not in key
        assert pattern_of_metric(key.split("/", 1)[1]) == p


def test_evaluate_scores_only_the_samples_a_drawn_pattern_keeps(tmp_path):
    from torchmetrics.functional.classification import multiclass_accuracy

    from mmfl.data import build_federated_data
    from mmfl.engine import steps
    from mmfl.methods import get_method, parse_experiment
    from mmfl.methods.base import Context
    from tests.conftest import tiny_config_dict

    cfg = parse_experiment(tiny_config_dict(tmp_path, missing={"pattern": "independent", "rate": 0.5, "drop_all_missing": True},
                                        eval={"patterns": ["~train", "mixed@0.5"]}))
    data = build_federated_data(cfg)
    method = get_method("fedavg")
    state = method.init_state(data.spec, cfg)
    got = steps.evaluate(cfg, state, data.test)
    model = method.load_model(state.model_weights(), Context(cfg, data.spec, 0))
    model.eval()
    for pattern in ("~train", "mixed@0.5"):
        present = pattern_presence(pattern, data.spec.names, len(data.test), cfg.missing, cfg.seed)
        keep = present.any(dim=1)
        assert (pattern == "~train") == bool((~keep).any())  # only ~train (with the drop) leaves samples out
        sub = data.test.subset(torch.nonzero(keep).flatten()).with_present(present[keep])
        with torch.no_grad():
            pred = model(sub.inputs, sub.present).argmax(dim=1)
        expected = float(multiclass_accuracy(pred, sub.labels, num_classes=data.spec.num_classes, average="micro"))
        assert got[pattern]["acc"] == pytest.approx(expected)


SUBSET_NAMES = ("a", "b", "c")


def test_subsets_pattern_gives_each_client_its_own_modalities():
    """Client A {a, b}, client B {a, c}, cycled: rate 1.0 limits every sample, rate 0.2 exactly 20% of them."""
    cfg = MissingConfig(pattern="subsets", rate=1.0, client_modalities=[["a", "b"], ["a", "c"]])
    masks = simulate_missing([10, 10, 10], SUBSET_NAMES, cfg, seed=0)
    assert masks[0].tolist() == [[True, True, False]] * 10
    assert masks[1].tolist() == [[True, False, True]] * 10
    assert masks[2].tolist() == [[True, True, False]] * 10  # cycled: client 2 is like client 0
    part = MissingConfig(pattern="subsets", rate=0.2, client_modalities=[["a", "b"], ["a", "c"]])
    masks = simulate_missing([10, 15], SUBSET_NAMES, part, seed=0)
    limited = [~m.all(dim=1) for m in masks]
    assert [int(x.sum()) for x in limited] == [2, 3]  # round(0.2 * n) support-sized limited part
    assert masks[0][limited[0]].tolist() == [[True, True, False]] * 2
    assert masks[1][limited[1]].tolist() == [[True, False, True]] * 3
    assert masks[0][~limited[0]].all() and masks[1][~limited[1]].all()  # the rest keeps every modality


def test_train_like_test_pattern_with_subsets_takes_the_subsets_in_turn():
    from mmfl.data.missing import pattern_presence

    cfg = MissingConfig(pattern="subsets", rate=1.0, client_modalities=[["a", "b"], ["a", "c"]])
    p = pattern_presence("~train", SUBSET_NAMES, 10, cfg, seed=0)
    rows = sorted(map(tuple, p.tolist()))
    assert rows == [(True, False, True)] * 5 + [(True, True, False)] * 5


def test_subsets_pattern_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"missing.client_modalities.1 = \['a', 'd'\]: modality 'd' not in"):
        simulate_missing([5, 5], SUBSET_NAMES, MissingConfig(pattern="subsets", client_modalities=[["a"], ["a", "d"]]), 0)
    with pytest.raises(ValueError, match="go together"):
        MissingConfig(pattern="mixed", client_modalities=[["a"]])
    with pytest.raises(ValueError, match="go together"):
        MissingConfig(pattern="subsets")
    with pytest.raises(ValueError, match="distinct"):
        MissingConfig(pattern="subsets", client_modalities=[["a", "a"]])


@pytest.mark.parametrize("method", ["fedavg", "zerofill", "fedprox", "pmcmfl", "threefm", "flexmod", "partial_update"])
def test_every_method_trains_on_per_client_subsets(tmp_path, method):
    from mmfl.local import run_experiment
    from mmfl.methods import parse_experiment
    from tests.conftest import tiny_config_dict

    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": method}, train={"rounds": 1},
                                        missing={"pattern": "subsets", "rate": 0.5, "client_modalities": [["a"], ["b"]]}))
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 1 and set(result.final) == {"full", "only:a", "only:b"}
