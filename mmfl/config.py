"""Experiment configuration: one pydantic model, loaded from YAML, validated with clear errors.

Every error names the dotted field path and the offending value, e.g.
``partition.alpha = -1: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmfl.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class DataConfig(_Strict):
    name: Literal["mfeat", "basicmotions", "synthetic"] = "mfeat"
    modalities: list[str] | None = Field(
        None, description="Which views/modalities to use, in order; None = the dataset's default pair"
    )
    path: str | None = Field(None, description="Read the dataset from this directory instead of the package copy")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, description="Seed of the fixed stratified train/test split")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


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
        ``rate``) independently; a sample that would lose all modalities keeps one at random.
    """

    pattern: str = "mixed"
    rate: float = Field(0.5, ge=0, le=1)
    rates: dict[str, float] | None = None
    client_rates: list[float] | None = Field(None, description="Explicit per-client rate (overrides rate)")
    client_rate_spread: float = Field(
        0.0, ge=0, le=1, description="Per-client rate drawn uniformly from rate +- spread (inter-client heterogeneity)"
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if v in ("full", "mixed", "independent") or (v.startswith("missing:") and len(v) > len("missing:")):
            return v
        raise ValueError(f"unknown pattern {v!r}; use full, mixed, independent or missing:<modality>")

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


class ModelConfig(_Strict):
    embed_dim: int = Field(64, ge=2)
    hidden: int = Field(128, ge=2)
    fusion: Literal["concat", "attention"] = "concat"
    dropout: float = Field(0.0, ge=0, lt=1)


class MethodConfig(_Strict):
    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict, description="Method-specific hyper-parameters")

    @model_validator(mode="after")
    def _check_params(self) -> "MethodConfig":
        from mmfl.methods import get_method, method_names

        if self.name not in method_names():
            raise ValueError(f"unknown method {self.name!r}; known: {', '.join(method_names())}")
        params_model = get_method(self.name).Params
        try:
            validated = params_model.model_validate(self.params)
        except ValidationError as exc:
            raise ValueError("; ".join(_format_errors(exc, prefix="params"))) from None
        # Store the completed parameters (paper defaults filled in) without re-triggering validation.
        object.__setattr__(self, "params", validated.model_dump())
        return self


class TrainConfig(_Strict):
    rounds: int = Field(30, ge=1, le=100_000)
    clients_per_round: float = Field(1.0, gt=0, le=1, description="Fraction of clients sampled each round")
    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    engine: Literal["loop", "vectorized"] = "loop"
    device: str = "cpu"
    vector_chunk: int = Field(64, ge=1, description="Vectorized engine: clients trained together per chunk")
    compile: bool = Field(False, description="Vectorized engine: torch.compile the per-step function")


class EvalConfig(_Strict):
    every: int = Field(5, ge=1, description="Evaluate every K rounds (and always after the last round)")
    patterns: list[str] | Literal["auto"] = Field(
        "auto", description="Test patterns: full, only:<m>; auto = full + each modality alone"
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            for p in v:
                if p != "full" and not (p.startswith("only:") and len(p) > 5):
                    raise ValueError(f"unknown test pattern {p!r}; use full or only:<modality>")
        return v


class StorageConfig(_Strict):
    kind: Literal["local", "minio"] = "local"
    root: str = Field("runs", description="LocalStore directory, or key prefix inside the bucket")
    bucket: str = "mmfl"
    endpoint: str | None = Field(None, description="host:port of the MinIO/S3 server (credentials come from env)")
    secure: bool = False


class TrackingConfig(_Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlruns.db in the working dir")
    experiment: str = "mmfl"


class ExperimentConfig(_Strict):
    name: str = Field("experiment", min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    missing: MissingConfig = Field(default_factory=MissingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        rates = self.missing.client_rates
        if rates is not None and len(rates) != self.partition.num_clients:
            raise ValueError(
                f"missing.client_rates has {len(rates)} entries but partition.num_clients = "
                f"{self.partition.num_clients}"
            )
        return self

    def experiment_id(self) -> str:
        """Stable id of what is computed: name, method and a hash of every setting that changes results."""
        payload = self.model_dump(exclude={"storage", "tracking", "eval"})
        payload["train"].pop("device", None)
        for key in ("vector_chunk", "compile"):  # execution settings; results are the same
            payload["train"].pop(key, None)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.name}-{self.method.name}-{digest}"


def _format_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "function-before"))
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
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
        problems = "\n  ".join(_format_errors(exc))
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


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML file, apply ``key=value`` overrides (values parsed as YAML) and validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key.strip(), value)
    return parse_config(data, source=str(path))
