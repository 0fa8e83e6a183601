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


def test_import_layers_hold():
    """The contracts in .importlinter: core < engine < drivers < pipelines/components, no cycles in mmfl/."""
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The check is live: a core module that imports the engine is reported."""
    import shutil

    for name in ("mmfl", "pipelines", "components"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    bad = tmp_path / "mmfl" / "aggregation" / "mean.py"
    bad.write_text(bad.read_text() + "\nfrom mmfl.engine import steps  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), str(ROOT / ".importlinter"), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    assert "mmfl.aggregation.mean -> mmfl.engine.steps" in out.stdout


def test_report_runs_without_torch(tmp_path):
    """`mmfl report` reads runs and plots them: no torch, torchmetrics or scikit-learn to import."""
    code = (
        "import sys\n"
        "from mmfl.cli import main\n"
        f"assert main(['report', '--tracking-uri', 'sqlite:///{tmp_path / 'r.db'}', '--experiment', 'x']) == 0\n"
        "print('imported:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchmetrics', 'sklearn'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no finished runs" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "imported:"
