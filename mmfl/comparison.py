"""Comparing methods across seeds: groups of runs, mean ± std, paired differences, costs, plots.

Pure functions over plain run records (``mmfl/io/runs.py`` reads them from MLflow), so the
statistics can be checked by hand:

- A run record is ``Run``: its method, seed, the result-changing settings it was run with (the
  settings the experiment id hashes, ``config.is_result_setting``), the final test matrix, the
  accuracy curve per test pattern, its costs and its local training budget.
- Runs with equal settings apart from the seed form a ``Group`` (the newest run per seed counts).
- ``compare`` turns groups into a ``Comparison``: one row per group, a column naming what differs
  between the shown groups, mean ± sample std (n - 1) over seeds and the seed count per test
  pattern, and paired differences against a baseline method (same settings except ``method.*``,
  paired by seed) with wins / losses / ties.
- ``plot_final`` (final metric per test pattern and group) and ``plot_pattern`` (metric vs round
  and vs cost) draw it; a multi-method run's parent run (``engine/comparison.py``) logs the same
  table and final plot.
- Everything left out (unfinished runs, older runs of the same experiment and seed, runs not
  matching a filter, groups beyond a limit) is counted in ``Comparison.notes``.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmfl.errors import ConfigError

METHOD_KEY = "method.name"
COST_COLUMNS = ("wall_s", "client_updates_per_s", "bytes_up_per_round", "bytes_down_per_round")
PEAK_PREFIX = "peak_"


@dataclass
class Run:
    """One finished run as the report sees it (every value as logged, settings as strings)."""

    run_id: str
    method: str
    seed: int
    settings: dict[str, str]  # result-changing settings, method.name and method.params.* included, seed excluded
    results: dict[str, dict[str, float]]  # pattern -> {"acc", "f1"} after the last round
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # pattern -> [(round, acc)]
    costs: dict[str, float] = field(default_factory=dict)  # cost name -> total over rounds (peak_*: maximum)
    rounds: int = 0
    budget: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""
    start_time: int = 0


@dataclass
class Group:
    """Runs with the same result-changing settings apart from the seed (one run per seed)."""

    settings: dict[str, str]
    runs: dict[int, Run]  # seed -> run

    @property
    def method(self) -> str:
        return self.settings.get(METHOD_KEY, "?")

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    def values(self, pattern: str, metric: str = "acc") -> dict[int, float]:
        return {s: r.results[pattern][metric] for s, r in self.runs.items()
                if pattern in r.results and metric in r.results[pattern]}

    def costs(self) -> dict[str, list[float]]:
        """Per-run derived costs: totals, per-round bytes and client updates per second."""
        out: dict[str, list[float]] = {}
        for run in self.runs.values():
            for name, value in derived_costs(run).items():
                out.setdefault(name, []).append(value)
        return out


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation (n - 1); nan with one value
    n: int


@dataclass(frozen=True)
class Paired:
    """Differences ``method - baseline`` over the seeds both have."""

    stat: Stat
    wins: int
    losses: int
    ties: int


def pattern_order(pattern: str) -> tuple[int, str]:
    """Columns: full, then ~train, then drawn patterns (mixed@r, missing:<m>@r, ...), then only:<m>."""
    rank = 0 if pattern == "full" else 1 if pattern == "~train" else 3 if pattern.startswith("only:") else 2
    return rank, pattern


def summarize(values: Iterable[float]) -> Stat:
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return Stat(mean, std, n)


def paired(values: Mapping[int, float], baseline: Mapping[int, float]) -> Paired | None:
    """Paired by seed; None when no seed is shared."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    return Paired(summarize(diffs), sum(d > 0 for d in diffs), sum(d < 0 for d in diffs), sum(d == 0 for d in diffs))


def derived_costs(run: Run) -> dict[str, float]:
    """Totals as recorded, plus per-round bytes and client updates per second of wall time."""
    c = dict(run.costs)
    out: dict[str, float] = {}
    rounds = max(run.rounds, 1)
    if "round_wall_s" in c:
        out["wall_s"] = c.pop("round_wall_s")
        if "client_updates" in c and out["wall_s"] > 0:
            out["client_updates_per_s"] = c["client_updates"] / out["wall_s"]
    for side in ("up", "down"):
        if f"bytes_{side}" in c:
            out[f"bytes_{side}_per_round"] = c.pop(f"bytes_{side}") / rounds
    out.update(c)
    return out


# ---- selecting runs ---------------------------------------------------------------------------
def _field(run: Run, key: str) -> str | None:
    if key == "seed":
        return str(run.seed)
    if key in ("method", METHOD_KEY):
        return run.method
    if key == "experiment_id":
        return run.experiment_id
    return run.settings.get(key)


def _same(logged: str | None, wanted: str) -> bool:
    if logged is None:
        return False
    if logged == wanted:
        return True
    try:
        return float(logged) == float(wanted)
    except ValueError:
        return logged.lower() == wanted.lower()


def parse_where(clauses: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for clause in clauses:
        key, sep, value = clause.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--where {clause!r}: expected key=value, e.g. --where partition.alpha=0.5")
        out.append((key.strip(), value.strip()))
    return out


def select(runs: Sequence[Run], where: Sequence[tuple[str, str]]) -> list[Run]:
    """Runs whose settings match every ``(key, value)``; a key no run has is an error."""
    for key, _ in where:
        if runs and all(_field(r, key) is None for r in runs):
            known = sorted({k for r in runs for k in r.settings} | {"method", "seed", "experiment_id"})
            raise ConfigError(f"--where {key}: no run has this setting; known: {', '.join(known)}")
    return [r for r in runs if all(_same(_field(r, k), v) for k, v in where)]


def group_runs(runs: Sequence[Run]) -> tuple[list[Group], int]:
    """(groups in order of first appearance, runs superseded by a newer run of the same settings and seed)."""
    groups: dict[tuple, Group] = {}
    superseded = 0
    for run in sorted(runs, key=lambda r: -r.start_time):  # newest first
        key = tuple(sorted(run.settings.items()))
        group = groups.setdefault(key, Group(dict(run.settings), {}))
        if run.seed in group.runs:
            superseded += 1
            continue
        group.runs[run.seed] = run
    return list(groups.values()), superseded


def _setting(group: Group, key: str) -> str | None:
    value = group.settings.get(key)
    return None if value == "{}" else value  # an empty section (a method without params) is no setting


def differing(groups: Sequence[Group]) -> list[str]:
    """Settings whose value is not the same in every group (a setting some groups lack counts).

    A method's own params (``method.params.*``) count only where they differ between groups of
    the same method: that FedProx has ``mu`` and FedAvg does not is what the method column says.
    """
    keys = sorted({k for g in groups for k in g.settings if _setting(g, k) is not None})
    out = []
    for k in keys:
        if k.startswith("method.params"):
            by_method: dict[str, set] = {}
            for g in groups:
                by_method.setdefault(g.method, set()).add(_setting(g, k))
            if any(len(v) > 1 for v in by_method.values()):
                out.append(k)
        elif len({_setting(g, k) for g in groups}) > 1:
            out.append(k)
    return out


def method_params(groups: Sequence[Group]) -> dict[str, str]:
    """Each method's params that are the same in all of its groups: ``{"fedprox": "mu=0.1"}``."""
    out = {}
    for method in dict.fromkeys(g.method for g in groups):
        mine = [g for g in groups if g.method == method]
        keys = sorted({k for g in mine for k in g.settings if k.startswith("method.params.")})
        fixed = [f"{k[len('method.params.'):]}={mine[0].settings[k]}" for k in keys
                 if len({g.settings.get(k) for g in mine}) == 1]
        if fixed:
            out[method] = ", ".join(fixed)
    return out


def baseline_of(group: Group, groups: Sequence[Group], baseline: str) -> Group | None:
    """The group of method ``baseline`` with the same settings apart from ``method.*``."""
    def rest(g: Group) -> dict[str, str]:
        return {k: v for k, v in g.settings.items() if not k.startswith("method.")}

    mine = rest(group)
    for g in groups:
        if g.method == baseline and rest(g) == mine:
            return g
    return None


# ---- the comparison table -----------------------------------------------------------------------
@dataclass
class Comparison:
    patterns: list[str]
    groups: list[Group]
    varying: list[str]  # settings that differ between the shown groups (method.name first if it does)
    baseline: str | None
    metric: str = "acc"
    costs: bool = False
    notes: list[str] = field(default_factory=list)
    cost_names: list[str] = field(default_factory=list)

    def label(self, group: Group) -> str:
        """The group's name in plots: method and the other settings that differ."""
        extra = [f"{k}={group.settings.get(k, '-')}" for k in self.varying if k != METHOD_KEY]
        return " ".join([group.method, *extra])

    def stat(self, group: Group, pattern: str) -> Stat:
        return summarize(group.values(pattern, self.metric).values())

    def delta(self, group: Group, pattern: str) -> Paired | None:
        if self.baseline is None or group.method == self.baseline:
            return None
        base = baseline_of(group, self.groups, self.baseline)
        if base is None:
            return None
        return paired(group.values(pattern, self.metric), base.values(pattern, self.metric))

    # -- records (CSV) and formatted cells (Markdown, HTML, terminal) --
    def records(self) -> list[dict[str, Any]]:
        """One flat record per group with raw numbers (fractions, not percent)."""
        out = []
        for g in self.groups:
            rec: dict[str, Any] = {"method": g.method,
                                   "settings": "; ".join(f"{k}={g.settings.get(k, '-')}" for k in self.varying
                                                         if k != METHOD_KEY),
                                   "seeds": len(g.runs), "seed_list": " ".join(map(str, g.seeds))}
            for p in self.patterns:
                s = self.stat(g, p)
                rec[f"{self.metric}/{p}/mean"], rec[f"{self.metric}/{p}/std"], rec[f"{self.metric}/{p}/n"] = s.mean, s.std, s.n
                d = self.delta(g, p)
                if self.baseline is not None:
                    rec[f"delta/{p}/mean"] = d.stat.mean if d else math.nan
                    rec[f"delta/{p}/std"] = d.stat.std if d else math.nan
                    rec[f"delta/{p}/wins"] = d.wins if d else ""
                    rec[f"delta/{p}/losses"] = d.losses if d else ""
                    rec[f"delta/{p}/ties"] = d.ties if d else ""
            if self.costs:
                costs = g.costs()
                for name in self.cost_names:
                    s = summarize(costs.get(name, []))
                    rec[f"cost/{name}/mean"], rec[f"cost/{name}/std"] = s.mean, s.std
            if self.unequal_budgets():
                rec["local_budget"] = budget_label(g)
            out.append(rec)
        return out

    def header(self) -> list[str]:
        cols = ["method", "settings", "seeds"]
        for p in self.patterns:
            cols.append(f"{self.metric} {p} (%)")
            if self.baseline is not None:
                cols.append(f"Δ {p} vs {self.baseline} (W/L)")
        if self.costs:
            cols += [COST_TITLES.get(n, n) for n in self.cost_names]
        return cols

    def cells(self) -> list[list[str]]:
        rows = []
        for g, rec in zip(self.groups, self.records()):
            row = [g.method, rec["settings"] or "-", str(len(g.runs))]
            for p in self.patterns:
                row.append(fmt_pct(self.stat(g, p)))
                if self.baseline is not None:
                    d = self.delta(g, p)
                    row.append("baseline" if g.method == self.baseline else
                               "-" if d is None else f"{fmt_pct(d.stat, signed=True)} ({d.wins}/{d.losses})")
            if self.costs:
                for name in self.cost_names:
                    row.append(fmt_cost(name, rec[f"cost/{name}/mean"], rec[f"cost/{name}/std"]))
            rows.append(row)
        return rows

    def columns(self) -> dict[str, list]:
        """``records`` column by column (an MLflow table)."""
        records = self.records()
        return {k: [r.get(k) for r in records] for k in dict.fromkeys(k for r in records for k in r)}

    def unequal_budgets(self) -> bool:
        return len({budget_label(g) for g in self.groups}) > 1

    def budget_note(self) -> str | None:
        if not self.unequal_budgets():
            return None
        by_method: dict[str, str] = {}
        for g in self.groups:
            by_method.setdefault(g.method, budget_label(g))
        return ("the methods train with unequal local budgets (compare with care): "
                + "; ".join(f"{m}: {b}" for m, b in by_method.items()))


COST_TITLES = {"wall_s": "wall (s)", "client_updates_per_s": "client updates/s", "bytes_up_per_round": "up/round",
               "bytes_down_per_round": "down/round", "peak_rss_mb": "peak RSS (MiB)", "peak_gpu_mb": "peak GPU (MiB)"}


def budget_label(group: Group) -> str:
    """``2 epochs x batch 32, SGD(lr=0.02, momentum=0.9)`` (+ what the method overrides)."""
    run = group.runs[group.seeds[0]]
    b = run.budget
    if not b:
        return "unknown"
    epochs = b.get("local_epochs", "?")
    text = f"{epochs} epoch{'' if epochs == '1' else 's'} x batch {b.get('batch_size', '?')}, {b.get('optimizer', '?')}"
    if run.overrides:
        text += " (overrides " + ", ".join(sorted(run.overrides)) + ")"
    return text


def compare(runs: Sequence[Run], *, baseline: str | None = None, where: Sequence[str] = (), costs: bool = False,
            metric: str = "acc", limit: int | None = None, left_out: Mapping[str, int] | None = None) -> Comparison:
    """The comparison of ``runs`` (finished runs); ``left_out`` counts runs the reader already dropped."""
    notes = [f"{n} {why} left out" for why, n in (left_out or {}).items() if n]
    chosen = select(runs, parse_where(where))
    if len(chosen) < len(runs):
        notes.append(f"{len(runs) - len(chosen)} runs not matching --where {' '.join(where)} left out")
    groups, superseded = group_runs(chosen)
    if superseded:
        notes.append(f"{superseded} older runs of the same settings and seed left out (the newest counts)")
    if limit is not None and len(groups) > limit:
        dropped = groups[limit:]
        notes.append(f"{len(dropped)} groups ({sum(len(g.runs) for g in dropped)} runs) beyond --limit {limit} left out")
        groups = groups[:limit]
    if baseline is not None and all(g.method != baseline for g in groups):
        raise ConfigError(f"--baseline {baseline}: no shown run has method {baseline!r}; methods: "
                          f"{', '.join(sorted({g.method for g in groups})) or 'none'}")
    groups.sort(key=lambda g: (g.method != baseline, g.method, sorted(g.settings.items())))
    varying = differing(groups)
    patterns = sorted({p for g in groups for r in g.runs.values() for p in r.results}, key=pattern_order)
    cost_names: list[str] = []
    if costs:
        present = {n for g in groups for n in g.costs()}
        cost_names = [n for n in COST_COLUMNS if n in present] + sorted(
            n for n in present if n not in COST_COLUMNS and not n.startswith(PEAK_PREFIX)) + sorted(
            n for n in present if n.startswith(PEAK_PREFIX))
    comp = Comparison(patterns, groups, varying, baseline, metric, costs, notes, cost_names)
    params = method_params(groups)
    if params:
        comp.notes.append("method params: " + "; ".join(f"{m}: {p}" for m, p in params.items()))
    note = comp.budget_note()
    if note:
        comp.notes.append(note)
    if baseline is not None:
        missing = [comp.label(g) for g in groups if g.method != baseline and baseline_of(g, groups, baseline) is None]
        if missing:
            comp.notes.append(f"no {baseline} run with the same settings for: {', '.join(missing)}")
    return comp


# ---- formatting ---------------------------------------------------------------------------------
def fmt_pct(stat: Stat, signed: bool = False) -> str:
    if stat.n == 0:
        return "-"
    sign = "+" if signed else ""
    mean = f"{100 * stat.mean:{sign}.1f}"
    return mean if stat.n == 1 else f"{mean} ± {100 * stat.std:.1f}"


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def fmt_cost(name: str, mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    if name.startswith("bytes_"):
        return fmt_bytes(mean)
    if abs(mean) >= 1e6:
        text = f"{mean:.3g}"
    elif name.endswith("_s") or name.endswith("_per_s"):
        text = f"{mean:.2f}"
    else:
        text = f"{mean:.0f}" if float(mean).is_integer() or abs(mean) >= 100 else f"{mean:.2f}"
    return text if math.isnan(std) or std == 0 or name.startswith(PEAK_PREFIX) else f"{text} ± {std:.2g}"


def _title(comp: Comparison) -> str:
    what = "accuracy" if comp.metric == "acc" else "macro-F1"
    return (f"{what} after the last round, mean ± std over seeds (%)"
            + (f"; Δ: paired difference vs {comp.baseline} over shared seeds, wins/losses" if comp.baseline else ""))


def to_markdown(comp: Comparison) -> str:
    header = comp.header()
    lines = [f"**{_title(comp)}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in comp.cells()]
    if comp.varying:
        lines += ["", "Settings that differ between the rows: " + ", ".join(comp.varying)]
    lines += ([""] if comp.notes and not comp.varying else []) + [f"- {n}" for n in comp.notes]
    return "\n".join(lines) + "\n"


def to_csv(comp: Comparison) -> str:
    records = comp.records()
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    return buf.getvalue()


def to_html(comp: Comparison, title: str = "mmfl comparison", figures: Sequence[str] | Mapping[str, str] = ()) -> str:
    """The table as a page, with ``figures`` below it: file names next to the page, or a mapping of
    name -> image source (e.g. a ``data:`` URI, for a page that stands alone)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in comp.header())
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in comp.cells())
    notes = "".join(f"<li>{esc(n)}</li>" for n in comp.notes)
    varying = f"<p>Settings that differ between the rows: {esc(', '.join(comp.varying))}</p>" if comp.varying else ""
    sources = figures if isinstance(figures, Mapping) else {f: f for f in figures}
    imgs = "".join(f'<p><img src="{esc(src)}" alt="{esc(name)}"></p>' for name, src in sources.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "td:nth-child(-n+2){text-align:left}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>{esc(_title(comp))}</p><table><tr>{head}</tr>{body}</table>{varying}"
            f"<ul>{notes}</ul>{imgs}</body></html>\n")


def figure_name(pattern: str) -> str:
    return "accuracy_" + re.sub(r"[^A-Za-z0-9._-]+", "_", pattern) + ".png"


FINAL_FIGURE = "final_accuracy.png"


def plot_final(comp: Comparison, title: str):
    """The final metric per test pattern (mean over seeds, error bar: ± std), one bar per group."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    patterns, groups = comp.patterns, comp.groups
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(patterns) * max(1, len(groups))), 3.8), dpi=100,
                           layout="constrained")
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        stats = [comp.stat(g, p) for p in patterns]
        ax.bar([j + i * width for j in range(len(patterns))], [s.mean for s in stats], width,
               yerr=[0 if math.isnan(s.std) else s.std for s in stats], capsize=2,
               label=f"{comp.label(g)} (n={len(g.runs)})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(patterns))], patterns)
    ax.set(ylabel=f"final test {comp.metric}", ylim=(0, 1), title=title)
    ax.grid(axis="y", alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    return fig


def plot_pattern(comp: Comparison, pattern: str, cost: str | None = None):
    """Accuracy vs round (mean over seeds, band: ± std) and accuracy vs cost, one line/point per group."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if cost is None:
        cost = next((c for c in ("wall_s", "bytes_up_per_round") if any(c in g.costs() for g in comp.groups)), None)
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100, layout="constrained")
    for i, g in enumerate(comp.groups):
        color = f"C{i % 10}"
        label = comp.label(g)
        by_round: dict[int, list[float]] = {}
        for run in g.runs.values():
            for r, acc in run.curves.get(pattern, []):
                by_round.setdefault(int(r), []).append(acc)
        if by_round:
            xs = sorted(by_round)
            stats = [summarize(by_round[x]) for x in xs]
            means = [s.mean for s in stats]
            stds = [0.0 if math.isnan(s.std) else s.std for s in stats]
            ax_r.plot(xs, means, marker="o", ms=3, color=color, label=f"{label} (n={len(g.runs)})")
            ax_r.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                              color=color, alpha=0.15)
        acc = comp.stat(g, pattern)
        costs = g.costs().get(cost, []) if cost else []
        if costs and acc.n:
            c = summarize(costs)
            ax_c.errorbar([c.mean], [acc.mean], xerr=[0 if math.isnan(c.std) else c.std],
                          yerr=[0 if math.isnan(acc.std) else acc.std], fmt="o", color=color, capsize=3, label=label)
    ax_r.set(xlabel="round", ylabel=f"test {comp.metric} ({pattern})", title=f"{comp.metric} vs round — test {pattern}")
    ax_c.set(xlabel=COST_TITLES.get(cost or "", cost or "no cost recorded"), ylabel=f"final test {comp.metric}",
             title=f"{comp.metric} vs cost — test {pattern}")
    if cost and cost.startswith("bytes_"):
        ax_c.set_xlabel(f"{cost} (bytes)")
    for ax in (ax_r, ax_c):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


__all__ = ["FINAL_FIGURE", "Comparison", "Group", "Paired", "Run", "Stat", "compare", "derived_costs", "differing",
           "figure_name", "group_runs", "paired", "plot_final", "plot_pattern", "select", "summarize", "to_csv",
           "to_html", "to_markdown"]
