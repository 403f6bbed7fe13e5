"""Which managed platform started the container, and what its environment asks of the server.

A pure mapping from (environment, arguments) to serve options: `shipyard entrypoint` calls it at
the edge with `os.environ`, nothing here reads the environment itself. Each platform's contract:

- SageMaker runs `ENTRYPOINT serve`, sends `/ping` and `/invocations` to port 8080 (or
  `SAGEMAKER_BIND_TO_PORT`) and unpacks the model data into /opt/ml/model; a real-time
  invocation carries at most 6 MB.
- Vertex AI names the port and routes (`AIP_HTTP_PORT`, `AIP_HEALTH_ROUTE`, `AIP_PREDICT_ROUTE`)
  and must reach the container from outside it; a request carries at most 1.5 MB.
- Azure ML online endpoints probe `GET /` and score on `POST /score`, both on port 5001, and
  mount the registered model at `AZUREML_MODEL_DIR`.
- Anything else (Docker, Kubernetes): 0.0.0.0:8080, or `PORT` as Cloud Run and Knative set it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from shipyard.errors import InvalidInputError
from shipyard.settings import Platform

PLATFORMS: tuple[Platform, ...] = get_args(Platform)

# Body limits as each platform documents them. Read as binary megabytes: a request the platform
# lets through must never be refused here, and the platform refuses larger ones before us.
SAGEMAKER_MAX_BODY = 6 * 1024 * 1024
VERTEX_MAX_BODY = 3 * 512 * 1024  # 1.5 MB
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SAGEMAKER_GRACE_S = 25.0
AZURE_PORT = 5001
DEFAULT_PORT = 8080

# Variables each platform sets that the server has no use for, named so the log says so.
IGNORED: dict[str, tuple[str, ...]] = {
    "sagemaker": ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_SAFE_PORT_RANGE"),
    "vertex": (
        "AIP_GRPC_PORT",
        "AIP_DEPLOYED_MODEL_ID",
        "AIP_ENDPOINT_ID",
        "AIP_MODEL_NAME",
        "AIP_VERSION_NAME",
        "AIP_PROJECT_NUMBER",
        "AIP_MACHINE_TYPE",
        "AIP_ACCELERATOR_TYPE",
        "AIP_FRAMEWORK",
        "AIP_MODE_VERSION",
    ),
    "azure": ("AZUREML_ENTRY_SCRIPT", "AML_APP_ROOT", "AZUREML_SOURCE_DIRECTORY"),
    "generic": (),
}


@dataclass(frozen=True)
class PlatformPlan:
    """What one platform's contract asks: `required` options win over every setting (the platform
    sends traffic nowhere else), `defaults` give way to `SHIPYARD_SERVE__…` and the config file."""

    platform: Platform
    required: dict[str, Any]
    defaults: dict[str, Any]
    model_dirs: list[Path]  # where the platform puts model data, first match wins
    notes: list[str] = field(default_factory=list)  # variables found and not used, and why
    multi_model: bool = False  # SageMaker loads models at run time: start with none if none is found


def detect(environ: Mapping[str, str], args: Sequence[str]) -> Platform:
    """The platform that started this process: SageMaker's `serve` argument, then Vertex AI's and
    Azure ML's own variables, then any `SAGEMAKER_…` variable; else generic."""
    if args[:1] == ["serve"]:
        return "sagemaker"
    if environ.get("AIP_HTTP_PORT") or environ.get("AIP_MODE"):
        return "vertex"
    if environ.get("AZUREML_MODEL_DIR"):
        return "azure"
    if any(name.startswith("SAGEMAKER_") for name in environ):
        return "sagemaker"
    return "generic"


def plan(platform: Platform, environ: Mapping[str, str]) -> PlatformPlan:
    """The serve options and model folders `platform`'s environment asks for."""
    planners = {"sagemaker": _sagemaker, "vertex": _vertex, "azure": _azure, "generic": _generic}
    chosen = planners[platform](environ)
    notes = [*chosen.notes, *(f"{name} ignored" for name in IGNORED[platform] if name in environ)]
    return PlatformPlan(
        platform, chosen.required, chosen.defaults, chosen.model_dirs, notes, chosen.multi_model
    )


def _sagemaker(environ: Mapping[str, str]) -> PlatformPlan:
    port = _port(environ, "SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT
    # SageMaker sends SIGKILL 30 s after SIGTERM: the drain must end before it.
    defaults: dict[str, Any] = {"max_body_bytes": SAGEMAKER_MAX_BODY, "grace_period_s": SAGEMAKER_GRACE_S}
    if workers := _positive(environ, "SAGEMAKER_MODEL_SERVER_WORKERS"):
        defaults["workers"] = workers
    if timeout := _positive(environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT"):
        defaults["timeout_s"] = float(timeout)
    if payload := _positive(environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB"):  # batch transform's MaxPayloadInMB
        defaults["max_body_bytes"] = payload * 1024 * 1024
    if level := environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL"):
        defaults["log_level"] = _log_level(level, "SAGEMAKER_CONTAINER_LOG_LEVEL")
    required: dict[str, Any] = {"platform": "sagemaker", "host": "0.0.0.0", "port": port}
    notes = []
    multi_model = environ.get("SAGEMAKER_MULTI_MODEL", "").lower() == "true"
    if multi_model:  # a load lands in the one process that took it: every process must be that one
        required["workers"] = 1
        if defaults.pop("workers", 1) != 1:
            notes.append("SAGEMAKER_MODEL_SERVER_WORKERS ignored: multi-model serving runs one worker")
    return PlatformPlan("sagemaker", required, defaults, [SAGEMAKER_MODEL_DIR], notes, multi_model)


def _vertex(environ: Mapping[str, str]) -> PlatformPlan:
    required: dict[str, Any] = {
        "platform": "vertex",
        "host": "0.0.0.0",
        "port": _port(environ, "AIP_HTTP_PORT") or DEFAULT_PORT,
    }
    for variable, option in (
        ("AIP_HEALTH_ROUTE", "vertex_health_route"),
        ("AIP_PREDICT_ROUTE", "vertex_predict_route"),
    ):
        if route := environ.get(variable):
            if not route.startswith("/"):
                raise InvalidInputError(
                    f"{variable} must be a path starting with '/', got {route[:80]!r}", field=variable
                )
            required[option] = route
    notes, model_dirs = [], []
    storage = environ.get("AIP_STORAGE_URI", "")
    if storage.startswith("/"):  # a local copy (tests, or a volume): read like a model folder
        model_dirs.append(Path(storage))
    elif storage:
        notes.append(f"AIP_STORAGE_URI {storage} ignored: the image holds its models")
    mode = environ.get("AIP_MODE")
    if mode and mode != "PREDICTION":
        notes.append(f"AIP_MODE {mode} ignored: this container only serves predictions")
    return PlatformPlan("vertex", required, {"max_body_bytes": VERTEX_MAX_BODY}, model_dirs, notes)


def _azure(environ: Mapping[str, str]) -> PlatformPlan:
    required = {"platform": "azure", "host": "0.0.0.0"}
    # 5001 is what Azure probes unless a deployment's inference_config names another port, which
    # SHIPYARD_SERVE__PORT then matches.
    defaults: dict[str, Any] = {"port": AZURE_PORT}
    if workers := _positive(environ, "WORKER_COUNT"):  # what Azure's own inference server reads
        defaults["workers"] = workers
    if timeout_ms := _positive(environ, "SCORING_TIMEOUT_MS"):
        defaults["timeout_s"] = timeout_ms / 1000
    if level := environ.get("AZUREML_LOG_LEVEL"):
        defaults["log_level"] = _log_level(level, "AZUREML_LOG_LEVEL")
    model_dir = environ.get("AZUREML_MODEL_DIR")
    return PlatformPlan("azure", required, defaults, [Path(model_dir)] if model_dir else [])


def _generic(environ: Mapping[str, str]) -> PlatformPlan:
    defaults = {"host": "0.0.0.0", "port": _port(environ, "PORT") or DEFAULT_PORT}
    return PlatformPlan("generic", {"platform": "generic"}, defaults, [])


def _port(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise InvalidInputError(f"{name} must be a port number (1-65535), got {text[:40]!r}", field=name)
    return int(text)


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise InvalidInputError(f"{name} must be a positive whole number, got {text[:40]!r}", field=name)
    return int(text)


def _log_level(text: str, name: str) -> str:
    """A Python logging level, by number (SageMaker's toolkits use `20`) or by name."""
    names = {"10": "DEBUG", "20": "INFO", "30": "WARNING", "40": "ERROR", "50": "CRITICAL"}
    level = names.get(text.strip(), text.strip().upper())
    if level not in names.values():
        raise InvalidInputError(
            f"{name} must be a logging level (10-50 or DEBUG…CRITICAL), got {text[:40]!r}", field=name
        )
    return level
