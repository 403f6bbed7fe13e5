"""One typed configuration object, loaded once at the edge (CLI command, `create_app`, API call).

Precedence, highest first; `Settings.load` applies levels 1-3 and 5, `ServeSettings.for_version`
adds level 4, and nothing else merges settings:

1. command-line flags (keyword arguments of `Settings.load`, None meaning "not given");
2. the environment: `SHIPYARD_…`, nested with `__` (`SHIPYARD_SERVE__MAX_BATCH_SIZE=8`).
   On Vertex AI the platform's `AIP_HTTP_PORT`, `AIP_HEALTH_ROUTE` and `AIP_PREDICT_ROUTE` rank
   above `SHIPYARD_…`: Vertex sends traffic only to the port and routes it names; OpenTelemetry's
   standard `OTEL_EXPORTER_OTLP_…ENDPOINT` and `OTEL_SERVICE_NAME` rank below them;
3. the TOML config file named by `--config` or `SHIPYARD_CONFIG` (`[serve]` holds `SHIPYARD_SERVE__…`);
4. serving options stored with a model version (`push(..., serving={"max_batch_size": 8})`):
   only `VERSION_OPTIONS`, for that version only;
5. defaults.

So a batching option set for the whole server (flag, environment or file) applies to every version
it serves; an option stored with a version only replaces the default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shipyard.errors import InvalidInputError

# The serving options a version may carry (level 4 of the precedence).
VERSION_OPTIONS = (
    "max_batch_size",
    "max_batch_delay_ms",
    "preferred_batch_sizes",
    "timeout_s",
    "rate_limit_per_model",
    "rate_burst_per_model",
    "max_concurrency_per_model",
)

# The managed platform whose container contract a server follows (`shipyard entrypoint` sets it).
Platform = Literal["sagemaker", "vertex", "azure", "generic"]

# The config file of the `load` call in progress. pydantic-settings builds its sources in a
# classmethod that never sees the constructor's arguments, so the path reaches it this way; a
# ContextVar (not a class attribute) keeps loads in other threads or tasks from seeing it.
_config_file: ContextVar[Path | None] = ContextVar("shipyard_config_file", default=None)


class RuntimeSettings(BaseModel):
    """How loaded models use the CPU."""

    intra_op_threads: int = Field(0, ge=0, description="threads inside one op; 0 = library default")
    inter_op_threads: int = Field(0, ge=0, description="threads across ops; 0 = library default")


class PushSettings(BaseModel):
    """Limits on what a push reads, so a small crafted file cannot cost gigabytes or minutes;
    raise one (e.g. `SHIPYARD_PUSH__MAX_UNCOMPRESSED_BYTES`) to accept a larger real model."""

    max_file_bytes: int = Field(16 << 30, ge=1, description="size of one model or weights file")
    max_json_bytes: int = Field(64 << 20, ge=1, description="size of one JSON file (tokenizer.json, …)")
    max_uncompressed_bytes: int = Field(8 << 30, ge=1, description="all entries of a zip archive")
    max_compression_ratio: float = Field(200.0, ge=1, description="uncompressed / compressed, archives")
    max_tensor_bytes: int = Field(4 << 30, ge=1, description="one tensor an ONNX graph declares or builds")
    check_timeout_s: float = Field(60.0, gt=0, description="the isolated load check of a native format")


class ServeSettings(BaseModel):
    """Options of the inference server."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="the Open Inference Protocol over gRPC on this port (0 = off)"
    )
    workers: int = Field(1, ge=1)
    max_batch_size: int = Field(32, ge=1)
    max_batch_delay_ms: float = Field(2.0, ge=0)
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list,
        description="a queue holding one of these many rows runs at once, never held back (Triton's)",
    )
    max_queue: int = Field(1024, ge=1)
    max_queue_wait_s: float = Field(
        0.5, ge=0, description="how long a request waits for a place in a full queue before 503 (0: none)"
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1)
    auth: Literal["auto", "required"] = Field(
        "auto", description="auto: keys are required once any key exists in the registry"
    )
    auth_cache_ttl_s: float = Field(
        5.0, ge=0, description="how long a server trusts a key lookup: revocation takes effect within it"
    )
    insecure: bool = Field(False, description="serve a non-loopback address without API keys")
    # Deprecated: an admin-scoped key (`shipyard keys create NAME --scope admin`) replaces it.
    admin_token: str | None = None
    require_signed: Path | None = Field(
        None, description="Ed25519 public key (PEM) that must have signed every version served"
    )
    poll_interval_s: float = Field(2.0, gt=0, description="how often moving refs are re-resolved")
    listen: bool = Field(
        True, description="on PostgreSQL, follow moves at once by LISTEN/NOTIFY (polling stays the bound)"
    )
    wait_for_refs: bool = Field(False, description="start even if a reference does not resolve yet")
    grace_period_s: float = Field(30.0, ge=0)
    access_log: bool = False  # one line per request costs throughput; off by default
    log_level: str = "INFO"
    log_json: bool = False
    platform: Platform = Field(
        "generic",
        description="whose container contract to follow: sagemaker adds the multi-model /models API",
    )
    vertex_health_route: str | None = None  # AIP_HEALTH_ROUTE
    vertex_predict_route: str | None = None  # AIP_PREDICT_ROUTE
    # Slow and oversized clients: a connection must send its request head within
    # `header_timeout_s`, within these sizes; an idle keep-alive connection closes after `keep_alive_s`.
    header_timeout_s: float = Field(10.0, gt=0)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_header_count: int = Field(100, ge=8)
    keep_alive_s: float = Field(5.0, gt=0)
    # Deadlines: `timeout_s` per request unless the client asks for another (X-Request-Timeout,
    # grpc-timeout), which is honoured up to `max_timeout_s`; past it the request answers 504.
    timeout_s: float = Field(60.0, gt=0)
    max_timeout_s: float = Field(600.0, gt=0)
    max_rows_per_request: int = Field(10_000, ge=1)
    max_elements_per_request: int = Field(10_000_000, ge=1)
    # Rate limits (requests per second, token buckets; None = no limit), burst default = one
    # second's worth; the caller key's limit applies once requests carry a key id.
    rate_limit_per_model: float | None = Field(None, gt=0)
    rate_burst_per_model: int | None = Field(None, ge=1)
    rate_limit_per_key: float | None = Field(None, gt=0)
    rate_burst_per_key: int | None = Field(None, ge=1)
    max_concurrency_per_model: int | None = Field(None, ge=1)
    tls_cert: str | None = Field(None, description="PEM certificate chain; serves HTTPS with tls_key")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: str | None = Field(None, description="CA that client certificates must chain to (mTLS)")
    admin_port: int | None = Field(
        None, ge=0, le=65535, description="serve management and /metrics on this port only (0 = any free one)"
    )
    admin_host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _tls_complete(self) -> ServeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            raise ValueError(
                f"{given} is set but {missing} is not; HTTPS needs both (--tls-cert and --tls-key)"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "tls_client_ca needs tls_cert and tls_key: client certificates are checked over HTTPS"
            )
        if self.admin_port and self.admin_port == self.port:
            raise ValueError("admin_port must differ from port: the admin listener is a second port")
        if self.grpc_port and self.grpc_port in (self.port, self.admin_port):
            raise ValueError(
                f"grpc_port {self.grpc_port} is also the HTTP or admin port: gRPC needs a port of its own "
                "(--grpc-port PORT, or 0 to serve no gRPC)"
            )
        return self

    def for_version(self, serving: Mapping[str, Any], ref: str = "the version") -> ServeSettings:
        """These settings with the options stored with a version (`serving`) in place of defaults:
        what was set for the whole server (flag, environment, file) keeps its value."""
        stored = {k: serving[k] for k in VERSION_OPTIONS if k in serving and k not in self.model_fields_set}
        if not stored:
            return self
        try:
            return type(self).model_validate({**self.model_dump(exclude_unset=True), **stored})
        except ValidationError as exc:
            raise _invalid(exc, f"invalid serving options stored with {ref}") from exc


class GenerationSettings(BaseModel):
    """Generative language models (GGUF through llama.cpp, causal LMs through transformers): the
    token-level scheduler that decodes many sequences together (`SHIPYARD_GENERATION__…`)."""

    slots: int = Field(8, ge=1, description="sequences decoded together in one batch per step")
    context_per_slot: int = Field(
        2048, ge=64, description="prompt + completion tokens one sequence may hold (at most the model's)"
    )
    kv_budget_bytes: int | None = Field(
        None, ge=1 << 20, description="memory for the KV cache of all slots; None: slots x context"
    )
    max_queue: int = Field(64, ge=1, description="requests waiting for a slot; more get 503")
    threads: int = Field(0, ge=0, description="engine threads; 0 = one per core")
    prompt_chunk_tokens: int = Field(
        256, ge=16, description="a long prompt is processed in chunks this long between decoding steps"
    )
    max_tokens_default: int = Field(512, ge=1, description="completion tokens when a request names none")
    prefix_cache: bool = Field(True, description="reuse a shared prompt prefix (a system prompt)")


class DriftSettings(BaseModel):
    """Input drift: the live windows a server keeps per model version (for versions with a
    reference profile) and how drift is judged, there and offline (`shipyard drift`)."""

    enabled: bool = Field(True, description="keep windows of recent inputs for versions with a profile")
    max_rows: int = Field(10_000, ge=1, description="rows kept per version: the largest count window")
    max_age_s: float = Field(3600.0, gt=0, description="age of the oldest row kept: the longest time window")
    max_bytes: int = Field(64 << 20, ge=1, description="memory for one version's window")
    window: str | None = Field(
        None, description="what /metrics reports: rows (`1000`) or a duration (`15m`); unset: all kept"
    )
    min_rows: int = Field(30, ge=1, description="rows a window needs before it gets a verdict")
    small_window_rows: int = Field(
        1000, ge=1, description="windows up to this many rows get statistical tests, larger ones distances"
    )
    numeric_method: Literal["auto", "ks", "wasserstein", "psi", "jensenshannon"] = "auto"
    categorical_method: Literal["auto", "chisquare", "z", "psi", "jensenshannon"] = "auto"
    # p-value below which a test says "drifted"; distance at or above which a distance does
    # (Evidently's defaults).
    p_value: float = Field(0.05, gt=0, lt=1)
    distance: float = Field(0.1, gt=0)
    drift_share: float = Field(
        0.5, gt=0, le=1, description="share of drifted features at which the whole input has drifted"
    )
    max_metric_features: int = Field(50, ge=1, description="features per version exported to /metrics")
    metrics_refresh_s: float = Field(
        10.0,
        ge=0,
        description="/metrics recomputes a version's drift at most this often; scrapes between get the "
        "last figures (0: every scrape)",
    )
    share_s: float = Field(
        2.0,
        gt=0,
        description="with --workers N, how often each worker shares its window with the others: drift "
        "covers every worker's inputs, the other workers' at most this late",
    )


class TracingSettings(BaseModel):
    """OpenTelemetry traces of inference requests: off until an OTLP endpoint is set (also from
    the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT)."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector, e.g. http://localhost:4318 (/v1/traces added if no path)"
    )
    service_name: str = Field("shipyard", min_length=1, description="service.name of the spans")

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "must be an http(s) URL of an OTLP/HTTP collector, such as http://localhost:4318"
            )
        return value

    @property
    def traces_url(self) -> str | None:
        """Where spans are posted: the endpoint, with the OTLP path if it names none."""
        if self.otlp_endpoint is None:
            return None
        if urlsplit(self.otlp_endpoint).path.strip("/"):
            return self.otlp_endpoint
        return self.otlp_endpoint.rstrip("/") + "/v1/traces"


class ModelSampling(BaseModel):
    """One model's sample rates in the prediction log, in place of the log's own (None: inherit)."""

    sample_rate: float | None = Field(None, ge=0, le=1)
    payload_rate: float | None = Field(None, ge=0, le=1)


class PredictionLogSettings(BaseModel):
    """The prediction log: a sample of each served model's requests and responses, kept under
    `<home>/predictions` (or `path`) and read with `shipyard logs`."""

    sample_rate: float = Field(1.0, ge=0, le=1, description="share of requests logged (their summary)")
    payload_rate: float = Field(
        0.0, ge=0, le=1, description="share of requests logged with their inputs and outputs"
    )
    models: dict[str, ModelSampling] = Field(default_factory=dict, description="rates per model name")
    max_payload_bytes: int = Field(1 << 20, ge=0, description="a larger payload is left out")
    max_bytes: int = Field(1 << 30, ge=1 << 16, description="all segments together; the oldest go first")
    max_age_s: float = Field(7 * 86400.0, gt=0, description="entries older than this are deleted")
    queue_size: int = Field(10_000, ge=1, description="entries waiting for the writer; more are dropped")
    path: Path | None = Field(None, description="default: <home>/predictions")


class QualitySettings(BaseModel):
    """Live quality: feedback (true labels or values) joined with the prediction log, scored over a
    sliding window of the latest labelled predictions."""

    window_rows: int = Field(10_000, ge=1, description="/metrics scores at most the latest this many rows")
    window_s: float = Field(
        86400.0,
        gt=0,
        description="... of the predictions made in the last this many seconds",
    )
    min_rows: int = Field(20, ge=1, description="labelled rows a window needs before /metrics exports it")
    max_classes: int = Field(20, ge=0, description="classes per version with per-class metrics")
    max_batch: int = Field(1000, ge=1, description="feedback items per request; more is refused (413)")
    path: Path | None = Field(
        None, description="the feedback database; default: <prediction log folder>/feedback.db"
    )


class _VertexSource(PydanticBaseSettingsSource):
    """Vertex AI's variables, which name the port and routes its traffic uses."""

    NAMES: ClassVar[dict[str, str]] = {
        "AIP_HTTP_PORT": "port",
        "AIP_HEALTH_ROUTE": "vertex_health_route",
        "AIP_PREDICT_ROUTE": "vertex_predict_route",
    }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole mapping

    def __call__(self) -> dict[str, Any]:
        serve = {key: os.environ[name] for name, key in self.NAMES.items() if os.environ.get(name)}
        return {"serve": serve} if serve else {}


class _OtelSource(PydanticBaseSettingsSource):
    """OpenTelemetry's standard variables, below SHIPYARD_TRACING__…: the generic endpoint is a
    base URL that the OTLP path is added to; the traces endpoint is used as it is."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole mapping

    def __call__(self) -> dict[str, Any]:
        tracing = {}
        if endpoint := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            tracing["otlp_endpoint"] = endpoint
        elif endpoint := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            tracing["otlp_endpoint"] = endpoint.rstrip("/") + "/v1/traces"
        if name := os.environ.get("OTEL_SERVICE_NAME"):
            tracing["service_name"] = name
        return {"tracing": tracing} if tracing else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHIPYARD_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".shipyard")
    registry_url: str | None = None  # default: sqlite:///<home>/registry.db
    artifact_url: str | None = None  # default: <home>/artifacts; any fsspec URL, e.g. s3://bucket/prefix
    # Options of the fsspec filesystem of a remote artifact_url, as JSON in the environment, e.g.
    # SHIPYARD_ARTIFACT_OPTIONS='{"endpoint_url": "http://minio:9000"}' for MinIO (s3fs options).
    artifact_options: dict[str, Any] = Field(default_factory=dict)
    artifact_part_bytes: int = Field(
        8 << 20, ge=5 << 20, description="multipart part size; files of two parts or more go multipart"
    )
    cache_dir: Path | None = None  # artifacts pulled from a remote store; default: <home>/cache
    cache_max_bytes: int = Field(20 << 30, ge=0, description="the cache's bound; least recently used go")
    runtime: RuntimeSettings = RuntimeSettings()
    push: PushSettings = PushSettings()
    serve: ServeSettings = ServeSettings()
    drift: DriftSettings = DriftSettings()
    generation: GenerationSettings = GenerationSettings()

    tracing: TracingSettings = TracingSettings()

    prediction_log: PredictionLogSettings = PredictionLogSettings()

    quality: QualitySettings = QualitySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first; nested sections are merged key by key (a flag for serve.port leaves
        # SHIPYARD_SERVE__MAX_BATCH_SIZE in force).
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            _VertexSource(settings_cls),
            env_settings,
            _OtelSource(settings_cls),
        ]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **flags: Any) -> Settings:
        """Settings from flags (None values and empty sections ignored), environment, config file.

        Sections are given as dicts: `Settings.load(serve={"port": 9000, "workers": None})`.
        """
        path = config_file or os.environ.get("SHIPYARD_CONFIG")
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise InvalidInputError(f"config file {str(path)!r} does not exist", field="config")
        token = _config_file.set(path)
        try:
            return cls(**_given(flags))
        except ValidationError as exc:
            raise _invalid(exc, "invalid settings") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInputError(
                f"config file {str(path)!r} is not valid TOML: {exc}", field="config"
            ) from exc
        except ValueError as exc:  # e.g. an environment variable pydantic-settings cannot parse
            raise InvalidInputError(f"invalid settings: {exc}", field="settings") from exc
        finally:
            _config_file.reset(token)

    @property
    def database_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def artifact_root(self) -> str:
        return self.artifact_url or str(self.home / "artifacts")

    @property
    def artifact_cache_dir(self) -> Path:
        return (self.cache_dir or self.home / "cache").expanduser()

    @property
    def predictions_dir(self) -> Path:
        return self.prediction_log.path or self.home / "predictions"

    @property
    def feedback_path(self) -> Path:
        return self.quality.path or self.predictions_dir / "feedback.db"


def _given(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags a user gave: None means "not given", in sections too; a section left empty goes."""
    given = {}
    for key, value in flags.items():
        kept = (_given(value) or None) if isinstance(value, Mapping) else value
        if kept is not None:
            given[key] = kept
    return given


def _invalid(exc: ValidationError, what: str) -> InvalidInputError:
    """One line per problem, naming the setting: `serve.port: Input should be … (got 99999)`."""
    errors = exc.errors(include_url=False)
    places = [".".join(map(str, error["loc"])) for error in errors]
    problems = [
        f"{place}: {error['msg']} (got {error['input']!r})"
        for place, error in zip(places, errors, strict=True)
    ]
    return InvalidInputError(f"{what}: " + "; ".join(problems), field=places[0] if places else "settings")
