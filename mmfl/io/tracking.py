"""MLflow tracking: one run per experiment, params, metrics with step = round, tables and plots.

Training never depends on the tracker. ``open_tracker`` checks within seconds that a tracking
server answers; an unreachable one is reported in one log line and the run goes on without it.
Every tracker call goes through ``SafeTracker``: the first failure is logged once and tracking
stops for the rest of the run, while checkpoints and ``metrics.json`` are written as before.
``attach_run`` reopens the experiment's MLflow run (its id is kept in ``tracking.json`` with the
redacted tracking URI and the experiment name), starts a new run when either changed, and replays
every stored round the run does not hold yet, so a run that lost its tracker, a new tracking
database and a renamed MLflow experiment all end with the full history.

Credentials never reach a file or the console: a user:password in ``MLFLOW_TRACKING_URI`` is
moved into ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for MLflow, and a secret in
its query string is refused. mlflow is imported lazily so the core stays importable without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mmfl.errors import MmflError
from mmfl.redact import redact_text, redact_uri, uri_secrets

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0
# MLflow retries HTTP requests for minutes by default; a tracker must never hold training up that long
MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}

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
    active = False

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str | None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_dict(self, obj: Any, artifact_file: str) -> None: ...

    def log_table(self, data: dict[str, list], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


@contextlib.contextmanager
def _sqlite_setup_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<database>.lock`` for a ``sqlite:///`` URI (nothing for other URIs)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri[len("sqlite:///"):].split("?")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class MlflowTracker:
    """Thin wrapper over ``MlflowClient`` so that several runs can be tracked from one process."""

    active = True

    def __init__(self, uri: str | None = None, experiment: str = "mmfl"):
        from mlflow.tracking import MlflowClient

        for name, value in MLFLOW_HTTP_ENV.items():
            os.environ.setdefault(name, value)
        self.uri = safe_uri(uri or default_tracking_uri())
        with _sqlite_setup_lock(self.uri):  # two processes creating one fresh database race on its schema
            self.client = MlflowClient(tracking_uri=self.uri)
            if self.uri.startswith("sqlite:///"):
                self.client.search_experiments(max_results=1)  # creates the tables while the lock is held
        self.experiment_name = experiment
        self.run_id: str | None = None
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            for attempt in range(3):  # two processes creating one fresh sqlite database race on its schema
                try:
                    self._experiment_id = self._find_or_create()
                    break
                except Exception:
                    if attempt == 2 or not self.uri.startswith("sqlite:"):
                        raise
                    time.sleep(0.5 * (attempt + 1))
        return self._experiment_id

    def logged_steps(self, key: str = "train_loss") -> set[int]:
        """Steps of metric ``key`` the run already holds."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)} if self.run_id else set()

    def _find_or_create(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # keep artifacts next to the sqlite file rather than in whatever cwd mlflow sees
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

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

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def safe_uri(uri: str) -> str:
    """``uri`` without credentials: user:password moves into MLflow's environment variables; a secret
    query parameter is refused (MmflError) rather than written to a file or printed."""
    found = uri_secrets(uri)
    if any(f not in ("user:password", "userinfo") for f in found):
        raise MmflError(f"tracking URI {redact_uri(uri)}: credentials in its query string "
                        f"({', '.join(f for f in found if f not in ('user:password', 'userinfo'))}); set "
                        "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD instead")
    if not found:
        return uri
    parts = urlsplit(uri)
    if parts.username is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", parts.username)
    if parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", parts.password)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def unreachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the tracking server of an http(s) ``uri`` cannot be reached (TCP connect), or None."""
    try:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"invalid URI ({exc})"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


class SafeTracker:
    """A tracker whose failures never reach training: the first one is logged, then calls do nothing."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.failed: str | None = None

    @property
    def active(self) -> bool:
        return self.failed is None and getattr(self.inner, "active", False)

    @property
    def run_id(self) -> str | None:
        return getattr(self.inner, "run_id", None)

    @property
    def uri(self) -> str | None:
        return getattr(self.inner, "uri", None)

    def _call(self, name: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
        if not self.active:
            return default
        try:
            return getattr(self.inner, name)(*args, **kwargs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.failed = redact_text(f"{type(exc).__name__}: {first}")[:300]
            log.warning("tracking stopped (%s): %s; training goes on, the rounds stay in the store and are "
                        "replayed to the tracker by the next run", name, self.failed)
            return default

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str], run_id: str | None = None) -> str | None:
        return self._call("start", run_name, params, tags, run_id=run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", metrics, step)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._call("log_dict", obj, artifact_file)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        self._call("log_table", data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call("log_figure", figure, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        self._call("finish", status)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._call("set_tags", run_id, tags)

    def run_url(self, run_id: str | None = None) -> str:
        """The run's MLflow UI page; '' when tracking is off or has failed."""
        return self._call("run_url", run_id, default="") if hasattr(self.inner, "run_url") else ""

    def logged_steps(self) -> set[int] | None:
        """Rounds the run already holds (None when unknown: then nothing is replayed)."""
        if not hasattr(self.inner, "logged_steps"):
            return None
        return self._call("logged_steps", default=None)


def open_tracker(enabled: bool, uri: str | None, experiment: str) -> SafeTracker:
    """The experiment's tracker; an unreachable server or a missing mlflow gives an inactive one, said in the log."""
    if not enabled:
        return SafeTracker(NullTracker())
    target = uri or default_tracking_uri()
    safe = safe_uri(target)
    problem = unreachable(safe)
    if problem is not None:
        log.warning("tracking server %s unreachable (%s); training goes on without tracking, the rounds stay in "
                    "the store and are replayed to the tracker by the next run", redact_uri(safe), problem)
        return SafeTracker(NullTracker())
    try:
        return SafeTracker(MlflowTracker(target, experiment))
    except ImportError as exc:
        raise MmflError(f"tracking.enabled is true but mlflow cannot be imported: {exc}") from None


def attach_run(tracker: SafeTracker, previous: dict[str, Any], run_name: str, params: dict[str, Any],
               tags: dict[str, str], history: list[dict[str, Any]],
               metrics_of: Callable[[dict[str, Any]], dict[str, float]]) -> dict[str, Any] | None:
    """Open the experiment's run and replay the stored rounds it lacks; the new ``tracking.json`` or None.

    ``previous`` is the stored ``tracking.json`` ({run_id, tracking_uri, experiment} or {}). Its run
    is reused only when the tracking URI and the MLflow experiment are the same as now; otherwise
    a new run is started in the new place. ``history``: the stored rounds (``metrics.json``
    contents), ``metrics_of`` turns one into the metrics logged for it.
    """
    if not tracker.active:
        return None
    uri = redact_uri(tracker.uri) if tracker.uri else None
    experiment = getattr(tracker.inner, "experiment_name", None)
    same_place = previous.get("tracking_uri") == uri and previous.get("experiment", experiment) == experiment
    reuse = previous.get("run_id") if same_place else None
    if previous.get("run_id") and not same_place:
        log.info("tracking moved (%s, experiment %s -> %s, experiment %s): new run, history replayed",
                 previous.get("tracking_uri"), previous.get("experiment"), uri, experiment)
    run_id = tracker.start(run_name, params, tags, run_id=reuse)
    if run_id is None:
        return None
    logged = tracker.logged_steps() if run_id == reuse else set()
    if logged is not None:
        missing = [h for h in history if h.get("round", 0) >= 1 and h["round"] not in logged]
        for entry in missing:
            tracker.log_metrics(metrics_of(entry), step=entry["round"])
        if missing:
            log.info("replayed %d stored round(s) to the tracker", len(missing))
    return {"run_id": run_id, "tracking_uri": uri, "experiment": experiment}
