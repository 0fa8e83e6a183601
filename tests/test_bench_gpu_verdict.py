"""The GPU bench's claim check and its own section of docs/benchmarks.md (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

from bench.vectorized import gpu_verdict, section_markers, summarize, write_markdown

ROOT = Path(__file__).resolve().parents[1]


def _row(workload, mode, clients, seconds):
    return {"workload": workload, "mode": mode, "clients": clients, "threads": 1, "params": 1000,
            "round_s": [seconds], "train_s": [seconds], "engine_s": [seconds], "cpu_s": [seconds],
            "warmup_s": 0.0, "peak_mb": 1.0, "peak_note": "process RSS"}


def test_verdict_takes_each_workloads_fastest_vectorized_engine():
    rows = summarize([
        _row("W", "loop", 64, 2.0),  # 32 updates/s
        _row("W", "vmap", 64, 0.01),  # 6,400/s, 200x
        _row("W", "vmap+graph", 64, 0.004),  # 16,000/s, 500x
        _row("W-large", "loop", 256, 10.0),
        _row("W-large", "vmap+graph", 256, 0.05),  # 5,120/s
    ])
    lines = gpu_verdict(rows)
    assert any(ln.startswith("W: vmap+graph 16,000/s, 500.0x the loop") and ln.endswith(": met.") for ln in lines)
    assert any(ln.startswith("W-large: vmap+graph 5,120/s") and ln.endswith("NOT met.") for ln in lines)


def test_verdict_says_unchecked_when_no_vectorized_engine_finished():
    rows = summarize([_row("W", "loop", 64, 2.0), {"workload": "W", "mode": "vmap", "clients": 64, "error": "boom"}])
    assert "W: no vectorized engine finished, so the claim is unchecked." in gpu_verdict(rows)


def test_gpu_section_leaves_the_cpu_table_alone(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text((ROOT / "docs" / "benchmarks.md").read_text())
    cpu_begin, cpu_end = section_markers("vectorized")
    before = doc.read_text()
    cpu_table = before[before.index(cpu_begin):before.index(cpu_end)]
    write_markdown(doc, "| the GPU table |", "python -m bench.vectorized --device cuda", [_row("W", "loop", 64, 1.0)],
                   "vectorized-gpu")
    after = doc.read_text()
    gpu_begin, gpu_end = section_markers("vectorized-gpu")
    assert after[after.index(cpu_begin):after.index(cpu_end)] == cpu_table
    assert "| the GPU table |" in after[after.index(gpu_begin):after.index(gpu_end)]
    assert after.count(gpu_begin) == 1


def test_rows_saved_by_a_cut_short_run_are_rendered_into_the_gpu_section(tmp_path):
    import json

    from bench.vectorized import main

    rows = [dict(_row("W", "loop", 64, 2.0), device="cuda"), dict(_row("W", "vmap+graph", 64, 0.004), device="cuda")]
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps({"machine": "a test machine, GPU X", "rows": rows, "partial": True}))
    doc = tmp_path / "benchmarks.md"
    doc.write_text((ROOT / "docs" / "benchmarks.md").read_text())
    assert main(["--from-json", str(saved), "--out", str(doc)]) == 0
    text = doc.read_text()
    begin, end = section_markers("vectorized-gpu")
    section = text[text.index(begin):text.index(end)]
    assert "Measured on a test machine, GPU X." in section
    assert "W: vmap+graph 16,000/s, 500.0x the loop" in section and "cut short" in section
    assert "W-large: no vectorized engine finished" in section
