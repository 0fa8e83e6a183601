"""How many pipeline tasks a round costs, how rounds are split into runs (segments), and what an
experiment costs in tasks and pods.

Two shapes: ``rounds_per_task = 1`` keeps one component per round step (train, [prototypes],
aggregate, [schedule], evaluate); ``K > 1`` trains K whole rounds in one ``train_rounds`` task. Each
round (or K-round chunk) sits under a condition on the rounds the run's ``prepare`` found left, so
no task starts for rounds past ``train.rounds``, whatever the split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from mmfl.errors import ConfigError

# Chosen from the per-task overhead measured under kfp.local (docs/kubeflow.md, bench/pipeline_overhead.py):
# about 35 s per task against about 7.6 s per quickstart round on the shared 2-core machine, so K = 25
# keeps the start-up under 20 % of a task even for the smallest model; a retried task loses at most
# the round in flight (each round is checkpointed).
DEFAULT_ROUNDS_PER_TASK = 25


def steps_per_round(cfg: ExperimentConfig, fan_out: bool = False) -> int:
    """Pipeline tasks one round costs with per-step components: train, [prototypes], aggregate, [schedule], evaluate."""
    method = steps.method_of(cfg)
    per_client = 1 + int(method.uses_prototypes)
    clients = len(steps.sample_clients(cfg, 1)) if fan_out else 1
    return per_client * clients + 2 + int(method.uses_schedule)


def segment_rounds(cfg: ExperimentConfig, max_tasks: int = 40, fan_out: bool = False, rounds_per_task: int = 1) -> int:
    """Rounds one pipeline run holds so that it stays within ``max_tasks`` tasks (prepare and the
    chain task are two of them)."""
    if rounds_per_task < 1:
        raise ConfigError(f"rounds_per_task = {rounds_per_task}: use 1 (one task per round step) or more")
    if rounds_per_task > 1:
        if fan_out:
            raise ConfigError(f"--fan-out with rounds_per_task = {rounds_per_task}: fan-out needs one task per round "
                              "step; use --rounds-per-task 1")
        if max_tasks < 3:
            raise ConfigError(f"max_tasks = {max_tasks}: a run needs prepare, one train_rounds task and the chain task")
        chunks = min(max_tasks - 2, math.ceil(cfg.train.rounds / rounds_per_task))
        return min(chunks * rounds_per_task, cfg.train.rounds)
    per = steps_per_round(cfg, fan_out)
    if max_tasks - 2 < per:
        raise ConfigError(f"max_tasks = {max_tasks}: one round of {cfg.method.name} needs {per} tasks plus 2")
    return max(1, min(cfg.train.rounds, (max_tasks - 2) // per))


def segments_needed(cfg: ExperimentConfig, rounds_per_segment: int, done: int = 0) -> int:
    return math.ceil(max(0, cfg.train.rounds - done) / rounds_per_segment)


@dataclass
class Cost:
    rounds_per_run: int
    runs: int
    tasks: int
    pods: int

    def line(self) -> str:
        return (f"{self.runs} run(s) of up to {self.rounds_per_run} rounds, {self.tasks} tasks, "
                f"about {self.pods} pods (driver + executor per task, one DAG driver per run and per condition)")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def experiment_cost(cfg: ExperimentConfig, rounds_per_task: int = DEFAULT_ROUNDS_PER_TASK, max_tasks: int = 40,
                    fan_out: bool = False, chain: bool = True, done: int = 0) -> Cost:
    """Tasks and pods of the experiment from round ``done`` to the end, as compiled now."""
    n = segment_rounds(cfg, max_tasks, fan_out, rounds_per_task)
    left = max(0, cfg.train.rounds - done)
    runs = math.ceil(left / n)
    groups = math.ceil(left / rounds_per_task) if rounds_per_task > 1 else left  # conditions that run
    per_group = 1 if rounds_per_task > 1 else steps_per_round(cfg, fan_out)
    tasks = runs + groups * per_group + (max(0, runs - 1) if chain else 0)
    pods = 2 * tasks + runs + groups + (max(0, runs - 1) if chain else 0)
    return Cost(n, runs, tasks, pods)


def unconditional_cost(cfg: ExperimentConfig, max_tasks: int = 40, fan_out: bool = False) -> Cost:
    """The same for the earlier shape (per-step tasks, 40-task runs, every task started even past the
    end), kept to document the change."""
    per = steps_per_round(cfg, fan_out)
    n = max(1, min(cfg.train.rounds, (max_tasks - 1) // per))
    runs = math.ceil(cfg.train.rounds / n)
    tasks = runs * (1 + n * per)
    return Cost(n, runs, tasks, 2 * tasks + runs)
