"""Triton model repositories: each ONNX model's version folders as Shipyard versions.

A repository is a folder of model folders; a model folder holds `config.pbtxt` and numbered
version folders, each with the model file. Everything is read and checked before anything is
stored (`read_repository`), so a repository with one bad version imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import InvalidInputError
from shipyard.types import Signature, TensorSpec, validate_name

if TYPE_CHECKING:
    from shipyard.registry import Registry
    from shipyard.settings import PushSettings
    from shipyard.types import ModelVersion

CONFIG = "config.pbtxt"
ONNX_PLATFORM, ONNX_BACKEND = "onnxruntime_onnx", "onnxruntime"
DEFAULT_ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class TritonVersion:
    """One version folder: its number in Triton, its model file and that file's signature."""

    number: int
    path: Path
    signature: Signature


@dataclass(frozen=True)
class TritonModel:
    """One model folder, read and checked: what `import_repository` pushes."""

    name: str
    folder: Path
    platform: str
    versions: tuple[TritonVersion, ...]
    serving: dict[str, Any] = field(default_factory=dict)


def read_repository(path: Path, limits: PushSettings | None = None) -> list[TritonModel]:
    """Every model of the repository at `path` (or the one model folder `path`), checked, each
    model file also against the push `limits` (size, self-contained, tensor sizes)."""
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise InvalidInputError(
            f"{path} {what}: give a Triton model repository or model folder", field="path"
        )
    if (path / CONFIG).exists():
        return [read_model(path, limits)]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and all(p.name.isdigit() for p in folders):  # version folders: a model without its config
        raise InvalidInputError(f"{path / CONFIG} is missing: a Triton model folder needs one", field="path")
    if not folders:
        raise InvalidInputError(
            f"{path} is not a Triton model repository: it holds no model folders and no {CONFIG}",
            field="path",
        )
    return [read_model(folder, limits) for folder in folders]


def read_model(folder: Path, limits: PushSettings | None = None) -> TritonModel:
    """One model folder: its config parsed, its platform, versions and tensors checked."""
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise InvalidInputError(
            f"{config_path} is missing: every Triton model folder needs one", field="path"
        )
    config = parse_config(config_path)
    name = config.name or folder.name
    if config.name and config.name != folder.name:
        raise InvalidInputError(
            f"{config_path} names the model {config.name!r} but its folder is {folder.name!r}; "
            "Triton needs them equal",
            field="path",
        )
    try:
        validate_name(name)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"Triton model {name!r} cannot keep its name in Shipyard: {exc.message}; rename its folder "
            "(and the name in config.pbtxt)",
            field="path",
        ) from exc
    platform = _check_platform(config, config_path)
    if config.max_batch_size < 0:
        raise InvalidInputError(f"{config_path}: max_batch_size is {config.max_batch_size}; 0 or more")
    file_name = config.default_model_filename or DEFAULT_ONNX_FILE
    numbers = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if not numbers:
        raise InvalidInputError(
            f"{folder} has no version folders: Triton's layout is {folder.name}/1/{file_name}", field="path"
        )
    versions = []
    for number in numbers:
        model_file = folder / str(number) / file_name
        signature = onnx_signature(model_file, f"Triton model {name!r} version {number}", limits)
        _check_tensors(config, signature, f"Triton model {name!r} version {number}", model_file.name)
        versions.append(TritonVersion(number, model_file, signature))
    return TritonModel(name, folder, platform, tuple(versions), serving_options(config))


def parse_config(path: Path) -> Any:
    """`config.pbtxt` as Triton's ModelConfig; a syntax error names its line."""
    from google.protobuf import text_format

    from shipyard.importers.proto import triton_model_config_pb2 as pb

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not UTF-8 text: {exc.reason}", field="path") from exc
    config = pb.ModelConfig()
    try:
        # Fields Triton has and Shipyard does not read (optimization, warmup, parameters, …) are
        # skipped, so a real config with settings for other backends still parses.
        text_format.Parse(text, config, allow_unknown_field=True)
    except text_format.ParseError as exc:
        where = f"line {exc.GetLine()}" if exc.GetLine() else "parse"
        reason = str(exc).split(" : ", 1)[-1]
        raise InvalidInputError(f"{path}, {where}: {reason}", field="path") from exc
    return config


def serving_options(config: Any) -> dict[str, Any]:
    """Triton's batching settings as the serving options stored with each version.

    `max_batch_size: 0` (no batching in Triton) runs each request alone; without
    `dynamic_batching` Triton holds no request back, hence no delay."""
    options: dict[str, Any] = {"max_batch_size": config.max_batch_size or 1}
    batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
    options["max_batch_delay_ms"] = batching.max_queue_delay_microseconds / 1000 if batching else 0.0
    if batching and batching.preferred_batch_size:
        options["preferred_batch_sizes"] = sorted(set(batching.preferred_batch_size))
    return options


def import_repository(registry: Registry, path: Path, *, actor: str | None = None) -> list[ModelVersion]:
    """Push every version of every model at `path`, in version order, or nothing.

    All is checked first; should a push still fail (a full disk), the versions this call
    pushed are removed again, so the registry is as it was."""
    models = read_repository(path, registry.settings.push)
    pushed: list[ModelVersion] = []
    try:
        for model in models:
            for version in model.versions:
                pushed.append(
                    registry.push(
                        model.name,
                        version.path,
                        serving=model.serving,
                        tags={"source": "triton", "triton_version": str(version.number)},
                        description=f"imported from Triton model repository {model.folder}",
                        actor=actor,
                    )
                )
    except BaseException:
        for done in reversed(pushed):
            registry.remove(done.ref, force=True, actor=actor)
        raise
    return pushed


def _check_platform(config: Any, config_path: Path) -> str:
    if config.platform and config.platform != ONNX_PLATFORM:
        raise InvalidInputError(
            f"{config_path}: platform {config.platform} is not supported: only ONNX models import "
            f"(platform {ONNX_PLATFORM} or backend {ONNX_BACKEND})",
            field="path",
        )
    if config.backend and config.backend != ONNX_BACKEND:
        raise InvalidInputError(
            f"{config_path}: backend {config.backend} is not supported: only ONNX models import "
            f"(platform {ONNX_PLATFORM} or backend {ONNX_BACKEND})",
            field="path",
        )
    if not config.platform and not config.backend:
        raise InvalidInputError(
            f"{config_path} names no platform or backend: only ONNX models import; "
            f'add backend: "{ONNX_BACKEND}" if the model is ONNX',
            field="path",
        )
    scheduling = config.WhichOneof("scheduling_choice")
    if scheduling == "sequence_batching":
        raise InvalidInputError(
            f"{config_path}: sequence_batching (a stateful model) is not supported; Shipyard serves "
            "each request on its own",
            field="path",
        )
    return ONNX_PLATFORM


def onnx_signature(model_file: Path, where: str, limits: PushSettings | None) -> Signature:
    """The graph's signature as a push would record it, after the checks a push makes first."""
    from shipyard.packaging.formats import detect_file
    from shipyard.packaging.limits import check_file_size
    from shipyard.packaging.onnx import check_self_contained
    from shipyard.packaging.onnx_memory import check_onnx_memory
    from shipyard.runtimes.onnx import onnx_session, onnx_signature
    from shipyard.settings import PushSettings, RuntimeSettings

    limits = limits or PushSettings()
    if not model_file.is_file():
        raise InvalidInputError(f"{where}: {model_file} is missing", field="path")
    try:
        check_file_size(model_file, limits)
        detected = detect_file(model_file)
        if detected.format != "onnx":
            raise InvalidInputError(f"{model_file} is a {detected.format} file, not ONNX", field="path")
        check_self_contained(detected.onnx_model, model_file)
        check_onnx_memory(detected.onnx_model, limits)
        return onnx_signature(onnx_session(model_file, RuntimeSettings()))
    except InvalidInputError as exc:  # and its kin (PayloadTooLarge): the same constructor
        raise type(exc)(f"{where}: {exc.message}", field=exc.field) from exc


def _data_type(spec: TensorSpec) -> str:
    return "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"


def _check_tensors(config: Any, signature: Signature, where: str, file_name: str) -> None:
    """Each tensor config.pbtxt lists against the graph: name, data type and dims (which leave out
    the batch dimension when max_batch_size > 0). A dynamic graph dimension fits any size."""
    from shipyard.importers.proto import triton_model_config_pb2 as pb

    batched = config.max_batch_size > 0
    for kind, listed, actual in (
        ("input", config.input, signature.inputs),
        ("output", config.output, signature.outputs),
    ):
        by_name = {t.name: t for t in actual}
        for tensor in listed:
            spec = by_name.get(tensor.name)
            if spec is None:
                names = ", ".join(sorted(by_name)) or "none"
                raise InvalidInputError(
                    f"{where}: {kind} {tensor.name!r} of {CONFIG} is not in {file_name} "
                    f"(its {kind}s: {names})",
                    field=kind,
                )
            if tensor.HasField("reshape"):
                raise InvalidInputError(
                    f"{where}: {kind} {tensor.name!r} has a reshape, which Shipyard does not apply; "
                    "export the model with the shape clients send",
                    field=kind,
                )
            declared = pb.DataType.Name(tensor.data_type)
            if declared != _data_type(spec):
                raise InvalidInputError(
                    f"{where}: {kind} {tensor.name!r} is {declared} in {CONFIG} but "
                    f"{_data_type(spec)} in {file_name}",
                    field=kind,
                )
            _check_dims(kind, tensor.name, list(tensor.dims), spec.shape, batched, where, file_name)
        if kind == "input" and listed:
            missing = sorted(set(by_name) - {t.name for t in listed})
            if missing:
                raise InvalidInputError(
                    f"{where}: input {missing[0]!r} of {file_name} is missing from {CONFIG}", field=kind
                )


def _check_dims(
    kind: str, name: str, dims: list[int], shape: tuple[int, ...], batched: bool, where: str, file_name: str
) -> None:
    graph = list(shape)
    if batched:
        if not graph or graph[0] != -1:
            raise InvalidInputError(
                f"{where}: {kind} {name!r} has no dynamic batch dimension in {file_name} (shape {graph}), "
                f"but max_batch_size > 0 in {CONFIG} needs one; set max_batch_size: 0",
                field=kind,
            )
        graph = graph[1:]
    fits = len(dims) == len(graph) and all(g in (-1, d) or d == -1 for d, g in zip(dims, graph, strict=True))
    if not fits:
        note = " after the batch dimension" if batched else ""
        raise InvalidInputError(
            f"{where}: {kind} {name!r} has dims {dims} in {CONFIG} but {graph}{note} in {file_name}",
            field=kind,
        )
