"""Concurrent pushers: version numbers are allocated in a transaction, so none is lost or doubled."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.registry import Registry

PROCESSES = 8
PUSHES_EACH = 25

# Each child builds its registry from SHIPYARD_HOME / SHIPYARD_REGISTRY_URL, as a user's script
# would, waits for the common start time so all of them contend, then pushes its files in turn.
PUSHER = """
import sys, time
from shipyard import Registry

start_at, paths = float(sys.argv[1]), sys.argv[2:]
with Registry() as registry:
    time.sleep(max(0.0, start_at - time.time()))
    print(time.time(), flush=True)
    for path in paths:
        registry.push("shared", path)
    print(time.time(), flush=True)
"""


@pytest.mark.slow
def test_parallel_pushers_get_versions_1_to_n(
    registry: Registry,
    registry_env: dict[str, str],
    onnx_variants: Callable[[int], Path],
    tmp_path: Path,
) -> None:
    files = [onnx_variants(i) for i in range(PROCESSES * PUSHES_EACH)]
    start_at = time.time() + 3.0  # time for every child to import shipyard and connect
    children = [
        subprocess.Popen(
            [sys.executable, "-c", PUSHER, str(start_at), *map(str, files[p::PROCESSES])],
            env=registry_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(PROCESSES)
    ]
    spans = []  # (first push started, last push finished) of each pusher, wall clock
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-3000:]
        started, finished = map(float, out.split())
        spans.append((started, finished))

    # They contended: each pusher was pushing while at least one other one was.
    for i, (start, end) in enumerate(spans):
        others = spans[:i] + spans[i + 1 :]
        assert any(o_start < end and start < o_end for o_start, o_end in others), (i, spans)

    versions = registry.list_versions("shared")
    assert sorted(v.version for v in versions) == list(range(1, PROCESSES * PUSHES_EACH + 1))
    assert len({v.digest for v in versions}) == len(files)  # every push kept its own artifact
    assert registry.list_models()[0]["latest"] == PROCESSES * PUSHES_EACH
    problems = {str(v.ref): p for v, p in registry.verify() if p}
    assert problems == {}
    staging = registry.store.root / ".staging"  # type: ignore[attr-defined]  # a local store
    assert not staging.exists() or list(staging.iterdir()) == []
