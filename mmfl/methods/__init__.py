"""Federated methods behind one ``Method`` interface; the registry resolves them by name."""

from mmfl.methods.base import Context, Method
from mmfl.methods.registry import (
    Resolved, get_method, load_experiment, method_names, parse_experiment, resolve, training_budget,
)

__all__ = ["Context", "Method", "Resolved", "get_method", "load_experiment", "method_names", "parse_experiment", "resolve",
           "training_budget"]
