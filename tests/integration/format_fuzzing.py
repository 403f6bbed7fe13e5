"""Format fuzzing shared by tests/integration/test_format_fuzz.py and benchmarks/fuzz_formats.py.

Valid artifacts of every supported format are mutated (bit flips, truncations, splices, zeroed
ranges) with a fixed seed, and each mutant is pushed through the CLI entry point by one long-lived
worker process that reads paths on stdin and answers one JSON line per push. A native crash kills
only the worker: the driver records the mutant it was pushing and starts a new one.

It lives beside the tests because its seeds are the tests' own model builders; the benchmark adds
this folder to `sys.path`, so the dependency runs one way (benchmarks → tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Exit codes a refused push may end with (InvalidInput, NotFound, Conflict, Untrusted/Forbidden,
# Integrity, MissingDependency); 0 when the mutant is still a valid model.
DOCUMENTED_CODES = {2, 3, 4, 5, 7, 8}
MUTATIONS = ("flip", "truncate", "splice", "zero")

WORKER = r"""
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")  # a valid mutant may warn; only refusals are judged on stderr
from shipyard.cli.main import main
for line in sys.stdin:
    request = json.loads(line)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["push", "fuzz", request["path"]])
    print(json.dumps({"name": request["name"], "code": code, "stderr": err.getvalue()}), flush=True)
"""


@dataclass(frozen=True)
class Seed:
    """A valid artifact; `member` names the file a folder's mutants change."""

    format: str
    path: Path
    member: str | None = None


@dataclass(frozen=True)
class Mutant:
    name: str
    format: str
    path: Path


@dataclass
class Result:
    name: str
    format: str
    code: int | None  # None: the worker died (or hung) while pushing it
    stderr: str

    @property
    def verdict(self) -> str:
        """crash, traceback, internal, undocumented, multi-line, valid or refused."""
        if self.code is None:
            return "crash"
        if "Traceback" in self.stderr:
            return "traceback"
        if self.code == 0:
            return "valid"
        if self.code == 1:
            return "internal"
        if self.code not in DOCUMENTED_CODES:
            return "undocumented"
        if not self.stderr.startswith("error: ") or self.stderr.count("\n") != 1:
            return "multi-line"
        return "refused"


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.results)

    def failures(self) -> dict[str, tuple[str, int | None, str]]:
        bad = ("crash", "traceback", "internal", "undocumented", "multi-line")
        return {r.name: (r.verdict, r.code, r.stderr[-300:]) for r in self.results if r.verdict in bad}

    def summary(self) -> str:
        formats = len({r.format for r in self.results})
        refused = Counter(r.code for r in self.results if r.verdict == "refused")
        by_code = ", ".join(f"exit {c}: {n}" for c, n in sorted(refused.items()))
        internal = self.count("internal") + self.count("traceback") + self.count("undocumented")
        return (
            f"fuzz: {len(self.results)} mutants of {formats} formats, crashes {self.count('crash')}, "
            f"internal errors {internal}, multi-line errors {self.count('multi-line')}, "
            f"valid {self.count('valid')}, refused {self.count('refused')} ({by_code}), "
            f"in {self.seconds:.0f} s"
        )


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of `data`, named."""
    kind = rng.choice(MUTATIONS)
    size = len(data)
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(size)] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[rng.randrange(1, size) :]
    elif kind == "splice":  # a chunk of the file copied over another place in it
        length = rng.randint(1, min(256, size))
        source, target = rng.randrange(size - length + 1), rng.randrange(size - length + 1)
        out[target : target + length] = data[source : source + length]
    else:
        start = rng.randrange(size)
        end = min(size, start + rng.randint(1, 512))
        out[start:end] = bytes(end - start)
    return kind, bytes(out)


def build_seeds(folder: Path) -> list[Seed]:
    """Valid artifacts of each format, built by the tests' own builders (nothing downloaded)."""
    from test_malicious_corpus import build_sources

    sources = build_sources(folder)
    seeds = [Seed(kind, sources[kind]) for kind in ("onnx", "skops", "tree", "keras", "h5", "tflite")]
    hf = hf_folder(folder / "hf")
    seeds += [
        Seed(f"hf-{member}", hf, member) for member in ("model.safetensors", "tokenizer.json", "config.json")
    ]
    return seeds


def hf_folder(folder: Path) -> Path:
    """A one-layer BERT saved as safetensors with MiniLM's tokenizer (a few hundred KB)."""
    sys.path.insert(0, str(Path(__file__).parent / "text"))
    from text_support import minilm_path  # sets the Hugging Face offline switches
    from transformers import AutoTokenizer, BertModel

    from tiny_models import tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BertModel(tiny_bert_config(tokenizer)).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def write_mutants(seeds: list[Seed], folder: Path, count: int, seed: int) -> list[Mutant]:
    """`count` mutants, spread evenly over the seeds, reproducible from `seed`."""
    rng = random.Random(seed)
    mutants = []
    for i in range(count):
        source = seeds[i % len(seeds)]
        file = source.path / source.member if source.member else source.path
        kind, data = mutate(file.read_bytes(), rng)
        name = f"{source.format}-{i:04d}-{kind}"
        if source.member:
            target = folder / name
            shutil.copytree(source.path, target)
            (target / source.member).write_bytes(data)
        else:
            target = folder / f"{name}{source.path.suffix}"
            target.write_bytes(data)
        mutants.append(Mutant(name, source.format, target))
    return mutants


class Worker:
    """The pushing process; restarted after it dies."""

    def __init__(self, env: dict[str, str], log: Path, timeout_s: float) -> None:
        self.env, self.log, self.timeout_s = env, log, timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.log_file: IO[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        self.log_file = open(self.log, "a")  # noqa: SIM115 - held for the worker's life
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
        )
        return self.proc

    def push(self, mutant: Mutant) -> Result:
        proc = self.proc if self.proc and self.proc.poll() is None else self._start()
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps({"name": mutant.name, "path": str(mutant.path)}) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        line = proc.stdout.readline() if ready else ""
        if line:
            answer = json.loads(line)
            return Result(mutant.name, mutant.format, answer["code"], answer["stderr"])
        if proc.poll() is None:  # hung: counted as a crash
            proc.kill()
        code = proc.wait()
        self._release(proc)
        return Result(mutant.name, mutant.format, None, f"worker ended with {code}: {self._tail()}")

    def _tail(self) -> str:
        if self.log_file:
            self.log_file.flush()
        return self.log.read_text(errors="replace")[-400:] if self.log.exists() else ""

    def _release(self, proc: subprocess.Popen[str]) -> None:
        for pipe in (proc.stdin, proc.stdout):
            if pipe:
                with contextlib.suppress(BrokenPipeError):  # the worker died, a request unread
                    pipe.close()
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def close(self) -> None:
        if self.proc:
            if self.proc.poll() is None and self.proc.stdin:
                self.proc.stdin.close()  # end of input: the worker finishes and exits
            self.proc.wait(timeout=60)
            self._release(self.proc)


def fuzz(
    count: int, seed: int, env: dict[str, str], workdir: Path | None = None, timeout_s: float = 120
) -> Report:
    """Build the seeds, write `count` mutants and push each; the report of every push."""
    import time

    with tempfile.TemporaryDirectory(prefix="shipyard-fuzz-") as scratch:
        root = workdir or Path(scratch)
        (root / "seeds").mkdir(parents=True, exist_ok=True)
        (root / "mutants").mkdir(exist_ok=True)
        os.environ.setdefault("KERAS_BACKEND", "torch")
        mutants = write_mutants(build_seeds(root / "seeds"), root / "mutants", count, seed)
        # A mutant that sends a native loader into an endless loop is refused when the isolated
        # check times out; the seeds load in well under a second, so 20 s is ample.
        env = {"KERAS_BACKEND": "torch", "SHIPYARD_PUSH__CHECK_TIMEOUT_S": "20", **env}
        worker = Worker(env, root / "worker.log", timeout_s)
        report = Report()
        started = time.perf_counter()
        try:
            report.results = [worker.push(m) for m in mutants]
        finally:
            worker.close()
        report.seconds = time.perf_counter() - started
        return report


def result_lines(report: Report) -> list[dict[str, Any]]:
    """The failures as plain data, for a test's assertion message or a benchmark's stderr."""
    return [{"name": n, "verdict": v, "code": c, "stderr": s} for n, (v, c, s) in report.failures().items()]
