"""Zero-fill baseline: FedAvg where missing inputs are zeros and the model is not told they are missing."""

from mmfl.methods.base import Method


class ZeroFill(Method):
    vectorizable = True
    missing_strategy = "zero"

