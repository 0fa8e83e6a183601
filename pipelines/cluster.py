"""Where tasks run and what they may read: resources, placement, timeouts, retries, Secrets, config map.

Every setting can be given per step, in a YAML file (``--cluster FILE``) or on the command line
(``--step STEP.FIELD=VALUE``, ``STEP`` a step name, ``gpu`` / ``cpu`` for every step of that kind, or
``all``). CPU-only steps (prepare, aggregate, the chain and the comparison) get small requests;
GPU steps get a GPU, the GPU node selector and toleration, and ``MMFL_GPU_TASK=1`` so that a pod
that lands without a usable GPU stops with a clear error (``mmfl/kfp/runtime.py``).

Credentials reach the pods only through Kubernetes Secrets (``use_secret_as_env``); endpoints come
from a ConfigMap. Names match what ``charts/mmfl`` creates.

The KFP platform spec (kfp-kubernetes) has no ``priorityClassName``: ``priority_class`` is written
as the pod label ``kueue.x-k8s.io/priority-class`` (Kueue's workload priority) and ``queue`` as
``kueue.x-k8s.io/queue-name``; without Kueue, a cluster can map the label with an admission policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmfl.errors import ConfigError
from mmfl.kfp.runtime import GPU_TASK_ENV

MINIO_SECRET_KEYS = {"accesskey": "MINIO_ACCESS_KEY", "secretkey": "MINIO_SECRET_KEY"}
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
CONFIG_MAP_KEYS = {"MINIO_ENDPOINT": "MINIO_ENDPOINT", "MINIO_SECURE": "MINIO_SECURE",
                   "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}


GPU_STEPS = ("client_train", "upload_prototypes", "schedule", "evaluate", "train_rounds", "run_cell")
CPU_STEPS = ("prepare", "aggregate", "continue_chain", "compare")
STEPS = GPU_STEPS + CPU_STEPS


class StepSettings(BaseModel):
    """Resources and placement of one kind of task; unset fields fall back (step -> gpu/cpu -> all)."""

    model_config = ConfigDict(extra="forbid")
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    timeout_s: int | None = Field(None, ge=1)
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, str]] | None = None
    priority_class: str | None = None
    queue: str | None = None
    labels: dict[str, str] | None = None

    def over(self, base: "StepSettings") -> "StepSettings":
        """These settings where set, else ``base``'s."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


DEFAULT_STEPS: dict[str, StepSettings] = {
    "all": StepSettings(labels={"app.kubernetes.io/part-of": "mmfl"}),
    "gpu": StepSettings(cpu_request="2", cpu_limit="4", memory_request="8G", memory_limit="16G", timeout_s=6 * 3600,
                        node_selector={"nvidia.com/gpu.present": "true"},
                        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    "cpu": StepSettings(cpu_request="250m", cpu_limit="1", memory_request="512M", memory_limit="2G", timeout_s=1800),
    "run_cell": StepSettings(timeout_s=24 * 3600),
    # the next segment's run is created with the pipeline's service account (multi-user Kubeflow:
    # the access-ml-pipeline PodDefault projects its token when the pod carries this label)
    "continue_chain": StepSettings(labels={"app.kubernetes.io/part-of": "mmfl", "access-ml-pipeline": "true"}),
}


class ClusterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gpus: int = Field(1, ge=0, description="GPUs per GPU task; 0 runs everything on CPU nodes")
    accelerator: str = "nvidia.com/gpu"
    retries: int = Field(2, ge=0)
    backoff: str = "30s"
    minio_secret: str = "mmfl-minio"
    mlflow_secret: str = "mmfl-mlflow"
    config_map: str = "mmfl-config"
    steps: dict[str, StepSettings] = Field(default_factory=dict)

    @field_validator("gpus")
    @classmethod
    def _one_gpu(cls, v: int) -> int:
        if v > 1:
            raise ValueError(f"a task trains its clients on one GPU and would leave the other {v - 1} idle; "
                             "use 1 (or 0 for CPU nodes only)")
        return v

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: dict[str, StepSettings]) -> dict[str, StepSettings]:
        unknown = sorted(set(v) - set(STEPS) - {"all", "gpu", "cpu"})
        if unknown:
            raise ValueError(f"unknown step {unknown[0]!r}; use all, gpu, cpu or one of {', '.join(STEPS)}")
        return v

    def is_gpu(self, step: str) -> bool:
        return step in GPU_STEPS and self.gpus > 0

    def for_step(self, step: str) -> StepSettings:
        """The effective settings of ``step``: all < gpu/cpu < step, defaults first, then this file/CLI."""
        kind = "gpu" if self.is_gpu(step) else "cpu"
        out = StepSettings()
        for layer in (DEFAULT_STEPS, self.steps):
            for name in ("all", kind, step):
                if name in layer:
                    out = layer[name].over(out)
        return out


def _parse_value(field: str, text: str) -> Any:
    if field in ("node_selector", "labels"):
        return dict(item.split("=", 1) for item in text.split(",") if item) if text else {}
    if field == "tolerations":
        return [dict(kv.split("=", 1) for kv in tol.split(":") if kv) for tol in text.split(",") if tol]
    return yaml.safe_load(text) if field == "timeout_s" else text


def load_cluster_settings(path: str | None = None, overrides: list[str] | None = None,
                          gpus: int | None = None) -> ClusterSettings:
    """Settings from a YAML file, then ``STEP.FIELD=VALUE`` overrides, then ``--gpus``; errors name the field."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--cluster = {path!r}: not a readable YAML file ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--cluster = {path!r}: expected a mapping of settings")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        step, dot, field = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--step = {item!r}: expected STEP.FIELD=VALUE, e.g. client_train.memory_limit=32G")
        if field not in StepSettings.model_fields:
            raise ConfigError(f"--step = {item!r}: unknown field {field!r}; use one of {', '.join(StepSettings.model_fields)}")
        data.setdefault("steps", {}).setdefault(step, {})[field] = _parse_value(field, value)
    if gpus is not None:
        data["gpus"] = gpus
    try:
        return ClusterSettings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        name = "--gpus" if where == "gpus" else f"cluster setting {where}"
        raise ConfigError(f"{name} = {err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}") from None


def configure(task, settings: ClusterSettings, step: str, name: str | None = None):
    """Apply resources, placement, timeout, retries and credentials to one task (and turn caching off:
    idempotency comes from the store, and KFP's cache would hide a changed resume point)."""
    from kfp import kubernetes

    s = settings.for_step(step)
    task.set_display_name(name or step)
    task.set_caching_options(False)
    task.set_retry(num_retries=settings.retries, backoff_duration=settings.backoff, backoff_factor=2.0)
    if s.cpu_request:
        task.set_cpu_request(s.cpu_request)
    if s.cpu_limit:
        task.set_cpu_limit(s.cpu_limit)
    if s.memory_request:
        task.set_memory_request(s.memory_request)
    if s.memory_limit:
        task.set_memory_limit(s.memory_limit)
    if settings.is_gpu(step):
        task.set_accelerator_type(settings.accelerator).set_accelerator_limit(settings.gpus)
        task.set_env_variable(GPU_TASK_ENV, "1")
    for key, value in (s.node_selector or {}).items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in s.tolerations or []:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                                  value=tol.get("value"), effect=tol.get("effect"))
    if s.timeout_s:
        kubernetes.set_timeout(task, s.timeout_s)
    labels = {**(s.labels or {}), "mmfl.io/step": step}
    if s.priority_class:
        labels["kueue.x-k8s.io/priority-class"] = s.priority_class
    if s.queue:
        labels["kueue.x-k8s.io/queue-name"] = s.queue
    for key, value in labels.items():
        kubernetes.add_pod_label(task, key, value)
    kubernetes.use_secret_as_env(task, secret_name=settings.minio_secret, secret_key_to_env=MINIO_SECRET_KEYS)
    kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS,
                                 optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=settings.config_map, config_map_key_to_env=CONFIG_MAP_KEYS)
    return task
