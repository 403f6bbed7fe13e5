"""Row-oriented JSON bodies (TF Serving / KServe V1, SageMaker, Vertex AI) to and from tensors."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.tensors import to_jsonable
from shipyard.types import Signature


def inputs_from_body(body: Any, signature: Signature) -> Any:
    """`{"instances": rows}` (row format) or `{"inputs": columns}` (columnar) → dataplane inputs."""
    if isinstance(body, list):  # a bare list of rows, as SageMaker clients often send
        body = {"instances": body}
    if not isinstance(body, dict):
        raise InvalidInputError('body must be {"instances": [...]} or {"inputs": ...}', field="body")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise InvalidInputError(
            'body must have exactly one of "instances" (rows) or "inputs" (columns)',
            field="instances" if has_instances else "body",
        )
    if has_inputs:
        return body["inputs"]
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError('"instances" must be a non-empty list', field="instances")
    if len(signature.inputs) == 1:
        first = instances[0]
        if isinstance(first, dict):  # [{"input": [...]}, …]: named rows for a one-input model
            name = signature.inputs[0].name
            return [_named(row, name) for row in instances]
        return instances
    if not all(isinstance(row, dict) for row in instances):
        names = ", ".join(t.name for t in signature.inputs)
        raise InvalidInputError(
            f"this model takes several inputs ({names}): each instance must be an object "
            "mapping input names to values",
            field="instances",
        )
    return {t.name: [_named(row, t.name) for row in instances] for t in signature.inputs}


def _named(row: dict[str, Any], name: str) -> Any:
    if name not in row:
        raise InvalidInputError(f"an instance is missing input {name!r}", field=name)
    return row[name]


def predictions(outputs: dict[str, np.ndarray]) -> Any:
    """One output → a list of values per row; several → a list of {output: value} per row."""
    if len(outputs) == 1:
        return to_jsonable(next(iter(outputs.values())))
    names = list(outputs)
    columns = [to_jsonable(arr) for arr in outputs.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
