"""The region manager of the system shared-memory extension, on real POSIX shared-memory objects
(files in /dev/shm): what a key may name, sizes and offsets, and the refusal with several workers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.errors import ConflictError, InvalidInputError
from shipyard.serve.shared_memory import SHM_DIR, SystemSharedMemory


@pytest.fixture
def key() -> Iterator[str]:
    """A 64-byte shared-memory object holding 0..63, removed afterwards."""
    name = f"shipyard-unit-{uuid.uuid4().hex[:12]}"
    path = Path(SHM_DIR) / name
    path.write_bytes(bytes(range(64)))
    yield f"/{name}"
    path.unlink(missing_ok=True)


def test_a_window_reads_and_writes_the_bytes_it_names(key: str) -> None:
    regions = SystemSharedMemory()
    regions.register("r", key, 16, 32)  # bytes 16..47 of the object
    window = regions.window(
        "t", {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 4}
    )
    assert window is not None and window.read() == bytes(range(20, 28))
    window.write("t", b"\xff" * 8)
    assert (Path(SHM_DIR) / key[1:]).read_bytes()[20:28] == b"\xff" * 8
    assert regions.status(None) == [{"name": "r", "key": key, "offset": 16, "byte_size": 32}]
    regions.close()
    assert regions.status(None) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"shared_memory_region": "r", "shared_memory_byte_size": 33}, "shared_memory_byte_size"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 1, "shared_memory_offset": 32},
            "shared_memory_offset",
        ),
        ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "shared_memory_byte_size"),
        ({"shared_memory_region": "r"}, "shared_memory_byte_size"),
        ({"shared_memory_region": "other", "shared_memory_byte_size": 1}, "shared_memory_region"),
    ],
)
def test_a_window_outside_its_region_names_the_parameter(
    key: str, params: dict[str, object], field: str
) -> None:
    regions = SystemSharedMemory()
    regions.register("r", key, 0, 32)
    with pytest.raises(InvalidInputError) as refused:
        regions.window("t", params)
    assert refused.value.field == field
    regions.close()


@pytest.mark.parametrize("bad", ["../etc/passwd", "/a/b", "", "/", "/..", 7])
def test_a_key_names_a_shared_memory_object_only(bad: object) -> None:
    with pytest.raises(InvalidInputError) as refused:
        SystemSharedMemory().register("r", bad, 0, 8)
    assert refused.value.field == "key"


def test_a_link_in_dev_shm_is_not_followed(key: str) -> None:
    link = Path(SHM_DIR) / f"shipyard-link-{uuid.uuid4().hex[:12]}"
    os.symlink(Path(SHM_DIR) / key[1:], link)
    try:
        with pytest.raises(InvalidInputError, match="cannot open"):
            SystemSharedMemory().register("r", f"/{link.name}", 0, 8)
    finally:
        link.unlink()


def test_a_region_past_the_object_is_refused(key: str) -> None:
    with pytest.raises(InvalidInputError, match="holds 64 bytes; offset \\+ byte_size is 65") as refused:
        SystemSharedMemory().register("r", key, 1, 64)
    assert refused.value.field == "byte_size"


def test_several_workers_refuse_registration(key: str) -> None:
    with pytest.raises(ConflictError, match="--workers 1"):
        SystemSharedMemory(workers=2).register("r", key, 0, 8)


def test_an_object_shrunk_after_registration_is_refused_not_read(key: str) -> None:
    regions = SystemSharedMemory()
    regions.register("r", key, 0, 64)
    window = regions.window("t", {"shared_memory_region": "r", "shared_memory_byte_size": 64})
    assert window is not None
    os.truncate(Path(SHM_DIR) / key[1:], 16)  # touching the lost pages would be SIGBUS
    with pytest.raises(InvalidInputError, match="shrank to 16 bytes"):
        window.read()
    with pytest.raises(InvalidInputError, match="shrank to 16 bytes"):
        window.write("t", b"x" * 64)
    regions.close()
