"""schedule: server-side scheduling for the next round (FlexMod's DDPG agent)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def schedule(config_json: str, start_round: int, offset: int, aggregated: Input[Model], scheduled: Output[Model]):
    """Update the schedule (e.g. per-modality frequencies) kept in the round state."""
    from mmfl.kfp.tasks import schedule_task

    scheduled.metadata.update(schedule_task(config_json, start_round, offset, aggregated.path, scheduled.path))
