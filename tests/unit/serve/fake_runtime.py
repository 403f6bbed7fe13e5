"""A runtime the serve tests control: its loads and predictions wait at gates or fail on demand.

Registered in `shipyard.runtimes.RUNTIMES` under the `onnx` format by the `fake` fixture, so the
registry's artifacts, digests and integrity checks stay real and only the runtime is replaced.
Every output of a prediction is filled with the version number, so a response tells which
version answered it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.tensors import numpy_dtype
from shipyard.types import ModelVersion

WAIT_S = 10.0  # upper bound for anything that should happen "at once": a hang fails, never blocks


class FakeModelError(RuntimeError):
    """Raised by the fake runtime when a test asks it to fail."""


class Gate:
    """Holds worker threads (loads or predictions) until opened; tells the test when one waits."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.reached = threading.Event()

    def pass_through(self) -> None:
        self.reached.set()
        if not self.opened.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, WAIT_S), "nothing reached the gate"


class Controls:
    """What the current test wants the fake runtime to do, and what it did, in order.

    Gates hold threading work because `predict` and `__init__` run in worker threads; the test
    waits for them without blocking the event loop.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.load_gates: dict[int, Gate] = {}  # version -> gate its load waits at
        self.predict_gates: dict[int, Gate] = {}  # version -> gate its predictions wait at
        self.fail_load: set[int] = set()  # version numbers whose load raises
        self.fail_predict: set[int] = set()  # version numbers whose predict raises
        self.loads: Counter[int] = Counter()  # version -> loads started
        self.predictions: Counter[int] = Counter()  # version -> predict calls
        self.rows: Counter[int] = Counter()  # version -> rows predicted
        self.events: list[tuple[str, int]] = []  # ("loaded" | "predicted" | "closed", version)
        self.finished = threading.Condition(self.lock)  # notified on every event

    def hold_load(self, version: int) -> Gate:
        gate = self.load_gates[version] = Gate()
        return gate

    def hold_predict(self, version: int) -> Gate:
        gate = self.predict_gates[version] = Gate()
        return gate

    def open_all(self) -> None:
        for gate in [*self.load_gates.values(), *self.predict_gates.values()]:
            gate.opened.set()

    def record(self, event: str, version: int) -> None:
        with self.lock:
            self.events.append((event, version))
            self.finished.notify_all()

    async def wait_event(self, event: str, version: int, timeout: float = WAIT_S) -> None:
        """Until `event` happened to `version` (in any thread), without blocking the loop."""

        def wait() -> bool:
            with self.lock:
                return self.finished.wait_for(lambda: (event, version) in self.events, timeout)

        assert await asyncio.to_thread(wait), f"never {event}: version {version}"

    def closed(self) -> list[int]:
        with self.lock:
            return [v for e, v in self.events if e == "closed"]


current: Controls | None = None  # set by the fixture for one test at a time


class ControlledRuntime:
    """Takes the version's signature; `predict` fills each output with the version number."""

    can_batch = True

    def __init__(self, path: Path, version: ModelVersion, settings: Any) -> None:
        assert current is not None, "use the fake fixture"
        self.controls = ctl = current
        self.version = version.version
        self.signature = version.signature
        with ctl.lock:
            ctl.loads[self.version] += 1
        gate = ctl.load_gates.get(self.version)
        if gate is not None:
            gate.pass_through()
        if self.version in ctl.fail_load:
            raise FakeModelError(f"version {self.version} refuses to load")
        ctl.record("loaded", self.version)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctl = self.controls
        rows = next(iter(inputs.values())).shape[0]
        with ctl.lock:
            ctl.predictions[self.version] += 1
            ctl.rows[self.version] += rows
        gate = ctl.predict_gates.get(self.version)
        if gate is not None:
            gate.pass_through()
        if self.version in ctl.fail_predict:
            raise FakeModelError(f"version {self.version} failed to predict")
        outputs = {}
        for spec in self.signature.outputs:
            shape = [rows, *(1 if d == -1 else d for d in spec.shape[1:])]
            outputs[spec.name] = np.full(shape, self.version, dtype=numpy_dtype(spec.datatype))
        ctl.record("predicted", self.version)
        return outputs

    def close(self) -> None:
        self.controls.record("closed", self.version)
