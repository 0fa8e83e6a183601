"""Benchmark: per-client loop vs vectorized engine (vs compiled / CUDA-graphed) vs Flower and pfl-research.

    PYTHONPATH=. python -m bench.vectorized [--out docs/benchmarks.md]

Every engine runs in its own subprocess (clean peak memory, no shared warm state) on the seeded
workloads W and W-large of ``bench/workloads.py``; each reports seconds per round (client
training + FedAvg aggregation) after warm-up rounds, and the table shows client-updates/s and
the ratios measured in this one run. On a CPU-only machine W-large trains a sample of its
clients per round (``--large-clients``), since one loop round over all 256 clients takes minutes.
pfl-research runs in the bench-only environment (``--pfl-python``, see ``bench/pfl_sim.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.workloads import WORKLOADS, WorkloadMethod, WorkloadNet, initial_state, make_config, make_shards, num_params

CPU_MODES = ["loop", "vmap", "vmap+compile"]
GPU_MODES = ["loop", "vmap", "vmap+graph", "vmap+compile+graph"]


# ---- worker: one engine, one workload, in this process -----------------------------------------
def run_worker(name: str, mode: str, rounds: int, warmup: int, clients: int, chunk: int, device: str,
               threads: int) -> dict:
    torch.set_num_threads(threads)
    w = WORKLOADS[name]
    result: dict = {"workload": name, "mode": mode, "clients": clients, "device": device,
                    "threads": os.cpu_count() if mode == "flower" else threads}
    if mode in ("flower", "pfl"):
        w = type(w)(**{**w.__dict__, "clients": clients})
        if mode == "flower":
            from bench.flower_sim import run_flower

            times, cpu = run_flower(w, warmup + rounds, os.cpu_count() or 1)
        else:
            from bench.pfl_sim import run_pfl

            times, cpu = run_pfl(w, warmup + rounds)
        result.update(round_s=times[warmup:], train_s=times[warmup:], engine_s=times[warmup:],
                      cpu_s=cpu[warmup:], warmup_s=sum(times[:warmup]))
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_note"] = "driver process only" if mode == "flower" else "process RSS"
        return result

    from mmfl.data.dataset import DataSpec
    from mmfl.engine import vectorized
    from mmfl.engine.vectorized import client_train_vectorized, loop_train
    from mmfl.methods.base import Context

    shards = make_shards(w)
    state = initial_state(w)
    method = WorkloadMethod(w)
    cfg = make_config(w, engine="vectorized" if mode != "loop" else "loop", device=device, chunk=chunk,
                      compile="compile" in mode)
    ids = list(range(clients))
    gpu = device.startswith("cuda")
    engine: list[float] = []
    cpu: list[float] = []

    def one_round(state, ids):
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "loop":
            updates = loop_train(method, cfg, state, shards, ids)
        else:
            updates = client_train_vectorized(cfg, state, shards, ids, method=method, cuda_graph="graph" in mode)
        if gpu:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        new = method.aggregate(state, updates, Context(cfg, DataSpec.from_json(state.meta["data_spec"]), state.round + 1))
        engine.append(vectorized.last_timing.get("device_s", t1 - t0) if mode != "loop" else t1 - t0)
        cpu.append(time.process_time() - c0)
        return new, t1 - t0, time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(warmup):
        # The loop needs no shape-specific warm-up: a few clients suffice; engines that compile
        # or capture per chunk shape warm up on the real client set.
        state, _, _ = one_round(state, ids[:4] if mode == "loop" else ids)
    result["warmup_s"] = time.perf_counter() - t0
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    train, total = [], []
    engine.clear()
    cpu.clear()
    for _ in range(rounds):
        state, tr, tot = one_round(state, ids)
        train.append(tr)
        total.append(tot)
    result.update(round_s=total, train_s=train, engine_s=engine, cpu_s=cpu)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_note"] = "process RSS"
    if gpu:
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return result


# ---- driver: run every engine, print and write the table ----------------------------------------
def spawn(name: str, mode: str, rounds: int, warmup: int, clients: int, chunk: int, device: str, threads: int,
          timeout: float, python: str = sys.executable) -> dict:
    cmd = [python, "-m", "bench.vectorized", "--worker", name, mode, "--rounds", str(rounds),
           "--warmup", str(warmup), "--clients", str(clients), "--chunk", str(chunk), "--device", device,
           "--threads", str(threads)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"workload": name, "mode": mode, "clients": clients, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"workload": name, "mode": mode, "clients": clients, "error": " | ".join(tail)[:300]}
    out = json.loads(lines[-1][len("RESULT "):])
    out["wall_s"] = time.perf_counter() - t0
    return out


def summarize(rows: list[dict]) -> list[dict]:
    by_key = {}
    for r in rows:
        if "error" in r:
            continue
        r["s_round"] = statistics.median(r["round_s"])
        r["s_train"] = statistics.median(r["train_s"])
        r["s_engine"] = statistics.median(r["engine_s"])
        r["ups"] = r["clients"] / r["s_round"]
        r["ups_train"] = r["clients"] / r["s_train"]
        r["cpu_ms"] = 1000 * statistics.median(r["cpu_s"]) / r["clients"]
        key = (r["workload"], r["mode"])
        if key not in by_key or r["ups"] > by_key[key]["ups"]:  # a reference engine at its best thread count
            by_key[key] = r
    for r in rows:
        if "error" in r:
            continue
        loop, flower = by_key.get((r["workload"], "loop")), by_key.get((r["workload"], "flower"))
        pfl = by_key.get((r["workload"], "pfl"))
        r["x_loop"] = r["ups"] / loop["ups"] if loop else None
        r["x_flower"] = r["ups"] / flower["ups"] if flower else None
        r["x_pfl"] = r["ups"] / pfl["ups"] if pfl else None
        r["cpu_x_loop"] = loop["cpu_ms"] / r["cpu_ms"] if loop else None
        r["cpu_x_flower"] = flower["cpu_ms"] / r["cpu_ms"] if flower else None
        r["cpu_x_pfl"] = pfl["cpu_ms"] / r["cpu_ms"] if pfl else None
    return rows


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = ("| workload | engine | threads | clients/round | rounds | s/round | train s/round | device s/round "
            "| client-updates/s | x loop | x Flower | x pfl | CPU ms/update | CPU x loop | CPU x Flower | CPU x pfl "
            "| warm-up s | peak memory MB |")
    lines = [head, "|" + "---|" * 18]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['mode']} | {r.get('threads', '-')} | {r['clients']} | - "
                         f"| failed: {r['error']} |||||||||||||")
            continue
        mem = f"{r['peak_mb']:.0f} ({r['peak_note']})"
        if "gpu_peak_mb" in r:
            mem = f"{r['gpu_peak_mb']:.0f} GPU, {mem}"
        lines.append(
            f"| {r['workload']} | {r['mode']} | {r['threads']} | {r['clients']} | {len(r['round_s'])} | {r['s_round']:.3f} "
            f"| {r['s_train']:.3f} | {r['s_engine']:.3f} | {r['ups']:.1f} | {fmt(r['x_loop'], '.2f')} | {fmt(r['x_flower'], '.2f')} "
            f"| {fmt(r['x_pfl'], '.2f')} | {r['cpu_ms']:.2f} | {fmt(r['cpu_x_loop'], '.2f')} "
            f"| {fmt(r['cpu_x_flower'], '.2f')} | {fmt(r['cpu_x_pfl'], '.2f')} "
            f"| {r['warmup_s']:.1f} | {mem} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    try:
        text += f", load average at start {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "MODE"))
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clients", type=int, default=0)
    p.add_argument("--chunk", type=int, default=64, help="clients per vectorized chunk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", default="1",
                   help="torch threads of the in-process engines, one count or several ('1,2': each engine at each, "
                        "ratios against each reference engine's fastest); Flower always runs one single-thread "
                        "actor per core")
    p.add_argument("--workloads", default="W,W-large")
    p.add_argument("--large-clients", type=int, default=0,
                   help="clients per W-large round (default: all 256 on GPU, 32 on CPU)")
    p.add_argument("--large-rounds", type=int, default=0, help="measured W-large rounds (default 5 GPU, 1 CPU)")
    p.add_argument("--no-flower", action="store_true")
    p.add_argument("--pfl-python", default=".venv-bench/bin/python",
                   help="interpreter of the bench-only environment with pfl (make bench creates it); "
                        "'' leaves pfl-research out")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--timeout", type=float, default=300, help="seconds per engine run")
    p.add_argument("--out", help="write the results into this Markdown file (section between markers)")
    p.add_argument("--json", help="write every engine's measured rows into this JSON file")
    p.add_argument("--from-json", help="measure nothing: print (and with --out write) the table of a --json file, "
                                       "e.g. one a time limit cut short")
    args = p.parse_args(argv)

    if args.worker:
        name, mode = args.worker
        res = run_worker(name, mode, args.rounds, args.warmup, args.clients or WORKLOADS[name].clients,
                         args.chunk, args.device, int(args.threads))
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows = saved["rows"]
        gpu = any(r.get("device", "").startswith("cuda") for r in rows)
        text = render(rows, gpu, partial=bool(saved.get("partial")))
        print(text)
        if args.out:
            write_markdown(Path(args.out), text, f"python -m bench.vectorized (rows of {args.from_json})", rows,
                           "vectorized-gpu" if gpu else "vectorized", where=f"Measured on {saved['machine']}.")
        return 0

    gpu = args.device.startswith("cuda")
    modes = list(GPU_MODES if gpu else CPU_MODES)
    if args.no_compile:
        modes = [m for m in modes if "compile" not in m]
    rows = []
    started, host = time.perf_counter(), machine()  # the load average at the start
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        params = num_params(WorkloadNet(w.spec, w.hidden))
        large = name == "W-large"
        clients = (args.large_clients or (w.clients if gpu else 32)) if large else w.clients
        rounds = (args.large_rounds or (5 if gpu else 1)) if large else args.rounds
        print(f"{name}: {params:,} parameters, {clients} clients/round, batch {w.batch_size}", flush=True)
        extra = ([] if args.no_flower else ["flower"]) + (["pfl"] if args.pfl_python else [])
        thread_counts = [int(t) for t in str(args.threads).split(",")]
        for mode in modes + extra:
            device = "cpu" if mode in ("flower", "pfl") else args.device
            python = args.pfl_python if mode == "pfl" else sys.executable
            if mode == "pfl" and not Path(python).exists():
                rows.append({"workload": name, "mode": mode, "clients": clients, "params": params,
                             "error": f"{python} not found (make bench creates it)"})
                continue
            for threads in thread_counts[:1] if mode == "flower" else thread_counts:
                r = spawn(name, mode, rounds, args.warmup, clients, args.chunk, device, threads, args.timeout,
                          python)
                r["params"] = params
                r.setdefault("threads", threads)
                rows.append(r)
                msg = r.get("error") or f"{r['clients'] / statistics.median(r['round_s']):.1f} client-updates/s"
                print(f"  {mode:>20} ({r['threads']} threads): {msg}", flush=True)
                if args.json:  # after every engine, so a run stopped by a time limit keeps what it measured
                    Path(args.json).write_text(json.dumps({"machine": host, "rows": rows, "partial": True}))
    text = render(rows, gpu)
    print(text)
    print(f"total bench time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": host, "rows": rows}, indent=1))
    if args.out:
        write_markdown(Path(args.out), text, " ".join(["python -m bench.vectorized", *(argv or sys.argv[1:])]), rows,
                       "vectorized-gpu" if gpu else "vectorized", where=f"Measured {now()} UTC on {host}.")
    return 0


def now() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"


def render(rows: list[dict], gpu: bool, partial: bool = False) -> str:
    """The results table of ``rows`` (summarized in place), with the GPU claims checked on a GPU."""
    summarize(rows)
    text = table(rows)
    if gpu:
        text += "\n\n" + "\n".join(f"- {line}" for line in gpu_verdict(rows))
    if partial:
        text += "\n\n(The run was cut short: engines after the last row were not measured.)"
    return text


# the GPU claims of docs/benchmarks.md: client-updates/s of the fastest vectorized engine, and its ratio to the loop
GPU_CLAIMS = {"W": (15_000, 200.0), "W-large": (10_000, None)}


def gpu_verdict(rows: list[dict]) -> list[str]:
    """One line per GPU claim: the fastest vectorized engine of each workload against its threshold."""
    tf32 = any(r.get("tf32") for r in rows)
    lines = [f"float32 matrix products (TF32 {'on' if tf32 else 'off'} in the measured engines)."]
    for name, (ups, x_loop) in GPU_CLAIMS.items():
        vec = [r for r in rows if r["workload"] == name and r["mode"].startswith("vmap") and "error" not in r]
        if not vec:
            lines.append(f"{name}: no vectorized engine finished, so the claim is unchecked.")
            continue
        best = max(vec, key=lambda r: r["ups"])
        ok = best["ups"] >= ups and (x_loop is None or (best["x_loop"] or 0) >= x_loop)
        want = f">= {ups:,} client-updates/s" + (f" and >= {x_loop:.0f}x the loop" if x_loop else "")
        got = f"{best['ups']:,.0f}/s" + (f", {best['x_loop']:.1f}x the loop" if best["x_loop"] else "")
        lines.append(f"{name}: {best['mode']} {got}; claim {want}: {'met' if ok else 'NOT met'}.")
    return lines


def section_markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


def write_markdown(path: Path, text: str, command: str, rows: list[dict], section: str = "vectorized",
                   where: str | None = None) -> None:
    """Replace the generated section of ``path`` (between its markers) with this run's table;
    ``where`` names the machine (default: this one, now)."""
    params = sorted({(r["workload"], r["params"]) for r in rows if "params" in r})
    replace_section(path, *section_markers(section), "\n".join([
        where or f"Measured {now()} UTC on {machine()}.",
        f"Command: `{command}` (run from the repository root).",
        "Parameters: " + ", ".join(f"{n} {p:,}" for n, p in params) + ".",
        "",
        text,
    ]))


def replace_section(path: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` between the markers ``begin`` and ``end`` of ``path`` (appended when they are missing)."""
    block = f"{begin}\n{body}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
