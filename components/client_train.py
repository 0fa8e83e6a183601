"""client_train: local training of the round's sampled clients (all in one task, or one per slot)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def client_train(config_json: str, start_round: int, offset: int, state: Input[Model], updates: Output[Artifact],
                 client_slot: int = -1):
    """Train from the previous round's global state; ``client_slot`` >= 0 trains one sampled client.
    ``start_round`` < 0 takes the round from the state artifact (used inside per-client loops)."""
    from mmfl.kfp.tasks import client_train_task

    updates.metadata.update(client_train_task(config_json, start_round, offset, updates.path, client_slot, state.path))
