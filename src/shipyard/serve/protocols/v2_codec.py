"""Open Inference Protocol V2 wire format: JSON tensors and the binary-tensor extension.

Pure functions from bytes to named arrays and back; no I/O, so they are tested directly. The one
exception: a tensor placed in a registered shared-memory region is copied from (or into) its
mapping, which the caller passes in (`regions`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from shipyard.errors import InvalidInputError
from shipyard.serve.shared_memory import BYTE_SIZE as SHM_BYTE_SIZE
from shipyard.serve.shared_memory import REGION as SHM_REGION
from shipyard.serve.shared_memory import SystemSharedMemory
from shipyard.serve.shared_memory import Window as SharedWindow
from shipyard.tensors import cast_array, datatype_of
from shipyard.types import DATATYPES, Signature, TensorSpec

_LITTLE = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "BOOL": "u1",
}


@dataclass
class V2Request:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] | None = None  # requested outputs, or None for all


_EXCERPT = 40  # characters of a client's own text an error shows back


def _error(message: str, name: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, field=name or "inputs")


def _shown(value: object) -> str:
    """A value the client sent, for an error message: escaped, and cut to a short excerpt."""
    text = repr(value)
    return text if len(text) <= _EXCERPT else f"{text[:_EXCERPT]}..."


def decode_bytes_elements(buf: memoryview, count: int, name: str) -> np.ndarray:
    """BYTES tensor: each element is a 4-byte little-endian length then the raw bytes."""
    out: list[Any] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(buf):
            raise _error(f"binary data of input {name!r} ends inside a BYTES length prefix", name)
        (length,) = struct.unpack_from("<I", buf, offset)
        offset += 4
        if offset + length > len(buf):
            raise _error(f"binary data of input {name!r} ends inside a BYTES element", name)
        raw = bytes(buf[offset : offset + length])
        offset += length
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(raw)
    if offset != len(buf):
        raise _error(f"binary data of input {name!r} has {len(buf) - offset} bytes left over", name)
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.ravel():
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    # bool is an int subclass: `true` must not pass as a dimension of 1
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise _error(f"input {name!r} needs a 'shape' list of non-negative integers", name)
    return tuple(value)


def decode_binary(buf: memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(buf, count, name).reshape(shape)
    if datatype == "BF16":
        raise _error(f"input {name!r}: BF16 is not supported by this server", name)
    dtype = np.dtype(_LITTLE[datatype])
    if len(buf) != count * dtype.itemsize:
        raise _error(
            f"input {name!r} has {len(buf)} bytes of binary data, but shape {list(shape)} of "
            f"{datatype} needs {count * dtype.itemsize}",
            name,
        )
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return arr.astype(bool) if datatype == "BOOL" else arr


def _decode_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        arr = np.array(data, dtype=object) if datatype == "BYTES" else np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise _error(f"input {name!r}: 'data' is ragged nesting: {exc}", name) from exc
    # The same checks as every other protocol: no text for numbers, no silent truncation.
    arr = cast_array(arr, TensorSpec(name, datatype, shape))
    if arr.size != math.prod(shape):
        raise _error(
            f"input {name!r} has {arr.size} elements, but shape {list(shape)} needs {math.prod(shape)}",
            name,
        )
    return arr.reshape(shape)


def check_input(signature: Signature, name: str, datatype: Any) -> TensorSpec:
    """The model's spec of input `name`; 400 unless it has one, of datatype `datatype`."""
    spec = signature.input(name)
    if spec is None:
        expected = ", ".join(t.describe() for t in signature.inputs)
        raise _error(f"unknown input {_shown(name)}; the model expects {expected}", name[:_EXCERPT])
    if datatype not in DATATYPES:
        raise _error(f"input {name!r} has unknown datatype {_shown(datatype)}", name)
    if datatype != spec.datatype:
        raise _error(f"input {name!r} has datatype {datatype}, but the model expects {spec.describe()}", name)
    return spec


def decode_request(
    body: bytes, header_length: int | None, signature: Signature, regions: SystemSharedMemory | None = None
) -> V2Request:
    """Parse a V2 infer request (JSON, or JSON header + binary tensors) against a signature;
    a tensor may lie in a registered shared-memory region instead (`regions`)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise _error(
                f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)",
                "inference-header-content-length",
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        obj = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _error(f"request JSON is malformed: {exc}", "body") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list):
        raise _error("request JSON must be an object with an 'inputs' list", "inputs")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in obj["inputs"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _error("each input needs a 'name'", "inputs")
        name = entry["name"]
        datatype = check_input(signature, name, entry.get("datatype")).datatype
        shape = _shape(entry.get("shape"), name)
        params = entry.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        window = shared_window(regions, name, params)
        if window is not None:
            inputs[name] = decode_binary(memoryview(window.read()), datatype, shape, name)
        elif size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise _error(
                    f"input {name!r} declares binary_data_size {size}, but only "
                    f"{len(binary) - offset} bytes of binary data follow",
                    name,
                )
            inputs[name] = decode_binary(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in entry:
            inputs[name] = _decode_json(entry["data"], datatype, shape, name)
        else:
            raise _error(f"input {name!r} has neither 'data' nor binary_data_size", name)
    if offset != len(binary):
        raise _error(f"{len(binary) - offset} bytes of binary data follow the inputs unused", "body")
    outputs = obj.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list)
        and all(
            isinstance(o, dict)
            and isinstance(o.get("name"), str)
            and isinstance(o.get("parameters") or {}, dict)
            for o in outputs
        )
    ):
        raise _error(
            "'outputs' must be a list of objects with a string 'name' and optional 'parameters' object",
            "outputs",
        )
    for output in outputs or []:  # a region that is not there fails now, not after the model ran
        shared_window(regions, output["name"], output.get("parameters") or {})
    request_id = obj.get("id")
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _error("'parameters' must be an object", "parameters")
    return V2Request(inputs, None if request_id is None else str(request_id), parameters, outputs)


def shared_window(regions: SystemSharedMemory | None, name: str, params: Any) -> SharedWindow | None:
    """Where a tensor's parameters place it in shared memory, checked; None when they do not."""
    if not isinstance(params, dict) or SHM_REGION not in params:
        return None
    if regions is None:
        raise _error(f"tensor {name!r}: shared memory is not supported here", SHM_REGION)
    return regions.window(name, params)


def classify(arr: np.ndarray, k: int, labels: list[Any] | None, *, batched: bool = False) -> np.ndarray:
    """Classification extension: top-k 'score:index[:label]' strings per row.

    Axis 0 is the batch when the array has more than one dimension, or when `batched` (a
    one-dimensional output whose spec starts with the batch dimension: one score per row);
    otherwise the whole tensor is one row, as Triton classifies an unbatched output.
    """
    if arr.dtype.kind not in "biuf":
        raise _error("classification needs a numeric output (scores), not text", "outputs")
    # explicit row width: -1 cannot be inferred when there are no rows
    if arr.ndim > 1 or (batched and arr.ndim == 1):
        rows = arr.reshape(arr.shape[0], math.prod(arr.shape[1:]))
    else:
        rows = arr.reshape(1, -1)
    top = np.argsort(-rows, axis=1)[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r, idx in enumerate(top):
        for c, i in enumerate(idx):
            label = f":{labels[i]}" if labels is not None and i < len(labels) else ""
            out[r, c] = f"{rows[r, i]:g}:{i}{label}"
    return out


def batched_outputs(signature: Signature | None) -> frozenset[str]:
    """The outputs whose first dimension is the batch (-1), which classification keeps."""
    if signature is None:
        return frozenset()
    return frozenset(t.name for t in signature.outputs if t.shape[:1] == (-1,))


def encode_response(
    request: V2Request,
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    classes: list[Any] | None = None,
    signature: Signature | None = None,
    regions: SystemSharedMemory | None = None,
) -> tuple[bytes, int | None]:
    """(body, JSON header length when binary outputs follow, else None). An output asked for in
    a shared-memory region is written there, and the body says only where and how many bytes."""
    default_binary = request.parameters.get("binary_data_output", False) is True
    batched = batched_outputs(signature)
    wanted = request.outputs
    if wanted is None:
        wanted = [{"name": n} for n in outputs]
    entries = []
    blobs: list[bytes] = []
    for spec in wanted:
        name = spec["name"]
        if name not in outputs:
            raise _error(
                f"unknown output {_shown(name)}; the model's outputs are {', '.join(outputs)}", "outputs"
            )
        params = spec.get("parameters") or {}
        arr = outputs[name]
        k = params.get("classification")
        if isinstance(k, int) and k > 0:
            arr = classify(arr, k, classes, batched=name in batched)
        datatype = datatype_of(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        window = shared_window(regions, name, params)
        if window is not None:
            blob = encode_bytes_elements(arr) if datatype == "BYTES" else le_bytes(arr)
            window.write(name, blob)
            entry["parameters"] = {SHM_REGION: window.region.name, SHM_BYTE_SIZE: len(blob)}
        elif params.get("binary_data", default_binary):
            blob = encode_bytes_elements(arr) if datatype == "BYTES" else le_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [
                x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()
            ]
        else:
            entry["data"] = np.ascontiguousarray(arr).ravel()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def le_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8).tobytes()
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
