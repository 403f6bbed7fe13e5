"""TFLite files at push: checked to load in LiteRT, then copied."""

from __future__ import annotations

import shutil
from pathlib import Path

from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.tflite import (
    PACKAGE,
    TFLITE_FILE,
    interpreter_class,
    load_interpreter,
    tflite_signature,
)
from shipyard.settings import RuntimeSettings


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # pragma: no cover - installed without metadata
        import ai_edge_litert

        return str(getattr(ai_edge_litert, "__version__", "unknown"))


def package_tflite(source: Path, dest: Path) -> Packaged:
    """Copy a TFLite file into `dest` after checking LiteRT can load it."""
    interpreter_class()  # a missing library is reported before any copying
    target = dest / TFLITE_FILE
    shutil.copyfile(source, target)
    interpreter = load_interpreter(target, RuntimeSettings(), label=str(source))
    return Packaged(
        format="tflite",
        framework="tflite",
        signature=tflite_signature(interpreter),
        library_versions={PACKAGE: _litert_version()},
        extra={"file": TFLITE_FILE},
    )
