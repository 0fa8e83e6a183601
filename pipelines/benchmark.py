"""The benchmark pipeline: methods x missing rates x seeds, ending in a comparison in MLflow.

The grid is a pipeline parameter (a list of experiment configs as JSON), so a recurring run or a
resubmission can change it without recompiling; ``parallelism`` bounds the GPU nodes used at once.
With ``fresh`` (the default) every run computes its cells anew under its own store prefix (a
recurring benchmark measures the current image); ``fresh=False`` resumes the configs' own experiments.
"""

import json

from kfp import dsl

from components.benchmark import compare, run_cell
from mmfl.config import ExperimentConfig
from mmfl.kfp.benchmark import MAX_CELLS
from mmfl.errors import ConfigError
from pipelines.cluster import ClusterSettings, configure


def build_benchmark_pipeline(cells: list[ExperimentConfig], name: str = "benchmark", parallelism: int = 4,
                             settings: ClusterSettings | None = None):
    settings = settings or ClusterSettings()
    if not 1 <= len(cells) <= MAX_CELLS:
        raise ConfigError(f"benchmark grid has {len(cells)} cells; use 1 to {MAX_CELLS}")
    default_cells = [json.dumps(c.model_dump(mode="json"), sort_keys=True) for c in cells]

    @dsl.pipeline(name="mmfl-benchmark", description=f"{len(cells)} experiments, then a comparison table and plot")
    def benchmark(cells_json: list = default_cells, benchmark_name: str = name, fresh: bool = True):
        with dsl.ParallelFor(items=cells_json, parallelism=parallelism, name="grid") as cell:
            run = configure(run_cell(config_json=cell, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER, fresh=fresh),
                            settings, "run_cell", "experiment")
        configure(compare(benchmark_name=benchmark_name, results=dsl.Collected(run.outputs["result"]),
                          kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER),
                  settings, "compare")

    return benchmark
