"""The short Python API: `shipyard.push` and `shipyard.load` on the default registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.registry import Registry
from shipyard.runtimes.model import Model
from shipyard.types import ModelRef, ModelVersion


def push(name: str, model: Any, *, home: str | Path | None = None, **metadata: Any) -> ModelVersion:
    """Push an estimator or model file as the next version of `name` (see `Registry.push`)."""
    with Registry(home) as registry:
        return registry.push(name, model, **metadata)


def load(ref: str | ModelRef, *, home: str | Path | None = None) -> Model:
    """Load `name`, `name:3` or `name@alias` for prediction."""
    with Registry(home) as registry:
        return registry.load(ref)
