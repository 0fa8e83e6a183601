"""upload_prototypes: clients attach prototypes (or other side information) to their updates."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def upload_prototypes(config_json: str, start_round: int, offset: int, state: Input[Model], updates: Input[Artifact],
                      uploads: Output[Artifact]):
    """Compute each client's prototypes against the round's starting state."""
    from mmfl.kfp.tasks import upload_prototypes_task

    uploads.metadata.update(upload_prototypes_task(config_json, start_round, offset, updates.path, uploads.path))
