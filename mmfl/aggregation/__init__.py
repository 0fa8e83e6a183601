"""Pure server-side aggregation functions."""

from mmfl.aggregation.mean import weighted_mean

__all__ = ["weighted_mean"]
