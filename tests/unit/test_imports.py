"""Project wiring: a light `import shipyard`, the layer contract, and migrations that match the code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["onnx", "onnxruntime", "skops", "sklearn", "sqlalchemy", "torch", "alembic", "grpc"]

_PROBE = """
import contextlib, io, json, sys
{code}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))))
"""


def _loaded_heavy_modules(code: str) -> list[str]:
    probe = _PROBE.format(code=code, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_import_shipyard_loads_no_heavy_library() -> None:
    assert _loaded_heavy_modules("import shipyard; shipyard.ModelRef.parse('iris@prod')") == []


def test_cli_help_loads_no_heavy_library() -> None:
    code = (
        "from shipyard.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert main(['--help']) == 0\n"
        "assert 'push' in out.getvalue()\n"
    )
    assert _loaded_heavy_modules(code) == []


def test_subcommand_help_loads_no_heavy_library() -> None:
    code = (
        "from shipyard.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['push', '--help']) == 0\n"
    )
    assert _loaded_heavy_modules(code) == []


def test_layer_contract_holds() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_schema_head_is_alembic_head() -> None:
    from alembic.script import ScriptDirectory

    from shipyard.registry import metadata

    scripts = ScriptDirectory(str(Path(metadata.__file__).parent / "migrations"))
    assert scripts.get_heads() == [metadata.SCHEMA_HEAD]  # one head: no branches to merge


def test_migrations_create_exactly_the_tables_the_code_uses(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from shipyard.registry.metadata import MetadataStore
    from shipyard.registry.tables import metadata as tables

    store = MetadataStore(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), tables)
    finally:
        store.close()
    assert diff == []
