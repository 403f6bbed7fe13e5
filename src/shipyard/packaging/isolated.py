"""First loads of native-code formats run once in a child process before the push loads them
itself: a crafted file that crashes a loader (a segfault in LiteRT, h5py, onnxruntime or the
tokenizers library) then kills the child, and the push ends with one clear error instead.

One child runs every check of a push, so the cost is one interpreter start plus the loads. Python
errors in the child are not reported: the same load in the push process raises them, translated.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.settings import PushSettings

# What each check loads, in the child, for the message that names it.
LOADERS = {
    "onnx": "onnxruntime",
    "tflite": "LiteRT",
    "keras": "h5py (Keras weights)",
    "keras-h5": "h5py (Keras)",
    "tokenizer": "the tokenizers library",
}


def check_isolated(checks: list[tuple[str, Path]], limits: PushSettings) -> None:
    """Load each (kind, file) in one child; refuse the push if the child dies or hangs."""
    if not checks:
        return
    payload = json.dumps([(kind, str(path)) for kind, path in checks])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shipyard.packaging.isolated", payload],
            check=False,
            capture_output=True,
            timeout=limits.check_timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidInputError(
            f"loading {_names(checks)} took over {limits.check_timeout_s:g} s in the isolated "
            "check; raise SHIPYARD_PUSH__CHECK_TIMEOUT_S if the model is genuine and large",
            field="path",
        ) from exc
    if done.returncode == 0:
        return
    reached = done.stdout.decode(errors="replace").split()
    kind, path = checks[min(len(reached), len(checks) - 1)]
    if done.returncode < 0:
        try:
            how = f"signal {signal.Signals(-done.returncode).name}"
        except ValueError:
            how = f"signal {-done.returncode}"
    else:
        how = f"exit code {done.returncode}"
    raise InvalidInputError(
        f"{path.name} ({kind}) crashed {LOADERS[kind]} while loading ({how}): a damaged or crafted "
        "file; it was refused and nothing was stored",
        field="path",
    )


def _names(checks: list[tuple[str, Path]]) -> str:
    return ", ".join(path.name for _, path in checks)


def _load(kind: str, path: Path) -> None:
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    elif kind == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_path=str(path), num_threads=1).allocate_tensors()
    elif kind in ("keras", "keras-h5"):
        _walk_h5(path, kind)
    elif kind == "tokenizer":
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(path)).encode("a check of the tokenizer")


def _walk_h5(path: Path, kind: str) -> None:
    """Open the HDF5 file (inside the zip for .keras) and read every attribute and dataset: a
    damaged attribute can send the HDF5 library into an endless loop, which the timeout ends."""
    import io
    import zipfile

    import h5py  # type: ignore[import-untyped]

    source: object = path
    if kind == "keras":
        with zipfile.ZipFile(path) as zf:
            source = io.BytesIO(zf.read("model.weights.h5"))
    with h5py.File(source, "r") as fh:
        items: list[Any] = [fh]
        fh.visititems(lambda _, item: items.append(item))
        for item in items:
            for name in item.attrs:
                item.attrs[name]
            if isinstance(item, h5py.Dataset):
                item[()]


def main(argv: list[str]) -> int:
    """Child side: load each check in turn, writing one line per check done."""
    import contextlib

    for kind, path in json.loads(argv[0]):
        # A Python error is the push process's to report; only a crash or hang matters here.
        with contextlib.suppress(Exception):
            _load(kind, Path(path))
        sys.stdout.write("done\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
