"""Each config in configs/ trains its baselines above the accuracy its header states.

Runs FedAvg, zero-fill FedAvg and FedProx with every shipped config (seed 0, the config's rounds)
and fails when a baseline's final test accuracy (full test pattern) is below the threshold.
Results are printed as one table; the machine may be shared, so no timings are claimed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from mmfl.config import grid_configs, read_config_file
from mmfl.engine.loop import run_experiment
from mmfl.methods import resolve

ROOT = Path(__file__).resolve().parents[1]
# config -> the final "full" test accuracy each baseline must reach (stated in the config's header)
THRESHOLDS = {"mfeat.yaml": 0.80, "basicmotions.yaml": 0.60, "mfeat_text.yaml": 0.70}
BASELINES = ["fedavg", "zerofill", "fedprox"]


def main() -> int:
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, threshold in THRESHOLDS.items():
            overrides = [f"storage.root={tmp}/runs", "tracking.enabled=false"]
            for cfg in grid_configs(read_config_file(ROOT / "configs" / name), BASELINES, None, None, overrides):
                resolve(cfg)
                acc = run_experiment(cfg).final["full"]["acc"]
                ok = acc >= threshold
                print(f"{name:20s} {cfg.method.name:9s} full acc {100 * acc:5.1f}%  (needs {100 * threshold:.0f}%) "
                      f"{'ok' if ok else 'FAIL'}", flush=True)
                if not ok:
                    failures.append(f"{name} {cfg.method.name}: {acc:.3f} < {threshold}")
    for line in failures:
        print("FAIL", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
