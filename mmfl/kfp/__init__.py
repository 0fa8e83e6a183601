"""The pipeline tasks: what each Kubeflow component runs inside its pod.

``tasks`` holds the per-step task bodies (read inputs from the store, run one round step, record
the round through the experiment session); ``benchmark`` the benchmark cell and comparison tasks.
Neither imports kfp, so they are testable without it. Compiling, submitting and scheduling
pipelines live above the library, in ``pipelines/``.
"""
