"""TensorFlow SavedModel folders (what TF Serving serves) at push: every signature is read and
converted to ONNX with tf2onnx in a child process (`shipyard.packaging.tf_convert`), checked
there against TensorFlow on sample inputs, then stored as ONNX and served by onnxruntime.
TensorFlow is needed only here, at push (the `[tensorflow]` extra).

The default signature (`serving_default`, else the first by name) is the graph every protocol
serves (`model.onnx`); each other signature is kept beside it (`signatures/<n>.onnx`), and all of
them are recorded, in TF Serving's terms, under the version's `extra["tf_serving"]`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.packaging.onnx import check_onnx, package_onnx
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.onnx import ONNX_FILE, onnx_session
from shipyard.settings import PushSettings, RuntimeSettings

SAVED_MODEL_FILE = "saved_model.pb"
DEFAULT_SIGNATURE = "serving_default"
SIGNATURES_DIR = "signatures"
_PURPOSE = "pushing a TensorFlow SavedModel (converted to ONNX with tf2onnx)"
_CONVERT_TIMEOUT_S = 900.0
# How closely onnxruntime must match TensorFlow on the sample inputs (as numpy.allclose).
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-5


def is_saved_model(path: Path) -> bool:
    """A SavedModel folder, or a TF Serving model base path holding numbered version folders."""
    return saved_model_folder(path) is not None


def saved_model_folder(path: Path) -> Path | None:
    """The SavedModel in `path`: the folder itself, or its highest numbered version folder (as TF
    Serving serves the latest version of a model base path)."""
    if not path.is_dir():
        return None
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    versions = [
        p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / SAVED_MODEL_FILE).is_file()
    ]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _require_libraries() -> None:
    for module, package in (("tensorflow", "tensorflow"), ("tf2onnx", "tf2onnx")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(package, "tensorflow", _PURPOSE)


def _convert(source: Path, out: Path, limits: PushSettings, trust: bool) -> dict[str, Any]:
    """Run the conversion child; its result, or InvalidInputError with what it reported."""
    timeout = max(_CONVERT_TIMEOUT_S, limits.check_timeout_s)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "shipyard.packaging.tf_convert",
                str(source),
                str(out),
                repr(PARITY_RTOL),
                repr(PARITY_ATOL),
                "trust" if trust else "no-trust",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidInputError(
            f"converting {source.name} to ONNX took over {timeout:g} s; nothing was stored", field="path"
        ) from exc
    result_file = out / "result.json"
    if not result_file.is_file():
        tail = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        why = tail[-1][:300] if tail else f"exit code {done.returncode}"
        raise InvalidInputError(
            f"converting SavedModel {source.name} to ONNX failed ({why}); nothing was stored", field="path"
        )
    result: dict[str, Any] = json.loads(result_file.read_text())
    if result.get("untrusted_ops"):
        raise UntrustedArtifactError(f"cannot push SavedModel {source.name}: {result['error']}")
    if "error" in result:
        raise InvalidInputError(f"cannot push SavedModel {source.name}: {result['error']}", field="path")
    return result


def package_saved_model(path: Path, dest: Path, limits: PushSettings, trust: bool = False) -> Packaged:
    """Convert every signature of the SavedModel at `path` into ONNX files in `dest`."""
    source = saved_model_folder(path)
    if source is None:
        raise InvalidInputError(f"{path} holds no {SAVED_MODEL_FILE}", field="path")
    _require_libraries()
    with tempfile.TemporaryDirectory(prefix="shipyard-tf-") as tmp:
        out = Path(tmp)
        result = _convert(source, out, limits, trust)
        signatures: dict[str, Any] = result["signatures"]
        default = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in signatures else sorted(signatures)[0]
        files = {name: out / f"{sig.pop('file_index')}.onnx" for name, sig in signatures.items()}
        extra_files = 0
        for name, sig in signatures.items():
            if name == default:
                sig["file"] = ONNX_FILE
                continue
            import onnx

            converted = files[name]
            check_onnx(onnx.load_model(str(converted), load_external_data=False), converted, limits)
            onnx_session(converted, RuntimeSettings())  # loads, or the push fails naming why
            extra_files += 1
            relative = f"{SIGNATURES_DIR}/{extra_files}.onnx"
            (dest / SIGNATURES_DIR).mkdir(exist_ok=True)
            shutil.copyfile(converted, dest / relative)
            sig["file"] = relative
        packaged = package_onnx(files[default], dest, limits=limits)
    versions = {**packaged.library_versions, **result["versions"]}
    extra = {
        **packaged.extra,
        "source": "tensorflow-savedmodel",
        "converter": "tf2onnx",
        "tf_serving": {"default_signature": default, "signature_def": signatures},
    }
    risky = list(result.get("side_effect_ops") or [])
    if risky:
        extra["side_effect_ops"] = risky  # loaded by TensorFlow only at push, with --trust
    return Packaged("onnx", "tensorflow", packaged.signature, versions, extra, needs_trust=bool(risky))
