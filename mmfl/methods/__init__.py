"""Registry of federated methods. Each module exports ``METHOD``, an instance of ``Method``.

Entries are import paths so that listing names imports nothing heavy.
"""

from __future__ import annotations

import importlib

from mmfl.methods.base import Method

_REGISTRY: dict[str, str] = {
    "fedavg": "mmfl.methods.fedavg",
    "fedprox": "mmfl.methods.fedprox",
    "zerofill": "mmfl.methods.zerofill",
    "fedprime": "mmfl.methods.fedprime",
    "fedavg_prompts": "mmfl.methods.fedavg_prompts",
    "fedmvp": "mmfl.methods.fedmvp",
    "pmcmfl": "mmfl.methods.pmcmfl",
    "threefm": "mmfl.methods.threefm",
    "flexmod": "mmfl.methods.flexmod",
}


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return importlib.import_module(_REGISTRY[name]).METHOD


__all__ = ["Method", "get_method", "method_names"]
