"""Run identity: which settings make up an experiment's results, stored once, checked on every re-run.

Every setting falls into one of four groups (``mmfl.config.setting_group``, the rule the
experiment id and report grouping use too):

- **result**: anything that changes the trained weights or the numbers: data, partition,
  missing, model, method, seed, the training settings and every ``reliability.*`` setting
  (screening, the aggregation rule and fault drills change which updates are averaged; only
  the drills that cannot change weights, ``exit`` and ``sleep`` without a client timeout, are
  left out);
- **eval**: ``eval.every`` and ``eval.patterns``: a re-run evaluates what is missing on the
  stored checkpoints;
- **tracking**: ``tracking.*``: a re-run logs to the new place and replays the stored rounds;
- **execution**: ``storage.*`` and ``train.device``/``vector_chunk``/``compile``/``threads``:
  where and how fast, never what.

The experiment id hashes part of the result group (name, method and the settings that existed
before reliability was part of the results), so an experiment keeps its id; the *manifest*
(``<experiment>/manifest.json``) records every result setting, and a re-run whose result
settings differ from the stored ones is refused with one line naming the fields, unless it asks
for a new experiment (``--new-experiment``), which gets its own name suffix and id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mmfl.config import ExperimentConfig, setting_group
from mmfl.errors import ConfigError

MANIFEST_VERSION = 1


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of nested mappings (lists are leaves)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def result_faults(config: dict[str, Any]) -> list[Any]:
    """The fault drills that can change the weights: all but ``exit`` (the process dies before the
    round is saved) and ``sleep`` without a ``client_timeout_s`` (a delay only)."""
    rel = config.get("reliability") or {}
    timeout = rel.get("client_timeout_s")
    return [f for f in rel.get("fault_injection") or []
            if not (isinstance(f, dict) and (f.get("mode") == "exit" or (f.get("mode") == "sleep" and timeout is None)))]


def split_settings(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A config dump (``model_dump(mode="json")``) as {result, eval, tracking} flat dotted settings."""
    flat = flatten(config)
    if "reliability.fault_injection" in flat:
        flat["reliability.fault_injection"] = result_faults(config)
    groups: dict[str, dict[str, Any]] = {"result": {}, "eval": {}, "tracking": {}}
    for field, value in sorted(flat.items()):
        group = setting_group(field)
        if group != "execution":
            groups[group][field] = value
    return groups


def manifest(cfg: ExperimentConfig) -> dict[str, Any]:
    """What ``<experiment>/manifest.json`` holds for ``cfg``."""
    return {"version": MANIFEST_VERSION, "experiment_id": cfg.experiment_id(),
            **split_settings(cfg.model_dump(mode="json"))}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def result_differences(stored: dict[str, Any], cfg: ExperimentConfig) -> list[str]:
    """``field (stored X, now Y)`` for every result setting that differs from the stored manifest.

    A field the stored manifest does not hold (a setting added since the experiment was stored)
    is not compared: the experiment ran without it, which is what its default reproduces.
    """
    now = split_settings(cfg.model_dump(mode="json"))["result"]
    before = stored.get("result", {})
    out = []
    for field in sorted(set(now) | set(before)):
        if field in before and field in now and before[field] != now[field]:
            out.append(f"{field} (stored {_short(before[field])}, now {_short(now[field])})")
        elif field in before and field not in now:
            out.append(f"{field} (stored {_short(before[field])}, now absent)")
    return out


def legacy_manifest(config_json: dict[str, Any]) -> dict[str, Any]:
    """A manifest rebuilt from the ``config.json`` of an experiment stored before manifests existed."""
    return {"version": 0, **split_settings(config_json)}


def refuse_if_different(stored: dict[str, Any], cfg: ExperimentConfig, where: str) -> None:
    """ConfigError (one line) naming every result setting that differs from the stored experiment."""
    diffs = result_differences(stored, cfg)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(
            f"experiment {cfg.experiment_id()} in {where} was computed with other result settings: {shown}. "
            "Its checkpoints are not reused for these settings: run with --new-experiment to start a separate "
            "experiment, or restore the stored settings")


def new_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` renamed ``<name>-x<digest of every result setting>``: an experiment of its own."""
    result = split_settings(cfg.model_dump(mode="json"))["result"]
    result.pop("name", None)
    digest = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()[:8]
    suffix = f"-x{digest}"
    if cfg.name.endswith(suffix):
        return cfg
    return cfg.model_copy(update={"name": cfg.name[: 80 - len(suffix)] + suffix})


def missing_evaluations(stored_eval: dict[str, Any] | None, patterns: list[str]) -> list[str]:
    """Patterns of ``patterns`` that a round's stored ``eval`` lacks."""
    have = set(stored_eval or {})
    return [p for p in patterns if p not in have]
