"""The prediction log's writer: a process of its own that appends a server's encoded chunks to its
segments, so that neither SQLite nor the file system ever runs in the serving process.

Why a process: as a thread of the server, the writer released the GIL around each of SQLite's
calls and had to take it back from a busy event loop every time, a forced switch between two
threads on a host whose cores the load kept busy. Entries queued but neither encoded nor written
cost nothing measurable (benchmarks/log_variants.py, `drop`); encoded and written by the thread,
6–10% of requests/s, where the encoding alone takes 1.3–1.5 µs an entry (timed), a small part of
that. The figures with the process are in benchmarks/README.md (monitoring_cost.py).

Each server process (each worker) starts its own writer when it first has a chunk for it, and
feeds it through a pipe, never waiting: a chunk the pipe has no room for stays with the server,
counted against its queue (see prediction_recorder.py). The writer commits what it has read once
a second, or at once when asked to flush, and answers after each commit through a second pipe.
It ends when its pipe closes: the server closed it, or exited, or was killed (the kernel closes a
dead process's pipes), so a writer never outlives its server; what it holds is written first.

The pipes carry frames. Server to writer: `FRAME` (the length of what follows, the kind, a
sequence number, the chunk's first and last time, the length of its request ids), the request ids
(a JSON array) and the chunk; a FLUSH frame has no ids and no chunk. Writer to server: `ACK` (the
sequence number of the last frame dealt with, whether its chunks were written, the length of the
error), then the error, if they were not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from shipyard.monitor.predictions import Chunk, Segment, enforce_retention, segment_bytes, segment_name

FRAME = struct.Struct("<IBQddI")
ACK = struct.Struct("<QBH")
CHUNK, FLUSH = 1, 2
_COMMIT_EVERY_S = 1.0
_COMMIT_BYTES = 4 << 20  # a second's chunks of a busy server are about 1 MB
_RETENTION_EVERY_S = 60.0
_READ_BYTES = 1 << 20
_PIPE_BYTES = 1 << 20  # the most an unprivileged process may ask for (/proc/sys/fs/pipe-max-size)
_F_SETPIPE_SZ = 1031  # Linux's fcntl; Python names it from 3.10 on Linux only


@dataclass(frozen=True)
class Layout:
    """Where a writer writes and how much it keeps: a segment's largest size and age, the folder's."""

    directory: Path
    worker: int
    segment_bytes: int
    segment_age_s: float
    max_bytes: int
    max_age_s: float


def frame(kind: int, sequence: int, chunk: Chunk | None = None) -> bytes:
    """One frame for the writer: a chunk, or (None) a request to flush."""
    if chunk is None:
        return FRAME.pack(FRAME.size - 4, kind, sequence, 0.0, 0.0, 0)
    first, last, ids, blob = chunk
    head = FRAME.pack(FRAME.size - 4 + len(ids) + len(blob), kind, sequence, first, last, len(ids))
    return b"".join((head, ids, blob))


class WriterProcess:
    """The server's side of one writer process: its two pipes, written and read without waiting."""

    def __init__(self, layout: Layout) -> None:
        data_read, self._data = os.pipe()
        self._acks, ack_write = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only fills sooner
                fcntl.fcntl(self._data, _F_SETPIPE_SZ, _PIPE_BYTES)
            os.set_blocking(self._data, False)
            os.set_blocking(self._acks, False)
            argument = orjson.dumps({**layout.__dict__, "directory": str(layout.directory)}).decode()
            command = [sys.executable, "-m", "shipyard.monitor.log_writer", str(data_read), str(ack_write)]
            self._process = subprocess.Popen(
                [*command, argument],
                pass_fds=(data_read, ack_write),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the server must not cut its log short
            )
        except BaseException:
            for fd in (self._data, self._acks):
                os.close(fd)
            raise
        finally:
            os.close(data_read)
            os.close(ack_write)
        self._unsent = memoryview(b"")
        self._received = bytearray()

    @property
    def answers_fd(self) -> int:
        """The pipe the writer answers on: readable when an answer (or its end) is there."""
        return self._acks

    def send(self, data: bytes, wait_s: float = 0.0) -> bool:
        """Hand `data` to the writer whole, or not at all: False when the pipe has no room for its
        start within `wait_s`. Raises BrokenPipeError once the writer has gone."""
        if not self.push(wait_s):
            return False
        try:
            written = os.write(self._data, data)
        except BlockingIOError:
            return False
        if written < len(data):  # the pipe took its start: the rest goes before anything else
            self._unsent = memoryview(data)[written:]
            self.push(wait_s)
        return True

    def push(self, wait_s: float = 0.0) -> bool:
        """Write what a frame left unsent; True once nothing is left, within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while self._unsent:
            try:
                self._unsent = self._unsent[os.write(self._data, self._unsent) :]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                select.select([], [self._data], [], left)
        return True

    def answers(self) -> list[tuple[int, bool, str]] | None:
        """The answers the writer has sent since the last call; None once it has ended."""
        try:
            data = os.read(self._acks, 1 << 16)
        except BlockingIOError:
            data = None
        if data == b"":
            return None
        if data:
            self._received += data
        found = []
        while len(self._received) >= ACK.size:
            sequence, written, length = ACK.unpack_from(self._received)
            if len(self._received) < ACK.size + length:
                break
            error = bytes(self._received[ACK.size : ACK.size + length]).decode(errors="replace")
            del self._received[: ACK.size + length]
            found.append((sequence, bool(written), error))
        return found

    def end(self, timeout_s: float) -> int | None:
        """Close the writer's pipe (it writes what it holds, then exits) and wait for it; killed
        when it has not exited within `timeout_s`. Returns its exit code; its last answers are
        still there to read."""
        with contextlib.suppress(OSError):
            os.close(self._data)
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def release(self) -> None:
        """Close the answers' pipe, once they are read."""
        with contextlib.suppress(OSError):
            os.close(self._acks)


class _Segments:
    """The writer's segments: the current one, replaced when full, old, or deleted."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.current: Segment | None = None
        self.started = 0.0
        self.trimmed_at = 0.0

    def write(self, chunks: list[Chunk]) -> None:
        """The chunks, in one transaction; raises sqlite3.Error or OSError."""
        try:
            self._segment().append(chunks)
        except BaseException:
            self.close(seal=False)  # the next commit starts over: a new segment
            raise

    def _segment(self) -> Segment:
        layout, now = self.layout, time.time()
        segment = self.current
        if segment is not None:
            size = segment_bytes(segment.path)
            if not size or size >= layout.segment_bytes or now - self.started >= layout.segment_age_s:
                self.close(seal=bool(size))
        if self.current is None:
            layout.directory.mkdir(parents=True, exist_ok=True)
            self.current = Segment(layout.directory / segment_name(now, layout.worker), layout.worker)
            self.started = now
            self.trim()
        return self.current

    def trim(self) -> None:
        self.trimmed_at = time.monotonic()
        layout = self.layout
        with contextlib.suppress(OSError):  # the next round tries again
            keep = None if self.current is None else self.current.path
            enforce_retention(layout.directory, layout.max_bytes, layout.max_age_s, keep)

    def close(self, *, seal: bool = True) -> None:
        segment, self.current = self.current, None
        if segment is not None:
            if seal:
                segment.seal()
            else:
                segment.close()


def take_frames(received: bytearray) -> list[tuple[int, Chunk | None]]:
    """The whole frames at the start of `received`, cut off it (once: not frame by frame, which
    moved the rest of a megabyte per frame): (sequence number, its chunk, or None: a flush)."""
    frames: list[tuple[int, Chunk | None]] = []
    start = 0
    while len(received) - start >= 4:
        end = start + 4 + int.from_bytes(received[start : start + 4], "little")
        if len(received) < end:
            break
        _, kind, sequence, first, last, ids = FRAME.unpack_from(received, start)
        body = start + FRAME.size
        chunk = None
        if kind == CHUNK:
            chunk = (first, last, bytes(received[body : body + ids]), bytes(received[body + ids : end]))
        frames.append((sequence, chunk))
        start = end
    del received[:start]
    return frames


def serve(data_fd: int, ack_fd: int, layout: Layout) -> None:
    """Read frames until the pipe ends, committing once a second, on a flush, and at the end."""
    segments = _Segments(layout)
    received = bytearray()
    held: list[Chunk] = []
    held_bytes = 0
    last = 0  # the sequence number of the last frame read
    due = 0.0  # when what is held must be committed
    try:
        while True:
            wait = None if not held else max(0.0, due - time.monotonic())
            if segments.current is not None:
                retention = segments.trimmed_at + _RETENTION_EVERY_S - time.monotonic()
                wait = max(0.0, retention if wait is None else min(wait, retention))
            ended = flush = False
            if select.select([data_fd], [], [], wait)[0]:
                data = os.read(data_fd, _READ_BYTES)
                ended = not data
                received += data
                for sequence, chunk in take_frames(received):
                    last = sequence
                    if chunk is None:
                        flush = True
                        continue
                    if not held:
                        due = time.monotonic() + _COMMIT_EVERY_S
                    held.append(chunk)
                    held_bytes += len(chunk[2]) + len(chunk[3])
            if flush or ended or (held and (time.monotonic() >= due or held_bytes >= _COMMIT_BYTES)):
                error = ""
                if held:
                    try:
                        segments.write(held)
                    except (sqlite3.Error, OSError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                held, held_bytes = [], 0
                message = error.encode()[:4096]
                os.write(ack_fd, ACK.pack(last, not error, len(message)) + message)
            if ended:
                return
            if segments.current is not None and time.monotonic() - segments.trimmed_at >= _RETENTION_EVERY_S:
                segments.trim()
    except BrokenPipeError:  # the server has gone: nobody to answer, what is held was written
        return
    finally:
        segments.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it ends when its pipe does, never half-way
    data_fd, ack_fd, argument = int(argv[0]), int(argv[1]), orjson.loads(argv[2])
    serve(data_fd, ack_fd, Layout(**{**argument, "directory": Path(argument["directory"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
