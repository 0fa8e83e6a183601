"""Real servers for integration tests, bound to 127.0.0.1 only, stopped at the end of the session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered:\n{text}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and proxied artifacts; yields its http URI."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", (workdir / "artifacts").as_uri(),
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health", timeout=120, proc=proc, log=log)
        yield uri
    finally:
        stop(proc)


CHART_FILES = Path(__file__).resolve().parents[2] / "charts" / "mmfl" / "files"


@dataclass(frozen=True)
class AuthMlflow:
    uri: str
    admin: tuple[str, str]
    pipeline: tuple[str, str]  # the tasks' user, created by the chart's users Job script


@contextlib.contextmanager
def mlflow_auth_server(workdir: Path, admin_password: str, pipeline_password: str) -> Iterator[AuthMlflow]:
    """The chart's MLflow start-up on 127.0.0.1 with a sqlite store: ``mlflow.sh migrate`` (schema
    upgrades), ``mlflow.sh serve`` (basic-auth app, admin from the environment), then the chart's
    ``mlflow_users.py`` creates the pipeline user. Yields the URI and both users' credentials."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", DB_URI=f"sqlite:///{workdir / 'mlflow.db'}",
               MLFLOW_AUTH="true", ARTIFACTS_DESTINATION=(workdir / "artifacts").as_uri(), TMPDIR=str(workdir),
               MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port), MLFLOW_WORKERS="1",
               MLFLOW_AUTH_ADMIN_USERNAME="admin", MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
               MLFLOW_FLASK_SERVER_SECRET_KEY="test-flask-key-" + admin_password[:8],
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    script = CHART_FILES / "mlflow.sh"
    migrate = subprocess.run(["sh", str(script), "migrate"], env=env, capture_output=True, text=True, timeout=300)
    if migrate.returncode != 0:
        raise RuntimeError(f"mlflow.sh migrate failed:\n{migrate.stdout[-2000:]}\n{migrate.stderr[-3000:]}")
    log = workdir / "mlflow-auth-server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(["sh", str(script), "serve"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health", timeout=120, proc=proc, log=log)
        users = subprocess.run(
            [sys.executable, str(CHART_FILES / "mlflow_users.py")], capture_output=True, text=True, timeout=120,
            env=dict(env, MLFLOW_URL=uri, PIPELINE_USERNAME="mmfl-pipeline", PIPELINE_PASSWORD=pipeline_password,
                     WAIT_SECONDS="30"))
        if users.returncode != 0:
            raise RuntimeError(f"mlflow_users.py failed: {users.stdout}{users.stderr}")
        yield AuthMlflow(uri, ("admin", admin_password), ("mmfl-pipeline", pipeline_password))
    finally:
        stop(proc)
