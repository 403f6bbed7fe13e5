"""The short Python API: `shipyard.push` and `shipyard.load` on the default registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.errors import ModelError, ShipyardError
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
        try:
            return registry.load(ref)
        except ShipyardError:
            raise
        except Exception as exc:  # a runtime library's own error: callers catch ShipyardError
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ModelError(
                f"loading {ref} failed in {type(exc).__module__}.{type(exc).__name__}: {detail}",
                public=f"model {ref} could not be loaded",
            ) from exc
