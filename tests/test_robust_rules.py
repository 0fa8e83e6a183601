"""Robust aggregation rules, checked against values computed by hand (mmfl/aggregation/robust_*.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmfl.aggregation import robust_mean
from mmfl.aggregation import robust_rules as rules
from mmfl.aggregation.mean import weighted_mean
from mmfl.engine.vectorized.stack import ClientStack

T = torch.tensor


def rule(name: str, fraction: float = 0.3, select: int | None = None, clip: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(rule=name, byzantine_fraction=fraction, krum_select=select, clip_ratio=clip)


# ---- pure rules ----------------------------------------------------------------------------------
def test_coordinate_median_odd_and_even():
    assert torch.equal(rules.coordinate_median(T([[1.0, 5.0], [3.0, -1.0], [2.0, 10.0]])), T([2.0, 5.0]))
    # even n: the mean of the two middle values (col 0: 1 2 | 3 10 -> 2.5; col 1: 0 2 | 4 8 -> 3)
    assert torch.equal(rules.coordinate_median(T([[1.0, 4.0], [3.0, 0.0], [10.0, 2.0], [2.0, 8.0]])), T([2.5, 3.0]))


def test_trimmed_mean_drops_both_ends():
    rows = T([[1.0, -7.0], [2.0, 0.0], [3.0, 1.0], [100.0, 2.0]])
    assert torch.equal(rules.trimmed_mean(rows, 1), T([2.5, 0.5]))  # (2+3)/2, (0+1)/2
    assert torch.equal(rules.trimmed_mean(rows, 0), T([26.5, -1.0]))
    with pytest.raises(ValueError, match="2 \\* trim < n"):
        rules.trimmed_mean(rows, 2)


def test_gram_and_squared_distances():
    rows = T([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert torch.equal(rules.gram(rows), T([[0.0, 0.0, 0.0], [0.0, 25.0, 50.0], [0.0, 50.0, 100.0]], dtype=torch.float64))
    d = rules.squared_distances(rules.gram(rows))
    assert torch.equal(d, T([[0.0, 25.0, 100.0], [25.0, 0.0, 25.0], [100.0, 25.0, 0.0]], dtype=torch.float64))


def test_krum_scores_and_selection():
    # points 0, 1, 2, 10 on a line; squared distances
    d = rules.squared_distances(rules.gram(T([[0.0], [1.0], [2.0], [10.0]])))
    # f = 1: n - f - 2 = 1 nearest neighbour: 1, 1, 1, 64
    assert rules.krum_scores(d, 1).tolist() == [1.0, 1.0, 1.0, 64.0]
    assert rules.multi_krum(d, 1, 3) == [0, 1, 2]
    # f = 0: two nearest: 0 -> 1+4, 1 -> 1+1, 2 -> 1+4, 10 -> 64+81; Krum (m = 1) keeps point 1
    assert rules.krum_scores(d, 0).tolist() == [5.0, 2.0, 5.0, 145.0]
    assert rules.multi_krum(d, 0, 1) == [1]
    with pytest.raises(ValueError, match="m = 5"):
        rules.multi_krum(d, 0, 5)


def test_clip_factors_and_cosines():
    assert rules.clip_factors(T([1.0, 2.0, 4.0, 0.0]), 2.0).tolist() == [1.0, 1.0, 0.5, 1.0]
    cos = rules.cosines(T([2.0, -2.0, 0.0]), T([1.0, 1.0, 0.0]), 2.0)
    assert cos.tolist() == [1.0, -1.0, 0.0]


# ---- robust_average on parameter dictionaries ----------------------------------------------------------
REF = {"w": T([1.0, 1.0, 1.0]), "steps": T(4)}


def models(*rows, steps=(1, 2, 3)):
    return [{"w": T(r), "steps": T(s)} for r, s in zip(rows, steps)]


def test_mean_rule_is_exactly_weighted_mean():
    ms = models([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [100.0, -50.0, 3.0])
    got = robust_mean.robust_average(ms, [1, 2, 3], REF, rule("mean"))
    want = weighted_mean(ms, [1, 2, 3])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_median_ignores_one_extreme_update_and_averages_integer_buffers():
    ms = models([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [100.0, -50.0, 3.0])
    got = robust_mean.robust_average(ms, [1, 1, 2], REF, rule("median"))
    assert torch.equal(got["w"], T([2.0, 2.0, 3.0]))
    assert got["steps"].dtype == torch.int64 and int(got["steps"]) == 2  # (1 + 2 + 2*3) / 4 = 2.25 -> 2
    assert list(got) == ["w", "steps"]


def test_trimmed_mean_with_the_byzantine_fraction():
    ms = models([0.0], [2.0], [4.0], [1000.0], steps=(0, 0, 0, 0))
    ref = {"w": T([0.0]), "steps": T(0)}
    assert robust_mean.byzantine_count(4, 0.3) == 1
    got = robust_mean.robust_average(ms, [1, 1, 1, 1], ref, rule("trimmed_mean", 0.3))
    assert torch.equal(got["w"], T([3.0]))  # (2 + 4) / 2


def test_multi_krum_leaves_the_outlier_out_and_weights_the_rest():
    ms = models([0.0], [1.0], [2.0], [10.0], steps=(0, 0, 0, 0))
    ref = {"w": T([0.0]), "steps": T(0)}
    got = robust_mean.robust_average(ms, [1, 1, 2, 1], ref, rule("multi_krum", 0.3))  # f = 1, m = 3
    assert torch.allclose(got["w"], T([(0.0 + 1.0 + 2 * 2.0) / 4]))
    krum = robust_mean.robust_average(ms, [1, 1, 1, 1], ref, rule("multi_krum", 0.0, select=1))
    assert torch.equal(krum["w"], T([1.0]))


def test_clip_scales_large_deltas_to_the_median_norm():
    ref = {"w": T([1.0, 1.0])}
    ms = [{"w": T([2.0, 1.0])}, {"w": T([1.0, 2.0])}, {"w": T([11.0, 1.0])}]  # delta norms 1, 1, 10
    got = robust_mean.robust_average(ms, [1, 1, 1], ref, rule("clip", clip=1.0))
    # deltas (1, 0), (0, 1), (10, 0) * 0.1 -> mean (2/3, 1/3)
    assert torch.allclose(got["w"], T([1.0 + 2 / 3, 1.0 + 1 / 3]))


def test_blocks_and_stacked_rows_give_the_same_result(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    ref = {"a": torch.randn(5, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    ms = [{k: v + torch.randn(v.shape, generator=gen) for k, v in ref.items()} for _ in range(5)]
    want = {name: robust_mean.robust_average(ms, [1, 2, 3, 4, 5], ref, rule(name))
            for name in ("median", "trimmed_mean", "multi_krum", "clip")}
    stack = ClientStack({k: torch.stack([m[k] for m in ms]) for k in ref}, {}, list(ref))
    views = [stack.view(i) for i in range(5)]
    monkeypatch.setattr(robust_mean, "_BLOCK_ELEMENTS", 7)  # several column blocks per tensor
    for name, expected in want.items():
        got = robust_mean.robust_average(views, [1, 2, 3, 4, 5], ref, rule(name))
        assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in ref), name
    stats = robust_mean.delta_stats(views, ref, with_gram=True)
    flat = torch.stack([torch.cat([(m[k] - ref[k]).flatten() for k in ref]) for m in ms]).double()
    assert torch.allclose(stats.norms, flat.norm(dim=1))
    assert torch.allclose(stats.gram, flat @ flat.T)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown aggregation rule 'mode'"):
        robust_mean.robust_average(models([1.0], [2.0]), [1, 1], REF, rule("mode"))
