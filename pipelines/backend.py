"""The oldest Kubeflow Pipelines backend the compiled pipelines run on, and a check against it.

The KFP driver refuses a task whose Kubernetes platform spec has a field its proto does not know
(KFP <= 2.4 / Kubeflow 1.9 fail every task on ``secretNameParameter`` or ``optional``). The
compiled YAML uses ``secretAsEnv.optional`` (the MLflow Secret may be absent), ``*NameParameter``,
``activeDeadlineSeconds`` (task timeouts), ``podMetadata`` and artifact fan-in (``dsl.Collected``).
``kfp_backend_fields.json`` records the field tree of ``KubernetesExecutorConfig`` as the proto of
the minimum backend's release (kfp-kubernetes 2.15.0) defines it; ``check_platform_spec`` lists any
compiled field outside it (``tests/test_kfp_compile.py`` runs it on every compiled package).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MIN_KFP_BACKEND = "2.15.0"
FIELDS = json.loads((Path(__file__).with_name("kfp_backend_fields.json")).read_text())


def _unknown(value: Any, allowed: Any, path: str) -> list[str]:
    if allowed in ("value", "map") or not isinstance(allowed, dict):
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, sub in item.items():
            where = f"{path}.{key}" if path else key
            if key not in allowed:
                out.append(where)
            else:
                out += _unknown(sub, allowed[key], where)
    return out


def check_platform_spec(platform_doc: dict[str, Any]) -> list[str]:
    """``<executor>: <field path> (unknown to KFP <version>)`` for every field the minimum backend lacks."""
    executors = (platform_doc.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {}))
    return [f"{name}: {path} (unknown to KFP {MIN_KFP_BACKEND})"
            for name, cfg in sorted(executors.items()) for path in sorted(set(_unknown(cfg, FIELDS, "")))]
