"""Triton's system shared-memory extension: regions a client on the same host registers, then
names in a tensor's parameters (`shared_memory_region`, `shared_memory_byte_size`,
`shared_memory_offset`) so a large tensor is not sent over the socket at all.

A region is a window (`offset`, `byte_size`) of a POSIX shared-memory object (`key`, as
shm_open names it: `/name`), mapped here when registered. Inputs are copied out of it when the
request is decoded, so a region reused or unregistered while the request waits in the batcher
changes nothing; outputs are written into it once the result is ready.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from dataclasses import dataclass
from typing import Any

from shipyard.errors import ConflictError, InvalidInputError

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared-memory objects (shm_open's names)
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
# shm_open's names: one leading slash, then no slash (so no path can leave /dev/shm).
_KEY = re.compile(r"^/?[A-Za-z0-9_.\-]{1,250}$")
_NAME_LIMIT = 256


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    fd: int  # kept open: its size is checked before each access (see `check`)

    def check(self, end: int) -> None:
        """Refuse an access up to `end` unless the object still holds it: a client that shrinks
        its object after registering would otherwise crash this process with SIGBUS on the next
        access. (A shrink between this check and the copy is not caught.)"""
        try:
            size = os.fstat(self.fd).st_size
        except OSError as exc:  # unregistered meanwhile: the descriptor is closed
            raise InvalidInputError(
                f"shared memory region {self.name!r} was unregistered", field=REGION
            ) from exc
        if end > size:
            raise InvalidInputError(
                f"shared-memory object {self.key!r} of region {self.name!r} shrank to {size} bytes "
                "since it was registered",
                field=REGION,
            )

    def close(self) -> None:
        self.mapping.close()
        os.close(self.fd)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class Window:
    """Where one tensor lies: a region, and the bytes of it the request named."""

    region: Region
    offset: int
    byte_size: int

    def read(self) -> bytes:
        """A copy of the bytes: the client may reuse the region while the request waits."""
        start = self.region.offset + self.offset
        self.region.check(start + self.byte_size)
        return self.region.mapping[start : start + self.byte_size]

    def write(self, tensor: str, data: bytes) -> None:
        if len(data) > self.byte_size:
            raise InvalidInputError(
                f"output {tensor!r} is {len(data)} bytes, more than the {self.byte_size} of "
                f"{BYTE_SIZE} in shared memory region {self.region.name!r}",
                field=BYTE_SIZE,
            )
        start = self.region.offset + self.offset
        self.region.check(start + len(data))
        self.region.mapping[start : start + len(data)] = data


class SystemSharedMemory:
    """The regions registered with this server process, by name."""

    def __init__(self, workers: int = 1) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # HTTP and gRPC register from their own event loops
        self._workers = workers

    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        if self._workers > 1:
            # Each worker is its own process: a region would exist only in the one that took
            # the registration, and requests naming it would fail on every other.
            raise ConflictError(
                f"system shared memory is refused with {self._workers} workers: a region would be "
                "registered with one worker only; serve with --workers 1",
                field="key",
            )
        if not isinstance(name, str) or not name or len(name) > _NAME_LIMIT:
            raise InvalidInputError("a region needs a 'name' of 1-256 characters", field="name")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.strip("/.") == "":
            raise InvalidInputError(
                f"'key' must be a shared-memory object's name as shm_open takes it (/name), not {key!r:.60}",
                field="key",
            )
        offset = _count(offset, "offset")
        byte_size = _count(byte_size, "byte_size")
        mapping, fd = _map(key, offset + byte_size)
        with self._lock:
            if name in self._regions:
                mapping.close()
                os.close(fd)
                raise InvalidInputError(
                    f"shared memory region {name!r} is already registered; unregister it first", field="name"
                )
            self._regions[name] = Region(name, key, offset, byte_size, mapping, fd)

    def unregister(self, name: str | None) -> None:
        """Forget one region (or all, for None); an unknown name is no error, as in Triton."""
        with self._lock:
            names = list(self._regions) if name is None else [name]
            for gone in names:
                region = self._regions.pop(gone, None)
                if region is not None:
                    region.close()

    def status(self, name: str | None) -> list[dict[str, Any]]:
        with self._lock:
            if name is None:
                return [r.status() for r in self._regions.values()]
            return [self._get(name).status()]

    def close(self) -> None:
        self.unregister(None)

    def window(self, tensor: str, params: dict[str, Any]) -> Window | None:
        """Where `params` put tensor `tensor`, checked against the region; None when they name no region."""
        name = params.get(REGION)
        if name is None:
            return None
        if not isinstance(name, str):
            raise InvalidInputError(f"tensor {tensor!r}: {REGION} must be a region's name", field=REGION)
        with self._lock:
            region = self._get(name)
        if BYTE_SIZE not in params:
            raise InvalidInputError(f"tensor {tensor!r}: {REGION} needs {BYTE_SIZE}", field=BYTE_SIZE)
        byte_size = _count(params[BYTE_SIZE], BYTE_SIZE)
        offset = _count(params.get(OFFSET, 0), OFFSET)
        if offset + byte_size > region.byte_size:
            field = OFFSET if offset >= region.byte_size else BYTE_SIZE
            raise InvalidInputError(
                f"tensor {tensor!r}: {OFFSET} {offset} + {BYTE_SIZE} {byte_size} is past the end of "
                f"shared memory region {name!r} ({region.byte_size} bytes)",
                field=field,
            )
        return Window(region, offset, byte_size)

    def _get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            # Triton's wording first, as its clients and their users know it.
            raise InvalidInputError(
                f"Unable to find system shared memory region: {name!r}; register it first "
                "(POST /v2/systemsharedmemory/region/NAME/register)",
                field=REGION,
            )
        return region


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"{field} must be a non-negative integer, not {value!r:.40}", field=field)
    return value


def _map(key: str, needed: int) -> tuple[mmap.mmap, int]:
    """The shared-memory object `key` mapped read-write, and its open descriptor; it must hold
    `needed` bytes."""
    path = os.path.join(SHM_DIR, key.lstrip("/"))
    try:
        # O_NOFOLLOW: a link planted in /dev/shm must not map some other file of the server's.
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise InvalidInputError(f"no shared-memory object {key!r} on this host", field="key") from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidInputError(f"cannot open shared-memory object {key!r}: {reason}", field="key") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"{key!r} is not a shared-memory object", field="key")
        if info.st_size < needed or needed == 0:
            raise InvalidInputError(
                f"shared-memory object {key!r} holds {info.st_size} bytes; offset + byte_size is {needed}",
                field="byte_size",
            )
        return mmap.mmap(fd, info.st_size), fd
    except BaseException:
        os.close(fd)
        raise
