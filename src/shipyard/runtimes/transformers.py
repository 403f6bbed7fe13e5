"""Hugging Face transformer folders (config + safetensors + tokenizer) on PyTorch, CPU.

Text goes in as a BYTES tensor and is tokenized here, in the server. Tasks: sentence embeddings
(`feature-extraction`, honouring a sentence-transformers pooling/normalize config),
`text-classification` and `token-classification`. A batch is sorted by token length and run
in length buckets, so short sentences do not pay for long ones' padding.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.runtimes.base import Packaged
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion, Signature, TensorSpec

TASKS = ("feature-extraction", "text-classification", "token-classification")
INPUT_NAME = "text"
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
_BUCKET_ROWS = 32  # rows per forward pass inside one merged batch
# transformers resolves its classes lazily and that is not thread-safe: the server loads several
# models at once, so class lookups go through this lock.
_IMPORT_LOCK = threading.Lock()


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _import_transformers() -> Any:
    try:
        with _IMPORT_LOCK:
            import torch  # noqa: F401
            import transformers

            for name in (
                "AutoTokenizer",
                "AutoModel",
                "AutoModelForSequenceClassification",
                "AutoModelForTokenClassification",
            ):
                getattr(transformers, name)  # resolve the lazy attributes once, under the lock
    except ModuleNotFoundError as exc:
        extra = "torch" if exc.name == "torch" else "transformers"
        raise MissingDependencyError(exc.name or extra, "transformers", "Hugging Face models") from exc
    return transformers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path.name} is not valid JSON: {exc}", field="path") from exc
    return data if isinstance(data, dict) else {}


def _detect_task(config: dict[str, Any]) -> str:
    arch = " ".join(config.get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return "text-classification"
    if "ForTokenClassification" in arch:
        return "token-classification"
    return "feature-extraction"


def _pooling(folder: Path) -> dict[str, Any]:
    """Sentence-transformers pooling (mean/cls/max) and whether embeddings are L2-normalized."""
    modules = folder / "modules.json"
    pooling: dict[str, Any] = {"mode": "mean", "normalize": False}
    if not modules.is_file():
        return pooling
    entries = json.loads(modules.read_text())
    for entry in entries:
        kind = str(entry.get("type", ""))
        if kind.endswith("Normalize"):
            pooling["normalize"] = True
        if kind.endswith("Pooling"):
            conf = folder / entry.get("path", "") / "config.json"
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
    source: Path, dest: Path, *, trust: bool, task: str | None = None, truncate: bool = True
) -> Packaged:
    """Copy a Hugging Face model folder after checking weights, tokenizer and task."""
    transformers = _import_transformers()
    names = {p.name for p in source.iterdir()}
    if not any(n in names for n in _SAFE_WEIGHTS):
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
    config = _read_json(source / "config.json")
    task = task or _detect_task(config)
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}", field="task")
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "README.md"))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(dest), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"the tokenizer in {source} cannot be loaded: {exc}", field="path") from exc
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
    import torch

    versions = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    trusted = not any(n in names for n in _SAFE_WEIGHTS)
    signature = Signature((TensorSpec(INPUT_NAME, "BYTES", (-1,)),), tuple(outputs))
    return Packaged("transformers", "transformers", signature, versions, extra, trusted=trusted)


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]


def package_object(
    obj: Any, dest: Path, *, tokenizer: Any = None, task: str | None = None, truncate: bool = True
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
        return package_folder(staging, dest, trust=False, task=task, truncate=truncate)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_transformers_object(obj: Any) -> bool:
    module = type(obj).__module__
    if module.startswith("sentence_transformers."):
        return hasattr(obj, "save")
    return module.startswith("transformers.") and hasattr(obj, "save_pretrained")


class TransformersRuntime:
    can_batch = True

    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        transformers = _import_transformers()
        import torch

        if settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        if settings.inter_op_threads:
            # Allowed once per process, before any parallel work; later loads keep the first.
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(settings.inter_op_threads)
        transformers.utils.logging.disable_progress_bar()  # no progress bars in server logs
        extra = version.extra
        self.signature = version.signature
        self.task = extra["task"]
        self.max_length = int(extra["max_length"])
        self.truncate = bool(extra.get("truncate", True))
        self.labels = list(extra.get("labels", []))
        self.pooling = extra.get("pooling", {"mode": "mean", "normalize": False})
        auto = {
            "feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification,
        }[self.task]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = auto.from_pretrained(
            str(path), local_files_only=True, use_safetensors=not version.trusted
        ).eval()
        self.vocab_size = len(self.tokenizer)
        self._torch = torch
        # The special tokens around one sequence, for pre-tokenized input: encoding "" gives
        # e.g. [CLS] [SEP] for BERT, <s> </s> for RoBERTa, </s> for T5.
        template = list(self.tokenizer("")["input_ids"])
        starts = {self.tokenizer.cls_token_id, self.tokenizer.bos_token_id} - {None}
        split = 1 if template and template[0] in starts else 0
        self._prefix, self._suffix = template[:split], template[split:]

    def _token_ids(self, items: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
        texts: list[str] = []
        given: dict[int, list[int]] = {}
        for i, item in enumerate(items.ravel()):
            if isinstance(item, (list, tuple, np.ndarray)):  # pre-tokenized input (OpenAI token arrays)
                ids = [int(t) for t in item]
                bad = [t for t in ids if t < 0 or t >= self.vocab_size]
                if bad:
                    raise InvalidInputError(
                        f"input {i} has token id(s) {bad[:5]} outside the vocabulary "
                        f"(0-{self.vocab_size - 1})",
                        field="input",
                    )
                given[i] = ids
                texts.append("")
            elif isinstance(item, bytes):
                texts.append(item.decode("utf-8", "replace"))
            elif isinstance(item, str):
                texts.append(item)
            else:
                raise InvalidInputError(f"input {i} is a {type(item).__name__}, not text", field="input")
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        ids_list: list[list[int]] = []
        truncated = np.zeros(len(encoded), dtype=bool)
        for i, from_text in enumerate(encoded):
            ids = [*self._prefix, *given[i], *self._suffix] if i in given else from_text
            if len(ids) > self.max_length:
                if not self.truncate:
                    raise InvalidInputError(
                        f"input {i} has {len(ids)} tokens, over the model's limit of "
                        f"{self.max_length}; shorten it or serve with truncation on",
                        field="input",
                    )
                ids_list.append([*ids[: self.max_length - 1], ids[-1]])  # keep the closing token
                truncated[i] = True
            else:
                ids_list.append(ids)
        return ids_list, truncated

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs[INPUT_NAME].size == 0:
            return self._empty()
        ids_list, truncated = self._token_ids(inputs[INPUT_NAME])
        order = sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
        results: list[Any] = [None] * len(ids_list)
        for start in range(0, len(order), _BUCKET_ROWS):
            chunk = order[start : start + _BUCKET_ROWS]
            for i, row in zip(chunk, self._forward([ids_list[i] for i in chunk]), strict=True):
                results[i] = row
        counts = {"tokens": np.array([len(ids) for ids in ids_list], dtype=np.int64), "truncated": truncated}
        if self.task == "feature-extraction":
            return {"embedding": np.stack(results).astype(np.float32), **counts}
        if self.task == "text-classification":
            scores = np.stack(results).astype(np.float32)
            labels = np.empty(len(results), dtype=object)
            labels[:] = [
                self.labels[int(k)] if int(k) < len(self.labels) else str(k) for k in scores.argmax(1)
            ]
            return {"label": labels, "scores": scores, **counts}
        entities = np.empty(len(results), dtype=object)
        entities[:] = [json.dumps(r, ensure_ascii=False) for r in results]
        return {"entities": entities, **counts}

    def _empty(self) -> dict[str, np.ndarray]:
        """Zero rows in, zero rows out, with the signature's trailing shapes and dtypes."""
        from shipyard.tensors import numpy_dtype

        return {
            t.name: np.empty((0, *[max(d, 0) for d in t.shape[1:]]), dtype=numpy_dtype(t.datatype))
            for t in self.signature.outputs
        }

    def _forward(self, batch: list[list[int]]) -> list[Any]:
        torch = self._torch
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, ids in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, : len(ids)] = 1
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, attention_mask=mask)
        if self.task == "feature-extraction":
            return list(self._pool(out.last_hidden_state, mask).numpy())
        if self.task == "text-classification":
            return list(torch.softmax(out.logits, dim=-1).numpy())
        probs = torch.softmax(out.logits, dim=-1)
        rows = []
        for r, ids in enumerate(batch):
            entities = []
            for t, token_id in enumerate(ids):
                k = int(probs[r, t].argmax())
                label = self.labels[k] if k < len(self.labels) else str(k)
                if token_id in self.tokenizer.all_special_ids or label == "O":
                    continue
                entities.append(
                    {
                        "token": self.tokenizer.convert_ids_to_tokens(token_id),
                        "entity": label,
                        "score": round(float(probs[r, t, k]), 6),
                        "index": t,
                    }
                )
            rows.append(entities)
        return rows

    def _pool(self, hidden: Any, mask: Any) -> Any:
        torch = self._torch
        mode = self.pooling.get("mode", "mean")
        if mode == "cls":
            pooled = hidden[:, 0]
        elif mode == "max":
            pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(dim=1).values
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.pooling.get("normalize"):
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def close(self) -> None:
        self.model = None
