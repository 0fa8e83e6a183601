"""prepare: data shards into the store and the checkpoint a segment starts from."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare(config_json: str, checkpoint: Output[Model]) -> NamedTuple("Outputs", [("start_round", int)]):
    """Write the federated data shards once and find the round this segment resumes after."""
    from collections import namedtuple

    from mmfl.kfp.tasks import prepare_task

    start, meta = prepare_task(config_json, checkpoint.path)
    checkpoint.metadata.update(meta)
    return namedtuple("Outputs", ["start_round"])(start)
