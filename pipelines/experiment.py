"""The experiment pipeline: one segment of FL rounds, unrolled at compile time.

KFP v2 has no loop with a run-time exit and an Argo workflow must stay well under etcd's object
size limit, so a run holds ``rounds`` consecutive rounds (about 40 tasks). The ``prepare`` task
finds the latest checkpoint in the store; round tasks work on ``start + offset + 1`` and do nothing
once that round is past ``train.rounds``. A long experiment is a chain of such runs, each resuming
from the previous one's checkpoint (``mmfl submit --chain``).
"""

import json

from kfp import dsl

from components.aggregate import aggregate, aggregate_collected
from components.client_train import client_train
from components.evaluate import evaluate
from components.prepare import prepare
from components.schedule import schedule
from components.upload_prototypes import upload_prototypes
from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from pipelines.segments import segment_rounds
from pipelines.cluster import ClusterSettings, configure


def build_experiment_pipeline(cfg: ExperimentConfig, rounds: int | None = None, fan_out: bool = False,
                              settings: ClusterSettings | None = None, max_tasks: int = 40):
    """A pipeline function for ``cfg``'s method: ``rounds`` rounds per run (default: fits ``max_tasks``)."""
    settings = settings or ClusterSettings()
    method = steps.method_of(cfg)
    n = rounds or segment_rounds(cfg, max_tasks, fan_out)
    slots = len(steps.sample_clients(cfg, 1))
    default_config = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)

    @dsl.pipeline(name="mmfl-experiment",
                  description=f"{n} rounds of {cfg.method.name} per run; resumes from the store checkpoint")
    def experiment(config_json: str = default_config):
        prep = configure(prepare(config_json=config_json), settings, gpu=False, name="prepare")
        start = prep.outputs["start_round"]
        state = prep.outputs["checkpoint"]
        for k in range(n):
            common = dict(config_json=config_json, start_round=start, offset=k)
            tag = f"round +{k + 1}"
            if fan_out:
                # the loop body takes its round from the state artifact (start_round=-1): it gets no
                # task-output parameter, which some runners (kfp.local) overwrite with the loop item
                in_loop = dict(config_json=config_json, start_round=-1, offset=k)
                with dsl.ParallelFor(items=list(range(slots)), name=f"clients-{k + 1}") as slot:
                    train = configure(client_train(**in_loop, state=state, client_slot=slot), settings, True,
                                      f"{tag} client_train")
                    ups = train.outputs["updates"]
                    if method.uses_prototypes:
                        ups = configure(upload_prototypes(**in_loop, state=state, updates=ups), settings, True,
                                        f"{tag} upload_prototypes").outputs["uploads"]
                agg = aggregate_collected(**common, updates=dsl.Collected(ups))
            else:
                train = configure(client_train(**common, state=state), settings, True, f"{tag} client_train")
                ups = train.outputs["updates"]
                if method.uses_prototypes:
                    ups = configure(upload_prototypes(**common, state=state, updates=ups), settings, True,
                                    f"{tag} upload_prototypes").outputs["uploads"]
                agg = aggregate(**common, updates=ups)
            current = configure(agg, settings, False, f"{tag} aggregate").outputs["aggregated"]
            if method.uses_schedule:
                current = configure(schedule(**common, aggregated=current), settings, True,
                                    f"{tag} schedule").outputs["scheduled"]
            ev = configure(evaluate(**common, state=current), settings, True, f"{tag} evaluate")
            state = ev.outputs["checkpoint"]

    experiment.rounds_per_run = n
    return experiment
