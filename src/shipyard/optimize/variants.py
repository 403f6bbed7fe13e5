"""The steps that turn one candidate into another — quantize, fuse, prune — each recorded in the
new candidate's recipe, so a registered version says exactly how it was made."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shipyard.optimize import convert, quantize
from shipyard.optimize.candidates import Candidate, graph_feeds
from shipyard.optimize.evalset import EvalSet
from shipyard.optimize.session import Session, derive

CALIBRATION_ROWS = 256


def dynamic_variant(session: Session, base: Candidate, name: str, **options: Any) -> Candidate:
    out = session.workdir / f"{name}.onnx"
    facts = quantize.dynamic(session.onnx_graph(base.artifact), out, **options)
    return derive(session, base, "quantize", facts, session.with_graph(base.artifact, out, name), name)


def static_variant(
    session: Session, base: Candidate, name: str, calibration: EvalSet, **options: Any
) -> Candidate:
    out = session.workdir / f"{name}.onnx"
    feeds = calibration_feeds(session, base, calibration)
    facts = quantize.static(session.onnx_graph(base.artifact), out, feeds, **options)
    facts["calibration_source"] = calibration.source
    return derive(session, base, "quantize", facts, session.with_graph(base.artifact, out, name), name)


def fused_variant(session: Session, base: Candidate) -> Candidate:
    name = "onnx-fp32-fused"
    config = json.loads((base.artifact / "config.json").read_text())
    out = session.workdir / "fused.onnx"
    facts = convert.optimize_transformer_graph(session.onnx_graph(base.artifact), out, config)
    return derive(session, base, "fuse", facts, session.with_graph(base.artifact, out, name), name)


def pruned_variant(
    session: Session, base: Candidate, name: str, *, sparsity: float, structured: bool
) -> Candidate:
    from shipyard.optimize.prune import prune_onnx

    out = session.workdir / f"{name}.onnx"
    facts = prune_onnx(session.onnx_graph(base.artifact), out, sparsity=sparsity, structured=structured)
    return derive(session, base, "prune", facts, session.with_graph(base.artifact, out, name), name)


def calibration_feeds(session: Session, base: Candidate, calibration: EvalSet) -> list[dict[str, np.ndarray]]:
    """The graph-level inputs for the calibration rows (token ids for transformer encoders)."""
    runtime, version, _folder, _ = session.evaluator.load(base)
    try:
        return graph_feeds(runtime, version, calibration.inputs, CALIBRATION_ROWS)
    finally:
        runtime.close()
