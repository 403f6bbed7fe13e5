"""Is every malicious artifact of the corpus refused, with no side effect?

Builds the corpus of tests/integration/test_malicious_corpus.py (code-executing pickles, joblib,
cloudpickle and torch.save files, skops files naming foreign types, crafted trees, zip slips,
links and bombs, folders with links or `..` paths, ONNX graphs reaching outside the artifact or
asking for huge tensors, malformed safetensors, tokenizer bombs, truncated and flipped files) with
the test's own builders, and pushes each without --trust through the CLI in one child process
whose audit hook records any process, exec or socket event. A side effect is one of those events,
a write of the canary file, or a connection to the local listener the payloads dial.

    python benchmarks/corpus.py

Goal: every artifact refused with one error line; side effects 0.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "integration"), str(TESTS)]

from test_malicious_corpus import REFUSED_CODES, build_corpus, build_sources, push_all  # noqa: E402


def _connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            server.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    with tempfile.TemporaryDirectory(prefix="shipyard-corpus-") as scratch, socket.socket() as listener:
        root = Path(scratch)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        canary = root / "canary"
        (root / "secret.txt").write_text("password")
        for name in ("sources", "corpus", "home"):
            (root / name).mkdir()
        sources = build_sources(root / "sources")
        corpus = build_corpus(root / "corpus", canary, listener.getsockname()[1], sources)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
        env["SHIPYARD_HOME"] = str(root / "home")
        results = push_all(corpus, env, canary, root / "listing.json")
        connections = _connections(listener)
        written = int(canary.exists())
    refused = [
        r
        for r in results
        if r["code"] in REFUSED_CODES and r["stderr"].startswith("error: ") and r["stderr"].count("\n") == 1
    ]
    events = sum(len(r["events"]) for r in results)
    for result in results:
        if result not in refused or result["events"]:
            print(json.dumps(result), file=sys.stderr)
    side_effects = written + connections + events
    clean = len(refused) == len(results) == len(corpus) and side_effects == 0
    print(
        f"corpus: {len(refused)}/{len(corpus)} refused, side effects {side_effects} "
        f"(canary {written}, connections {connections}, audit events {events}) {'ok' if clean else 'MISS'}"
    )
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
