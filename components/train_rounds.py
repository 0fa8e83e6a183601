"""train_rounds: K whole rounds in one task (the local engine's loop), each checkpointed and logged."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_rounds(config_json: str, start_round: int, offset: int, rounds_per_task: int, state: Input[Model],
                 checkpoint: Output[Model], metrics: Output[Metrics], kfp_run_id: str = "", kfp_run_name: str = "",
                 pipeline_version: str = ""):
    """Rounds start + offset*K + 1 .. start + (offset+1)*K of the experiment, in this process."""
    from mmfl.kfp.tasks import kfp_tags, train_rounds_task

    meta, values = train_rounds_task(config_json, start_round, offset, rounds_per_task, checkpoint.path,
                                     kfp_tags(kfp_run_id, kfp_run_name, pipeline_version))
    checkpoint.metadata.update(meta)
    for name, value in values.items():
        metrics.log_metric(name, value)
