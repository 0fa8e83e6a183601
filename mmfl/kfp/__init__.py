"""Kubeflow Pipelines layer: component glue, pipeline compilation, submission and scheduling.

Only ``component_io`` runs inside pipeline pods; it imports no kfp. ``compile`` and ``client``
import kfp lazily, so the library stays importable without it.
"""
