"""prepare: data shards into the store, the checkpoint a segment starts from, and the MLflow link."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare(config_json: str, checkpoint: Output[Model], mlflow_run: Output[Markdown], kfp_run_id: str = "",
            kfp_run_name: str = "", pipeline_version: str = "") -> NamedTuple("Outputs", [("start_round", int),
                                                                                          ("Output", int)]):
    """Write the federated data shards once, find the round this segment resumes after and link the
    experiment's MLflow run (tagged with this KFP run) in the KFP UI. ``Output`` is the number of
    rounds left (the conditions test it; kfp.local resolves a task output in a condition only
    under that name)."""
    from collections import namedtuple

    from mmfl.kfp.tasks import kfp_tags, prepare_task

    start, remaining, meta = prepare_task(config_json, checkpoint.path, mlflow_run.path,
                                          kfp_tags(kfp_run_id, kfp_run_name, pipeline_version))
    checkpoint.metadata.update(meta)
    return namedtuple("Outputs", ["start_round", "Output"])(start, remaining)
