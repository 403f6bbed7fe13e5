"""A session measures the original only when asked, once, and leaves its collaborators alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from shipyard.optimize.candidates import Status
from shipyard.optimize.session import ProgressEvent, Session
from shipyard.registry import Registry


def test_the_original_is_measured_once_and_only_when_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    y = (x[:, 0] > 0).astype(int)
    registry = Registry(tmp_path / "home")
    registry.push("lr", LogisticRegression().fit(x, y), sample_input=x[:2])
    events: list[ProgressEvent] = []
    with Session(registry, "lr", seconds=0.05, threads=1, progress=events.append) as session:
        assert events == []  # nothing loaded yet
        first = session.measure()
        assert session.measure() is first and session.original is first
        assert first.status is Status.ORIGINAL and first.speed is not None
        assert events == [ProgressEvent("measuring the original lr:1", measuring=True)]
        evaluator = session.evaluator
        assert evaluator is session.evaluator and evaluator.metric is None  # no eval file, no metric
        assert first.outputs is not None and evaluator.reference is first.outputs
        assert session.notes == ["no --eval file: agreement measured on synthetic inputs, no task metric"]
