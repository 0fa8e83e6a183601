"""The registry of federated methods: each method's name is written here, once.

``resolve(cfg)`` looks the configured method up and validates its ``method.params`` once per
experiment config (errors name the field and the value); the config keeps the completed params
(paper defaults filled in), which the experiment id hashes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from mmfl.config import ExperimentConfig, format_errors, load_config, parse_config
from mmfl.errors import ConfigError
from mmfl.methods.base import Method

# name -> "module:Class". Entries are import paths, so listing names imports nothing heavy.
METHODS: dict[str, str] = {
    "fedavg": "mmfl.methods.fedavg:FedAvg",
    "fedprox": "mmfl.methods.fedprox:FedProx",
    "zerofill": "mmfl.methods.zerofill:ZeroFill",
    "fedprime": "mmfl.methods.fedprime:FedPrime",
    "fedavg_p": "mmfl.methods.fedavg_p:FedAvgP",
    "fedmvp": "mmfl.methods.fedmvp:FedMVP",
    "pmcmfl": "mmfl.methods.pmcmfl:PmcmFL",
    "threefm": "mmfl.methods.threefm:ThreeFM",
    "flexmod": "mmfl.methods.flexmod:FlexMod",
    "partial_update": "mmfl.methods.partial_update:PartialUpdate",
}

_INSTANCES: dict[tuple[str, str], Method] = {}


@dataclass(frozen=True)
class Resolved:
    """The method of an experiment and its validated params."""

    method: Method
    params: BaseModel


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    """The (stateless) method registered as ``name``."""
    if name not in METHODS:
        raise ConfigError(f"method.name = {name!r}: unknown method; known: {', '.join(method_names())}")
    target = METHODS[name]
    key = (name, target)
    if key not in _INSTANCES:
        module, _, cls = target.partition(":")
        method = getattr(importlib.import_module(module), cls)()
        method.name = name
        _INSTANCES[key] = method
    return _INSTANCES[key]


def resolve(cfg: ExperimentConfig) -> Resolved:
    """The experiment's method and validated params; validated once per config object."""
    found = cfg.method.resolution
    if isinstance(found, Resolved) and found.method.name == cfg.method.name:
        return found
    for name in cfg.methods:
        if name not in METHODS:
            raise ConfigError(f"methods.{name}: unknown method {name!r}; known: {', '.join(method_names())}")
    method = get_method(cfg.method.name)
    try:
        params = method.Params.model_validate(cfg.method.params)
    except ValidationError as exc:
        lines = format_errors(exc, prefix="method.params")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    resolved = Resolved(method, params)
    cfg.method.complete(params.model_dump(), resolved)
    return resolved


def training_budget(cfg: ExperimentConfig) -> tuple[dict, dict]:
    """(the local budget of the experiment's method, the shared settings it overrides)."""
    from mmfl.methods.base import Context

    method = resolve(cfg).method
    ctx = Context(cfg, None, 0)  # type: ignore[arg-type]  # budgets read the config and params only
    return method.budget(ctx), method.overrides(ctx)


def load_experiment(path, overrides: list[str] | None = None) -> ExperimentConfig:
    """``load_config`` + ``resolve``: a config file whose method and params are checked."""
    cfg = load_config(path, overrides)
    resolve(cfg)
    return cfg


def parse_experiment(data, source: str = "config") -> ExperimentConfig:
    """``parse_config`` + ``resolve``."""
    cfg = parse_config(data, source)
    resolve(cfg)
    return cfg
