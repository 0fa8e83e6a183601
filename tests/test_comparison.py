"""The statistics of ``mmfl report`` on runs whose values are computed by hand."""

from __future__ import annotations

import math

import pytest

from mmfl.comparison import (
    Run, compare, differing, group_runs, paired, summarize, to_csv, to_html, to_markdown,
)
from mmfl.errors import ConfigError
from tests.helpers.comparison_runs import FINAL, ROUND_COSTS, ROUNDS, accuracy


def _run(method: str, epochs: int, seed: int, start: int = 100, acc: float | None = None) -> Run:
    settings = {"method.name": method, "train.local_epochs": str(epochs), "partition.alpha": "0.5",
                "method.params": "{}" if method == "fedavg" else "-"}
    if method == "fedprox":
        settings = {k: v for k, v in settings.items() if k != "method.params"} | {"method.params.mu": "0.01"}
    results = {p: {"acc": accuracy(method, epochs, seed, p, ROUNDS) if acc is None else acc, "f1": 0.5}
               for p in ("full", "only:a")}
    curves = {p: [(r, accuracy(method, epochs, seed, p, r)) for r in range(1, ROUNDS + 1)] for p in ("full", "only:a")}
    costs = {k: v * ROUNDS for k, v in ROUND_COSTS.items()} | {"round_wall_s": 4.0 + seed, "peak_rss_mb": 500.0 + seed}
    return Run(f"{method}{epochs}s{seed}@{start}", method, seed, settings, results, curves, costs, ROUNDS,
               {"local_epochs": str(epochs), "batch_size": "32", "optimizer": "SGD(lr=0.02)"}, {},
               f"x-{method}-{epochs}", start)


def runs() -> list[Run]:
    return [_run(m, e, s) for (m, e) in FINAL for s in range(3)]


def test_summary_and_paired_differences_match_hand_computation():
    s = summarize([0.80, 0.84, 0.88])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.84), pytest.approx(0.04))
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.std)
    d = paired({0: 0.82, 1: 0.83, 2: 0.90, 3: 0.5}, {0: 0.80, 1: 0.84, 2: 0.88})
    assert (d.wins, d.losses, d.ties, d.stat.n) == (2, 1, 0, 3)  # seed 3 has no baseline: not paired
    assert d.stat.mean == pytest.approx(0.01) and d.stat.std == pytest.approx(math.sqrt(0.0003))
    assert paired({5: 1.0}, {0: 0.5}) is None


def test_groups_split_by_setting_and_the_differing_setting_is_named():
    groups, superseded = group_runs(runs() + [_run("fedavg", 2, 0, start=1, acc=0.5)])
    assert superseded == 1  # the older run of (fedavg, 2 epochs, seed 0) does not count
    assert sorted((g.method, g.settings["train.local_epochs"], g.seeds) for g in groups) == [
        ("fedavg", "2", [0, 1, 2]), ("fedavg", "5", [0, 1, 2]), ("fedprox", "2", [0, 1, 2])]
    # fedprox's mu is what the method column already says; the epochs differ between fedavg groups
    assert differing(groups) == ["method.name", "train.local_epochs"]


def test_compare_means_stds_deltas_and_notes():
    comp = compare(runs() + [_run("fedavg", 2, 0, start=1, acc=0.5)], baseline="fedavg", costs=True)
    rows = {(r["method"], r["settings"]): r for r in comp.records()}
    a2, a5, p2 = rows[("fedavg", "train.local_epochs=2")], rows[("fedavg", "train.local_epochs=5")], \
        rows[("fedprox", "train.local_epochs=2")]
    assert (a2["acc/full/mean"], a2["acc/full/std"], a2["acc/full/n"]) == (pytest.approx(0.84), pytest.approx(0.04), 3)
    assert (a5["acc/full/mean"], a5["acc/full/std"]) == (pytest.approx(0.87), pytest.approx(0.02))
    assert p2["acc/full/std"] == pytest.approx(math.sqrt(0.0019))
    assert p2["acc/only:a/mean"] == pytest.approx(0.75)
    # paired by seed against fedavg with the same epochs: +0.02, -0.01, +0.02
    assert (p2["delta/full/mean"], p2["delta/full/std"]) == (pytest.approx(0.01), pytest.approx(math.sqrt(0.0003)))
    assert (p2["delta/full/wins"], p2["delta/full/losses"], p2["delta/full/ties"]) == (2, 1, 0)
    # costs: per-round bytes, totals, client updates per second of wall time (8 updates / (4 + seed) s)
    assert p2["cost/bytes_up_per_round/mean"] == 1000.0 and p2["cost/bytes_down_per_round/mean"] == 3000.0
    assert p2["cost/encoder_updates/mean"] == 20.0 and p2["cost/wall_s/mean"] == pytest.approx(5.0)
    assert p2["cost/client_updates_per_s/mean"] == pytest.approx((8 / 4 + 8 / 5 + 8 / 6) / 3)
    assert "1 older runs of the same settings and seed left out (the newest counts)" in comp.notes
    cells = {(row[0], row[1]): row for row in comp.cells()}
    assert cells[("fedprox", "train.local_epochs=2")][3:5] == ["85.0 ± 4.4", "+1.0 ± 1.7 (2/1)"]
    assert cells[("fedavg", "train.local_epochs=5")][4] == "baseline"
    assert comp.header()[:5] == ["method", "settings", "seeds", "acc full (%)", "Δ full vs fedavg (W/L)"]


def test_where_filters_and_left_out_runs_are_counted():
    comp = compare(runs(), where=["train.local_epochs=2"], limit=1, left_out={"unfinished or failed runs": 2})
    assert [g.method for g in comp.groups] == ["fedavg"]
    assert comp.notes[:3] == ["2 unfinished or failed runs left out",
                              "3 runs not matching --where train.local_epochs=2 left out",
                              "1 groups (3 runs) beyond --limit 1 left out"]
    assert compare(runs(), where=["method=fedprox", "partition.alpha=0.50"]).groups[0].method == "fedprox"
    with pytest.raises(ConfigError, match="--where train.lrr: no run has this setting"):
        compare(runs(), where=["train.lrr=1"])
    with pytest.raises(ConfigError, match="--baseline zerofill: no shown run has method 'zerofill'"):
        compare(runs(), baseline="zerofill")


def test_unequal_budgets_are_said_and_outputs_render():
    rs = runs()
    for r in rs:
        if r.method == "fedprox":
            r.budget = {"local_epochs": "5", "batch_size": "32", "optimizer": "Adam(lr=0.001)"}
            r.overrides = {"train.local_epochs": "5"}
    comp = compare(rs, baseline="fedavg")
    note = [n for n in comp.notes if n.startswith("the methods train with unequal local budgets")]
    assert note and "fedprox: 5 epochs x batch 32, Adam(lr=0.001) (overrides train.local_epochs)" in note[0]
    md, csv_text, html = to_markdown(comp), to_csv(comp), to_html(comp, figures=["accuracy_full.png"])
    assert "| fedprox | train.local_epochs=2 | 3 | 85.0 ± 4.4 | +1.0 ± 1.7 (2/1) |" in md
    assert csv_text.splitlines()[0].startswith("method,settings,seeds,seed_list,acc/full/mean,acc/full/std,acc/full/n")
    assert "local_budget" in csv_text.splitlines()[0] and html.count("<tr>") == 4 and "accuracy_full.png" in html
    # a page that stands alone names each figure and carries its image inline
    inline = to_html(comp, figures={"final_accuracy.png": "data:image/png;base64,iVBORw0KGgo="})
    assert '<img src="data:image/png;base64,iVBORw0KGgo=" alt="final_accuracy.png">' in inline
