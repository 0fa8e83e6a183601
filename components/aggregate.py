"""aggregate: server aggregation of one round's client updates."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def aggregate(config_json: str, start_round: int, offset: int, updates: Input[Artifact], aggregated: Output[Model]):
    """Aggregate the updates of all clients trained in one task."""
    from mmfl.kfp.tasks import aggregate_task

    aggregated.metadata.update(aggregate_task(config_json, start_round, offset, [updates.path], aggregated.path))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def aggregate_collected(config_json: str, start_round: int, offset: int, updates: Input[List[Artifact]],
                        aggregated: Output[Model]):
    """Fan-in after per-client fan-out: aggregate the collected per-client updates."""
    from mmfl.kfp.tasks import aggregate_task

    aggregated.metadata.update(aggregate_task(config_json, start_round, offset, [u.path for u in updates], aggregated.path))
