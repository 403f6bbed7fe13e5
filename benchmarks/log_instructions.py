"""What the prediction log's own code costs an entry, in CPU instructions counted by valgrind.

request_instructions.py counts what the log adds to a whole request through the app, but under
valgrind the writer thread wakes after fewer entries than at full speed and encodes chunks of
every size, so two runs of the same code differ by about 1% of a request: more than most changes
to the log's code. This counts the log's two steps alone: one `PredictionRecorder`, its writer
thread never started, fed entries of iris-like batches (`--batch` rows each, one row a request,
outputs a label and three probabilities, 1% of payloads drawn) through `record`, as the endpoint
calls it; `record` then encodes each whole chunk of 256 entries in the caller, as the event loop
does under load. Each target runs twice under callgrind, feeding the entries once and twice: the
difference, divided by the entries, is one entry's cost after start-up, imports and warm-up.

Targets: `call` (the loop that feeds the entries, calling a function that does nothing: what the
others' figures include beside the log's own work), `record` (queuing alone: each whole chunk let
go unencoded) and `encoded` (queuing and the loop's encoding of each chunk; the writer's SQLite
insert is left out: it runs on another thread, about 280 instructions an entry in
request_instructions.py). The summary gives `record` and the encoding net of `call`. Needs valgrind
(`bash scripts/install-debian-tool.sh valgrind`).

    .venv/bin/python benchmarks/log_instructions.py                  # 10,240 entries, batches of 30
    .venv/bin/python benchmarks/log_instructions.py --entries 2560 --batch 4
    # before/after: the same count with another checkout's sources first on the path
    PYTHONPATH=../main/src .venv/bin/python benchmarks/log_instructions.py
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TARGETS = ("call", "record", "encoded")
_COLLECTED = re.compile(r"Collected : (\d+)")


def feed(target: str, entries: int, batch: int, rounds: int) -> None:
    """In the child: `rounds` times, `entries` entries through `record` (and, for `encoded`, the
    encoding of every chunk of 256, as the event loop does)."""
    import numpy as np

    from shipyard.monitor.prediction_chunks import Ran
    from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
    from shipyard.settings import PredictionLogSettings

    settings = PredictionLogSettings(sample_rate=1.0, payload_rate=0.01, queue_size=1_000_000_000)
    recorder = PredictionRecorder(settings, Path(tempfile.mkdtemp(prefix="shipyard-bench-log-")))
    if target == "record":  # each whole chunk let go unencoded: the queue as short as under load

        def let_go() -> None:
            recorder._queue.clear()
            recorder._rans.clear()

        recorder._encode_chunk = let_go  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    samples: list[Sample] = []
    while len(samples) < entries:  # the batches as the batcher hands them over
        inputs = {"X": rng.random((batch, 4), dtype=np.float32)}
        probabilities = rng.random((batch, 3), dtype=np.float32)
        outputs = {"label": probabilities.argmax(axis=1), "probabilities": probabilities}
        ran = Ran(inputs, outputs, batch)
        for row in range(batch):
            sample = Sample()
            sample.inputs = {"X": inputs["X"][row : row + 1]}
            sample.ran, sample.offset, sample.rows = ran, row, 1
            samples.append(sample)
    del samples[entries:]
    ids = [f"{index:016x}-bench" for index in range(entries)]
    record: Callable[..., None] = recorder.record
    if target == "call":  # the loop and the call alone, as the endpoint pays them anyway

        def nothing(*args: object) -> None:
            pass

        record = nothing

    for _ in range(rounds):
        for request_id, sample in zip(ids, samples, strict=True):
            record(request_id, "iris", 1, "v1", 200, 0.0012, sample)
        recorder._queue.clear()  # what a chunk left over, and what `record` alone queued
        recorder._rans.clear()
        recorder._encoded.clear()


def count(target: str, entries: int, batch: int, rounds: int) -> int:
    """The instructions of one child run under callgrind (every thread)."""
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-callgrind-") as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={folder}/callgrind.out",
            sys.executable,
            __file__,
            "--child",
            target,
            str(entries),
            str(batch),
            str(rounds),
        ]
        # One BLAS thread (its idle spinning would count too, differently in every run), and one
        # hash seed (string hashes decide how many probes each dict and set lookup takes).
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        found = _COLLECTED.search(done.stderr)
        if done.returncode or found is None:
            raise SystemExit(f"{target}: valgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_240, help="entries fed per round (default 10,240)")
    parser.add_argument("--batch", type=int, default=30, help="requests (rows) a batch (default 30)")
    parser.add_argument(
        "--child", nargs=4, metavar=("TARGET", "ENTRIES", "BATCH", "ROUNDS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        target, entries, batch, rounds = args.child
        feed(target, int(entries), int(batch), int(rounds))
        return 0
    if shutil.which("valgrind") is None:
        sys.exit("this benchmark needs valgrind: bash scripts/install-debian-tool.sh valgrind (as root)")
    # Compiled here first: a child that compiled a changed module would count its compilation,
    # and the run beside it, finding the bytecode cached, would not.
    import shipyard.monitor.prediction_recorder  # noqa: F401

    runs = [(target, rounds) for target in TARGETS for rounds in (1, 2)]
    print(
        f"counting {len(runs)} runs under valgrind, {os.cpu_count() or 2} at a time "
        "(about 90 s on 2 cores)...",
        file=sys.stderr,
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        counted = list(pool.map(lambda run: count(run[0], args.entries, args.batch, run[1]), runs))
    per_entry = {
        target: (counted[2 * index + 1] - counted[2 * index]) / args.entries
        for index, target in enumerate(TARGETS)
    }
    call = per_entry["call"]
    parts = [
        f"record {per_entry['record'] - call:,.0f}",
        f"encoding {per_entry['encoded'] - per_entry['record']:,.0f}",
        f"both {per_entry['encoded'] - call:,.0f}",
        f"(the feeding loop and call {call:,.0f}, not counted)",
    ]
    print(
        "prediction log instructions per entry (callgrind, fed twice minus once): "
        + " | ".join(parts)
        + f" | {args.entries:,} entries in batches of {args.batch}, chunks of 256",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
