"""First loads of native-code formats run in a child process before the push loads them itself:
a crafted file that crashes a loader (a segfault in LiteRT, h5py, onnxruntime or the tokenizers
library) then kills the child, and the push ends with one clear error instead.

The child is started on a process's first check and kept for the next ones: an interpreter start
and the loaders' imports cost about 0.7 s, which a process pushing many models (a notebook, a
test suite, an import of a whole model repository) pays once. A child that crashed or hung is
replaced on the next check. Python errors in the child are not reported: the same load in the
push process raises them, translated.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
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


class _Checker:
    """The child that runs the checks: one JSON line of (kind, path) pairs in, a line per load
    done and `end` out."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one push's checks at a time
        atexit.register(self.close)

    def run(self, checks: list[tuple[str, Path]], timeout_s: float) -> tuple[int | None, int]:
        """(None, n) when all n loads came back; (exit status, loads done) when the child died;
        TimeoutError when it hung (it is killed)."""
        with self._lock:
            child = self._child
            if child is None or child.poll() is not None:
                child = self._child = subprocess.Popen(
                    [sys.executable, "-m", "shipyard.packaging.isolated"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(json.dumps([(kind, str(path)) for kind, path in checks]).encode() + b"\n")
                child.stdin.flush()
            except BrokenPipeError:
                return self._died(child, 0)
            done, buffer, deadline = 0, b"", time.monotonic() + timeout_s
            while True:
                if b"\n" not in buffer:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not select.select([child.stdout], [], [], remaining)[0]:
                        child.kill()
                        child.wait()
                        raise TimeoutError
                    chunk = os.read(child.stdout.fileno(), 4096)
                    if not chunk:
                        return self._died(child, done)
                    buffer += chunk
                    continue
                line, buffer = buffer.split(b"\n", 1)
                if line == b"end":
                    return None, done
                done += 1

    def _died(self, child: subprocess.Popen[bytes], done: int) -> tuple[int | None, int]:
        try:
            return child.wait(timeout=10), done
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait(), done

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            assert child.stdin is not None
            child.stdin.close()  # the child ends at the end of its input
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


_checker = _Checker()


def check_isolated(checks: list[tuple[str, Path]], limits: PushSettings) -> None:
    """Load each (kind, file) in the child; refuse the push if the child dies or hangs."""
    if not checks:
        return
    try:
        status, done = _checker.run(checks, limits.check_timeout_s)
    except TimeoutError as exc:
        raise InvalidInputError(
            f"loading {_names(checks)} took over {limits.check_timeout_s:g} s in the isolated "
            "check; raise SHIPYARD_PUSH__CHECK_TIMEOUT_S if the model is genuine and large",
            field="path",
        ) from exc
    if status is None:
        return
    kind, path = checks[min(done, len(checks) - 1)]
    if status < 0:
        try:
            how = f"signal {signal.Signals(-status).name}"
        except ValueError:
            how = f"signal {-status}"
    else:
        how = f"exit code {status}"
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


def main() -> int:
    """Child side: for each line of checks, load each in turn, writing one line per load done."""
    import contextlib

    for line in sys.stdin:
        for kind, path in json.loads(line):
            # A Python error is the push process's to report; only a crash or hang matters here.
            with contextlib.suppress(Exception):
                _load(kind, Path(path))
            sys.stdout.write("done\n")
            sys.stdout.flush()
        sys.stdout.write("end\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
