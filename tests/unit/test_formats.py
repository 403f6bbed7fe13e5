"""Format detection reads the bytes, never trusts the file name, and explains what it refuses."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import joblib
import pytest

from shipyard.errors import InvalidInputError
from shipyard.packaging import package
from shipyard.packaging.formats import detect_file, detect_format


def _copy(source: Path, dest: Path) -> Path:
    shutil.copyfile(source, dest)
    return dest


def test_onnx_comes_parsed(onnx_path: Path) -> None:
    detected = detect_format(onnx_path)
    assert (detected.format, detected.file) == ("onnx", onnx_path)
    # packaging reuses this parse instead of reading the file again
    assert detected.onnx_model is not None and len(detected.onnx_model.graph.node) > 0


def test_onnx_named_like_a_pickle_is_onnx(onnx_path: Path, tmp_path: Path) -> None:
    assert detect_file(_copy(onnx_path, tmp_path / "x.pkl")).format == "onnx"


def test_pickle_named_like_onnx_is_pickle(pickle_path: Path, tmp_path: Path) -> None:
    assert detect_file(_copy(pickle_path, tmp_path / "model.onnx")).format == "pickle"


def test_skops_zip_named_anything_is_skops(skops_path: Path, tmp_path: Path) -> None:
    assert detect_file(skops_path).format == "skops"
    assert detect_file(_copy(skops_path, tmp_path / "model.onnx")).format == "skops"


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_pickle_protocols(protocol: int, tmp_path: Path, logreg: Any) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(pickle.dumps(logreg, protocol=protocol))
    assert detect_file(path).format == "pickle"


@pytest.mark.parametrize(
    "compress",
    [0, 1, 3, 9, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)],
    ids=["plain", "zlib-1", "zlib-3", "zlib-9", "gzip", "bz2", "xz", "lzma"],
)
def test_joblib_compressed_or_not(compress: Any, tmp_path: Path, logreg: Any) -> None:
    path = tmp_path / "model.onnx"  # a misleading name on purpose
    joblib.dump(logreg, path, compress=compress)
    assert detect_file(path).format == "joblib"


def test_truncated_onnx_says_truncated(truncated_onnx_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"truncated") as info:
        detect_format(truncated_onnx_path)
    assert info.value.field == "path"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.touch()
    with pytest.raises(InvalidInputError, match=r"is empty \(0 bytes\)"):
        detect_format(path)


@pytest.mark.parametrize(
    "content",
    [b"hello, I am not a model\n", bytes(range(256)) * 4, b"\x80"],
    ids=["text", "binary", "one-byte"],
)
def test_not_a_model(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=r"not a model file Shipyard recognises \(expected ONNX"):
        detect_format(path)


def test_zip_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(InvalidInputError, match="zip archive but not a model format"):
        detect_format(path)


def test_damaged_zip(skops_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(skops_path.read_bytes()[:40])
    with pytest.raises(InvalidInputError, match="damaged zip archive"):
        detect_format(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"path '.*nope\.onnx' does not exist"):
        detect_format(tmp_path / "nope.onnx")


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"folder .* is empty: no model file inside"):
        detect_format(tmp_path)


def test_directory_with_one_model_file_uses_it(onnx_path: Path, tmp_path: Path) -> None:
    inner = tmp_path / "export" / "model.onnx"
    inner.parent.mkdir()
    _copy(onnx_path, inner)
    (tmp_path / "export" / ".DS_Store").write_bytes(b"hidden files are ignored")
    detected = detect_format(tmp_path / "export")
    assert (detected.format, detected.file) == ("onnx", inner)


def test_directory_with_several_files_lists_them(onnx_path: Path, tmp_path: Path) -> None:
    for name in ("a.onnx", "b.onnx", "notes.txt"):
        _copy(onnx_path, tmp_path / name)
    with pytest.raises(InvalidInputError) as info:
        detect_format(tmp_path)
    message = info.value.message
    assert "holds 3 files (a.onnx, b.onnx, notes.txt)" in message
    assert "push the model file itself" in message


def test_directory_with_many_files_is_summarised(tmp_path: Path) -> None:
    for i in range(9):
        (tmp_path / f"shard-{i}.bin").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=r"holds 9 files \(shard-0.bin, .*shard-5.bin, …\)"):
        detect_format(tmp_path)


def test_packaging_an_onnx_file_parses_it_once(
    onnx_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    parsed: list[str] = []
    load_model = onnx.load_model

    def counting_load_model(path: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(str(path))
        return load_model(path, *args, **kwargs)

    monkeypatch.setattr(onnx, "load_model", counting_load_model)
    dest = tmp_path / "artifact"
    dest.mkdir()
    packaged = package(onnx_path, dest)
    assert packaged.format == "onnx" and (dest / "model.onnx").is_file()
    assert parsed == [str(onnx_path)]
