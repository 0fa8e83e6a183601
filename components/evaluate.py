"""evaluate: test matrix of the global model, metrics to MLflow, then the round checkpoint."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(config_json: str, start_round: int, offset: int, state: Input[Model], checkpoint: Output[Model],
             metrics: Output[Metrics], kfp_run_id: str = "", kfp_run_name: str = "", pipeline_version: str = ""):
    """Evaluate when due, log to MLflow (credentials from the environment) and commit the round."""
    from mmfl.kfp.tasks import evaluate_task, kfp_tags

    meta, values = evaluate_task(config_json, start_round, offset, state.path, checkpoint.path,
                                 kfp_tags(kfp_run_id, kfp_run_name, pipeline_version))
    checkpoint.metadata.update(meta)
    for name, value in values.items():
        metrics.log_metric(name, value)
