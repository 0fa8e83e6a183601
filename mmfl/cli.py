"""Command line: ``mmfl run | eval | report``; the pipelines package adds compile, submit and schedule
through the ``mmfl.commands`` entry point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points

from rich.console import Console

from mmfl.errors import MmflError
from mmfl.redact import redact_text

# Wide enough for the test matrix when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 160)


def _configs(args: argparse.Namespace):
    """Every experiment of the command (config files x methods x seeds), all checked before any runs."""
    from mmfl.config import grid_configs, read_config_file
    from mmfl.methods import resolve

    overrides = list(args.set or [])
    if args.rounds is not None:
        overrides.append(f"train.rounds={args.rounds}")
    cells = []
    for path in args.config:
        cells += grid_configs(read_config_file(path), args.method, None, args.seed, overrides, source=str(path))
    from mmfl.data.limits import check_partition_limits

    warned = set()
    for cfg in cells:
        resolve(cfg)
        for warning in check_partition_limits(cfg):  # before any data is read or a tracker starts
            if warning not in warned:
                warned.add(warning)
                console.print(f"[yellow]warning:[/yellow] {warning}")
    return cells


def silence_progress() -> None:
    """No progress bars at all: ours (rich, switched off by the caller) and third-party tqdm bars
    (transformers' "Loading weights", huggingface_hub downloads, any tqdm), also in child processes."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # already imported: its switch was read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def print_overrides(cfg) -> None:
    """Say which shared training settings the method replaces with its own (also logged as params)."""
    from mmfl.methods import training_budget

    budget, overrides = training_budget(cfg)
    if overrides:
        console.print(f"  {cfg.method.name} overrides " + ", ".join(f"{k}={v}" for k, v in overrides.items())
                      + f": local budget {budget['local_epochs']} epochs x batch {budget['batch_size']}, "
                      f"{budget['optimizer']}")


def cmd_run(args: argparse.Namespace) -> int:
    from mmfl.local import run_experiment
    from mmfl.results import matrix_table

    if args.no_progress:
        silence_progress()
    rows, patterns, runs = [], [], []
    configs = _configs(args)
    for cfg in configs:
        console.print(f"[bold]experiment[/bold] {cfg.experiment_id()}  ({cfg.data.name}, {cfg.partition.num_clients} clients, "
                      f"train missing {cfg.missing.label()})")
        print_overrides(cfg)
        result = run_experiment(cfg, progress=not args.no_progress, new_experiment=args.new_experiment)
        if result.resumed_from:
            console.print(f"  resumed from round {result.resumed_from}")
        rows.append(result.row(cfg))
        runs.append(result.run_id)
        patterns = patterns or result.patterns
    console.print(matrix_table(rows, patterns))
    if len(configs) > 1 and all(runs) and len({(c.tracking.uri, c.tracking.experiment) for c in configs}) == 1:
        from mmfl.engine.comparison import start_comparison
        from mmfl.io.tracking import MlflowTracker

        tracking = configs[0].tracking
        tracker = MlflowTracker(tracking.uri, tracking.experiment)
        parent = start_comparison(tracker, f"{configs[0].name} comparison", runs,
                                  params={"data": configs[0].data.name, "rounds": configs[0].train.rounds})
        tracker.finish("FINISHED")
        console.print(f"comparison run {parent} (the {len(runs)} experiments nested under it)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a stored checkpoint (latest complete round, or --round) on every test pattern."""
    from mmfl.data.missing import eval_patterns
    from mmfl.engine import steps
    from mmfl.io.layout import latest_round, load_round
    from mmfl.errors import ArtifactError
    from mmfl.io import store_of
    from mmfl.results import matrix_table, result_row

    rows, patterns = [], []
    for cfg in _configs(args):
        store = store_of(cfg.storage)
        exp_id = cfg.experiment_id()
        round_index = args.round if args.round is not None else latest_round(store, exp_id)
        if round_index is None:
            raise ArtifactError(f"no checkpoint of experiment {exp_id} in {store!r}; run it first")
        state, _ = load_round(store, exp_id, round_index)
        steps.apply_execution_settings(cfg)
        data = steps.prepare_data(cfg)
        patterns = eval_patterns(data.spec.names, cfg.eval.patterns)
        rows.append(result_row(cfg, state.round, steps.evaluate(cfg, state, data.test)))
    console.print(matrix_table(rows, patterns))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Runs grouped by their result-changing settings: mean ± std over seeds, paired differences, costs."""
    from pathlib import Path

    from rich.table import Table

    from mmfl.comparison import FINAL_FIGURE, compare, figure_name, plot_final, plot_pattern, to_csv, to_html, to_markdown
    from mmfl.io.runs import experiment_runs, log_comparison

    runs, left_out = experiment_runs(args.tracking_uri, args.experiment)
    if not runs:
        console.print(f"no finished runs in MLflow experiment {args.experiment!r}")
        return 0
    comp = compare(runs, baseline=args.baseline, where=args.where or [], costs=args.costs, metric=args.metric,
                   limit=args.limit, left_out=left_out)
    if args.format == "markdown":
        print(to_markdown(comp), end="")
    elif args.format == "csv":
        print(to_csv(comp), end="")
    elif args.format == "html":
        print(to_html(comp, f"mmfl report: {args.experiment}"), end="")
    else:
        table = Table(title=f"{args.experiment}: {len(comp.groups)} groups of runs, {sum(len(g.runs) for g in comp.groups)} runs")
        for col in comp.header():
            table.add_column(col, justify="left" if col in ("method", "settings") else "right")
        for row in comp.cells():
            table.add_row(*row)
        console.print(table)
        if comp.varying:
            console.print("settings that differ between the rows: " + ", ".join(comp.varying))
        for note in comp.notes:
            console.print(f"note: {note}")
    figures = {FINAL_FIGURE: plot_final(comp, f"{args.experiment}: {len(comp.groups)} groups"),
               **{figure_name(p): plot_pattern(comp, p) for p in comp.patterns}}
    files = {"report.md": to_markdown(comp), "report.csv": to_csv(comp),
             "report.html": to_html(comp, f"mmfl report: {args.experiment}", list(figures))}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
        for name, fig in figures.items():
            fig.savefig(out / name)
        print(f"report written to {out}/ ({', '.join([*files, *figures])})", file=sys.stderr)
    if not args.no_mlflow:
        run_id = log_comparison(args.tracking_uri, args.experiment, files, figures, comp.columns(),
                                {"baseline": args.baseline or "", "where": " ".join(args.where or []),
                                 "metric": args.metric, "groups": str(len(comp.groups)),
                                 "varying": ", ".join(comp.varying)})
        print(f"comparison logged to MLflow run {run_id}", file=sys.stderr)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return 0


def _add_experiment_args(parser: argparse.ArgumentParser) -> None:
    """Which experiments a command acts on: config files x methods x seeds, plus overrides."""
    parser.add_argument("config", nargs="+", help="experiment YAML file(s)")
    parser.add_argument("--method", action="append", help="this method (repeatable); overrides method.name")
    parser.add_argument("--seed", action="append", type=int, help="this seed (repeatable)")
    parser.add_argument("--rounds", type=int, help="override train.rounds (part of the experiment id)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any field, e.g. partition.alpha=0.1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfl", description=__doc__, allow_abbrev=False)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", allow_abbrev=False, help="run (or resume) experiments with the local engine")
    _add_experiment_args(run)
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--new-experiment", action="store_true",
                     help="when the store holds this experiment with other result settings, start a separate one")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", allow_abbrev=False, help="evaluate stored checkpoints on every test pattern")
    _add_experiment_args(ev)
    ev.add_argument("--round", type=int, default=None, help="checkpoint round (default: the latest complete one)")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", allow_abbrev=False,
                         help="compare finished runs: groups of equal settings, mean ± std over seeds, paired differences")
    rep.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db")
    rep.add_argument("--experiment", default="mmfl")
    rep.add_argument("--baseline", metavar="METHOD", help="paired differences (by seed) against this method")
    rep.add_argument("--where", action="append", metavar="KEY=VALUE",
                     help="only runs with this setting, e.g. partition.alpha=0.5 or method=fedavg (repeatable)")
    rep.add_argument("--costs", action="store_true",
                     help="cost columns: wall time, client updates/s, bytes per round, encoder work, peak memory")
    rep.add_argument("--metric", choices=["acc", "f1"], default="acc")
    rep.add_argument("--format", choices=["table", "markdown", "csv", "html"], default="table", help="stdout format")
    rep.add_argument("--out", metavar="DIR", help="also write report.md/.csv/.html and one plot per test pattern here")
    rep.add_argument("--limit", type=int, default=None, help="show at most N groups (the rest are counted as left out)")
    rep.add_argument("--no-mlflow", action="store_true", help="do not log the comparison as an MLflow run")
    rep.set_defaults(func=cmd_report)

    for plugin in entry_points(group="mmfl.commands"):  # compile, submit, schedule (pipelines/commands.py)
        plugin.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MmflError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)  # no credential reaches the console
        return 2


if __name__ == "__main__":
    sys.exit(main())
