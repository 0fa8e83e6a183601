"""Step 4 of `make image-check`: one pipeline component run inside the built image.

Starts SeaweedFS (S3, with a user scoped to the state bucket, as the chart's pipeline user) and
MLflow with basic-auth (the chart's own start-up script and users Job script) on 127.0.0.1,
compiles the experiment pipeline for the image, takes the `prepare` task's container command and
arguments from the compiled YAML, and runs them in a buildah container the way the KFP launcher
does, with the environment the chart's Secrets and ConfigMap give a task. Then checks what the
task wrote to S3 and MLflow, and that the same task without MLflow credentials is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mmfl.methods import parse_experiment
from pipelines.compile import CompileOptions, compile_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.s3 import seaweedfs_s3
from tests.helpers.servers import CHART_FILES, mlflow_auth_server

BUCKET = "mmfl"


def tiny_config(work: Path, name: str = "image-check") -> dict:
    """The test suite's tiny synthetic experiment, with its state in the S3 bucket and MLflow on."""
    return tiny_config_dict(work, name=name, train={"rounds": 2}, storage={"kind": "minio", "root": "runs", "bucket": BUCKET},
                            tracking={"enabled": True, "experiment": "image-check"})


def prepare_component(package: Path) -> tuple[dict, dict]:
    """The `prepare` task's component definition and executor container from the compiled pipeline."""
    spec = next(yaml.safe_load_all(package.read_text()))
    component = spec["components"][spec["root"]["dag"]["tasks"]["prepare"]["componentRef"]["name"]]
    return component, spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]


def executor_input(component: dict, config_json: str) -> str:
    """What the KFP launcher hands the executor: input values, and a local path for every output."""
    out = "/tmp/kfp"
    params = {name: d.get("defaultValue", "") for name, d in component["inputDefinitions"]["parameters"].items()}
    params.update(config_json=config_json, kfp_run_id="image-check-run", kfp_run_name="image-check")
    outputs = component["outputDefinitions"]
    return json.dumps({
        "inputs": {"parameterValues": {k: v for k, v in params.items()
                                       if k in component["inputDefinitions"]["parameters"]}},
        "outputs": {
            "artifacts": {name: {"artifacts": [{"name": name, "type": d["artifactType"], "uri": f"{out}/{name}",
                                                "metadata": {}}]}
                          for name, d in outputs.get("artifacts", {}).items()},
            "parameters": {name: {"outputFile": f"{out}/{name}"} for name in outputs.get("parameters", {})},
            "outputFile": f"{out}/executor_output.json"}})


def buildah(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"buildah {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_task(image: str, component: dict, container: dict, env: dict[str, str],
             config_json: str) -> tuple[subprocess.CompletedProcess, str]:
    assert container["image"] == image, container["image"]
    ctr = buildah("from", "--pull=never", image).stdout.strip().splitlines()[-1]
    try:
        argv = [a.replace("{{$}}", executor_input(component, config_json)) for a in container["command"] + container["args"]]
        env_args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        start = time.monotonic()
        proc = buildah("run", "--isolation", "chroot", *env_args, ctr, "--", *argv, check=False)
        print(f"image-check: prepare ran in the image in {time.monotonic() - start:.0f} s (exit {proc.returncode})")
        output = buildah("run", "--isolation", "chroot", ctr, "--", "cat", "/tmp/kfp/executor_output.json",
                         check=False).stdout
        return proc, output
    finally:
        buildah("rm", ctr, check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.out.resolve() / "servers"
    shutil.rmtree(work, ignore_errors=True)  # fresh servers: MLflow keeps the admin of its first start
    pipeline_key, pipeline_secret = "mmfl-pipeline", secrets.token_urlsafe(30)
    with seaweedfs_s3(work / "s3", scoped={BUCKET: (pipeline_key, pipeline_secret)}) as s3, \
            mlflow_auth_server(work / "mlflow", secrets.token_urlsafe(30), secrets.token_urlsafe(30)) as mlflow:
        from minio import Minio

        admin = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False)
        if not admin.bucket_exists(BUCKET):
            admin.make_bucket(BUCKET)  # as the chart's bucket Job does
        cfg = parse_experiment(tiny_config(work))
        package, _ = compile_experiment(cfg, args.out / "experiment.yaml", CompileOptions(image=args.image, gpus=0))
        component, container = prepare_component(package)
        config_json = json.dumps(cfg.model_dump(mode="json"))
        env = {"MINIO_ENDPOINT": s3.endpoint, "MINIO_SECURE": "false", "MINIO_ACCESS_KEY": pipeline_key,
               "MINIO_SECRET_KEY": pipeline_secret, "MLFLOW_TRACKING_URI": mlflow.uri,
               "MLFLOW_TRACKING_USERNAME": mlflow.pipeline[0], "MLFLOW_TRACKING_PASSWORD": mlflow.pipeline[1]}
        proc, output = run_task(args.image, component, container, env, config_json)
        (args.out / "prepare.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit("image-check: the prepare component failed in the image")
        exp_id = cfg.experiment_id()
        keys = sorted(o.object_name for o in admin.list_objects(BUCKET, prefix=f"runs/{exp_id}/", recursive=True))
        print(f"image-check: S3 bucket {BUCKET!r} holds {len(keys)} objects of experiment {exp_id}, e.g. {keys[:3]}")
        print(f"image-check: executor output {output.strip()[:300]}")
        from mlflow.tracking import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = mlflow.admin
        client = MlflowClient(mlflow.uri)
        experiment = client.get_experiment_by_name("image-check")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        print(f"image-check: MLflow run(s) by the pipeline user: {[r.info.run_name for r in runs]}")
        if not keys or not any(k.endswith("rounds/00000/metrics.json") for k in keys) or len(runs) != 1:
            raise SystemExit("image-check: the task's state or MLflow run is missing")
        # the same task without MLflow credentials (a new experiment, so it reaches tracking): MLflow
        # answers 401, the task's tracker stops and training goes on (the rounds stay in the store)
        refused_cfg = parse_experiment(tiny_config(work, name="image-check-refused"))
        no_auth = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        proc, _ = run_task(args.image, component, container, no_auth, json.dumps(refused_cfg.model_dump(mode="json")))
        text = proc.stdout + proc.stderr
        (args.out / "prepare-refused.log").write_text(text)
        stopped = [line for line in text.splitlines() if "tracking stopped" in line and "401" in line]
        runs = client.search_runs([experiment.experiment_id])
        if not stopped or any(r.info.run_name.startswith("image-check-refused") for r in runs):
            raise SystemExit("image-check: without credentials MLflow did not refuse the task")
        print(f"image-check: without MLflow credentials (exit {proc.returncode}): " + stopped[0][-220:])
    mlflow_in_image(args.image, args.out)
    return 0


def mlflow_in_image(image: str, out: Path) -> None:
    """The chart runs MLflow from this image: its migrate step (sqlite here) and the server's imports."""
    script = (CHART_FILES / "mlflow.sh").read_text()
    ctr = buildah("from", "--pull=never", image).stdout.strip().splitlines()[-1]
    try:
        env = ["--env", "DB_URI=sqlite:////tmp/mlflow.db", "--env", "MLFLOW_AUTH=true", "--env", "HOME=/tmp"]
        proc = buildah("run", "--isolation", "chroot", *env, ctr, "--", "sh", "-c", script, "mlflow.sh", "migrate",
                       check=False)
        (out / "mlflow-migrate.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"image-check: mlflow.sh migrate failed in the image:\n{proc.stderr[-2000:]}")
        probe = ("import sqlite3, mlflow.server.auth, psycopg2, boto3; "
                 "c = sqlite3.connect('/tmp/mlflow.db'); "
                 "print(sorted(t for (t,) in c.execute(\"select name from sqlite_master where name like 'alembic%'\")))")
        proc = buildah("run", "--isolation", "chroot", "--env", "HOME=/tmp", ctr, "--", "python3", "-c", probe)
        print(f"image-check: mlflow.sh migrate ran in the image; version tables {proc.stdout.strip()}; "
              "basic-auth, psycopg2 and boto3 import")
    finally:
        buildah("rm", ctr, check=False)


if __name__ == "__main__":
    sys.exit(main())
