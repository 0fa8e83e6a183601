"""The experiment pipeline: one segment of FL rounds, unrolled at compile time.

KFP v2 has no loop with a run-time exit and an Argo workflow must stay well under etcd's object
size limit, so a run holds a bounded number of rounds. The ``prepare`` task finds the latest
checkpoint in the store and how many rounds are left; every round (``rounds_per_task = 1``: one
component per round step) or K-round chunk (``train_rounds``) is nested under a condition on
those rounds, so nothing is scheduled past ``train.rounds``. With the run parameter ``chain`` the
last task submits the next segment through the KFP API (``mmfl/kfp/chain.py``).
"""

import contextlib
import json

from kfp import dsl

from components.aggregate import aggregate, aggregate_collected
from components.chain import continue_chain
from components.client_train import client_train
from components.evaluate import evaluate
from components.prepare import prepare
from components.schedule import schedule
from components.train_rounds import train_rounds
from components.upload_prototypes import upload_prototypes
from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from pipelines.cluster import ClusterSettings, configure
from pipelines.segments import DEFAULT_ROUNDS_PER_TASK, segment_rounds


def build_experiment_pipeline(cfg: ExperimentConfig, rounds: int | None = None, fan_out: bool = False,
                              settings: ClusterSettings | None = None, max_tasks: int = 40,
                              rounds_per_task: int = DEFAULT_ROUNDS_PER_TASK):
    """A pipeline function for ``cfg``'s method: ``rounds`` rounds per run (default: fits ``max_tasks``)."""
    settings = settings or ClusterSettings()
    method = steps.method_of(cfg)
    k_rounds = rounds_per_task
    n = rounds or segment_rounds(cfg, max_tasks, fan_out, k_rounds)
    slots = len(steps.sample_clients(cfg, 1))
    default_config = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)

    @dsl.pipeline(name="mmfl-experiment",
                  description=f"{n} rounds of {cfg.method.name} per run, {k_rounds} per task; resumes from the store")
    def experiment(config_json: str = default_config, chain: bool = False, pipeline_version: str = "",
                   kfp_api: str = ""):
        run_tags = dict(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                        pipeline_version=pipeline_version)
        prep = configure(prepare(config_json=config_json, **run_tags), settings, "prepare")
        start, left = prep.outputs["start_round"], prep.outputs["Output"]  # rounds left
        state = prep.outputs["checkpoint"]
        with contextlib.ExitStack() as nested:
            if k_rounds > 1:
                for j in range(-(-n // k_rounds)):
                    nested.enter_context(dsl.If(left > j * k_rounds, name=f"rounds-{j * k_rounds + 1}-left"))
                    chunk = train_rounds(config_json=config_json, start_round=start, offset=j, rounds_per_task=k_rounds,
                                         state=state, **run_tags)
                    state = configure(chunk, settings, "train_rounds",
                                      f"rounds +{j * k_rounds + 1}..+{(j + 1) * k_rounds}").outputs["checkpoint"]
            else:
                for k in range(n):
                    nested.enter_context(dsl.If(left > k, name=f"round-{k + 1}-left"))
                    state = _round_steps(cfg, method, settings, config_json, start, k, state, fan_out, slots, run_tags)
            nested.enter_context(dsl.If(left > n, name="rounds-left-after-run"))
            nested.enter_context(dsl.If(chain == True, name="chain"))  # noqa: E712 (a KFP condition, not Python)
            configure(continue_chain(config_json=config_json, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                     start_round=start, rounds_per_run=n, state=state, kfp_api=kfp_api),
                      settings, "continue_chain", "submit next segment")

    experiment.rounds_per_run = n
    experiment.rounds_per_task = k_rounds
    return experiment


def _round_steps(cfg, method, settings, config_json, start, k, state, fan_out, slots, run_tags):
    """One round as separate components (the design card's shape); returns the checkpoint artifact."""
    common = dict(config_json=config_json, start_round=start, offset=k)
    tag = f"round +{k + 1}"
    if fan_out:
        # the loop body takes its round from the state artifact (start_round=-1): it gets no
        # task-output parameter, which some runners (kfp.local) overwrite with the loop item
        in_loop = dict(config_json=config_json, start_round=-1, offset=k)
        with dsl.ParallelFor(items=list(range(slots)), name=f"clients-{k + 1}") as slot:
            train = configure(client_train(**in_loop, state=state, client_slot=slot), settings, "client_train",
                              f"{tag} client_train")
            ups = train.outputs["updates"]
            if method.uses_prototypes:
                ups = configure(upload_prototypes(**in_loop, state=state, updates=ups), settings, "upload_prototypes",
                                f"{tag} upload_prototypes").outputs["uploads"]
        agg = aggregate_collected(**common, updates=dsl.Collected(ups))
    else:
        train = configure(client_train(**common, state=state), settings, "client_train", f"{tag} client_train")
        ups = train.outputs["updates"]
        if method.uses_prototypes:
            ups = configure(upload_prototypes(**common, state=state, updates=ups), settings, "upload_prototypes",
                            f"{tag} upload_prototypes").outputs["uploads"]
        agg = aggregate(**common, updates=ups)
    current = configure(agg, settings, "aggregate", f"{tag} aggregate").outputs["aggregated"]
    if method.uses_schedule:
        current = configure(schedule(**common, aggregated=current), settings, "schedule",
                            f"{tag} schedule").outputs["scheduled"]
    ev = configure(evaluate(**common, state=current, **run_tags), settings, "evaluate", f"{tag} evaluate")
    return ev.outputs["checkpoint"]
