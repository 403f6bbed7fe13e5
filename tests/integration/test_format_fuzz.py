"""Mutants of every supported format (bit flips, truncations, splices, zeroed ranges; fixed
seed) pushed through the CLI: none crashes it, none ends in a traceback or an internal error, and
every refusal is one `error:` line with a documented exit code."""

from __future__ import annotations

import os

import pytest
from format_fuzzing import fuzz, result_lines

from shipyard.registry import Registry

MUTANTS = 72  # 8 per format: about a minute on two busy cores; benchmarks/ runs 1,000
SEED = 20261129


@pytest.mark.slow
def test_no_mutant_crashes_the_cli(registry: Registry, registry_env: dict[str, str]) -> None:
    pytest.importorskip("tflite")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("keras")

    report = fuzz(MUTANTS, SEED, registry_env)

    print(report.summary())
    assert len(report.results) == MUTANTS
    assert result_lines(report) == []
    assert report.count("refused") > MUTANTS // 2  # the mutations reach the checks, not only valid files
