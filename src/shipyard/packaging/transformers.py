"""Hugging Face transformer folders at push (config + safetensors or an ONNX encoder + tokenizer):
weights, tokenizer and task checked, and the serving facts (pooling, labels, length limit) read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, UntrustedArtifactError
from shipyard.packaging.causal_lm import is_causal_lm, package_causal_lm
from shipyard.packaging.folder import inside, refuse_links
from shipyard.packaging.isolated import check_isolated
from shipyard.packaging.limits import check_folder_sizes
from shipyard.packaging.onnx import check_self_contained
from shipyard.packaging.onnx_memory import check_onnx_memory
from shipyard.packaging.packaged import Packaged
from shipyard.packaging.safetensors_header import check_safetensors
from shipyard.runtimes.base import one_line
from shipyard.runtimes.onnx import ONNX_FILE, onnx_session
from shipyard.runtimes.transformers import INPUT_NAME, TASKS, import_transformers
from shipyard.settings import PushSettings, RuntimeSettings
from shipyard.types import Signature, TensorSpec

_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise InvalidInputError(f"{path.name} is not valid JSON: {one_line(exc)}", field="path") from exc
    return data if isinstance(data, dict) else {}


def _detect_task(config: dict[str, Any]) -> str:
    arch = " ".join(config.get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return "text-classification"
    if "ForTokenClassification" in arch:
        return "token-classification"
    return "feature-extraction"


def _modules(folder: Path) -> list[dict[str, Any]]:
    """The sentence-transformers modules.json entries, each path checked to stay in the folder."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return []
    try:
        entries = json.loads(modules.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"modules.json is not valid JSON: {one_line(exc)}", field="path") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidInputError("modules.json must be a list of objects", field="path")
    for entry in entries:
        inside(folder, entry.get("path", ""), "the modules.json path")
    return entries


def _pooling(folder: Path) -> dict[str, Any]:
    """Sentence-transformers pooling (mean/cls/max) and whether embeddings are L2-normalized."""
    pooling: dict[str, Any] = {"mode": "mean", "normalize": False}
    for entry in _modules(folder):
        kind = str(entry.get("type", ""))
        if kind.endswith("Normalize"):
            pooling["normalize"] = True
        if kind.endswith("Pooling"):
            conf = inside(folder, entry.get("path", ""), "the modules.json path") / "config.json"
            if conf.is_file():
                settings = _read_json(conf)
                mode = settings.get("pooling_mode")  # sentence-transformers >= 5 writes this key
                if isinstance(mode, list):
                    if len(mode) != 1:
                        raise InvalidInputError(
                            f"pooling with several modes {mode} is not supported; use one of "
                            "mean, cls or max",
                            field="path",
                        )
                    mode = mode[0]
                if mode in ("mean", "cls", "max"):
                    pooling["mode"] = mode
                elif mode is not None:
                    raise InvalidInputError(f"pooling mode {mode!r} is not supported", field="path")
                elif settings.get("pooling_mode_cls_token"):
                    pooling["mode"] = "cls"
                elif settings.get("pooling_mode_max_tokens"):
                    pooling["mode"] = "max"
    return pooling


def _max_length(folder: Path, config: dict[str, Any], tokenizer: Any) -> int:
    st = folder / "sentence_bert_config.json"
    limit = int(config.get("max_position_embeddings") or 512)
    if st.is_file() and _read_json(st).get("max_seq_length"):
        return min(int(_read_json(st)["max_seq_length"]), limit)
    model_max = getattr(tokenizer, "model_max_length", limit) or limit
    return int(min(model_max, limit))


def package_folder(
    source: Path,
    dest: Path,
    *,
    trust: bool,
    task: str | None = None,
    truncate: bool = True,
    limits: PushSettings | None = None,
) -> Packaged:
    """Copy a Hugging Face model folder after checking weights, tokenizer and task."""
    limits = _check_files(source, limits or PushSettings())
    _modules(source)
    names = {p.name for p in source.iterdir()}
    onnx_backend = ONNX_FILE in names and not any(n in names for n in _SAFE_WEIGHTS)
    transformers = import_transformers(torch=not onnx_backend)
    # An ONNX graph is checked below, once the folder is in place.
    if not onnx_backend and not any(n in names for n in _SAFE_WEIGHTS):
        if any(n in names for n in _PICKLED_WEIGHTS) and not trust:
            raise UntrustedArtifactError(
                f"{source} holds its weights as pytorch_model.bin, a pickle that runs code when "
                "loaded; convert them to safetensors (save_pretrained(safe_serialization=True)) "
                "or push with --trust"
            )
        if not any(n in names for n in _PICKLED_WEIGHTS):
            raise InvalidInputError(
                f"{source} has config.json but no weights (model.safetensors)", field="path"
            )
    if not any((source / n).is_file() for n in _TOKENIZER_FILES):
        raise InvalidInputError(
            f"{source} has no tokenizer (expected one of {', '.join(_TOKENIZER_FILES)}); save the "
            "tokenizer into the folder with tokenizer.save_pretrained(folder)",
            field="path",
        )
    _check_contents(source, onnx_backend, limits)
    config = _read_json(source / "config.json")
    if task is None and not onnx_backend and is_causal_lm(config):  # a generative model
        return package_causal_lm(source, dest, config, limits)
    task = task or _detect_task(config)
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}", field="task")
    # symlinks=True: a link that appeared after the check is copied as a link, which the store
    # refuses, never as the file it points to.
    shutil.copytree(
        source, dest, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "README.md")
    )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(dest), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"the tokenizer in {source} cannot be loaded: {one_line(exc)}", field="path"
        ) from exc
    extra: dict[str, Any] = {
        "task": task,
        "max_length": _max_length(dest, config, tokenizer),
        "truncate": truncate,
        "vocab_size": len(tokenizer),
        "architecture": (config.get("architectures") or ["?"])[0],
    }
    outputs: list[TensorSpec] = []
    if task == "feature-extraction":
        extra["pooling"] = _pooling(dest)
        dim = int(config.get("hidden_size") or config.get("dim") or config.get("d_model") or -1)
        extra["dimension"] = dim
        outputs.append(TensorSpec("embedding", "FP32", (-1, dim)))
    elif task == "text-classification":
        labels = _labels(config)
        extra["labels"] = labels
        outputs += [TensorSpec("label", "BYTES", (-1,)), TensorSpec("scores", "FP32", (-1, len(labels)))]
    else:
        extra["labels"] = _labels(config)
        outputs.append(TensorSpec("entities", "BYTES", (-1,)))
    outputs.append(TensorSpec("tokens", "INT64", (-1,)))
    outputs.append(TensorSpec("truncated", "BOOL", (-1,)))  # the text was cut to max_length
    signature = Signature((TensorSpec(INPUT_NAME, "BYTES", (-1,)),), tuple(outputs))
    versions = {"transformers": transformers.__version__}
    if onnx_backend:
        import onnxruntime

        extra["onnx_inputs"] = _check_onnx_graph(dest / ONNX_FILE)
        versions["onnxruntime"] = onnxruntime.__version__
        return Packaged("transformers-onnx", "transformers", signature, versions, extra)
    import torch

    versions["torch"] = torch.__version__.split("+")[0]
    needs_trust = not any(n in names for n in _SAFE_WEIGHTS)
    return Packaged("transformers", "transformers", signature, versions, extra, needs_trust=needs_trust)


def _check_files(source: Path, limits: PushSettings) -> PushSettings:
    """Before any file is read: only regular files, each within its size limit."""
    refuse_links(source)
    check_folder_sizes(source, limits)
    return limits


def _check_contents(source: Path, onnx_backend: bool, limits: PushSettings) -> None:
    """Safetensors headers and the graph's own checks, then one isolated load of the graph and
    the tokenizer (native code that a crafted file could crash)."""
    for weights in sorted(source.rglob("*.safetensors")):
        check_safetensors(weights)
    checks: list[tuple[str, Path]] = []
    if onnx_backend:
        import onnx
        from google.protobuf.message import DecodeError

        graph = source / ONNX_FILE
        try:
            model = onnx.load_model(str(graph), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise InvalidInputError(
                f"{ONNX_FILE} in {source} cannot be parsed: {one_line(exc)}", field="path"
            ) from exc
        check_self_contained(model, graph)
        check_onnx_memory(model, limits)
        checks.append(("onnx", graph))
    if (source / "tokenizer.json").is_file():
        checks.append(("tokenizer", source / "tokenizer.json"))
    check_isolated(checks, limits)


def _check_onnx_graph(path: Path) -> list[str]:
    """The encoder's input names; the graph must take token ids and return hidden states or logits."""
    session = onnx_session(path, RuntimeSettings())
    inputs = [i.name for i in session.get_inputs()]
    unknown = [n for n in inputs if n not in _ONNX_INPUTS]
    if "input_ids" not in inputs or unknown:
        raise InvalidInputError(
            f"{ONNX_FILE} takes inputs {inputs}; a transformer graph must take input_ids (and "
            f"optionally {', '.join(_ONNX_INPUTS[1:])}) and nothing else",
            field="path",
        )
    return inputs


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]


def package_object(
    obj: Any,
    dest: Path,
    *,
    tokenizer: Any = None,
    task: str | None = None,
    truncate: bool = True,
    limits: PushSettings | None = None,
) -> Packaged:
    """Save an in-memory transformers model (+ tokenizer) or SentenceTransformer, then package."""
    staging = dest.parent / (dest.name + ".src")
    staging.mkdir()
    try:
        if type(obj).__name__ == "SentenceTransformer":
            obj.save(str(staging), safe_serialization=True)
        else:
            if tokenizer is None:
                raise InvalidInputError(
                    "pushing a transformers model needs its tokenizer: push(name, model, "
                    "tokenizer=tokenizer)",
                    field="tokenizer",
                )
            obj.save_pretrained(str(staging), safe_serialization=True)
            tokenizer.save_pretrained(str(staging))
        return package_folder(staging, dest, trust=False, task=task, truncate=truncate, limits=limits)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_transformers_object(obj: Any) -> bool:
    module = type(obj).__module__
    if module.startswith("sentence_transformers."):
        return hasattr(obj, "save")
    return module.startswith("transformers.") and hasattr(obj, "save_pretrained")
