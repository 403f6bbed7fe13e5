"""The short Python API: `shipyard.push` and `shipyard.load` on the default registry."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from shipyard.errors import ModelError, ShipyardError
from shipyard.monitor.profile import build_profile
from shipyard.monitor.reference import reference_inputs
from shipyard.registry import Registry
from shipyard.runtimes.model import Model
from shipyard.types import ModelRef, ModelVersion, Signature


def push(
    name: str, model: Any, *, home: str | Path | None = None, reference: Any = None, **metadata: Any
) -> ModelVersion:
    """Push an estimator or model file as the next version of `name` (see `Registry.push`).

    `reference`: sample inputs (an array, rows, records or a mapping of input names to arrays,
    e.g. the training features) whose profile is stored with the version for drift."""
    if reference is not None:
        metadata["data_profile"] = partial(_profile, reference)
    with Registry(home) as registry:
        return registry.push(name, model, **metadata)


def _profile(reference: Any, signature: Signature) -> dict[str, Any]:
    inputs, names = reference_inputs(reference, signature)
    return build_profile(inputs, signature, names=names).to_dict()


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
