"""A method that uses every round step (prototypes and scheduling), for pipeline-shape tests."""

from mmfl.methods.fedavg import FedAvg


class FullSteps(FedAvg):
    name = "fullsteps"
    uses_prototypes = True
    uses_schedule = True


METHOD = FullSteps()
