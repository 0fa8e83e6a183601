"""The pure core and the round steps never import kfp, minio or mlflow."""

import subprocess
import sys
from pathlib import Path

from mmfl.methods import method_names

ROOT = Path(__file__).resolve().parents[1]


def test_core_and_steps_import_without_kfp_minio_or_mlflow():
    modules = ["mmfl.config", "mmfl.data", "mmfl.models", "mmfl.aggregation", "mmfl.scheduling", "mmfl.engine.steps",
               "mmfl.engine.vectorized", "mmfl.engine.robust"] + [f"mmfl.methods.{m}" for m in method_names()]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kfp', 'minio', 'mlflow'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core modules pulled in: {out.stdout.strip()}"
