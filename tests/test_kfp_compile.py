"""The compiled YAML parses into the KFP pipeline-spec protos with the cluster settings in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from mmfl.methods import registry
from pipelines.compile import CompileOptions, check_cron, compile_benchmark, compile_experiment
from mmfl.errors import ConfigError
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict

GPU_STEPS = ("client-train", "upload-prototypes", "schedule", "evaluate")


def load_package(path: Path) -> tuple[pipeline_spec_pb2.PipelineSpec, dict[str, k8s_pb2.KubernetesExecutorConfig]]:
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    return spec, {name: json_format.ParseDict(cfg, k8s_pb2.KubernetesExecutorConfig()) for name, cfg in executors.items()}


def executor_of(spec: pipeline_spec_pb2.PipelineSpec, task: pipeline_spec_pb2.PipelineTaskSpec) -> str:
    return spec.components[task.component_ref.name].executor_label


def containers(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, dict]:
    deploy = json_format.MessageToDict(spec.deployment_spec)
    return {name: e["container"] for name, e in deploy["executors"].items()}


@pytest.fixture
def fullsteps(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "fullsteps", "tests.helpers.fullstep_method:FullSteps")


def check_cluster_settings(name: str, k8s: k8s_pb2.KubernetesExecutorConfig, container: dict, gpu: bool) -> None:
    envs = {e.env_var: (s.secret_name, e.secret_key) for s in k8s.secret_as_env for e in s.key_to_env}
    assert envs["MINIO_ACCESS_KEY"] == ("mmfl-minio", "accesskey"), name
    assert envs["MINIO_SECRET_KEY"] == ("mmfl-minio", "secretkey"), name
    assert envs["MLFLOW_TRACKING_PASSWORD"] == ("mmfl-mlflow", "password"), name
    cm = {e.env_var for c in k8s.config_map_as_env for e in c.key_to_env}
    assert {"MINIO_ENDPOINT", "MLFLOW_TRACKING_URI"} <= cm, name
    accel = container.get("resources", {}).get("accelerator")
    if gpu:
        assert accel["resourceType"] == "nvidia.com/gpu" and accel["resourceCount"] == "1", name
        assert dict(k8s.node_selector.labels) == {"nvidia.com/gpu.present": "true"}, name
        assert [(t.key, t.operator, t.effect) for t in k8s.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    else:
        assert accel is None and not k8s.tolerations, name
    assert "MINIO_SECRET_KEY=" not in str(container)


def test_experiment_yaml_has_gpu_tolerations_secrets_retries(tmp_path, fullsteps):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "fullsteps"}, train={"rounds": 50}))
    path, rounds = compile_experiment(cfg, tmp_path / "experiment.yaml", CompileOptions(image="registry.example/mmfl:test"))
    assert rounds == 7  # 5 tasks a round, 1 prepare, at most 40 tasks
    spec, k8s = load_package(path)
    tasks = spec.root.dag.tasks
    assert len(tasks) == 1 + 5 * rounds
    assert {"config_json"} == set(spec.root.input_definitions.parameters)
    by_display = {t.task_info.name: t for t in tasks.values()}
    assert {f"round +1 {s}" for s in ("client_train", "upload_prototypes", "aggregate", "schedule", "evaluate")} <= set(by_display)
    conts = containers(spec)
    for name, task in tasks.items():
        assert task.retry_policy.max_retry_count == 2 and task.retry_policy.backoff_factor == 2.0, name
        assert not task.caching_options.enable_cache, name
        label = executor_of(spec, task)
        assert conts[label]["image"] == "registry.example/mmfl:test"
        gpu = any(name.startswith(s) for s in GPU_STEPS)
        check_cluster_settings(name, k8s[label], conts[label], gpu)
    # rounds are chained through the checkpoint artifacts: round k+1 trains from round k's checkpoint
    train2 = by_display["round +2 client_train"]
    producer = train2.inputs.artifacts["state"].task_output_artifact.producer_task
    assert tasks[producer].task_info.name == "round +1 evaluate"


def test_fan_out_and_baseline_shapes(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}))
    path, rounds = compile_experiment(cfg, tmp_path / "exp.yaml")
    spec, _ = load_package(path)
    assert rounds == 2 and len(spec.root.dag.tasks) == 1 + 3 * 2  # fedavg skips prototypes and schedule
    path, _ = compile_experiment(cfg, tmp_path / "fan.yaml", CompileOptions(fan_out=True, gpus=0))
    spec, k8s = load_package(path)
    loops = [t for t in spec.root.dag.tasks.values() if t.HasField("parameter_iterator")]
    assert len(loops) == 2
    assert json_format.MessageToDict(loops[0].parameter_iterator)["items"]["raw"] == "[0, 1, 2, 3]"
    for loop in loops:  # the loop body gets its round from the state artifact, not a task-output parameter
        assert not any(p.HasField("task_output_parameter") for p in loop.inputs.parameters.values())
    assert all("accelerator" not in c.get("resources", {}) for c in containers(spec).values())


def test_benchmark_yaml(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    opts = CompileOptions(methods=["fedavg", "zerofill"], rates=[0.2, 0.6], seeds=[0, 1])
    path, cells = compile_benchmark(cfg, tmp_path / "bench.yaml", opts)
    assert cells == 8
    spec, k8s = load_package(path)
    params = json_format.MessageToDict(spec.root.input_definitions)["parameters"]
    assert params["cells_json"]["parameterType"] == "LIST" and len(params["cells_json"]["defaultValue"]) == 8
    assert params["fresh"]["defaultValue"] is True  # recurring runs recompute under their own prefix
    (loop,) = [t for t in spec.root.dag.tasks.values() if t.HasField("parameter_iterator")]
    inner = spec.components[loop.component_ref.name].dag.tasks
    assert "run-cell" in inner and inner["run-cell"].retry_policy.max_retry_count == 2
    assert "compare" in spec.root.dag.tasks
    with pytest.raises(ConfigError, match="40 cells"):
        compile_benchmark(cfg, tmp_path / "b2.yaml", CompileOptions(methods=["fedavg", "zerofill"], seeds=list(range(20))))


def test_cron_check():
    assert check_cron("0 3 * * *") == "0 0 3 * * *"
    assert check_cron("0 0 3 * * 1-5") == "0 0 3 * * 1-5"
    with pytest.raises(ConfigError, match="--cron"):
        check_cron("every day")


def test_cli_and_component_glue_do_not_import_kfp_or_minio():
    """The glue runs in pods and the CLI must start fast: kfp/minio load only when used."""
    import subprocess
    import sys

    code = ("import sys, mmfl.cli, mmfl.kfp.tasks, mmfl.kfp.benchmark, mmfl.io.minio_store; "
            "mmfl.cli.build_parser(); "
            "print(sorted(m for m in ('kfp', 'minio', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
