"""A comparison of several experiments as one dated MLflow parent run with the experiments nested.

``mmfl run`` with several methods (``make run``) and the benchmark pipeline's ``compare`` task both
record their comparison this way: a parent run named ``<name> <UTC date and time>`` in the
experiments' own MLflow experiment, each experiment's run nested under it (``mlflow.parentRunId``),
and the table and final-accuracy plot of ``mmfl report`` (``mmfl/comparison.py``) over the nested
runs, read back from MLflow as the report reads them. An experiment run that a later comparison
reuses (a resumed, already finished experiment) moves under the later parent.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mmfl.comparison import compare, plot_final
from mmfl.io.runs import COMPARISON_KIND, KIND_TAG, run_records


def start_comparison(tracker: Any, name: str, children: list[str], tags: dict[str, str] | None = None,
                     params: dict[str, Any] | None = None) -> str:
    """Open the dated parent run, nest ``children`` (MLflow run ids) under it and log the report's
    table (``comparison_table.json``) and final-accuracy plot (``comparison_accuracy.png``).

    ``tracker`` is an ``MlflowTracker``; the parent stays open so the caller can add artifacts; it
    ends with ``tracker.finish()``."""
    from matplotlib import pyplot as plt

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_id = tracker.start(run_name=f"{name} {stamp}", params={"experiments": len(children), **(params or {})},
                           tags={KIND_TAG: COMPARISON_KIND, "mmfl.comparison": name, **(tags or {})})
    for child in children:
        tracker.set_tags(child, {"mlflow.parentRunId": run_id, "mmfl.comparison": name})
    comp = compare(run_records(tracker.client, children))
    tracker.log_table(comp.columns(), "comparison_table.json")
    tracker.log_dict({"runs": children, "notes": comp.notes}, "comparison_runs.json")
    fig = plot_final(comp, f"{name} ({stamp})")
    tracker.log_figure(fig, "comparison_accuracy.png")
    plt.close(fig)
    return run_id
