"""Where tasks run and what they may read: GPU nodes, retries, Secrets and the config map.

Credentials reach the pods only through Kubernetes Secrets (``use_secret_as_env``); endpoints come
from a ConfigMap. Names match what ``charts/mmfl`` creates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MINIO_SECRET_KEYS = {"accesskey": "MINIO_ACCESS_KEY", "secretkey": "MINIO_SECRET_KEY"}
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
CONFIG_MAP_KEYS = {"MINIO_ENDPOINT": "MINIO_ENDPOINT", "MINIO_SECURE": "MINIO_SECURE",
                   "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}


@dataclass(frozen=True)
class ClusterSettings:
    gpus: int = 1  # per GPU task; 0 runs everything on CPU nodes
    accelerator: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    toleration_key: str = "nvidia.com/gpu"
    retries: int = 2
    backoff: str = "30s"
    cpu_limit: str = "4"
    memory_limit: str = "16G"
    minio_secret: str = "mmfl-minio"
    mlflow_secret: str = "mmfl-mlflow"
    config_map: str = "mmfl-config"


def configure(task, settings: ClusterSettings, gpu: bool, name: str):
    """Apply resources, placement, retries and credentials to one task (and turn caching off:
    idempotency comes from the store, and KFP's cache would hide a changed resume point)."""
    from kfp import kubernetes

    task.set_display_name(name)
    task.set_caching_options(False)
    task.set_retry(num_retries=settings.retries, backoff_duration=settings.backoff, backoff_factor=2.0)
    task.set_cpu_limit(settings.cpu_limit).set_memory_limit(settings.memory_limit)
    if gpu and settings.gpus > 0:
        task.set_accelerator_type(settings.accelerator).set_accelerator_limit(settings.gpus)
        for key, value in settings.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(task, key=settings.toleration_key, operator="Exists", effect="NoSchedule")
    kubernetes.use_secret_as_env(task, secret_name=settings.minio_secret, secret_key_to_env=MINIO_SECRET_KEYS)
    kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS,
                                 optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=settings.config_map, config_map_key_to_env=CONFIG_MAP_KEYS)
    return task
