"""Copies of the sources with the prediction log cut down, to measure what each part of it costs.

Writes, under FOLDER, one copy of `src` for each variant below, with
`shipyard/monitor/prediction_recorder.py` patched, and prints the `--sources` value that serves
them in monitoring_cost.py (a target `on@ring` is `on` served from the `ring` copy):

- `noop`: `record` returns at once. What is left is what every request notes for the log (its
  `Sample`, the batcher telling it its batch) and the call itself.
- `ring`: `record` packs the entry's numbers and request id into a preallocated ring of 256 slots
  (24 KB, which stays in the caches) with one `struct.pack_into`, and holds nothing else: no
  queue, no batch, no encoding, no writer. The floor of a request path that hands its entries to
  a log process through shared memory.
- `drop`: entries are queued as they are now, and each chunk is let go unencoded: what queuing
  and holding a chunk's entries and batches costs, without the encoding and the writes.

    python benchmarks/log_variants.py /tmp/log-variants      # prints noop=...,ring=...,drop=...
    python benchmarks/monitoring_cost.py --fresh --scrape-s 0 --duration 100 --rounds 10 \\
        --targets off,on,on@drop,on@ring,on@noop --sources "$(python benchmarks/log_variants.py /tmp/v)"

A patch whose anchor is no longer in the recorder stops the script with the anchor it missed: the
variants are only worth measuring while they cut what they say.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDER = Path("shipyard/monitor/prediction_recorder.py")
_RECORD_DOC = (
    '        """Queue one request\'s entry, or drop and count it: never blocks. Whether it is logged, and\n'
    '        with its payload, is drawn when its chunk is encoded, for the whole chunk at once."""\n'
)
_QUEUE = "        self._queue: deque[Answered] = deque()\n"
_IMPORTS = 'log = logging.getLogger("shipyard.predictions")\n'
_ENCODE = "                entries, chunk = self._chunk(entries)\n"
# (anchor, replacement) pairs per variant, each anchor found exactly once.
PATCHES: dict[str, list[tuple[str, str]]] = {
    "noop": [(_RECORD_DOC, _RECORD_DOC + "        return\n")],
    "ring": [
        (
            _IMPORTS,
            "import struct\n\n_PACK = struct.Struct('<d40sqqdqqq').pack_into  # 96 bytes\n" + _IMPORTS,
        ),
        (_QUEUE, _QUEUE + "        self._ring = bytearray(256 * 96)\n        self._slot = 0\n"),
        (
            _RECORD_DOC,
            _RECORD_DOC
            + "        slot = self._slot\n"
            + "        self._slot = (slot + 1) % 256\n"
            + "        _PACK(self._ring, slot * 96, _now(), request_id.encode(), version or 0, status,"
            + " latency_s, 0, sample.offset, sample.rows)\n"
            + "        return\n",
        ),
    ],
    # The chunk stays None: nothing encoded, nothing handed to the writer, nothing written.
    "drop": [(_ENCODE, "                pass\n")],
}


def write_variant(source: Path, folder: Path, name: str) -> Path:
    """`source` copied to folder/name with the variant's patches applied; returns the copy."""
    target = folder / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    path = target / RECORDER
    text = path.read_text()
    for anchor, replacement in PATCHES[name]:
        if text.count(anchor) != 1:
            sys.exit(f"log_variants.py: {name}: the recorder no longer has this once:\n{anchor}")
        text = text.replace(anchor, replacement)
    path.write_text(text)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the copies go (each replaced if there)")
    parser.add_argument("--source", type=Path, default=ROOT / "src", help="the sources to copy (default src)")
    parser.add_argument(
        "--variants", default=",".join(PATCHES), help=f"comma-separated, of {', '.join(PATCHES)}"
    )
    args = parser.parse_args()
    names = [name for name in args.variants.split(",") if name]
    if unknown := [name for name in names if name not in PATCHES]:
        parser.error(f"--variants: {unknown} unknown; choose from {list(PATCHES)}")
    args.folder.mkdir(parents=True, exist_ok=True)
    copies = {name: write_variant(args.source.resolve(), args.folder.resolve(), name) for name in names}
    print(",".join(f"{name}={path}" for name, path in copies.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
