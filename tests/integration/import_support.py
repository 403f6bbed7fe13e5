"""What the import tests (Triton, MLflow) share: a registry that already holds a model, the CLI
run in-process, and what a registry holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.cli.main import main
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx


def home_with_one_model(tmp_path: Path) -> Path:
    """A registry that already holds a model, so "unchanged" means more than "empty"."""
    home = tmp_path / "home"
    model = tmp_path / "existing.onnx"
    model.write_bytes(tiny_onnx("existing"))
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("existing", model)
    return home


def run_cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str | Path) -> tuple[int, str, str]:
    """`shipyard --home HOME ARGS…` in this process: (exit code, stdout, stderr)."""
    code = main(["--home", str(home), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def contents(home: Path) -> list[tuple[str, int]]:
    """Every (model, version) the registry at `home` holds."""
    with Registry(settings=Settings.load(home=home)) as registry:
        return sorted(
            (v.name, v.version) for m in registry.list_models() for v in registry.list_versions(m["name"])
        )
