"""Optimizing a transformer encoder: export to ONNX with its pooling, int8 variants measured on
sentence pairs, and the per-node fp32 fallback when int8 breaks the budget."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from text_support import cosines

from shipyard.errors import BudgetNotMetError
from shipyard.optimize.search import optimize
from shipyard.optimize.steps import convert_version, prune_version, quantize_version
from shipyard.registry import Registry

PAIRS = Path(__file__).parents[3] / "benchmarks" / "data" / "sts_pairs.csv"
FAST: dict[str, Any] = {"seconds": 0.1, "threads": 1}


@pytest.fixture
def encoder(tmp_path: Path, minilm_tokenizer: Any) -> Registry:
    import torch
    from transformers import BertModel

    from tiny_models import tiny_bert_config

    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    BertModel(tiny_bert_config(minilm_tokenizer)).save_pretrained(str(folder))
    minilm_tokenizer.save_pretrained(str(folder))
    registry = Registry(tmp_path / "home")
    registry.push("tiny", folder)
    return registry


def test_convert_exports_the_encoder_and_serves_it_without_torch(encoder: Registry) -> None:
    outcome = convert_version(encoder, "tiny", eval_path=PAIRS, **FAST)
    version = outcome.version
    assert version is not None and version.format == "transformers-onnx" and version.parent == "tiny:1"
    parity = version.recipe["steps"][0]["parity"] if version.recipe else {}
    assert parity["cosine_min"] >= 0.9999 and parity["max_rel_diff"] <= 1e-4
    texts = ["a sentence about the weather", "another one, a bit longer than the first one was"]
    with encoder.load("tiny:1") as original, encoder.load(version.ref) as converted:
        want, got = original.predict(texts), converted.predict(texts)
    assert cosines(got["embedding"], want["embedding"]).min() >= 0.9999
    np.testing.assert_array_equal(got["tokens"], want["tokens"])


def test_int8_over_budget_falls_back_node_by_node(encoder: Registry, tmp_path: Path) -> None:
    unscored = tmp_path / "pairs.csv"
    with PAIRS.open() as src, unscored.open("w", newline="") as dst:
        writer = csv.writer(dst)
        for row in csv.reader(src):
            writer.writerow(row[:2])  # no score: the metric is agreement with the original
    try:  # the fp32 export itself may fit a zero budget (and beat PyTorch): then it is registered
        report = optimize(encoder, "tiny", unscored, max_drop="0", **FAST).report.to_dict()
    except BudgetNotMetError as exc:
        assert exc.report is not None
        report = exc.report
    assert report["metric"] == "cosine_agreement"
    assert report["selected"] in (None, "onnx-fp32", "onnx-fp32-fused")
    names = [c["name"] for c in report["candidates"]]
    assert names[0] == "onnx-fp32" and "int8-dynamic" in names and len(names) <= 8
    fallback = report["fallback"]
    assert fallback is not None and fallback["ranked_nodes"]
    errors = [error for _, error in fallback["ranked_nodes"]]
    assert errors == sorted(errors, reverse=True)
    steps = fallback["steps"]
    assert steps and [len(s["excluded"]) for s in steps] == sorted(len(s["excluded"]) for s in steps)
    assert all(s["status"] == "rejected" for s in steps[:-1])


@pytest.mark.slow
def test_steps_chain_on_minilm(tmp_path: Path, minilm_folder: Path) -> None:
    """The real MiniLM: prune converts to ONNX and prunes in one step (both in the recipe); quantize
    then works on that version, which carries its own optimization report."""
    registry = Registry(tmp_path / "home")
    registry.push("minilm", minilm_folder)
    pruned = prune_version(registry, "minilm", sparsity=0.1, **FAST).version
    assert pruned is not None and pruned.format == "transformers-onnx" and pruned.recipe is not None
    assert [s["step"] for s in pruned.recipe["steps"]] == ["convert", "prune"]
    assert pruned.recipe["config"]["operation"] == "prune"
    assert any(f["path"] == "optimization/report.json" for f in pruned.files)

    quantized = quantize_version(registry, str(pruned.ref), **FAST).version
    assert quantized is not None and quantized.parent == str(pruned.ref) and quantized.recipe is not None
    assert [s["step"] for s in quantized.recipe["steps"]] == ["quantize"]
    assert quantized.size < pruned.size / 2
    texts = ["a sentence about the weather", "another one, a bit longer than the first one was"]
    with registry.load("minilm:1") as original, registry.load(quantized.ref) as chained:
        want, got = original.predict(texts), chained.predict(texts)
    assert cosines(got["embedding"], want["embedding"]).min() >= 0.9
