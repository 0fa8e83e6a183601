"""`make run` with the default engine (`auto`) against the per-client loop, in one run.

Each repetition runs, in a fresh empty directory and for each engine in turn, exactly the two
commands of `make run` (`mmfl run configs/quickstart.yaml --method fedavg --method zerofill
--method pmcmfl`, then `mmfl report --experiment mmfl-quickstart`), the loop one with
`--set train.engine=loop`, and measures their wall time. A second measurement shows the share
that vectorization can speed up: the three experiments run in one process without tracking,
with the time spent in client training (``steps.client_train``) measured apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"
METHODS = ("fedavg", "zerofill", "pmcmfl")
BEGIN, END = "<!-- bench:make-run:begin -->", "<!-- bench:make-run:end -->"


def make_run(engine: str, workdir: Path) -> dict[str, float]:
    """Wall seconds of `mmfl run` and `mmfl report` in an empty ``workdir``."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    run = [sys.executable, "-m", "mmfl", "run", str(CONFIG), "--no-progress"]
    for m in METHODS:
        run += ["--method", m]
    if engine != "auto":
        run += ["--set", f"train.engine={engine}"]
    t0 = time.perf_counter()
    subprocess.run(run, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmfl", "report", "--experiment", "mmfl-quickstart"], cwd=workdir,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t2 = time.perf_counter()
    return {"run_s": t1 - t0, "report_s": t2 - t1, "total_s": t2 - t0}


def worker(engine: str, workdir: Path) -> dict[str, float]:
    """The three experiments in this process (tracking off), timing ``steps.client_train`` and the rest."""
    import yaml

    from mmfl.engine import steps
    from mmfl.local import run_experiment
    from mmfl.methods import parse_experiment

    spent = {"train_s": 0.0}
    inner = steps.client_train

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent["train_s"] += time.perf_counter() - t

    steps.client_train = timed  # instrumentation of this bench process only
    base = yaml.safe_load(CONFIG.read_text())
    t0 = time.perf_counter()
    for m in METHODS:
        d = dict(base, method={"name": m}, train=dict(base["train"], engine=engine), tracking={"enabled": False},
                 storage={"kind": "local", "root": str(workdir / m)})
        run_experiment(parse_experiment(d), progress=False)
    spent["experiments_s"] = time.perf_counter() - t0
    return spent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions per engine (median reported)")
    p.add_argument("--out", help="write the table into this Markdown file (section between markers)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(worker(args.worker, Path(tmp))))
        return 0
    results: dict[str, list[dict[str, float]]] = {"loop": [], "auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for engine in ("loop", "auto"):
                r = make_run(engine, Path(tmp) / engine)
                out = subprocess.run([sys.executable, "-m", "bench.make_run", "--worker", engine], cwd=ROOT,
                                     check=True, capture_output=True, text=True).stdout
                r.update(json.loads(out.strip().splitlines()[-1]))
                results[engine].append(r)
                print(f"repeat {rep + 1}/{args.repeats} {engine}: run {r['run_s']:.1f} s, report {r['report_s']:.1f} s; "
                      f"in one process: experiments {r['experiments_s']:.1f} s, client training {r['train_s']:.1f} s",
                      flush=True)
    med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in results.items()}
    ratio = med["loop"]["total_s"] / med["auto"]["total_s"]
    train_ratio = med["loop"]["train_s"] / med["auto"]["train_s"] if med["auto"]["train_s"] else float("nan")
    from bench.vectorized import machine, replace_section

    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}; median of {args.repeats} "
        "alternating repetitions.",
        "",
        "Command: `python -m bench.make_run --out docs/benchmarks.md` (`make bench-make-run`).",
        "",
        "| engine | `mmfl run` s | `mmfl report` s | `make run` total s | 3 experiments in one process s | of which client training s |",
        "|---|---|---|---|---|---|",
    ]
    for e in ("loop", "auto"):
        m = med[e]
        lines.append(f"| {e} | {m['run_s']:.1f} | {m['report_s']:.1f} | {m['total_s']:.1f} | {m['experiments_s']:.1f} "
                     f"| {m['train_s']:.1f} |")
    lines += ["", f"`make run` with `auto` vs the loop: **{ratio:.2f}x** (client training alone: {train_ratio:.2f}x)."]
    body = "\n".join(lines)
    print(body)
    if args.out:
        replace_section(Path(args.out), BEGIN, END, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
