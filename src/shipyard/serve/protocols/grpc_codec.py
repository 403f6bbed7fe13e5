"""Open Inference Protocol V2 over gRPC: protobuf messages to named arrays and back.

Pure functions, like `v2_codec` (whose checks and messages they share), so they are tested
without a server. Outputs always go in `raw_output_contents`, as Triton sends them: every
client reads them, and they carry FP16 and BYTES without a conversion per element.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import json_format

from shipyard.errors import InvalidInputError
from shipyard.serve.protocols import triton_config, v2_codec
from shipyard.serve.protocols.proto import inference_pb2 as pb
from shipyard.serve.protocols.v2_codec import V2Request
from shipyard.serve.shared_memory import BYTE_SIZE as SHM_BYTE_SIZE
from shipyard.serve.shared_memory import SystemSharedMemory
from shipyard.tensors import datatype_of
from shipyard.types import ModelVersion, Signature, TensorSpec

if TYPE_CHECKING:
    from shipyard.serve.dataplane import VersionStats

# The typed field of InferTensorContents for each datatype, and the numpy type its values become.
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "bool"),
    "INT8": ("int_contents", "int8"),
    "INT16": ("int_contents", "int16"),
    "INT32": ("int_contents", "int32"),
    "INT64": ("int64_contents", "int64"),
    "UINT8": ("uint_contents", "uint8"),
    "UINT16": ("uint_contents", "uint16"),
    "UINT32": ("uint_contents", "uint32"),
    "UINT64": ("uint64_contents", "uint64"),
    "FP32": ("fp32_contents", "float32"),
    "FP64": ("fp64_contents", "float64"),
    "BYTES": ("bytes_contents", "object"),
}
_SHARED_MEMORY = "shared_memory_region"


def _error(message: str, name: str) -> InvalidInputError:
    return InvalidInputError(message, field=name)


def parameters_of(params: Any) -> dict[str, Any]:
    """A protobuf parameter map as plain values (bool, int, float or str)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(value, choice)
    return out


def decode_request(
    request: pb.ModelInferRequest, model: ModelVersion, regions: SystemSharedMemory | None = None
) -> V2Request:
    """The request's inputs as arrays, checked against the model's signature (400 naming the
    problem); an input in a registered shared-memory region (`regions`) is read from there."""
    # Each walk over a repeated message field costs about a microsecond per element (upb makes
    # a wrapper for each), and this runs on every request: each field is read once.
    raw = list(request.raw_input_contents)
    inputs = [(t, t.parameters) for t in request.inputs]
    # Inputs in shared memory have no raw contents: the rest have one each, in order.
    sent = sum(1 for _, params in inputs if not params or _SHARED_MEMORY not in params)
    if raw and len(raw) != sent:
        raise _error(
            f"the request has {len(raw)} raw_input_contents for {sent} inputs; "
            "send one per input (but those in shared memory), in the order of the inputs",
            "raw_input_contents",
        )
    arrays: dict[str, np.ndarray] = {}
    index = 0
    for tensor, params in inputs:
        name = tensor.name
        spec = v2_codec.check_input(model.signature, name, tensor.datatype)
        if name in arrays:
            raise _error(f"input {name!r} is given twice", name)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise _error(f"input {name!r} needs a shape of non-negative integers", name)
        window = v2_codec.shared_window(regions, name, parameters_of(params)) if params else None
        if window is not None:
            arrays[name] = v2_codec.decode_binary(memoryview(window.read()), spec.datatype, shape, name)
        elif raw:
            if tensor.HasField("contents"):
                raise _error(
                    f"input {name!r} has typed contents, but the request also has raw_input_contents; "
                    "use one or the other for all inputs",
                    name,
                )
            arrays[name] = v2_codec.decode_binary(memoryview(raw[index]), spec.datatype, shape, name)
            index += 1
        else:
            arrays[name] = _decode_typed(tensor, spec, shape)
    outputs = None
    if request.outputs:
        outputs = [{"name": o.name, "parameters": parameters_of(o.parameters)} for o in request.outputs]
        for output in outputs:  # a region that is not there fails now, not after the model ran
            if output["parameters"]:
                v2_codec.shared_window(regions, output["name"], output["parameters"])
    params = parameters_of(request.parameters) if request.parameters else {}
    return V2Request(arrays, request.id or None, params, outputs)


def _decode_typed(tensor: Any, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = spec.name, spec.datatype
    field_dtype = _CONTENTS.get(datatype)
    if field_dtype is None:
        raise _error(f"input {name!r}: {datatype} has no typed contents; send it in raw_input_contents", name)
    field, dtype = field_dtype
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise _error(
            f"input {name!r} has {len(values)} elements in contents.{field}, but shape {list(shape)} "
            f"needs {count}",
            name,
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = [_text(v) for v in values]
        return arr.reshape(shape)
    arr = np.array(values, dtype=np.uint64 if datatype == "UINT64" else None)
    target = np.dtype(dtype)
    # int_contents and uint_contents are 32 bits wide: 300 given for an INT8 input must not wrap.
    if target.kind in "iu" and arr.size and target.itemsize < 4:
        bounds = np.iinfo(target)
        if arr.min() < bounds.min or arr.max() > bounds.max:
            raise _error(f"input {name!r}: a value in contents.{field} does not fit {datatype}", name)
    return arr.astype(target, copy=False).reshape(shape)


def _text(value: bytes) -> str | bytes:
    """A BYTES element as the HTTP decoder gives it: text when it is UTF-8, else the bytes."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def encode_response(
    request: V2Request,
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    classes: list[Any] | None = None,
    signature: Signature | None = None,
    regions: SystemSharedMemory | None = None,
) -> pb.ModelInferResponse:
    """The outputs the request asked for (all by default), each in `raw_output_contents`."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id or "")
    raw = []
    batched = v2_codec.batched_outputs(signature)
    for wanted in request.outputs or [{"name": n} for n in outputs]:
        name = wanted["name"]
        if name not in outputs:
            raise _error(
                f"unknown output {name[:40]!r}; the model's outputs are {', '.join(outputs)}", "outputs"
            )
        arr = outputs[name]
        k = (wanted.get("parameters") or {}).get("classification")
        if isinstance(k, int) and not isinstance(k, bool) and k > 0:
            arr = v2_codec.classify(arr, k, classes, batched=name in batched)
        datatype = datatype_of(arr.dtype)
        added = response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        blob = v2_codec.encode_bytes_elements(arr) if datatype == "BYTES" else v2_codec.le_bytes(arr)
        window = v2_codec.shared_window(regions, name, wanted.get("parameters") or {})
        if window is None:
            raw.append(blob)
            continue
        window.write(name, blob)
        added.parameters[_SHARED_MEMORY].string_param = window.region.name
        added.parameters[SHM_BYTE_SIZE].int64_param = len(blob)
        # An empty entry keeps each output at its own index, which clients read them by.
        raw.append(b"")
    response.raw_output_contents.extend(raw)
    return response


def model_statistics(stats: VersionStats) -> pb.ModelStatistics:
    """One version's statistics in Triton's shape (the HTTP body's twin)."""
    numbers = stats.statistics
    entry = pb.ModelStatistics(
        name=stats.name,
        version=str(stats.version),
        last_inference=numbers.last_inference_ms,
        inference_count=stats.rows,
        execution_count=stats.batches,
    )
    for phase, duration in numbers.inference_stats().items():
        getattr(entry.inference_stats, phase).CopyFrom(pb.StatisticDuration(**duration))
    for batch in numbers.batch_stats():
        added = entry.batch_stats.add(batch_size=batch["batch_size"])
        for phase in ("compute_input", "compute_infer", "compute_output"):
            getattr(added, phase).CopyFrom(pb.StatisticDuration(**batch[phase]))
    return entry


def model_metadata(name: str, versions: list[int], model: ModelVersion) -> pb.ModelMetadataResponse:
    def tensor(t: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)

    return pb.ModelMetadataResponse(
        name=name,
        versions=[str(v) for v in versions],
        platform=triton_config.platform(model.format)[0],
        inputs=[tensor(t) for t in model.signature.inputs],
        outputs=[tensor(t) for t in model.signature.outputs],
    )


def model_config(
    name: str,
    model: ModelVersion,
    max_batch_size: int,
    max_delay_s: float,
    instances: int = 1,
    preferred_batch_sizes: tuple[int, ...] = (),
) -> pb.ModelConfig:
    """Triton's model configuration, the same as HTTP's (see `triton_config`)."""
    config = triton_config.model_config(
        name, model, max_batch_size, max_delay_s, instances, preferred_batch_sizes
    )
    message = pb.ModelConfig()
    json_format.ParseDict(config, message)
    return message
