"""Does any mutant of a supported model format crash `shipyard push`?

Valid artifacts of every format the registry accepts (ONNX, skops, a skops tree, .keras, .h5,
TFLite, and a Hugging Face folder whose model.safetensors, tokenizer.json or config.json is
mutated) are changed by bit flips, truncations, splices and zeroed ranges, reproducibly from
`--seed`, and each mutant is pushed through the CLI entry point by one long-lived worker process
in a fresh registry. A worker that dies (a native crash) or hangs is recorded against the mutant
it was pushing and replaced.

A push passes when it exits 0 (the mutant is still a valid model) or is refused with exactly one
`error:` line and a documented exit code (2, 3, 4, 5, 7, 8). Crashes, tracebacks, internal errors
(exit 1) and multi-line errors are failures, listed on stderr. The machinery is shared with
tests/integration/test_format_fuzz.py (tests/integration/format_fuzzing.py), which runs fewer
mutants in CI.

    python benchmarks/fuzz_formats.py                        # 1,000 mutants
    python benchmarks/fuzz_formats.py --mutants 300 --seed 7

Goal: crashes 0, internal errors 0, multi-line errors 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "integration"), str(TESTS)]

from format_fuzzing import fuzz, result_lines  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=1000, help="how many mutants in all")
    parser.add_argument("--seed", type=int, default=20261129, help="seed of the mutations")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shipyard-fuzz-home-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
        env["SHIPYARD_HOME"] = home
        report = fuzz(args.mutants, args.seed, env)
    for failure in result_lines(report):
        print(json.dumps(failure), file=sys.stderr)
    clean = not report.failures()
    print(f"{report.summary()} {'ok' if clean else 'MISS'}")
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
