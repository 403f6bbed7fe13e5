"""A loaded version ready to predict: the object `shipyard.load` returns."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.runtimes.base import Runtime
from shipyard.tensors import coerce_inputs
from shipyard.types import ModelVersion, Signature


class Model:
    """One version with its runtime; `predict` accepts an array, rows, or named inputs."""

    def __init__(self, version: ModelVersion, runtime: Runtime) -> None:
        self.version = version
        self.runtime = runtime

    @property
    def signature(self) -> Signature:
        return self.version.signature

    def predict(self, data: Any) -> dict[str, np.ndarray]:
        """Outputs by name for a batch (axis 0); inputs are checked against the signature."""
        return self.runtime.predict(coerce_inputs(self.signature, data))

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Model {self.version.ref} {self.version.format} {self.signature.describe()}>"
