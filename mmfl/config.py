"""Experiment configuration: one pydantic model, loaded from YAML, validated with clear errors.

Every error names the dotted field path and the offending value, e.g.
``partition.alpha = -1: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mmfl.errors import ConfigError
from mmfl.redact import redact_text, uri_secrets

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; refuse to read more than 1 MiB (e.g. /dev/zero)
SEED_LIMIT = 2**32  # numpy and scikit-learn take seeds in [0, 2^32)
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother, _SHORT_REPR.maxlong = 3, 70, 70, 40


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticConfig(_Strict):
    """Seeded class-conditional Gaussian data with one block of features per modality."""

    num_samples: int = Field(600, ge=20)
    num_classes: int = Field(5, ge=2)
    dims: dict[str, int] = Field(default_factory=lambda: {"a": 16, "b": 12})
    signal: float = Field(1.5, gt=0, description="Distance scale between class means")
    noise: float = Field(1.0, gt=0)

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: dict[str, int]) -> dict[str, int]:
        if len(v) < 2:
            raise ValueError(f"needs at least two modalities, got {list(v)}")
        for name, d in v.items():
            if d < 1:
                raise ValueError(f"dimension of modality {name!r} must be >= 1, got {d}")
        return v


class ImageTextConfig(_Strict):
    """Options of the image+text datasets (food101, mmimdb, mfeat_text, cub200, flowers102)."""

    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to image_size x image_size at load")
    max_text_len: int = Field(40, ge=4, le=512, description="Token ids per text (padded/truncated)")
    tokenizer: str | None = Field(None, description="Tokenizer dir; None = the MiniLM (BERT uncased) tokenizer package")
    top_classes: int | None = Field(None, ge=2, description="Keep only the N most frequent classes (FED-PRIME: 8)")
    max_per_class: int | None = Field(None, ge=1, description="Keep at most this many samples per class (in file order)")
    text_view: str = Field("mor", description="mfeat_text: the mfeat view rendered into the synthetic sentences")
    caption_index: int | None = Field(None, ge=0, le=9, description="cub200/flowers102: which of the ten captions per "
                                      "image is the text; None = one drawn per image with data.split_seed")


class DataConfig(_Strict):
    name: Literal["mfeat", "basicmotions", "synthetic", "food101", "mmimdb", "mfeat_text", "cub200", "flowers102"] = "mfeat"
    modalities: list[str] | None = Field(
        None, min_length=1, description="Which views/modalities to use, in order; None = the dataset's default pair"
    )
    path: str | None = Field(None, description="Read the dataset from this directory instead of the package copy")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seed of the fixed stratified train/test split")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    image_text: ImageTextConfig = Field(default_factory=ImageTextConfig)


class PartitionConfig(_Strict):
    scheme: Literal["iid", "dirichlet"] = "dirichlet"
    num_clients: int = Field(10, ge=1, le=100_000)
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = strong label skew")
    min_client_size: int = Field(8, ge=1)


class MissingConfig(_Strict):
    """Which modalities are missing in training data.

    pattern:
      - ``full``: nothing missing.
      - ``missing:<m>``: a fraction ``rate`` of each client's samples miss modality m.
      - ``mixed``: a fraction ``rate`` of samples miss exactly one modality, chosen uniformly.
      - ``independent``: each modality m is missing with probability ``rates[m]`` (default
        ``rate``) independently; a sample that would lose all modalities keeps one at random, or
        is dropped from the client's data with ``drop_all_missing`` (as the PmcmFL code does).
      - ``subsets``: per-client modality subsets. Client k holds only the modalities
        ``client_modalities[k % len(client_modalities)]`` in a fraction ``rate`` of its samples
        (1.0 = all of them); its other samples keep every modality. E.g. ``[[a, b], [a, c]]``
        gives clients 0, 2, ... {a, b} and clients 1, 3, ... {a, c}.
    """

    pattern: str = "mixed"
    rate: float = Field(0.5, ge=0, le=1)
    rates: dict[str, float] | None = None
    client_rates: list[float] | None = Field(None, description="Explicit per-client rate (overrides rate)")
    client_rate_spread: float = Field(
        0.0, ge=0, le=1, description="Per-client rate drawn uniformly from rate +- spread (inter-client heterogeneity)"
    )
    drop_all_missing: bool = Field(
        False, description=("drop samples that miss every modality instead of restoring one; only pattern "
                            "independent can leave a sample without modalities, the others are unaffected"))
    client_modalities: list[list[str]] | None = Field(
        None, description="pattern subsets: the modalities client k holds, client_modalities[k % len] (cycled)")

    def label(self) -> str:
        """The training missing setting as tables and run tags name it, e.g. ``mixed@0.50``, ``independent@0.50+drop``."""
        if self.pattern == "full":
            return "full"
        drop = "+drop" if self.drop_all_missing and self.pattern == "independent" else ""
        subsets = ("[" + "|".join("+".join(s) for s in self.client_modalities or []) + "]"  # subsets[a+b|a+c]
                   if self.pattern == "subsets" else "")
        return f"{self.pattern}{subsets}@{float(self.rate):.2f}{drop}"

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if v in ("full", "mixed", "independent", "subsets") or (v.startswith("missing:") and len(v) > len("missing:")):
            return v
        raise ValueError(f"unknown pattern {v!r}; use full, mixed, independent, subsets or missing:<modality>")

    @field_validator("client_modalities")
    @classmethod
    def _client_modalities(cls, v: list[list[str]] | None) -> list[list[str]] | None:
        if v is not None:
            if not v:
                raise ValueError("needs at least one modality subset")
            for subset in v:
                if not subset or len(set(subset)) != len(subset):
                    raise ValueError(f"every subset must name one or more distinct modalities, got {subset}")
        return v

    @field_validator("client_rates")
    @classmethod
    def _client_rates(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            bad = [r for r in v if not 0.0 <= r <= 1.0]
            if bad:
                raise ValueError(f"every client rate must lie in [0, 1], got {bad[0]}")
        return v

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            for name, r in v.items():
                if not 0.0 <= r <= 1.0:
                    raise ValueError(f"rate of modality {name!r} must lie in [0, 1], got {r}")
        return v

    @model_validator(mode="after")
    def _rates_need_independent(self) -> MissingConfig:
        if self.rates is not None and self.pattern != "independent":
            raise ValueError(f"rates applies only to pattern: independent (pattern is {self.pattern!r}); "
                             "remove rates or set pattern: independent")
        if (self.client_modalities is None) != (self.pattern != "subsets"):
            raise ValueError("pattern: subsets and client_modalities go together (pattern is "
                             f"{self.pattern!r}, client_modalities {self.client_modalities!r})")
        return self


class ModelConfig(_Strict):
    embed_dim: int = Field(64, ge=2, le=8192)
    hidden: int = Field(128, ge=2, le=16384)
    fusion: Literal["concat", "attention"] = "concat"
    dropout: float = Field(0.0, ge=0, lt=1)


class MethodConfig(_Strict):
    name: str = Field("fedavg", min_length=1, description="A registered method (mmfl/methods/registry.py)")
    params: dict[str, Any] = Field(default_factory=dict, description="Method-specific hyper-parameters")
    _resolution: Any = PrivateAttr(default=None)

    @property
    def resolution(self) -> Any:
        """What ``mmfl.methods.resolve`` found for this config (None until resolved)."""
        return self._resolution

    def complete(self, params: dict[str, Any], resolution: Any) -> None:
        """Store the validated params (defaults filled in); called by ``mmfl.methods.resolve`` only."""
        object.__setattr__(self, "params", params)
        self._resolution = resolution


class TrainConfig(_Strict):
    rounds: int = Field(30, ge=1, le=100_000)
    clients_per_round: float = Field(1.0, gt=0, le=1, description="Fraction of clients sampled each round")
    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    engine: Literal["auto", "loop", "vectorized"] = Field(
        "auto",
        description="auto: the vectorized engine wherever it reproduces the loop, else the loop (said once in the log)",
    )
    device: str = Field(
        "auto", description="torch device: auto (CUDA when torch sees one, else CPU), cpu, cuda or cuda:<index>")
    vector_chunk: int = Field(64, ge=1, description="Vectorized engine: clients trained together per chunk")
    compile: bool = Field(False, description="Vectorized engine: torch.compile the per-step function")
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch intra-op threads of the training process (default: torch's, one per core); "
                    "1 is often fastest for small models on a machine shared with other jobs",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import torch

        if v == "auto":
            return v

        try:
            torch.device(v)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown torch device {v!r}; use auto, cpu, cuda or cuda:<index>") from None
        return v


_TEST_PATTERN_HELP = "use full, only:<m>, ~train, mixed@<rate>, missing:<m>@<rate> or independent@<rate>"


def parse_test_pattern(pattern: str) -> tuple[str, str | None, float | None]:
    """(kind, modality, rate) of a test pattern; ValueError (naming the pattern) when malformed.

    ``full``; ``only:<m>`` (every test sample has only m); ``~train`` (test samples miss
    modalities as the training data do); ``mixed@r``, ``missing:<m>@r``, ``independent@r`` (the
    training pattern of that name at rate r applied to the test set).
    """
    if pattern in ("full", "~train"):
        return pattern, None, None
    if pattern.startswith("only:") and len(pattern) > 5:
        return "only", pattern[5:], None
    head, at, tail = pattern.rpartition("@")
    if at:
        try:
            rate = float(tail)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"test pattern {pattern!r}: the rate after @ must be a number in [0, 1]")
        if head in ("mixed", "independent"):
            return head, None, rate
        if head.startswith("missing:") and len(head) > 8:
            return "missing", head[8:], rate
    raise ValueError(f"unknown test pattern {pattern!r}; {_TEST_PATTERN_HELP}")


def pattern_metric_name(pattern: str) -> str:
    """The test pattern as an MLflow metric name part: ``mixed@0.5`` -> ``mixed_0.5``, ``~train`` -> ``train_dist``.

    MLflow names allow neither ``@`` nor ``~``; ``pattern_of_metric`` reads the pattern back.
    """
    return "train_dist" if pattern == "~train" else pattern.replace("@", "_")


def pattern_of_metric(name: str) -> str:
    """The test pattern a ``pattern_metric_name`` stands for (its inverse)."""
    if name == "train_dist":
        return "~train"
    head, sep, tail = name.rpartition("_")
    if sep and head.split(":")[0] in ("mixed", "independent", "missing"):
        try:
            float(tail)
        except ValueError:
            return name
        return f"{head}@{tail}"
    return name


class EvalConfig(_Strict):
    every: int = Field(5, ge=1, description="Evaluate every K rounds (and always after the last round)")
    patterns: list[str] | Literal["auto"] = Field(
        "auto", description=f"Test patterns ({_TEST_PATTERN_HELP}); auto = full + each modality alone"
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError("needs at least one test pattern (or auto)")
            for p in v:
                parse_test_pattern(p)
        return v


class StorageConfig(_Strict):
    kind: Literal["local", "minio"] = "local"
    root: str = Field("runs", description="LocalStore directory, or key prefix inside the bucket")
    bucket: str = "mmfl"
    endpoint: str | None = Field(None, description="host:port of the MinIO/S3 server (credentials come from env)")
    secure: bool = False

    @field_validator("endpoint")
    @classmethod
    def _no_credentials_in_endpoint(cls, v: str | None) -> str | None:
        if v is not None and "@" in v:
            raise ValueError("credentials must not be written into the config; set MINIO_ACCESS_KEY and "
                             "MINIO_SECRET_KEY in the environment (a Kubernetes Secret in the cluster)")
        return v


class TrackingConfig(_Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlruns.db in the working dir")
    experiment: str = "mmfl"

    @field_validator("uri")
    @classmethod
    def _no_credentials_in_uri(cls, v: str | None) -> str | None:
        found = uri_secrets(v) if v is not None else []
        if found:
            raise ValueError(f"credentials must not be written into the config (found {', '.join(found)}); set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                             "environment (a Kubernetes Secret in the cluster)")
        return v


class FaultSpec(_Strict):
    """A fault injected into one client's work: for fault-tolerance tests, drills and attack benchmarks.

    Modes: ``raise`` (the client raises), ``exit`` (the whole process dies at once, as on an OOM
    kill), ``sleep`` (the client stalls ``seconds`` before training, e.g. to hit a timeout), and
    Byzantine clients: ``nan`` / ``inf`` (one weight of the update becomes NaN / inf), ``scale``
    (every weight multiplied by ``scale``, default 1e6; -1 flips the sign of the weights),
    ``boost`` (the update's delta multiplied by ``scale``, default 10; -1 flips the delta's sign),
    ``noise`` (the update replaced by the global model plus Gaussian noise of standard deviation
    ``scale``, default 0.01), ``labels`` (the client trains on flipped labels, ``C - 1 - y``) and
    ``samples`` (the client claims ``scale`` samples, default 1e9). ``round: null`` strikes in every
    round. With ``once_file`` the fault fires only while that file does not exist and creates it
    when firing, so a retried task (or a re-run) succeeds.
    """

    round: int | None = Field(None, ge=1, description="Round the fault strikes in; null = every round")
    client: int = Field(ge=0)
    mode: Literal["raise", "exit", "sleep", "nan", "inf", "scale", "boost", "noise", "labels", "samples"]
    seconds: float = Field(3600.0, gt=0, le=86_400)
    scale: float | None = Field(None, description="Factor or size of the attack; null = the mode's default")
    once_file: str | None = Field(None, min_length=1, max_length=4096)

    def factor(self) -> float:
        """``scale``, or the mode's default (scale: 1e6, boost: 10, noise: 0.01, samples: 1e9)."""
        if self.scale is not None:
            return self.scale
        return {"scale": 1e6, "boost": 10.0, "noise": 0.01, "samples": 1e9}.get(self.mode, 1.0)

    @model_validator(mode="after")
    def _sample_claim(self) -> "FaultSpec":
        if self.mode == "samples" and self.scale is not None and not 1 <= self.scale <= 1e18:
            raise ValueError(f"mode 'samples' claims scale samples; scale = {self.scale:g} must lie in [1, 1e18]")
        return self


class AggregationConfig(_Strict):
    """How the server combines the accepted client models (see docs/reliability.md).

    ``mean`` is the method's own weighted average (FedAvg's); the robust rules work on each
    client's delta from the global model.
    """

    rule: Literal["mean", "median", "trimmed_mean", "multi_krum", "clip"] = "mean"
    byzantine_fraction: float = Field(
        0.3, ge=0, lt=0.5,
        description="Assumed share f/n of Byzantine updates: trimmed_mean drops f per end, multi_krum's f",
    )
    krum_select: int | None = Field(None, ge=1, description="multi_krum: updates averaged (null = n - f; 1 = Krum)")
    clip_ratio: float = Field(1.0, gt=0, description="clip: deltas scaled to at most this multiple of the median norm")


class ReliabilityConfig(_Strict):
    """How a round copes with failing clients and implausible updates (see docs/reliability.md)."""

    quorum: float = Field(0.5, gt=0, le=1, description="Fraction of sampled clients whose updates must be accepted")
    min_clients: int = Field(1, ge=1, description="...and at least this many accepted updates per round")
    client_timeout_s: float | None = Field(None, gt=0, description="Wall-clock limit of one client's work; None = none")
    max_update_norm: float | None = Field(
        1e5, gt=0, description="Reject an update farther than this (L2) from the global model; None = off"
    )
    max_norm_ratio: float | None = Field(
        3.0, gt=1, description="Reject an update farther than this multiple of the other clients' median distance"
    )
    min_cosine: float | None = Field(
        None, ge=-1, le=1,
        description="Reject an update whose delta has a lower cosine with the coordinate-median delta; None = off",
    )
    norm_ratio_min_updates: int = Field(
        5, ge=2, description="Apply max_norm_ratio and min_cosine only with at least this many updates")
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    fault_injection: list[FaultSpec] = Field(default_factory=list)


# Which settings make up the results: every dotted setting is in one of four groups (see
# docs/configuration.md), the single rule behind the experiment id, report grouping and the stored
# manifest (mmfl/engine/identity.py).
EXECUTION_SETTINGS = ("storage", "train.device", "train.vector_chunk", "train.compile", "train.threads")
EVAL_SETTINGS = ("eval",)
TRACKING_SETTINGS = ("tracking",)
# Result settings the experiment id does not hash: ``reliability`` joined the results after ids
# existed (ids stay stable; the manifest records it) and ``methods`` is folded into method.params.
UNHASHED_RESULT_SETTINGS = ("reliability", "methods")


def _under(dotted: str, keys: tuple[str, ...]) -> bool:
    return any(dotted == key or dotted.startswith(key + ".") for key in keys)


def setting_group(dotted: str) -> Literal["result", "eval", "tracking", "execution"]:
    """The group of the dotted config key (e.g. ``train.lr``): ``execution`` (where and how fast,
    never what), ``eval``, ``tracking`` or ``result`` (everything that changes the trained weights)."""
    if _under(dotted, EXECUTION_SETTINGS):
        return "execution"
    if _under(dotted, EVAL_SETTINGS):
        return "eval"
    if _under(dotted, TRACKING_SETTINGS):
        return "tracking"
    return "result"


def is_result_setting(dotted: str) -> bool:
    """Whether the dotted config key changes what an experiment computes and the experiment id hashes
    it (report grouping uses the same keys): a ``result`` setting outside ``UNHASHED_RESULT_SETTINGS``."""
    return setting_group(dotted) == "result" and not _under(dotted, UNHASHED_RESULT_SETTINGS)


def _hashed(node: Any, prefix: str = "") -> Any:
    """``node`` (a nested config dump) without the keys ``is_result_setting`` leaves out."""
    if not isinstance(node, dict):
        return node
    return {key: _hashed(value, f"{prefix}{key}.") for key, value in node.items()
            if is_result_setting(f"{prefix}{key}")}


class ExperimentConfig(_Strict):
    name: str = Field("experiment", min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    missing: MissingConfig = Field(default_factory=MissingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-method params, e.g. {fedprox: {mu: 0.1}, threefm: {local_epochs: 2}}: the method that runs "
                    "takes its entry as the base of method.params (method.params wins), so a multi-method "
                    "command gives each method its own settings",
    )

    @model_validator(mode="before")
    @classmethod
    def _per_method_params(cls, data: Any) -> Any:
        """method.params = methods[method.name] updated by method.params (the explicit setting wins)."""
        if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
            return data
        method = data.get("method") if isinstance(data.get("method"), dict) else {}
        own = data["methods"].get(method.get("name", "fedavg"))
        if isinstance(own, dict) and isinstance(method.get("params", {}), dict):
            data = {**data, "method": {**method, "params": {**own, **method.get("params", {})}}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        rates = self.missing.client_rates
        if rates is not None and len(rates) != self.partition.num_clients:
            raise ValueError(
                f"missing.client_rates has {len(rates)} entries but partition.num_clients = "
                f"{self.partition.num_clients}"
            )
        return self

    @model_validator(mode="after")
    def _reliability_checks(self) -> "ExperimentConfig":
        n = self.partition.num_clients
        sampled = min(n, max(1, int(round(self.train.clients_per_round * n))))
        if self.reliability.min_clients > sampled:
            raise ValueError(
                f"reliability.min_clients = {self.reliability.min_clients} exceeds the {sampled} clients sampled per round"
            )
        for i, fault in enumerate(self.reliability.fault_injection):
            if fault.client >= n:
                raise ValueError(
                    f"reliability.fault_injection.{i}.client = {fault.client}: only {n} clients (0..{n - 1})"
                )
        return self

    def experiment_id(self) -> str:
        """Stable id of what is computed: name, method and a hash of every setting that changes results.

        The method's params must be resolved first (``mmfl.methods.resolve``), so that the hash
        sees them completed with their defaults.
        """
        if self.method.resolution is None:
            raise RuntimeError("experiment_id() before mmfl.methods.resolve(cfg): method params are not validated yet")
        payload = _hashed(self.model_dump())
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.name}-{self.method.name}-{digest}"


def _format_value(value: Any) -> str:
    text = redact_text(_SHORT_REPR.repr(value))  # bounded: never walks a huge or deeply nested input
    return text if len(text) <= 80 else text[:77] + "..."


def _bounded_message(msg: str, value: Any) -> str:
    """A validator's message with the offending value quoted short (messages echo it in full)."""
    if isinstance(value, str) and len(value) > 80:
        msg = msg.replace(repr(value), _format_value(value))
    return msg if len(msg) <= 400 else msg[:397] + "..."


def format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "function-before"))
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = _bounded_message(err["msg"].removeprefix("Value error, "), err.get("input"))
        if err["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field (value {_format_value(err.get('input'))})")
        elif msg.startswith("params."):  # nested method-parameter errors already name field and value
            lines.extend(f"{loc}.{part}" for part in msg.split("; "))
        else:
            lines.append(f"{loc or '<root>'} = {_format_value(err.get('input'))}: {msg}")
    return lines


def parse_config(data: Any, source: str = "config") -> ExperimentConfig:
    """Validate a mapping into an ExperimentConfig, raising ConfigError with every problem listed."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        lines = format_errors(exc)
        if len(lines) == 1:  # one problem, one line
            raise ConfigError(f"{source}: invalid configuration: {lines[0]}") from None
        problems = "\n  ".join(lines)
        raise ConfigError(f"{source}: invalid configuration:\n  {problems}") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply an override such as ``partition.alpha=0.1`` to a raw config mapping."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` at line L, column C: what`` on one line (PyYAML's own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{where}: {' '.join(str(what).split())}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names one key twice (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:  # the keys written here; merged ones (<<) may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_format_value(key)} (first at line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_capped(path: Path) -> str:
    """The text of ``path``, refusing more than ``MAX_CONFIG_BYTES`` (reads at most one byte past the cap)."""
    with path.open("rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _TooLarge(f"config file {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a config file")
    return data.decode("utf-8")


class _TooLarge(Exception):
    pass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (not yet validated)."""
    path = Path(path)
    try:
        text = _read_capped(path)
    except _TooLarge as exc:
        raise ConfigError(str(exc)) from None
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # folder, permissions, NUL in the path
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: not a usable YAML value: {str(exc).split(':')[0][:120]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> None:
    """Apply ``key=value`` overrides (values parsed as YAML) to a raw config mapping, in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = _parse_yaml(raw)
        except (yaml.YAMLError, RecursionError, ValueError):
            value = raw
        set_dotted(data, key.strip(), value)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file, apply ``key=value`` overrides (values parsed as YAML) and validate."""
    data = read_config_file(path)
    apply_overrides(data, overrides or [])
    return parse_config(data, source=str(path))


def grid_configs(
    data: Mapping[str, Any], methods: Sequence[str] | None = None, rates: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None, overrides: Sequence[str] = (), source: str = "config",
) -> list[ExperimentConfig]:
    """A raw config varied over every (method, training missing rate, seed), each cell validated.

    A method other than the config's own starts from its entry in ``methods`` (per-method params),
    else from its default params; ``overrides`` apply after the method (so ``--method fedprox --set method.params.mu=0.1`` sets FedProx's mu),
    then the rate and the seed. Empty or None axes keep the config's value.
    """
    cells = []
    for method in methods or [None]:
        for rate in rates or [None]:
            for seed in seeds or [None]:
                cell = copy.deepcopy(dict(data))
                if method is not None and method != (cell.get("method") or {}).get("name", "fedavg"):
                    cell["method"] = {"name": method, "params": {}}
                apply_overrides(cell, overrides)
                if rate is not None:
                    set_dotted(cell, "missing.rate", rate)
                if seed is not None:
                    cell["seed"] = seed
                cells.append(parse_config(cell, source=source))
    return cells
