"""MLflow models: a model folder (`MLmodel`), a run's model or registered versions, as Shipyard versions.

SOURCE is a local model folder, `runs:/RUN_ID/PATH`, `models:/NAME` (every registered version),
`models:/NAME/VERSION` or `models:/NAME@ALIAS` (that one version). Each MLflow flavour maps to the
Shipyard format that serves it (`FLAVOURS`); pickle-based ones (sklearn saved with pickle or
cloudpickle, a python_function model) only with `trust`, as any pickle push. The run's metrics,
params and tags become the version's; the input example its sample input; MLmodel itself (with
the signature) is stored beside the model as `mlflow/MLmodel`; registered aliases become aliases.

No `mlflow` package: MLmodel is YAML, and the tracking server is read through MLflow's documented
REST API with httpx. The mlflow client would pull a large dependency tree (Flask, SQLAlchemy,
alembic, pandas, pyarrow, graphene, ...) into Shipyard's core for a handful of GET requests.

As with Triton, everything is fetched and checked before anything is stored (`read_source`), and
should a push still fail, what this import pushed is removed again: a failed import registers
nothing.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from shipyard.errors import (
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    ShipyardError,
    UntrustedArtifactError,
)
from shipyard.settings import PushSettings
from shipyard.types import validate_alias, validate_name

if TYPE_CHECKING:
    import httpx

    from shipyard.registry import Registry
    from shipyard.types import ModelVersion

MLMODEL = "MLmodel"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
# Native flavours first: every MLmodel also lists python_function, which is only the fallback.
NATIVE_FLAVOURS = ("onnx", "transformers", "keras", "sklearn")
PICKLE_FORMATS = ("pickle", "cloudpickle")
# Run tags MLflow writes for itself that are large or say nothing about the model.
_SKIPPED_TAGS = ("mlflow.log-model.history",)
_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MlflowModel:
    """One MLflow model, fetched and checked: what `import_source` pushes."""

    name: str
    path: Path  # the file or folder `Registry.push` gets
    flavour: str
    trust_needed: bool
    attachments: dict[str, bytes]  # MLmodel (with the signature) and the input example, as logged
    sample_input: Any = None
    tokenizer: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""


def read_source(
    source: str,
    workdir: Path,
    *,
    name: str | None = None,
    tracking_uri: str | None = None,
    trust: bool = False,
    limits: PushSettings | None = None,
    say: Callable[[str], None] = lambda _line: None,
) -> list[MlflowModel]:
    """Every model `source` names, downloaded under `workdir` and checked, in MLflow version order;
    ONNX files also against the push `limits` (size, self-contained, tensor sizes)."""
    limits = limits or PushSettings()
    if source.startswith(("runs:/", "models:/")):
        uri = tracking_uri or os.environ.get(TRACKING_ENV)
        if not uri:
            raise InvalidInputError(
                f"{source} needs a tracking server: give --tracking-uri or set {TRACKING_ENV}",
                field="tracking_uri",
            )
        with _Tracking(uri, limits, say) as tracking:
            if source.startswith("runs:/"):
                models = [_read_run_model(tracking, source, workdir, name)]
            else:
                models = _read_registered(tracking, source, workdir, name)
    else:
        folder = Path(source)
        if folder.is_file() and folder.name == MLMODEL:
            folder = folder.parent
        models = [_read_folder(folder, name or folder.resolve().name, tags={"mlflow_source": source})]
    for model in models:
        if model.trust_needed and not trust:
            raise _Refused(
                model.name,
                f"{model.tags.get('mlflow_source', source)} is an MLflow {model.flavour} model stored as a "
                "pickle: loading it runs arbitrary code, so Shipyard refuses it by default. Log it with "
                "skops or ONNX, or, if you trust where it came from, import it again with --trust",
            )
        if model.flavour == "onnx":
            # The checks the push makes, before anything is pushed: a later version's external
            # data or oversized tensor must not be found after an earlier version was stored.
            from shipyard.importers.triton import onnx_signature

            onnx_signature(model.path, model.tags.get("mlflow_source", source), limits)
        if model.flavour == "python_function":
            # Trusted or not, its pickle holds an mlflow.pyfunc.PythonModel: it loads and runs only
            # with the mlflow package, which Shipyard does not install.
            raise InvalidInputError(
                f"{model.tags.get('mlflow_source', source)} is a python_function model: its code runs "
                "only inside MLflow, which Shipyard does not install; log the model with its own flavour "
                f"({', '.join(NATIVE_FLAVOURS)}) or convert it to ONNX",
                field="source",
            )
    return models


class _Refused(UntrustedArtifactError):
    """A pickle-based model without `trust`; names the model, for the audit log."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def import_source(
    registry: Registry,
    source: str,
    *,
    name: str | None = None,
    tracking_uri: str | None = None,
    trust: bool = False,
    actor: str | None = None,
    say: Callable[[str], None] = lambda _line: None,
) -> list[ModelVersion]:
    """Push every model `source` names, then set its aliases, or nothing; `say` hears each download
    and push as it starts (a large model takes minutes)."""
    with tempfile.TemporaryDirectory(prefix="shipyard-mlflow-") as tmp:
        try:
            models = read_source(
                source,
                Path(tmp),
                name=name,
                tracking_uri=tracking_uri,
                trust=trust,
                limits=registry.settings.push,
                say=say,
            )
        except _Refused as exc:
            # Recorded as a refused push is: the audit log shows every artifact kept out for running code.
            detail = {"trusted": False, "trust_flag": trust, "reason": exc.message, "source": source}
            registry.audit("push.refused", target=exc.name, actor=actor, detail=detail)
            raise
        pushed: list[ModelVersion] = []
        try:
            for model in models:
                say(f"pushing {model.name} ({model.flavour})")
                version = registry.push(
                    model.name,
                    model.path,
                    sample_input=model.sample_input,
                    tokenizer=model.tokenizer,
                    metrics=model.metrics,
                    params=model.params,
                    tags=model.tags,
                    description=model.description,
                    trust=trust,
                    attachments=model.attachments,
                    actor=actor,
                )
                pushed.append(version)
                for alias in model.aliases:
                    registry.set_alias(version.name, alias, version.version, actor=actor)
        except BaseException:
            for done in reversed(pushed):
                registry.remove(done.ref, force=True, actor=actor)
            raise
        # Aliases moved by later versions: the stored versions as they are now.
        return [registry.resolve(version.ref) for version in pushed]


# --- a model folder -----------------------------------------------------------------------------


def read_mlmodel(folder: Path) -> dict[str, Any]:
    """`folder/MLmodel` parsed; a missing or malformed one is a bad source."""
    import yaml

    path = folder / MLMODEL
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise InvalidInputError(
            f"{folder} {what}: give an MLflow model folder (with {MLMODEL})", field="source"
        )
    if not path.is_file():
        raise InvalidInputError(f"{path} is missing: an MLflow model folder needs one", field="source")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"{path} is not valid YAML: {' '.join(str(exc).split())}", field="source"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict) or not data["flavors"]:
        raise InvalidInputError(f"{path} lists no flavors: not an MLflow model", field="source")
    return data


def _read_folder(folder: Path, name: str, *, tags: dict[str, str]) -> MlflowModel:
    try:
        validate_name(name)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"{name!r} cannot be a Shipyard model name: {exc.message}; give one with --name", field="name"
        ) from exc
    mlmodel = read_mlmodel(folder)
    flavours: dict[str, Any] = mlmodel["flavors"]
    flavour = next((f for f in NATIVE_FLAVOURS if f in flavours), None)
    if flavour is None and set(flavours) == {"python_function"}:
        flavour = "python_function"
    if flavour is None:
        others = ", ".join(sorted(set(flavours) - {"python_function"}))
        raise InvalidInputError(
            f"{folder / MLMODEL}: flavor {others} is not supported; Shipyard imports "
            f"{', '.join((*NATIVE_FLAVOURS, 'python_function'))} (convert the model to ONNX otherwise)",
            field="source",
        )
    conf = flavours[flavour] if isinstance(flavours[flavour], dict) else {}
    path, trust_needed, tokenizer = _model_path(folder, flavour, conf)
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InvalidInputError(
            f"{folder / MLMODEL}: the {flavour} model path leads out of the model folder", field="source"
        )
    if not path.exists():
        raise InvalidInputError(
            f"{folder}: the {flavour} model {path.relative_to(folder)} that {MLMODEL} names is missing",
            field="source",
        )
    return MlflowModel(
        name=name,
        path=path,
        flavour=flavour,
        trust_needed=trust_needed,
        attachments=_attachments(folder, mlmodel),
        sample_input=_sample_input(folder, mlmodel),
        tokenizer=tokenizer,
        tags={"source": "mlflow", "mlflow_flavor": flavour, **tags},
    )


def _attachments(folder: Path, mlmodel: dict[str, Any]) -> dict[str, bytes]:
    files = {MLMODEL: folder / MLMODEL}
    info = mlmodel.get("saved_input_example_info")
    if isinstance(info, dict) and info.get("artifact_path"):
        example = folder / str(info["artifact_path"])
        if example.is_file() and example.resolve().is_relative_to(folder.resolve()):
            files[example.name] = example
    return {f"mlflow/{name}": path.read_bytes() for name, path in files.items()}


def _model_path(folder: Path, flavour: str, conf: dict[str, Any]) -> tuple[Path, bool, Path | None]:
    """The file or folder to push for `flavour`, whether it is a pickle, and a tokenizer folder."""
    if flavour == "onnx":
        return folder / str(conf.get("data", "model.onnx")), False, None
    if flavour == "sklearn":
        fmt = str(conf.get("serialization_format", "cloudpickle"))
        return folder / str(conf.get("pickled_model", "model.pkl")), fmt in PICKLE_FORMATS, None
    if flavour == "keras":
        data = folder / str(conf.get("data", "data"))
        found = sorted(data.rglob("*.keras")) + sorted(data.rglob("*.h5")) if data.is_dir() else []
        return (found[0] if found else data / "model.keras"), False, None
    if flavour == "transformers":
        # MLflow saves the weights under model/ and the tokenizer under components/tokenizer/.
        tokenizer = folder / "components" / "tokenizer"
        return folder / "model", False, tokenizer if tokenizer.is_dir() else None
    # python_function alone: a cloudpickled PythonModel (or a loader module's data), code when loaded.
    return folder / str(conf.get("python_model") or conf.get("data") or "python_model.pkl"), True, None


def _sample_input(folder: Path, mlmodel: dict[str, Any]) -> Any:
    """The logged input example as an array in the signature's dtype, or None.

    MLflow writes `{"inputs": ...}` for a tensor example and split-oriented
    `{"columns": [...], "data": [...]}` for a DataFrame; both become rows of values."""
    import numpy as np

    info = mlmodel.get("saved_input_example_info")
    if not isinstance(info, dict) or not info.get("artifact_path"):
        return None
    path = folder / str(info["artifact_path"])
    if not path.resolve().is_relative_to(folder.resolve()):
        return None
    try:
        example = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: the input example {MLMODEL} names cannot be read: {exc}") from exc
    if isinstance(example, dict):
        example = example.get("inputs", example.get("data", example.get("instances")))
    if isinstance(example, dict) or example is None:  # named tensors: Shipyard takes one array
        return None
    dtype = _tensor_dtype(mlmodel)
    try:
        return np.asarray(example, dtype=dtype)
    except (TypeError, ValueError):
        return np.asarray(example)


def _tensor_dtype(mlmodel: dict[str, Any]) -> str | None:
    signature = mlmodel.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("inputs"), str):
        return None
    try:
        inputs = json.loads(signature["inputs"])
    except ValueError:
        return None
    specs = {str(i.get("tensor-spec", {}).get("dtype")) for i in inputs if i.get("type") == "tensor"}
    if len(specs) == 1:
        return specs.pop()
    types = {str(i.get("type")) for i in inputs}
    return {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}.get(
        types.pop() if len(types) == 1 else ""
    )


# --- a tracking server ------------------------------------------------------------------------


class _Tracking:
    """GET requests to one tracking server's REST API, its errors as Shipyard errors."""

    def __init__(
        self, uri: str, limits: PushSettings, say: Callable[[str], None] = lambda _line: None
    ) -> None:
        import httpx

        parsed = urlparse(uri)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInputError(
                f"tracking URI {uri!r} is not an http(s) URL of an MLflow tracking server",
                field="tracking_uri",
            )
        self.uri = uri.rstrip("/")
        self.client = httpx.Client(base_url=self.uri, timeout=_TIMEOUT_S)
        self.limits = limits
        self._say = say

    def __enter__(self) -> _Tracking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    @contextmanager
    def _send(self, url: str, params: dict[str, Any] | None, what: str) -> Iterator[httpx.Response]:
        """A streamed GET of `url`; an error answer or no answer is raised as a Shipyard error."""
        import httpx

        try:
            with self.client.stream("GET", url, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response, what)
                yield response
        except httpx.TransportError as exc:
            raise NotReadyError(
                f"cannot reach the MLflow tracking server at {self.uri} while fetching {what}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _json(self, url: str, params: dict[str, Any] | None, what: str) -> dict[str, Any]:
        with self._send(url, params, what) as response:
            response.read()
            try:
                body = response.json()
            except ValueError as exc:
                raise ShipyardError(f"{self.uri} answered {url} with something not JSON") from exc
        return body if isinstance(body, dict) else {}

    def get(self, endpoint: str, what: str, **params: Any) -> dict[str, Any]:
        return self._json(f"/api/2.0/mlflow/{endpoint}", params, what)

    def _error(self, response: httpx.Response, what: str) -> ShipyardError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"message": f"HTTP {response.status_code}"}
        detail = f"{body.get('error_code', response.status_code)}: {body.get('message', '')}"
        message = f"MLflow at {self.uri} has no {what} ({detail})"
        # A missing alias is INVALID_PARAMETER_VALUE ("... not found") rather than a 404.
        missing = "not found" in str(body.get("message", "")).lower()
        if response.status_code == 404 or body.get("error_code") == "RESOURCE_DOES_NOT_EXIST" or missing:
            return NotFoundError(message)
        if response.status_code in (401, 403):
            return ShipyardError(f"MLflow at {self.uri} refused access to {what} ({detail})")
        if response.status_code < 500:
            return InvalidInputError(f"MLflow at {self.uri} refused the request for {what} ({detail})")
        return ShipyardError(f"MLflow at {self.uri} failed on {what} ({detail})")

    def download(self, artifact_uri: str, dest: Path) -> Path:
        """The artifact folder `artifact_uri` copied into `dest` (created)."""
        self._say(f"downloading {artifact_uri}")
        parsed = urlparse(artifact_uri)
        if parsed.scheme == "mlflow-artifacts":
            base = f"{self._scheme()}://{parsed.netloc}" if parsed.netloc else self.uri
            self._download_proxied(base, unquote(parsed.path).strip("/"), dest)
        elif parsed.scheme in ("", "file"):
            local = Path(unquote(parsed.path))
            # A local path is the tracking server's own disk: read only when that server runs on
            # this machine, so a remote server cannot have this machine's files copied in.
            if not _on_this_machine(self.uri):
                raise InvalidInputError(
                    f"model artifacts {artifact_uri} are on the tracking server's disk: start it "
                    "with --serve-artifacts so Shipyard can download them",
                    field="source",
                )
            if not local.is_dir():
                raise InvalidInputError(
                    f"model artifacts {artifact_uri} are not on this machine: start the tracking server "
                    "with --serve-artifacts so Shipyard can download them",
                    field="source",
                )
            shutil.copytree(local, dest)
        else:
            raise InvalidInputError(
                f"model artifacts at {artifact_uri}: Shipyard downloads only through the tracking server's "
                "artifact proxy (mlflow-artifacts:, `mlflow server --serve-artifacts`) or from a local path",
                field="source",
            )
        return dest

    def _scheme(self) -> str:
        return urlparse(self.uri).scheme

    def _download_proxied(self, base: str, root: str, dest: Path) -> None:
        api = f"{base}/api/2.0/mlflow-artifacts/artifacts"
        pending = [""]
        dest.mkdir(parents=True)
        while pending:
            relative = pending.pop()
            where = f"{root}/{relative}".rstrip("/")
            listed = self._json(api, {"path": where}, f"artifacts {where}")
            for entry in listed.get("files", []):
                # Entries name the path relative to the listed folder; only its last part is used,
                # so nothing the server sends can write outside `dest`.
                part = PurePosixPath(str(entry.get("path", ""))).name
                if part in ("", ".", ".."):
                    continue
                child = f"{relative}/{part}".lstrip("/")
                if entry.get("is_dir"):
                    (dest / child).mkdir()
                    pending.append(child)
                    continue
                what = f"artifact {root}/{child}"
                with (
                    self._send(f"{api}/{root}/{child}", None, what) as response,
                    (dest / child).open("wb") as out,
                ):
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        # Stopped as soon as it is too large, not once the disk is full.
                        if size > self.limits.max_file_bytes:
                            raise PayloadTooLargeError(
                                f"artifact {root}/{child} is over the push limit of "
                                f"{self.limits.max_file_bytes} bytes; raise SHIPYARD_PUSH__MAX_FILE_BYTES "
                                "if the file is genuine",
                                field="source",
                            )
                        out.write(chunk)


def _run_details(
    tracking: _Tracking, run_id: str
) -> tuple[dict[str, Any], dict[str, float], dict[str, str], dict[str, str]]:
    """The run (runs/get) and its latest metrics, params and tags (non-finite metrics dropped)."""
    run = tracking.get("runs/get", f"run {run_id}", run_id=run_id).get("run", {})
    data = run.get("data", {})
    metrics = {}
    for metric in data.get("metrics", []):
        value = float(metric.get("value", math.nan))
        if math.isfinite(value):
            metrics[str(metric["key"])] = value
    params = {str(p["key"]): str(p.get("value", "")) for p in data.get("params", [])}
    tags = {
        f"mlflow_run.{t['key']}": str(t.get("value", ""))
        for t in data.get("tags", [])
        if t["key"] not in _SKIPPED_TAGS
    }
    return run, metrics, params, tags


def _read_run_model(tracking: _Tracking, source: str, workdir: Path, name: str | None) -> MlflowModel:
    run_id, _, path = source.removeprefix("runs:/").partition("/")
    path = path.strip("/")
    if not run_id or not path:
        raise InvalidInputError(f"{source} is not runs:/RUN_ID/PATH", field="source")
    if name is None:
        raise InvalidInputError(f"{source}: a run's model has no name; give one with --name", field="name")
    run, metrics, params, tags = _run_details(tracking, run_id)
    artifact_uri = _run_model_uri(tracking, run, path)
    folder = tracking.download(artifact_uri, workdir / "run")
    model = _read_folder(folder, name, tags={"mlflow_source": source, "mlflow_run_id": run_id, **tags})
    return _with(model, metrics=metrics, params=params, description=f"imported from MLflow {source}")


def _run_model_uri(tracking: _Tracking, run: dict[str, Any], path: str) -> str:
    """Where the run's model `path` lives: since MLflow 3 a logged model has its own artifact
    location (the run lists it among its outputs); before, it was a folder of the run's artifacts."""
    for output in run.get("outputs", {}).get("model_outputs", []):
        model_id = output.get("model_id")
        if not model_id:
            continue
        info = (
            tracking.get(f"logged-models/{model_id}", f"logged model {model_id}")
            .get("model", {})
            .get("info", {})
        )
        if info.get("name") == path and info.get("artifact_uri"):
            return str(info["artifact_uri"])
    root = str(run.get("info", {}).get("artifact_uri", "")).rstrip("/")
    return f"{root}/{path}"


def _read_registered(tracking: _Tracking, source: str, workdir: Path, name: str | None) -> list[MlflowModel]:
    rest = source.removeprefix("models:/").strip("/")
    if "@" in rest:
        registered, _, alias = rest.partition("@")
        found = tracking.get(
            "registered-models/alias",
            f"alias {alias!r} of model {registered!r}",
            name=registered,
            alias=alias,
        )
        versions = [found.get("model_version", {})]
    elif "/" in rest:
        registered, _, number = rest.partition("/")
        if not number.isdigit():
            raise InvalidInputError(
                f"{source}: give models:/NAME/VERSION (a number) or models:/NAME@ALIAS; "
                "stages are not supported",
                field="source",
            )
        versions = [
            tracking.get(
                "model-versions/get",
                f"version {number} of model {registered!r}",
                name=registered,
                version=number,
            ).get("model_version", {})
        ]
    else:
        registered, versions = rest, _all_versions(tracking, rest)
        if not versions:
            raise NotFoundError(f"MLflow at {tracking.uri} has no versions of model {registered!r}")
    if not registered:
        raise InvalidInputError(f"{source} names no model: models:/NAME[/VERSION|@ALIAS]", field="source")
    target = name or registered
    models = []
    for version in sorted(versions, key=lambda v: int(v.get("version", 0))):
        number = str(version.get("version", ""))
        uri = tracking.get(
            "model-versions/get-download-uri",
            f"version {number} of model {registered!r}",
            name=registered,
            version=number,
        ).get("artifact_uri")
        if not uri:
            raise InvalidInputError(
                f"MLflow gives no artifact URI for {registered!r} version {number}", field="source"
            )
        folder = tracking.download(str(uri), workdir / f"v{number}")
        tags = {"mlflow_source": f"models:/{registered}/{number}", "mlflow_version": number}
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        if version.get("run_id"):
            _, metrics, params, run_tags = _run_details(tracking, str(version["run_id"]))
            tags |= {"mlflow_run_id": str(version["run_id"]), **run_tags}
        aliases = tuple(str(a) for a in version.get("aliases", []))
        for alias in aliases:
            try:
                validate_alias(alias)
            except InvalidInputError as exc:
                raise InvalidInputError(
                    f"MLflow alias {alias!r} of {registered!r} version {number} cannot be a Shipyard alias: "
                    f"{exc.message}",
                    field="alias",
                ) from exc
        model = _read_folder(folder, target, tags=tags)
        description = str(version.get("description") or f"imported from MLflow models:/{registered}/{number}")
        models.append(_with(model, metrics=metrics, params=params, aliases=aliases, description=description))
    return models


def _all_versions(tracking: _Tracking, registered: str) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = []
    token = None
    while True:
        params: dict[str, Any] = {"filter": f"name='{registered}'", "max_results": 200}
        if token:
            params["page_token"] = token
        page = tracking.get("model-versions/search", f"versions of model {registered!r}", **params)
        # Search results leave out aliases: each version is fetched on its own for them.
        versions += [
            tracking.get(
                "model-versions/get",
                f"version {v['version']} of model {registered!r}",
                name=registered,
                version=v["version"],
            ).get("model_version", {})
            for v in page.get("model_versions", [])
        ]
        token = page.get("next_page_token")
        if not token:
            return versions


def _with(model: MlflowModel, **changes: Any) -> MlflowModel:
    from dataclasses import replace

    return replace(model, **changes)


def _on_this_machine(uri: str) -> bool:
    """Whether the tracking server at `uri` listens on a loopback address."""
    host = urlparse(uri).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
