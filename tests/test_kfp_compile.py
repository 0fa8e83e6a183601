"""The compiled YAML parses into the KFP pipeline-spec protos with the cluster settings in place."""

from __future__ import annotations

import json
import re
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


def executor_tasks(spec: pipeline_spec_pb2.PipelineSpec) -> list[tuple[pipeline_spec_pb2.PipelineTaskSpec, list[str]]]:
    """Every task that starts a container, with the conditions of the sub-DAGs it is nested in."""
    out = []

    def walk(dag, conditions):
        for task in dag.tasks.values():
            comp = spec.components[task.component_ref.name]
            cond = [task.trigger_policy.condition] if task.trigger_policy.condition else []
            if comp.HasField("dag"):
                walk(comp.dag, conditions + cond)
            else:
                out.append((task, conditions + cond))

    walk(spec.root.dag, [])
    return out


def by_display(spec):
    return {t.task_info.name: (t, c) for t, c in executor_tasks(spec)}


def rounds_left_needed(conditions: list[str]) -> int:
    """The rounds ``prepare`` must find left for a task to start: its conditions ``remaining > N``."""
    found = [int(m) for c in conditions for m in re.findall(r"prepare-Output'\]\) > (\d+)", c)]
    return max(found, default=-1) + 1


def test_experiment_yaml_has_gpu_tolerations_secrets_retries(tmp_path, fullsteps):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "fullsteps"}, train={"rounds": 50}))
    opts = CompileOptions(image="registry.example/mmfl:test", rounds_per_task=1)
    path, rounds = compile_experiment(cfg, tmp_path / "experiment.yaml", opts)
    assert rounds == 7  # 5 tasks a round, prepare and the chain task, at most 40 tasks
    spec, k8s = load_package(path)
    tasks = by_display(spec)
    assert len(tasks) == 1 + 5 * rounds + 1
    assert {"config_json", "chain", "pipeline_version", "kfp_api"} == set(spec.root.input_definitions.parameters)
    assert {f"round +1 {s}" for s in ("client_train", "upload_prototypes", "aggregate", "schedule", "evaluate")} <= set(tasks)
    conts = containers(spec)
    for name, (task, _) in tasks.items():
        assert task.retry_policy.max_retry_count == 2 and task.retry_policy.backoff_factor == 2.0, name
        assert not task.caching_options.enable_cache, name
        label = executor_of(spec, task)
        assert conts[label]["image"] == "registry.example/mmfl:test"
        gpu = any(name.endswith(s) for s in ("client_train", "upload_prototypes", "schedule", "evaluate"))
        check_cluster_settings(name, k8s[label], conts[label], gpu)
        assert k8s[label].active_deadline_seconds == (6 * 3600 if gpu else 1800), name
        res = conts[label]["resources"]
        assert (res["resourceCpuRequest"], res["resourceMemoryLimit"]) == (("2", "16G") if gpu else ("250m", "2G")), name
    # rounds are chained through the checkpoint artifacts: round k+1 trains from round k's checkpoint
    train2, cond2 = tasks["round +2 client_train"]
    keys = {key: t.task_info.name for c in spec.components.values() if c.HasField("dag") for key, t in c.dag.tasks.items()}
    channel = train2.inputs.artifacts["state"].component_input_artifact  # passed into the round's condition
    assert channel.startswith("pipelinechannel--") and channel.endswith("-checkpoint")
    assert keys[channel.removeprefix("pipelinechannel--").removesuffix("-checkpoint")] == "round +1 evaluate"
    assert rounds_left_needed(cond2) == 2 and rounds_left_needed(tasks["round +1 evaluate"][1]) == 1


def test_gpu_tasks_resolve_to_cuda_in_the_compiled_spec(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 25}))
    path, rounds = compile_experiment(cfg, tmp_path / "exp.yaml", CompileOptions(rounds_per_task=10))
    spec, k8s = load_package(path)
    embedded = json.loads(spec.root.input_definitions.parameters["config_json"].default_value.string_value)
    assert embedded["train"]["device"] == "auto"  # -> cuda in a pod that has one (mmfl.kfp.runtime)
    conts = containers(spec)
    for name, (task, _) in by_display(spec).items():
        label = executor_of(spec, task)
        env = {e["name"]: e["value"] for e in conts[label].get("env", [])}
        gpu = "accelerator" in conts[label].get("resources", {})
        assert gpu == task.task_info.name.startswith("rounds"), name
        assert env.get("MMFL_GPU_TASK") == ("1" if gpu else None), name
    # a config that pins the CPU while tasks request GPUs is refused, naming the field
    cpu = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 25, "device": "cpu"}))
    with pytest.raises(ConfigError, match=r"train.device = 'cpu' with --gpus 1"):
        compile_experiment(cpu, tmp_path / "cpu.yaml")
    path, _ = compile_experiment(cpu, tmp_path / "cpu0.yaml", CompileOptions(gpus=0))
    assert all("accelerator" not in c.get("resources", {}) for c in containers(load_package(path)[0]).values())


@pytest.mark.parametrize("rounds,k", [(7, 1), (25, 10), (30, 10), (23, 4)])
def test_no_task_is_scheduled_past_the_end(tmp_path, rounds, k):
    """For every resume point, the tasks whose conditions hold train exactly the rounds left (capped by the run)."""
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": rounds}))
    path, n = compile_experiment(cfg, tmp_path / "exp.yaml", CompileOptions(rounds_per_task=k, gpus=0, max_tasks=6))
    spec, _ = load_package(path)
    tasks = executor_tasks(spec)
    for done in range(rounds + 1):
        left = rounds - done
        started = [t for t, c in tasks if left >= rounds_left_needed(c) and "chain" not in " ".join(c)]
        names = [t.task_info.name for t in started]
        if k == 1:
            trained = sorted(int(x.split()[1][1:]) for x in names if x.endswith("client_train"))
            assert trained == list(range(1, min(left, n) + 1)), done
        else:
            chunks = [x for x in names if x.startswith("rounds")]
            assert len(chunks) == -(-min(left, n) // k), done  # each chunk starts at a round that is left
        assert names.count("prepare") == 1


def test_fan_out_and_baseline_shapes(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}))
    path, rounds = compile_experiment(cfg, tmp_path / "exp.yaml", CompileOptions(rounds_per_task=1))
    spec, _ = load_package(path)
    assert rounds == 2 and len(executor_tasks(spec)) == 1 + 3 * 2 + 1  # fedavg skips prototypes and schedule
    path, _ = compile_experiment(cfg, tmp_path / "fan.yaml", CompileOptions(fan_out=True, gpus=0, rounds_per_task=1))
    spec, k8s = load_package(path)
    loops = [t for t in spec.components.values() if t.HasField("dag") for t in t.dag.tasks.values()
             if t.HasField("parameter_iterator")]
    assert len(loops) == 2
    assert json_format.MessageToDict(loops[0].parameter_iterator)["items"]["raw"] == "[0, 1, 2, 3]"
    for loop in loops:  # the loop body gets its round from the state artifact, not a task-output parameter
        assert not any(p.HasField("task_output_parameter") for p in loop.inputs.parameters.values())
    assert all("accelerator" not in c.get("resources", {}) for c in containers(spec).values())


def test_step_settings_from_file_and_cli(tmp_path):
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"steps": {"gpu": {
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}, "priority_class": "batch-low"}}}))
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 4}))
    opts = CompileOptions(cluster_file=str(tmp_path / "cluster.yaml"), rounds_per_task=2,
                          step_settings=["train_rounds.memory_limit=32G", "cpu.timeout_s=300", "all.queue=team-a"])
    spec, k8s = load_package(compile_experiment(cfg, tmp_path / "exp.yaml", opts)[0])
    conts = containers(spec)
    for task, _ in executor_tasks(spec):
        label = executor_of(spec, task)
        labels = dict(k8s[label].pod_metadata.labels)
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        if task.task_info.name.startswith("rounds"):
            assert conts[label]["resources"]["resourceMemoryLimit"] == "32G"
            assert dict(k8s[label].node_selector.labels) == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert labels["kueue.x-k8s.io/priority-class"] == "batch-low"
        else:
            assert k8s[label].active_deadline_seconds == 300
    for bad, msg in ((["client_train.memroy=1G"], "unknown field 'memroy'"), (["nostep.cpu_limit=1"], "unknown step 'nostep'"),
                     (["client_train"], "expected STEP.FIELD=VALUE")):
        with pytest.raises(ConfigError, match=msg):
            compile_experiment(cfg, tmp_path / "bad.yaml", CompileOptions(step_settings=bad))
    with pytest.raises(ConfigError, match=r"--gpus = 2: a task trains its clients on one GPU"):
        compile_experiment(cfg, tmp_path / "bad.yaml", CompileOptions(gpus=2))


def test_compiled_platform_spec_fits_the_minimum_kfp_backend(tmp_path):
    """Every platform-spec field is one the minimum backend's driver knows (its proto, recorded)."""
    from pipelines.backend import MIN_KFP_BACKEND, check_platform_spec

    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 4}))
    for k in (1, 2):
        path, _ = compile_experiment(cfg, tmp_path / f"exp{k}.yaml", CompileOptions(rounds_per_task=k))
        assert check_platform_spec(list(yaml.safe_load_all(path.read_text()))[1]) == []
    path, _ = compile_benchmark(cfg, tmp_path / "bench.yaml", CompileOptions(methods=["fedavg"]))
    assert check_platform_spec(list(yaml.safe_load_all(path.read_text()))[1]) == []
    bad = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {"e": {"secretAsEnv": [{"fromTheFuture": 1}]}}}}}}
    assert check_platform_spec(bad) == [f"e: secretAsEnv.fromTheFuture (unknown to KFP {MIN_KFP_BACKEND})"]


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
