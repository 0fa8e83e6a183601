"""MLflow tracking: one run per experiment, params, metrics with step = round, tables and plots.

mlflow is imported lazily so the core stays importable without it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mmfl.errors import MmflError

MAX_PARAM_LEN = 6000


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a sqlite file ``mlruns.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_LEN]
    return out


class NullTracker:
    """Tracking switched off: every call does nothing."""

    run_id: str | None = None

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str | None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str) -> None: ...

    def log_table(self, data: dict[str, list], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class MlflowTracker:
    """Thin wrapper over ``MlflowClient`` so that several runs can be tracked from one process."""

    def __init__(self, uri: str | None = None, experiment: str = "mmfl"):
        from mlflow.tracking import MlflowClient

        self.uri = uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = experiment
        self.run_id: str | None = None
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                location = None
                if self.uri.startswith("sqlite:///"):
                    # keep artifacts next to the sqlite file rather than in whatever cwd mlflow sees
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
                self._experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        return self._experiment_id

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str:
        from mlflow.entities import Param

        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except Exception:  # the run was deleted or the store changed: start a new one
                run = None
            if run is not None:
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
                for key, value in tags.items():  # the driver now continuing the run (e.g. a new KFP run)
                    if run.data.tags.get(key) != value:
                        self.client.set_tag(run_id, key, value)
                return run_id
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        items = list(flatten(params).items())
        for i in range(0, len(items), 100):  # log_batch accepts at most 100 params per call
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if batch and self.run_id:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def run_url(self, run_id: str | None = None) -> str:
        """The MLflow UI page of a run (``$MLFLOW_UI_URL`` when the UI is reached at another address)."""
        base = (os.environ.get("MLFLOW_UI_URL") or self.uri).rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id()}/runs/{run_id or self.run_id}"

    def last_logged(self, key: str, step: int) -> float | None:
        """Unix time at which ``key`` was last logged for ``step`` (step 0: the run's start), or None."""
        if not self.run_id:
            return None
        if step <= 0:
            return self.client.get_run(self.run_id).info.start_time / 1000.0
        times = [m.timestamp for m in self.client.get_metric_history(self.run_id, key) if m.step == step]
        return max(times) / 1000.0 if times else None

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def open_tracker(enabled: bool, uri: str | None, experiment: str) -> MlflowTracker | NullTracker:
    if not enabled:
        return NullTracker()
    try:
        return MlflowTracker(uri, experiment)
    except ImportError as exc:
        raise MmflError(f"tracking.enabled is true but mlflow cannot be imported: {exc}") from None
