"""TFLite flatbuffers on the LiteRT interpreter (`ai-edge-litert`): data only, no code runs.

An interpreter has fixed tensor shapes. A batch of a new size resizes the inputs and
reallocates (the last shapes are cached, so a steady batch size costs nothing); a model that
cannot be resized (e.g. a Reshape to a constant batch of 1) runs row by row instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError, NotReadyError
from shipyard.runtimes.base import one_line
from shipyard.settings import RuntimeSettings
from shipyard.tensors import datatype_of
from shipyard.types import ModelVersion, Signature, TensorSpec

TFLITE_FILE = "model.tflite"
PACKAGE = "ai-edge-litert"

# What LiteRT raises for a model, shape or value it cannot handle (it has no typed errors).
_LITERT_ERRORS = (ValueError, RuntimeError, TypeError)


def interpreter_class() -> Any:
    """LiteRT's Interpreter class, or a clear error naming the extra that installs it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(PACKAGE, "tflite", "TFLite models") from exc
    return Interpreter


def load_interpreter(path: Path, settings: RuntimeSettings, label: str | None = None) -> Any:
    """A LiteRT interpreter for `path` with its tensors allocated, or InvalidInputError naming
    `label` (the file the user pushed) or the file's own name."""
    cls = interpreter_class()
    try:
        interpreter = cls(model_path=str(path), num_threads=settings.intra_op_threads or None)
        interpreter.allocate_tensors()
    except _LITERT_ERRORS as exc:  # e.g. "The model is not a valid Flatbuffer buffer"
        raise InvalidInputError(
            f"LiteRT cannot load {label or path.name}: a damaged or truncated TFLite file, or one "
            f"using ops LiteRT does not have ({one_line(exc)})",
            field="path",
        ) from exc
    return interpreter


def _names(details: Sequence[dict[str, Any]], prefix: str) -> list[str]:
    """Tensor names, with `input_0`-style names where the file has none or repeats one."""
    names = [str(d.get("name") or "") for d in details]
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"{prefix}_{i}" for i in range(len(details))]


def _spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    try:
        datatype = datatype_of(np.dtype(detail["dtype"]))
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"TFLite tensor {name!r} has a type Shipyard cannot serve ({exc.message})", field="path"
        ) from exc
    shape = [int(d) for d in detail["shape"]]
    signature = [int(d) for d in detail.get("shape_signature", [])]
    if len(signature) == len(shape):  # absent in files converted without dynamic dimensions
        shape = [-1 if d < 0 else d for d in signature]
    return TensorSpec(name, datatype, tuple(shape))


def tflite_signature(interpreter: Any) -> Signature:
    """The inputs and outputs an interpreter declares (-1 where a dimension is dynamic)."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    return Signature(
        tuple(_spec(n, d) for n, d in zip(_names(inputs, "input"), inputs, strict=True)),
        tuple(_spec(n, d) for n, d in zip(_names(outputs, "output"), outputs, strict=True)),
    )


class TfliteRuntime:
    can_batch = True

    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        self._path = path / TFLITE_FILE
        self._settings = settings
        self._interpreter: Any = load_interpreter(self._path, settings)
        self.signature = tflite_signature(self._interpreter)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        self._input_index = [int(d["index"]) for d in inputs]
        self._input_dtype = [np.dtype(d["dtype"]) for d in inputs]
        self._output_index = [int(d["index"]) for d in outputs]
        # The shapes the interpreter was built with, and those it is allocated for now.
        self._initial = [tuple(int(x) for x in d["shape"]) for d in inputs]
        self._shapes = list(self._initial)
        # Inputs whose batch axis the file fixes (no -1 anywhere): resizing them is a guess.
        self._fixed = all(-1 not in t.shape for t in self.signature.inputs)
        self._row_by_row = False  # set once a batch failed that its rows, one by one, passed

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._interpreter is None:
            raise NotReadyError(f"the TFLite model {self._path.parent.name} was closed")
        arrays = [
            _as_input(inputs[spec.name], dtype)
            for spec, dtype in zip(self.signature.inputs, self._input_dtype, strict=True)
        ]
        rows = _rows(arrays)
        if rows is None:  # scalar inputs: no batch axis to split
            return self._named(self._run(arrays))
        if rows == 0:
            return self._named(self._empty())
        if rows == 1 or [a.shape for a in arrays] == self._shapes:
            return self._named(self._run(arrays))
        if not self._row_by_row:
            outputs = self._try_batch(arrays, rows)
            if outputs is not None:
                return self._named(outputs)
        outputs = self._rows_one_by_one(arrays, rows)
        # Each row ran where the whole batch would not: the batch size was the problem.
        self._row_by_row = True
        return self._named(outputs)

    def close(self) -> None:
        self._interpreter = None

    def _named(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {spec.name: v for spec, v in zip(self.signature.outputs, values, strict=True)}

    def _resize(self, shapes: list[tuple[int, ...]]) -> None:
        """Allocate the interpreter for `shapes` unless it already is (raises LiteRT's error)."""
        if shapes == self._shapes:
            return
        self._shapes = []  # unknown until allocation succeeds
        for index, shape in zip(self._input_index, shapes, strict=True):
            self._interpreter.resize_tensor_input(index, list(shape))
        self._interpreter.allocate_tensors()
        self._shapes = list(shapes)

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        try:
            self._resize([a.shape for a in arrays])
            return self._invoke(arrays)
        except _LITERT_ERRORS as exc:
            self._recover()
            raise InvalidInputError(f"LiteRT rejected the input: {one_line(exc)}") from exc

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter
        for index, array in zip(self._input_index, arrays, strict=True):
            interpreter.set_tensor(index, array)
        interpreter.invoke()  # releases the GIL while the kernels run
        return [interpreter.get_tensor(i) for i in self._output_index]  # get_tensor copies

    def _try_batch(self, arrays: list[np.ndarray], rows: int) -> list[np.ndarray] | None:
        """The outputs of one resized run, or None when this model must run row by row."""
        try:
            self._resize([a.shape for a in arrays])
            outputs = self._invoke(arrays)
        except _LITERT_ERRORS:
            self._recover()
            return None
        if self._fixed and any(o.ndim == 0 or o.shape[0] != rows for o in outputs):
            # A fixed-shape model resized without complaint but did not compute per row.
            self._recover()
            return None
        return outputs

    def _rows_one_by_one(self, arrays: list[np.ndarray], rows: int) -> list[np.ndarray]:
        results = [self._run([a[i : i + 1] for a in arrays]) for i in range(rows)]
        return [np.concatenate(parts, axis=0) for parts in zip(*results, strict=True)]

    def _empty(self) -> list[np.ndarray]:
        details = self._interpreter.get_output_details()
        return [np.zeros((0, *(int(x) for x in d["shape"][1:])), dtype=d["dtype"]) for d in details]

    def _recover(self) -> None:
        """After a failed resize or run: back to the shapes the file declares (or a new one)."""
        try:
            self._resize(self._initial)
        except _LITERT_ERRORS:
            self._interpreter = load_interpreter(self._path, self._settings)
            self._shapes = list(self._initial)


def _as_input(value: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """A C-contiguous array of the tensor's dtype (text is passed to LiteRT as it is)."""
    if dtype.kind in "OSU":
        return np.asarray(value)
    return np.ascontiguousarray(value, dtype=dtype)


def _rows(arrays: list[np.ndarray]) -> int | None:
    """The batch size (axis 0) shared by the inputs, or None if any input is a scalar."""
    if not arrays or any(a.ndim == 0 for a in arrays):
        return None
    return int(arrays[0].shape[0])
