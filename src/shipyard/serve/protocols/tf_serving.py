"""TF Serving's REST API details for the V1 protocol (`v1.py`): signatures chosen by
`signature_name`, the columnar response (`outputs`), `{"b64": …}` bytes, `:classify`/`:regress`
on JSON `examples`, and model metadata (`signature_def`) in TF Serving's JSON shape.

A TensorFlow SavedModel pushed to Shipyard records its signatures under
`extra["tf_serving"]` (see `shipyard.packaging.tf_savedmodel`); any other model answers as one
`serving_default` predict signature made from its Shipyard signature.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.tensors import to_jsonable
from shipyard.types import ModelVersion, Signature

DEFAULT_SIGNATURE = "serving_default"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
_BYTES_SUFFIX = "_bytes"  # TF Serving encodes outputs named so as {"b64": …}
_DT = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BF16": "DT_BFLOAT16",
    "BYTES": "DT_STRING",
}


def signature_defs(version: ModelVersion) -> tuple[str, dict[str, Any]]:
    """The default signature's name and every signature_def of a version."""
    info = version.extra.get("tf_serving")
    if isinstance(info, dict) and isinstance(info.get("signature_def"), dict):
        return str(info["default_signature"]), info["signature_def"]
    return DEFAULT_SIGNATURE, {DEFAULT_SIGNATURE: _from_signature(version.signature)}


def is_tensorflow(version: ModelVersion) -> bool:
    return isinstance(version.extra.get("tf_serving"), dict)


def _from_signature(signature: Signature) -> dict[str, Any]:
    def tensors(specs: Any) -> dict[str, Any]:
        return {
            t.name: {"dtype": _DT.get(t.datatype, "DT_INVALID"), "shape": list(t.shape), "name": t.name}
            for t in specs
        }

    return {
        "method_name": PREDICT,
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
    }


def choose_signature(version: ModelVersion, body: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """The signature a request names (`signature_name`, default if absent or empty), its def, and
    whether it is the version's default signature."""
    default, defs = signature_defs(version)
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidInputError("'signature_name' must be a string", field="signature_name")
    name = name or default
    if name not in defs:
        known = ", ".join(repr(n) for n in defs)
        raise InvalidInputError(
            f"model {version.name!r} has no signature {name[:100]!r}; its signatures: {known}",
            field="signature_name",
        )
    return name, defs[name], name == default


def decode_b64(value: Any) -> Any:
    """Nested JSON with every `{"b64": "…"}` object replaced by its bytes."""
    if isinstance(value, list):
        return [decode_b64(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            text = value["b64"]
            if not isinstance(text, str):
                raise InvalidInputError('a {"b64": …} value must hold a base64 string', field="b64")
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInputError('a {"b64": …} value is not valid base64', field="b64") from exc
            try:  # onnxruntime's string tensors hold text: bytes reach the graph as UTF-8
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    'a {"b64": …} value decodes to bytes that are not UTF-8 text; the ONNX graph '
                    "Shipyard serves takes strings as text only",
                    field="b64",
                ) from exc
        return {k: decode_b64(v) for k, v in value.items()}
    return value


def serialized_examples(sig: dict[str, Any], body: dict[str, Any]) -> list[bytes]:
    """The serialized tf.Example protos of a `:predict` on a signature that parses them: rows
    (`instances`) or a column (`inputs`), each `{"b64": …}` or text."""
    alias = next(iter(sig["inputs"]))
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInputError('body must have exactly one of "instances" or "inputs"', field="body")
    field = "instances" if "instances" in body else "inputs"
    values = body[field]
    if isinstance(values, dict) and set(values) == {alias}:
        values = values[alias]
    if not isinstance(values, list) or not values:
        raise InvalidInputError(
            f'"{field}" must be a non-empty list of serialized tf.Example protos ({{"b64": …}})', field=field
        )
    out = []
    for value in values:
        item = value[alias] if isinstance(value, dict) and set(value) == {alias} else value
        if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
            try:
                out.append(base64.b64decode(item["b64"], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInputError('a {"b64": …} value is not valid base64', field="b64") from exc
        elif isinstance(item, str):
            out.append(item.encode())
        else:
            raise InvalidInputError(
                f'input {alias!r} takes serialized tf.Example protos: send each as {{"b64": …}}',
                field=alias,
            )
    return out


def _jsonable(name: str, arr: np.ndarray) -> Any:
    if (arr.dtype == object or arr.dtype.kind in "SU") and name.endswith(_BYTES_SUFFIX):
        encode = np.vectorize(
            lambda x: {"b64": base64.b64encode(x if isinstance(x, bytes) else str(x).encode()).decode()},
            otypes=[object],
        )
        return encode(arr).tolist() if arr.size else arr.tolist()
    return to_jsonable(arr)


def row_predictions(outputs: dict[str, np.ndarray]) -> Any:
    """`predictions`: one output's rows, or a dict of every output per row (all share axis 0)."""
    if len(outputs) == 1:
        name, arr = next(iter(outputs.items()))
        return _jsonable(name, arr)
    batches = {arr.shape[0] if arr.ndim else None for arr in outputs.values()}
    if len(batches) != 1 or None in batches:
        sizes = ", ".join(f"{k}: {list(v.shape)}" for k, v in outputs.items())
        raise InvalidInputError(
            f"the outputs do not share their first dimension ({sizes}), so they cannot be returned "
            'as rows; send the request in the columnar format ("inputs") instead',
            field="instances",
        )
    columns = {name: _jsonable(name, arr) for name, arr in outputs.items()}
    rows = int(next(iter(batches)) or 0)
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def columnar_outputs(outputs: dict[str, np.ndarray]) -> Any:
    """`outputs`: one output's value, or an object of output name → value."""
    if len(outputs) == 1:
        name, arr = next(iter(outputs.items()))
        return _jsonable(name, arr)
    return {name: _jsonable(name, arr) for name, arr in outputs.items()}


def example_features(sig: dict[str, Any], body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The dense features a classify/regress signature parses, built from JSON `examples` (and
    `context`, shared by every example) as TF Serving builds the tf.Example protos it feeds."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidInputError('"examples" must be a non-empty list of objects', field="examples")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidInputError('"context" must be an object of feature name → value', field="context")
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise InvalidInputError(
                f"example {i} must be an object of feature name → value", field="examples"
            )
        both = sorted(set(example) & set(context))
        if both:
            raise InvalidInputError(
                f"feature {both[0]!r} appears in both context and example {i}; a context feature "
                "must not appear in examples",
                field=both[0],
            )
    return {f["key"]: _feature(f, examples, context) for f in sig["features"]}


def _feature(spec: dict[str, Any], examples: list[dict[str, Any]], context: dict[str, Any]) -> np.ndarray:
    key, dtype, shape = spec["key"], spec["dtype"], [int(d) for d in spec["shape"]]
    size = math.prod(shape)
    rows = []
    for i, example in enumerate(examples):
        value = example.get(key, context.get(key))
        if value is None:
            if spec["default"] is None:
                raise InvalidInputError(
                    f"feature {key!r} ({dtype}) is required but example {i} does not have it",
                    field=key,
                )
            value = spec["default"]
        flat = decode_b64(value if isinstance(value, list) else [value])
        if any(isinstance(v, list) for v in flat):
            raise InvalidInputError(f"feature {key!r} must be a value or a flat list of values", field=key)
        if len(flat) != size:
            raise InvalidInputError(
                f"feature {key!r} of example {i} has {len(flat)} value(s), expected {size} (shape {shape})",
                field=key,
            )
        rows.append(_typed(key, dtype, flat))
    if dtype == "string":
        arr = np.empty((len(rows), size), dtype=object)
        for i, row in enumerate(rows):
            arr[i, :] = row
    else:
        arr = np.array(rows, dtype=np.float32 if dtype == "float32" else np.int64)
    return arr.reshape([len(rows), *shape])


def _typed(key: str, dtype: str, values: list[Any]) -> list[Any]:
    if dtype == "string":
        if not all(isinstance(v, (str, bytes)) for v in values):
            raise InvalidInputError(f"feature {key!r} holds text (bytes_list): send strings", field=key)
        return [v.encode() if isinstance(v, str) else v for v in values]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InvalidInputError(f"feature {key!r} holds numbers ({dtype}): send numbers", field=key)
    if dtype == "int64" and not all(float(v).is_integer() for v in values):
        raise InvalidInputError(f"feature {key!r} holds integers (int64_list), got fractions", field=key)
    return values


def require_method(name: str, sig: dict[str, Any], method: str, verb: str) -> None:
    if sig["method_name"] != method:
        raise InvalidInputError(
            f"signature {name!r} has method {sig['method_name']!r}, so it cannot answer :{verb} "
            f"(that needs {method!r}); call :predict, or name a {verb} signature in signature_name",
            field="signature_name",
        )


def classify_results(outputs: dict[str, np.ndarray]) -> list[list[list[Any]]]:
    """Per example, its [label, score] pairs (label "" without classes, score 0 without scores)."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    reference = scores if scores is not None else classes
    if reference is None:
        raise InvalidInputError(
            "the classify signature returns neither classes nor scores", field="signature_name"
        )
    grid = reference.reshape(reference.shape[0], -1)
    results = []
    for i in range(grid.shape[0]):
        pairs = []
        for j in range(grid.shape[1]):
            label = "" if classes is None else classes.reshape(grid.shape)[i, j]
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            score = 0.0 if scores is None else float(scores.reshape(grid.shape)[i, j])
            pairs.append([label, score])
        results.append(pairs)
    return results


def regress_results(outputs: dict[str, np.ndarray]) -> list[float]:
    values = outputs.get("outputs")
    if values is None or values.size != (values.shape[0] if values.ndim else 1):
        raise InvalidInputError(
            "the regress signature must return one value per example in 'outputs'", field="signature_name"
        )
    return [float(v) for v in values.reshape(-1)]


def metadata(version: ModelVersion) -> dict[str, Any]:
    """GetModelMetadataResponse as TF Serving prints it (int64 sizes as strings, empty fields kept)."""
    _, defs = signature_defs(version)

    def tensor(info: dict[str, Any]) -> dict[str, Any]:
        shape = info.get("shape")
        tensor_shape: dict[str, Any] = (
            {"dim": [], "unknown_rank": True}
            if shape is None
            else {"dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False}
        )
        return {"dtype": info["dtype"], "tensor_shape": tensor_shape, "name": info["name"]}

    signature_def = {
        name: {
            "inputs": {k: tensor(v) for k, v in sig["inputs"].items()},
            "outputs": {k: tensor(v) for k, v in sig["outputs"].items()},
            "method_name": sig["method_name"],
            "defaults": {},
        }
        for name, sig in defs.items()
    }
    return {
        "model_spec": {"name": version.name, "signature_name": "", "version": str(version.version)},
        "metadata": {"signature_def": {"signature_def": signature_def}},
    }
