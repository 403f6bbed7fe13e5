"""Registry.import_version on both backends: a version copied under its own number and metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.errors import ConflictError
from shipyard.registry import Registry


def test_an_imported_version_keeps_its_number_and_the_counter_moves_past_it(
    registry: Registry, tmp_path: Path, skops_path: Path, onnx_path: Path
) -> None:
    with Registry(tmp_path / "source") as source:
        source.push("iris", onnx_path)
        source.push("iris", onnx_path, tags={"team": "ml"})
        original = source.push("iris", skops_path, metrics={"accuracy": 0.9})
        copied = registry.import_version(original, source.artifact_path(original), aliases=("production",))
    assert copied.ref == original.ref
    assert (copied.digest, copied.files, copied.metrics) == (
        original.digest,
        original.files,
        original.metrics,
    )
    assert registry.resolve("iris@production").version == 3
    with pytest.raises(ConflictError):
        registry.import_version(original, registry.artifact_path(copied))
    assert registry.push("iris", onnx_path).version == 4
    assert [e.action for e in registry.audit_log()][:2] == ["import", "alias.set"]
