"""Triton's model configuration of a served version, as plain data for HTTP and gRPC alike.

HTTP answers it as JSON and gRPC parses it into `ModelConfig`, so both give the same answer.
"""

from __future__ import annotations

from typing import Any

from shipyard.types import ModelVersion, TensorSpec

# Triton's (platform, backend) for the formats a Triton backend also runs; the rest run in
# Python here, which Triton's clients know as its `python` backend.
_PLATFORMS: dict[str, tuple[str, str]] = {
    "onnx": ("onnxruntime_onnx", "onnxruntime"),
    "transformers-onnx": ("onnxruntime_onnx", "onnxruntime"),
}
_PYTHON = ("python", "python")


def platform(model_format: str) -> tuple[str, str]:
    """Triton's (platform, backend) names for a Shipyard format."""
    return _PLATFORMS.get(model_format, _PYTHON)


def data_type(t: TensorSpec) -> str:
    return "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}"


def model_config(
    name: str,
    model: ModelVersion,
    max_batch_size: int,
    max_delay_s: float,
    instances: int = 1,
    preferred_batch_sizes: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Triton's model configuration: with batching, `dims` leave out the batch dimension, as
    Triton's do (clients such as perf_analyzer add it back)."""
    signature = model.signature
    batched = max_batch_size > 0 and all(t.shape and t.shape[0] == -1 for t in signature.inputs)

    def tensor(t: TensorSpec) -> dict[str, Any]:
        dims = t.shape[1:] if batched and t.shape and t.shape[0] == -1 else t.shape
        return {"name": t.name, "data_type": data_type(t), "dims": list(dims)}

    platform_name, backend = platform(model.format)
    config: dict[str, Any] = {
        "name": name,
        "platform": platform_name,
        "backend": backend,
        "version_policy": {"specific": {"versions": [model.version]}},
        "max_batch_size": max_batch_size if batched else 0,
        "input": [tensor(t) for t in signature.inputs],
        "output": [tensor(t) for t in signature.outputs],
        "instance_group": [{"name": name, "count": instances, "kind": "KIND_CPU"}],
    }
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": round(max_delay_s * 1e6)}
        if preferred_batch_sizes:
            config["dynamic_batching"]["preferred_batch_size"] = list(preferred_batch_sizes)
    return config
