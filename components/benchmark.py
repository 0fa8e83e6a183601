"""Benchmark components: one whole experiment per grid cell, then the comparison of all cells."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def run_cell(config_json: str, result: Output[Artifact], run_key: str = "", fresh: bool = False):
    """Run (or resume) one experiment of the grid; state in the bucket, metrics in MLflow.
    With ``fresh``, ``run_key`` (the KFP run id) gives this benchmark run its own store prefix."""
    from mmfl.kfp.benchmark import run_cell_task

    result.metadata.update(run_cell_task(config_json, result.path, run_key if fresh else "", run_key))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def compare(benchmark_name: str, results: Input[List[Artifact]], report: Output[HTML], kfp_run_id: str = "",
            kfp_run_name: str = ""):
    """``mmfl report``'s comparison of all cells (read from the store) as the HTML report, with the
    accuracy-vs-missing-rate plot; logged to MLflow as a dated parent run with the cells' runs nested."""
    import json

    from mmfl.kfp.benchmark import compare_task
    from mmfl.kfp.tasks import kfp_tags

    manifests = [json.loads(open(r.path).read()) for r in results]
    report.metadata.update(compare_task([m["config"] for m in manifests], benchmark_name, report.path,
                                        [m.get("run_id", "") for m in manifests], kfp_tags(kfp_run_id, kfp_run_name)))
