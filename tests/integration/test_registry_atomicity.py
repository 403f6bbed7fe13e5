"""A push that fails or is killed at any step leaves no version, no moved alias, and only
leftovers that `gc` removes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shipyard.packaging import package as real_package
from shipyard.registry import Registry
from shipyard.registry.metadata import MetadataStore


class InjectedFault(Exception):
    """Raised by the tests' fault injection, never by Shipyard itself."""


Cleanup = Callable[[], None]


def _fail_during_packaging(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Cleanup | None:
    def package(*args: Any, **kwargs: Any) -> Any:
        real_package(*args, **kwargs)  # the files are written into staging...
        raise InjectedFault("disk full while packaging")  # ...then the push dies

    monkeypatch.setattr("shipyard.registry.registry.package", package)
    return None


def _fail_before_rename(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Cleanup | None:
    def replace(src: Any, dst: Any) -> None:
        raise InjectedFault("rename failed")

    monkeypatch.setattr("shipyard.registry.store.os.replace", replace)
    return None


def _fail_after_rename(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Cleanup | None:
    def add_version(self: MetadataStore, record: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        raise InjectedFault("database went away")

    monkeypatch.setattr(MetadataStore, "add_version", add_version)
    return None


def _fail_on_statement(prefix: str) -> Callable[[Registry, pytest.MonkeyPatch], Cleanup | None]:
    """Make one INSERT of the push's transaction fail on its way to the database."""

    def inject(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Cleanup | None:
        def before_cursor_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith(prefix):
                raise InjectedFault(f"{prefix} failed")

        engine = registry.metadata.engine
        sa.event.listen(engine, "before_cursor_execute", before_cursor_execute)
        return lambda: sa.event.remove(engine, "before_cursor_execute", before_cursor_execute)

    return inject


FAULTS = {
    "during-packaging": _fail_during_packaging,
    "in-commit-before-rename": _fail_before_rename,
    "after-rename-before-insert": _fail_after_rename,
    "during-version-insert": _fail_on_statement("INSERT INTO VERSIONS"),
    # The version row is already inserted when this fails: the transaction must take it back.
    "during-alias-insert": _fail_on_statement("INSERT INTO ALIAS_HISTORY"),
}


# Faults after the artifact is renamed into place leave an unreferenced artifact for `gc`.
AFTER_RENAME = {"after-rename-before-insert", "during-version-insert", "during-alias-insert"}


@contextmanager
def _injected(name: str, registry: Registry) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        cleanup = FAULTS[name](registry, monkeypatch)
        try:
            yield
        finally:
            if cleanup is not None:
                cleanup()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_failed_push_leaves_no_trace(
    registry: Registry,
    onnx_variants: Callable[[int], Path],
    fault: str,
    staging_entries: Callable[[Registry], list[Path]],
    assert_clean_after_gc: Callable[[Registry], None],
) -> None:
    first = registry.push("iris", onnx_variants(0), alias="production")
    history_before = registry.history("iris", "production")

    with _injected(fault, registry), pytest.raises(InjectedFault):
        registry.push("iris", onnx_variants(1), alias="production", metrics={"accuracy": 0.99})

    assert [v.version for v in registry.list_versions("iris")] == [1]
    assert registry.resolve("iris@production") == first
    assert registry.history("iris", "production") == history_before
    assert all(not problems for _, problems in registry.verify())
    assert staging_entries(registry) == []  # the staging folder is removed even on failure
    unreferenced = set(registry.store.digests()) - {first.digest}
    assert len(unreferenced) == (1 if fault in AFTER_RENAME else 0)
    assert_clean_after_gc(registry)
    assert list(registry.store.digests()) == [first.digest]

    retry = registry.push("iris", onnx_variants(1), alias="production")
    assert retry.version == 2
    assert registry.resolve("iris@production").version == 2
    assert registry.verify("iris:2")[0][1] == []


# Pushes distinct large ONNX models in a loop until it is killed. Large so that each push spends
# real time copying, parsing, hashing and fsyncing: a kill lands inside a step, not between pushes.
KILLED_PUSHER = """
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime  # imported up front so that the first push starts as soon as "ready" is printed
from onnx import TensorProto, helper, numpy_helper

from shipyard import Registry

work = Path(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
weights = numpy_helper.from_array(rng.standard_normal((256, 4096)).astype(np.float32), "W")
graph = helper.make_graph(
    [helper.make_node("MatMul", ["X", "W"], ["Y"])],
    "big",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 256])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4096])],
    [weights],
)
with Registry() as registry:
    print("ready", flush=True)
    i = 0
    while True:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        model.doc_string = f"{sys.argv[2]}-{i}"
        path = work / f"big-{i}.onnx"
        onnx.save_model(model, str(path))
        registry.push("big", path)
        print("pushed", flush=True)
        path.unlink()
        i += 1
"""


@pytest.mark.slow
def test_push_killed_with_sigkill_leaves_a_consistent_registry(
    registry: Registry,
    registry_env: dict[str, str],
    tmp_path: Path,
    staging_entries: Callable[[Registry], list[Path]],
    assert_clean_after_gc: Callable[[Registry], None],
    onnx_path: Path,
) -> None:
    for round_, delay in enumerate((0.2, 0.5, 0.9)):
        work = tmp_path / f"work-{round_}"
        work.mkdir()
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_PUSHER, str(work), str(round_)],
            env=registry_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stderr is not None
            for expected in ("ready", "pushed"):  # one whole push first, so a version exists
                readable, _, _ = select.select([child.stdout], [], [], 120)
                assert readable, f"the pusher did not print {expected!r} within 120 s"
                assert child.stdout.readline().strip() == expected, child.stderr.read()
            time.sleep(delay)  # then the kill lands somewhere inside a later push
            assert child.poll() is None, child.stderr.read()
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL

        # Whatever the kill interrupted, every version that exists is whole, and the only
        # leftovers are of the one push each kill interrupted: a staging folder (killed before
        # the rename) or an unreferenced artifact (killed between the rename and the commit).
        problems = {str(v.ref): p for v, p in registry.verify() if p}
        assert problems == {}
        staged = staging_entries(registry)
        unreferenced = set(registry.store.digests()) - registry.metadata.referenced_digests()
        kills = round_ + 1
        assert len(staged) <= kills, staged
        assert len(unreferenced) <= kills, unreferenced
        assert all(path.parent == registry.store.root / ".staging" for path in staged)  # type: ignore[attr-defined]  # a local store

    versions = registry.list_versions("big")
    assert len(versions) >= 3  # each round completed a push before its kill
    leftovers = len(staging_entries(registry)) + len(unreferenced)
    removed, _ = registry.gc(grace_s=0)
    assert removed == leftovers  # gc removes exactly the leftovers, no artifact of a version
    assert_clean_after_gc(registry)
    assert len(registry.list_versions("big")) == len(versions)
    # The registry keeps working: the next number follows the highest one ever allocated.
    assert registry.push("big", onnx_path).version == max(v.version for v in versions) + 1
