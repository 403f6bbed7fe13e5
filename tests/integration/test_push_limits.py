"""Each push limit refuses an artifact over it with one line naming its setting, and raising the
setting lets the same artifact through when it is genuine. The pushes run through the CLI in a
child whose address space is capped, so a limit that stops working fails the test instead of
exhausting the machine. Also: `shipyard.load` turns a runtime library's exception into one line.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_malicious_corpus import _onnx_with, _zip_bomb

import shipyard
from shipyard.errors import ShipyardError
from shipyard.registry import Registry
from shipyard.registry.tables import versions as versions_table

ADDRESS_SPACE = 3 << 29  # 1.5 GiB
CAPPED_PUSH = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
from shipyard.cli.main import main
sys.exit(main(["push", "limited", sys.argv[1]]))
"""


def _push(env: dict[str, str], path: Path, **settings: str) -> tuple[int, str]:
    """Exit code and stderr of `shipyard push` in a capped child, with SHIPYARD_PUSH__ settings."""
    extra = {f"SHIPYARD_PUSH__{key.upper()}": value for key, value in settings.items()}
    done = subprocess.run(
        [sys.executable, "-c", CAPPED_PUSH, str(path)],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stderr


def _refused_naming(result: tuple[int, str], setting: str) -> None:
    code, stderr = result
    assert code == 2, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert f"SHIPYARD_PUSH__{setting.upper()}" in stderr


def _weighted_onnx(path: Path) -> Path:
    """A MatMul with a 256 KiB weight: a genuine graph with one sizeable tensor."""
    from onnx import numpy_helper

    def add_weight(onnx: Any, graph: Any) -> None:
        graph.initializer.append(numpy_helper.from_array(np.ones((1, 65536), np.float32), "w"))
        graph.node.append(onnx.helper.make_node("MatMul", ["x", "w"], ["y"]))

    return _onnx_with(add_weight, path)


def _skops(path: Path, logreg: Any) -> Path:
    import skops.io as sio

    sio.dump(logreg, path)
    return path


@pytest.mark.slow
def test_file_size_limit(registry_env: dict[str, str], tmp_path: Path) -> None:
    model = _weighted_onnx(tmp_path / "model.onnx")
    _refused_naming(_push(registry_env, model, max_file_bytes="4096"), "max_file_bytes")
    assert _push(registry_env, model, max_file_bytes=str(1 << 20))[0] == 0


@pytest.mark.slow
def test_onnx_tensor_limit(registry_env: dict[str, str], tmp_path: Path) -> None:
    model = _weighted_onnx(tmp_path / "model.onnx")
    _refused_naming(_push(registry_env, model, max_tensor_bytes="65536"), "max_tensor_bytes")
    assert _push(registry_env, model, max_tensor_bytes=str(1 << 20))[0] == 0


@pytest.mark.slow
def test_archive_size_limit(registry_env: dict[str, str], tmp_path: Path, logreg: Any) -> None:
    model = _skops(tmp_path / "model.skops", logreg)
    unpacked = sum(i.file_size for i in zipfile.ZipFile(model).infolist())
    limited = _push(registry_env, model, max_uncompressed_bytes=str(unpacked - 1))
    _refused_naming(limited, "max_uncompressed_bytes")
    assert _push(registry_env, model, max_uncompressed_bytes=str(unpacked))[0] == 0


@pytest.mark.slow
def test_compression_ratio_limit(
    registry_env: dict[str, str], tmp_path: Path, iris: Any, logreg: Any
) -> None:
    bomb = _zip_bomb(_skops(tmp_path / "model.skops", logreg), tmp_path / "bomb.skops", "schema.json")
    _refused_naming(_push(registry_env, bomb), "max_compression_ratio")
    # Past the ratio, the next check reads the 100 MiB of zeros and refuses them as a schema.
    code, stderr = _push(registry_env, bomb, max_compression_ratio="100000")
    assert code == 2 and stderr.count("\n") == 1 and "RATIO" not in stderr, stderr


@pytest.mark.slow
def test_json_size_limit(registry_env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from format_fuzzing import hf_folder

    folder = hf_folder(tmp_path / "bert")
    size = (folder / "tokenizer.json").stat().st_size
    _refused_naming(_push(registry_env, folder, max_json_bytes=str(size - 1)), "max_json_bytes")
    code, stderr = _push(registry_env, folder, max_json_bytes=str(size))
    assert code == 0, stderr


def test_load_turns_a_runtime_failure_into_one_line(
    registry: Registry, registry_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version whose artifact verifies but which onnxruntime cannot load: its files were
    replaced and the digest recorded again, as a store written by a broken tool would hold."""
    pushed = registry.push("broken", _onnx_with(lambda onnx, graph: None, tmp_path / "model.onnx"))
    with registry.store.staging() as staged:
        (staged / "model.onnx").write_bytes(b"\x08\x07" + bytes(64))  # an ONNX prefix, then zeros
        info = registry.store.commit(staged)
    data = pushed.to_dict()
    row = {c.name: data[c.name] for c in versions_table.columns if c.name != "version"}
    row.update(digest=info.digest, files=[dict(f) for f in info.files], size=info.size)
    number = registry.metadata.add_version(row)

    for key, value in registry_env.items():  # the test's registry, SQLite or PostgreSQL
        if key.startswith("SHIPYARD_"):
            monkeypatch.setenv(key, value)
    with pytest.raises(ShipyardError) as caught:
        shipyard.load(f"broken:{number}")

    assert "\n" not in caught.value.message
    assert "broken" in caught.value.message or "model.onnx" in caught.value.message
    assert caught.value.__cause__ is not None
    assert not isinstance(caught.value.__cause__, ShipyardError)
