"""FedAvg-prompts (FEDAVG-P in the FED-PRIME paper): the same frozen ViLT, prompts and head, but
one fixed prompt set used for every sample (no pools, no retrieval) averaged position by position.

It isolates what FED-PRIME's pools, retrieval and clustering alignment add on top of plain
federated prompt-tuning; parameters are FED-PRIME's (the pool-related ones are ignored).
"""

from mmfl.methods.fedprime import FedPrime


class FedAvgPrompts(FedPrime):
    pools = False

