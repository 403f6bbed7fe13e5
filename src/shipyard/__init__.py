"""Shipyard: store, optimize, serve, monitor and ship trained models with one tool.

The public API is loaded lazily so `import shipyard` stays fast and imports no heavy library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shipyard.errors import ShipyardError
from shipyard.types import ModelRef

__version__ = "0.1.0"
__all__ = [
    "Model",
    "ModelRef",
    "ModelVersion",
    "Registry",
    "ShipyardError",
    "__version__",
    "feedback",
    "load",
    "lookup_predictions",
    "predictions",
    "push",
    "quality",
]

if TYPE_CHECKING:
    from shipyard.api import feedback, load, lookup_predictions, predictions, push, quality
    from shipyard.registry import Registry
    from shipyard.runtimes.model import Model
    from shipyard.types import ModelVersion

_LAZY = {
    "push": "shipyard.api",
    "load": "shipyard.api",
    "predictions": "shipyard.api",
    "lookup_predictions": "shipyard.api",
    "feedback": "shipyard.api",
    "quality": "shipyard.api",
    "Registry": "shipyard.registry",
    "Model": "shipyard.runtimes.model",
    "ModelVersion": "shipyard.types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shipyard' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
