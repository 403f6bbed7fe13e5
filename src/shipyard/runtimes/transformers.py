"""Hugging Face transformer models served on PyTorch or onnxruntime, CPU.

Text goes in as a BYTES tensor and is tokenized here, in the server. Tasks: sentence embeddings
(`feature-extraction`, honouring a sentence-transformers pooling/normalize config),
`text-classification` and `token-classification`. A batch is sorted by token length and run
in length buckets, so short sentences do not pay for long ones' padding.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.runtimes.onnx import ONNX_FILE
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion

TASKS = ("feature-extraction", "text-classification", "token-classification")
INPUT_NAME = "text"
_BUCKET_ROWS = 32  # rows per forward pass inside one merged batch
# transformers resolves its classes lazily and that is not thread-safe: the server loads several
# models at once, so class lookups go through this lock.
_IMPORT_LOCK = threading.Lock()


def import_transformers(*, torch: bool = True) -> Any:
    """transformers (and torch, unless the model runs on onnxruntime), with lazy names resolved."""
    try:
        with _IMPORT_LOCK:
            if torch:
                import torch as _torch  # noqa: F401
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


class TransformersRuntime:
    """Tokenize, run the encoder in length buckets, post-process in numpy. The encoder runs on
    PyTorch here and on onnxruntime in `TransformersOnnxRuntime`; everything else is shared."""

    can_batch = True

    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        transformers = import_transformers(torch=self._needs_torch)
        transformers.utils.logging.disable_progress_bar()  # no progress bars in server logs
        extra = version.extra
        self.signature = version.signature
        self.task = extra["task"]
        self.max_length = int(extra["max_length"])
        self.truncate = bool(extra.get("truncate", True))
        self.labels = list(extra.get("labels", []))
        self.pooling = extra.get("pooling", {"mode": "mean", "normalize": False})
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.vocab_size = len(self.tokenizer)
        self._pad = self.tokenizer.pad_token_id or 0
        # The special tokens around one sequence, for pre-tokenized input: encoding "" gives
        # e.g. [CLS] [SEP] for BERT, <s> </s> for RoBERTa, </s> for T5.
        template = list(self.tokenizer("")["input_ids"])
        starts = {self.tokenizer.cls_token_id, self.tokenizer.bos_token_id} - {None}
        split = 1 if template and template[0] in starts else 0
        self._prefix, self._suffix = template[:split], template[split:]
        self._load_encoder(transformers, path, version, settings)

    _needs_torch = True

    def _load_encoder(
        self, transformers: Any, path: Path, version: ModelVersion, settings: RuntimeSettings
    ) -> None:
        import torch

        if settings.intra_op_threads:
            torch.set_num_threads(settings.intra_op_threads)
        if settings.inter_op_threads:
            # Allowed once per process, before any parallel work; later loads keep the first.
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(settings.inter_op_threads)
        auto = {
            "feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification,
        }[self.task]
        self.model = auto.from_pretrained(
            str(path), local_files_only=True, use_safetensors=not version.trusted
        ).eval()
        self._torch = torch

    def encode(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Hidden states (feature extraction) or logits for one padded bucket."""
        torch = self._torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask))
        result = out.last_hidden_state if self.task == "feature-extraction" else out.logits
        return np.asarray(result.float().numpy())

    def token_ids(self, items: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
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
        # Not verbose: the tokenizer would warn that long texts "will result in indexing errors",
        # but the lengths are checked below (truncated or refused) before the model sees them.
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
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

    def buckets(self, ids_list: list[list[int]]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """Rows sorted by length in chunks: (row indices, padded ids, attention mask) each."""
        order = sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
        result = []
        for start in range(0, len(order), _BUCKET_ROWS):
            chunk = order[start : start + _BUCKET_ROWS]
            width = max(len(ids_list[i]) for i in chunk)
            input_ids = np.full((len(chunk), width), self._pad, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for r, i in enumerate(chunk):
                input_ids[r, : len(ids_list[i])] = ids_list[i]
                mask[r, : len(ids_list[i])] = 1
            result.append((chunk, input_ids, mask))
        return result

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs[INPUT_NAME].size == 0:
            return self._empty()
        ids_list, truncated = self.token_ids(inputs[INPUT_NAME])
        results: list[Any] = [None] * len(ids_list)
        for chunk, input_ids, mask in self.buckets(ids_list):
            rows = self._postprocess(self.encode(input_ids, mask), input_ids, mask)
            for i, row in zip(chunk, rows, strict=True):
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

    def _postprocess(self, out: np.ndarray, input_ids: np.ndarray, mask: np.ndarray) -> list[Any]:
        if self.task == "feature-extraction":
            return list(self._pool(out, mask))
        probs = _softmax(out)
        if self.task == "text-classification":
            return list(probs)
        special = set(self.tokenizer.all_special_ids)
        rows = []
        for r in range(len(input_ids)):
            entities = []
            for t in range(int(mask[r].sum())):
                token_id = int(input_ids[r, t])
                k = int(probs[r, t].argmax())
                label = self.labels[k] if k < len(self.labels) else str(k)
                if token_id in special or label == "O":
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

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        mode = self.pooling.get("mode", "mean")
        if mode == "cls":
            pooled = hidden[:, 0]
        elif mode == "max":
            pooled = np.where(mask[..., None] == 0, -1e9, hidden).max(axis=1)
        else:
            weights = mask[..., None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
        if self.pooling.get("normalize"):
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled

    def close(self) -> None:
        self.model = None


class TransformersOnnxRuntime(TransformersRuntime):
    """The same model with its encoder exported to ONNX (`model.onnx`): no PyTorch at serve time."""

    _needs_torch = False

    def _load_encoder(
        self, transformers: Any, path: Path, version: ModelVersion, settings: RuntimeSettings
    ) -> None:
        from shipyard.runtimes.onnx import onnx_session

        self.model = onnx_session(path / ONNX_FILE, settings)
        self._input_names = [i.name for i in self.model.get_inputs()]

    def feeds(self, input_ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs for one bucket (also what calibration and debugging feed it)."""
        given = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return {name: given[name] for name in self._input_names}

    def encode(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.run(None, self.feeds(input_ids, mask))[0])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))
