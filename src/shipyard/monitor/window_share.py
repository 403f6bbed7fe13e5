"""Live windows shared between the worker processes of one server, through files.

Each worker writes, for each version it watches, one file `WORKER-PID.npz` in the version's
folder of the directory the server made for its workers: each kept row's time and each
feature's values (numbers as float64, embeddings as (rows, dims), categories as codes into a list
of their keys). These are what the drift methods take, so merging is concatenation and a merged
report is exactly the one a single process would compute on every worker's rows together; no
sketch loses precision. A file is at most `max_rows` rows per feature (80 KB per feature at the
default 10,000) and is written only when the window changed, in a worker thread, then renamed
into place, so a reader never sees half of one.

A reader takes every other worker's file whose profile digest matches its own (a profile replaced
meanwhile makes older files not comparable), re-reading one only when its size or time changed.
The supervisor deletes the files of a worker that ended (`forget_worker`), so its rows leave the
merged window as its gauges leave /metrics; a file of a process that no longer exists is skipped
meanwhile. Row times are `time.monotonic()`, the system-wide CLOCK_MONOTONIC on Linux, which the
workers of one host share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.monitor.profile import Profile

if TYPE_CHECKING:
    from shipyard.monitor.windows import InputWindow

log = logging.getLogger("shipyard.monitor")


def version_folder(name: str, version: int) -> str:
    """A version's folder in the shared directory (`NAME@VERSION`: one path component)."""
    return f"{name}@{version}"


def forget_worker(directory: Path, pid: int) -> None:
    """Delete the window files of the worker process `pid`, which ended."""
    for path in directory.glob(f"*/*-{pid}.npz"):
        with contextlib.suppress(OSError):
            path.unlink()


def profile_digest(profile: Profile) -> str:
    return hashlib.sha256(json.dumps(profile.to_dict(), sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Peer:
    """Another worker's window as it last wrote it."""

    label: str  # its worker number
    stamp: tuple[str, int, int]  # file name, modification time, size: changes with every write
    times: np.ndarray
    columns: dict[str, np.ndarray]


class SharedWindow:
    """One version's window files: this worker's, written, and the others', read."""

    def __init__(self, folder: Path, worker: int, profile: Profile) -> None:
        self.folder = folder
        self.label = str(worker)
        self.name = f"{worker}-{os.getpid()}.npz"
        self.profile = profile
        self.digest = profile_digest(profile)
        self.written = 0  # the window's `added` when last written: none seen, none to write
        self._failed = False
        self._peers: dict[str, Peer] = {}

    def write(self, window: InputWindow) -> None:
        """Write this worker's window if it changed since the last write."""
        added = window.added
        if added == self.written:
            return
        columns, times, _ = window.merged()
        payload: dict[str, np.ndarray] = {"times": times, "digest": np.array(self.digest)}
        for number, feature in enumerate(self.profile.features):
            values = columns.get(feature.name)
            if values is None:  # nothing merged yet
                continue
            if feature.kind == "categorical":
                codes, keys = _encode(values)
                payload[f"c{number}"], payload[f"k{number}"] = codes, keys
            else:
                payload[f"c{number}"] = values
        temporary = self.folder / f".{self.name}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as file:
                np.savez(file, **payload)  # type: ignore[arg-type]
            os.replace(temporary, self.folder / self.name)
        except OSError as exc:  # a full disk: drift goes on from this worker's own rows
            if not self._failed:
                log.warning("cannot share the drift window in %s: %s", self.folder, exc)
            self._failed = True
            return
        self._failed = False
        self.written = added

    def peers(self) -> list[Peer]:
        """The other workers' windows, read again only where their file changed."""
        try:
            entries = [e for e in os.scandir(self.folder) if e.name.endswith(".npz") and e.name != self.name]
        except OSError:  # no worker has written yet
            return []
        found: dict[str, Peer] = {}
        for entry in entries:
            label, _, pid = entry.name[: -len(".npz")].partition("-")
            try:
                stat = entry.stat()
            except OSError:  # replaced or deleted just now
                continue
            stamp = (entry.name, stat.st_mtime_ns, stat.st_size)
            if not _alive(pid):  # its supervisor has not deleted it yet, or could not
                continue
            known = self._peers.get(entry.name)
            peer = (
                known
                if known is not None and known.stamp == stamp
                else self._read(Path(entry.path), label, stamp)
            )
            if peer is not None:
                found[entry.name] = peer
        self._peers = found
        return list(found.values())

    def _read(self, path: Path, label: str, stamp: tuple[str, int, int]) -> Peer | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["digest"]) != self.digest:
                    return None
                times = data["times"]
                columns: dict[str, np.ndarray] = {}
                for number, feature in enumerate(self.profile.features):
                    if f"c{number}" not in data:
                        return None
                    values = data[f"c{number}"]
                    if feature.kind == "categorical":
                        values = _decode(values, data[f"k{number}"])
                    columns[feature.name] = values
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.debug("skipping the shared drift window %s: %s", path, exc)
            return None
        if any(len(values) != len(times) for values in columns.values()):
            return None
        return Peer(label, stamp, times, columns)


def _encode(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category keys (text, or None when missing) as int32 codes into a list of the keys."""
    index: dict[Any, int] = {}
    codes = np.fromiter(
        (-1 if k is None else index.setdefault(k, len(index)) for k in keys), np.int32, len(keys)
    )
    return codes, np.array(list(index), dtype=str)


def _decode(codes: np.ndarray, keys: np.ndarray) -> np.ndarray:
    table = np.empty(len(keys) + 1, dtype=object)
    table[: len(keys)] = keys.tolist()
    table[-1] = None  # code -1
    decoded: np.ndarray = table[codes]
    return decoded


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True
    return True
