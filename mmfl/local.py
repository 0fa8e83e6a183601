"""The local driver: whole experiments in this process (the embedded default engine), with progress.

The rounds themselves run in ``mmfl/engine/loop.py`` and are recorded by the experiment session
(``mmfl/engine/session.py``) that the pipeline tasks use too, so either can resume the other's run.
"""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmfl.config import ExperimentConfig
from mmfl.engine.loop import ExperimentResult
from mmfl.engine.loop import run_experiment as run_rounds
from mmfl.io import ArtifactStore


def run_experiment(
    cfg: ExperimentConfig,
    store: ArtifactStore | None = None,
    tracker: Any = None,
    progress: bool = True,
    stop_after: int | None = None,
    new_experiment: bool = False,
) -> ExperimentResult:
    """Run (or resume) one experiment to ``cfg.train.rounds`` rounds; ``stop_after`` stops early
    (``new_experiment``: see ``mmfl.engine.loop.run_experiment``)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task(f"{cfg.name} {cfg.method.name}", total=cfg.train.rounds, info="")

        def on_round(r: int, state: Any, evaluation: dict[str, Any] | None) -> None:
            if r == 0 or "history" not in state.meta or not state.meta["history"]:
                bar.update(task, completed=r)
                return
            info = f"loss {state.meta['history'][-1]['train_loss']:.3f}"
            if evaluation and "full" in evaluation:
                info += f"  acc(full) {evaluation['full']['acc']:.3f}"
            bar.update(task, completed=r, info=info)
            if progress and evaluation and not bar.console.is_terminal:
                bar.console.print(f"  round {r}/{cfg.train.rounds}: {info}")  # progress in plain logs too

        return run_rounds(cfg, store, tracker, on_round=on_round, stop_after=stop_after, new_experiment=new_experiment)


__all__ = ["ExperimentResult", "run_experiment"]
