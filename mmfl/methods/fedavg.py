"""FedAvg (McMahan et al., 2017) with an explicit learned placeholder for each missing modality."""

from mmfl.methods.base import Method


class FedAvg(Method):
    vectorizable = True

