"""The one inference path under every protocol: validate, queue, batch, run, return."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import InvalidInputError, PayloadTooLargeError
from shipyard.runtimes.generation import GenerationEngine, GenerationRequest
from shipyard.serve.generation import Choice, TokenMeter, metered
from shipyard.serve.limits import Limits, ModelPolicy
from shipyard.serve.repository import IndexEntry, ModelRepository, ModelStatus, Readiness, ServedVersion
from shipyard.serve.statistics import VersionStatistics
from shipyard.settings import ServeSettings
from shipyard.tensors import coerce_inputs
from shipyard.types import ModelRef, ModelVersion

if TYPE_CHECKING:
    from shipyard.monitor.prediction_recorder import Sample
    from shipyard.monitor.tracing import RequestTrace
    from shipyard.registry import Registry


class Held:
    """`with dataplane.acquire(...) as served:` counts the request in flight on its version.

    A plain class: a generator-based context manager costs microseconds on every request.
    """

    __slots__ = ("served",)

    def __init__(self, served: ServedVersion) -> None:
        self.served = served

    def __enter__(self) -> ServedVersion:
        self.served.in_flight += 1  # the gauge samples this (see repository._gauge_sampler)
        return self.served

    def __exit__(self, *exc: object) -> None:
        served = self.served
        served.in_flight -= 1
        if not served.in_flight and served.sample_gauges is not None:
            served.sample_gauges()  # the last one out: else the gauge keeps a busy sample


@dataclass(frozen=True, slots=True)
class VersionStats:
    name: str
    version: int
    requests: int
    rows: int
    batches: int
    statistics: VersionStatistics


@dataclass(frozen=True, slots=True)
class InferResult:
    version: ModelVersion
    outputs: dict[str, np.ndarray]


class DataPlane:
    """Transport-agnostic inference: protocol adapters translate wire formats to and from this."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServeSettings | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._repository = repository
        self._settings = settings or repository.settings.serve
        self._limits = limits or Limits(self._settings)
        self._policies: weakref.WeakKeyDictionary[ServedVersion, ModelPolicy] = weakref.WeakKeyDictionary()
        self.tracer = repository.tracer  # None unless tracing is on

    def model(self, name: str, version: int | None = None) -> ServedVersion:
        return self._repository.get(name, version)

    def acquire(self, name: str, version: int | None = None) -> Held:
        """Hold one served version for a whole request, so a hot swap drains it, not drops it."""
        return Held(self._repository.get(name, version))

    async def infer(
        self,
        served: ServedVersion,
        inputs: Any,
        disconnected: Callable[[], Awaitable[None]] | None = None,
        *,
        timeout_s: float | None = None,
        caller: str | None = None,
        trace: RequestTrace | None = None,
        sample: Sample | None = None,
        signature: str | None = None,
    ) -> InferResult:
        """Run one request on a held version; `inputs` maps names to values (or rows).

        `disconnected` resolves when the client goes away: the request is then withdrawn from
        its queue, so an abandoned request costs no inference and holds no memory. `timeout_s`
        is the client's deadline (capped by the server's), else the version's `timeout_s`;
        `caller` is the caller's key id, for its rate limit; `trace` the request's, if traced;
        `sample`, if given, is filled in with the validated inputs and, by the batcher, the batch
        the request ran in (for the prediction log). `signature` names one of a converted
        TensorFlow SavedModel's extra signatures (None: the version's own).
        """
        record = served.version
        if served.engine is not None:
            raise InvalidInputError(
                f"model {record.name!r} is a generative language model: it takes text on "
                f"/v1/chat/completions, /v1/completions or /v2/models/{record.name}/generate",
                field="model",
            )
        started = time.perf_counter_ns()
        policy = self._policies.get(served) or self._policy(served)
        admission = self._limits.admit(record.name, policy, caller)
        try:
            spec, batcher = record.signature, served.batcher
            if signature is not None:
                extra = served.signatures.get(signature)
                if extra is None:
                    raise InvalidInputError(
                        f"{record.ref} has no signature {signature[:100]!r}", field="signature_name"
                    )
                spec, batcher = extra.signature, extra.batcher
            arrays = coerce_inputs(spec, inputs)
            if sample is not None:
                sample.inputs = arrays
            rows = self._check_size(arrays)
            if batcher is None:
                raise RuntimeError(f"{record.ref} has no batcher")  # cannot happen once ready
            timeout = policy.timeout_s if timeout_s is None else min(timeout_s, self._settings.max_timeout_s)
            # Watching for a disconnect costs a task; it pays only for a request that will wait
            # behind at least one whole batch, which is also when abandoned work would pile up.
            if disconnected is None or batcher.depth < batcher.max_batch_size:
                outputs = await batcher.submit(arrays, timeout, trace, sample)
            else:
                outputs = await _unless_disconnected(
                    batcher.submit(arrays, timeout, trace, sample), disconnected
                )
        except Exception:
            served.statistics.failed(time.perf_counter_ns() - started)
            raise
        finally:
            if admission is not None:
                admission.release()
        served.requests += 1
        served.rows += rows
        served.statistics.succeeded(time.perf_counter_ns() - started)
        return InferResult(record, outputs)

    def engine(self, served: ServedVersion, route: str) -> GenerationEngine:
        """The generation engine of a held version; 400 naming what the model is if it has none."""
        if served.engine is None:
            record = served.version
            kind = record.extra.get("task") or record.format
            raise InvalidInputError(
                f"model {record.name!r} is not a generative language model ({kind} model); "
                f"{route} serves generative models only (GGUF files or causal-LM folders)",
                field="model",
            )
        return served.engine

    def generate(
        self, served: ServedVersion, requests: list[GenerationRequest], *, caller: str | None, started: float
    ) -> AsyncGenerator[Choice]:
        """Run the sequences of one generation request (its `n` choices) on a generative version:
        the chunks of all, as they come, each with its choice index. The request obeys the rate and
        concurrency limits every inference does and holds the version (a hot swap drains it) until
        its last sequence ends or the iterator is closed; `started` (perf_counter) is when it
        arrived, for time to first token."""
        engine = self.engine(served, "this route")
        record = served.version
        served.requests += 1
        policy = self._policies.get(served) or self._policy(served)
        meter = TokenMeter(record.name, record.version, started)
        return metered(
            engine, requests, meter, lambda: self._limits.admit(record.name, policy, caller), Held(served)
        )

    def timeout(self, served: ServedVersion, requested_s: float | None) -> float:
        """The seconds a request may run: the client's deadline capped by the server's, else the
        version's `timeout_s`."""
        policy = self._policies.get(served) or self._policy(served)
        return policy.timeout_s if requested_s is None else min(requested_s, self._settings.max_timeout_s)

    def _policy(self, served: ServedVersion) -> ModelPolicy:
        record = served.version
        policy = self._policies[served] = ModelPolicy.of(
            self._settings.for_version(record.serving, str(record.ref))
        )
        return policy

    def _check_size(self, arrays: dict[str, np.ndarray]) -> int:
        """The request's row count; 413 above the row or element cap, before any work is queued:
        one huge request would hold the model (and every request behind it) for its whole run."""
        settings = self._settings
        rows = max((a.shape[0] if a.ndim else 1 for a in arrays.values()), default=0)
        if rows > settings.max_rows_per_request:
            raise PayloadTooLargeError(
                f"the request has {rows} rows, over the limit of {settings.max_rows_per_request} per "
                "request (setting serve.max_rows_per_request); send them in smaller requests",
                field="inputs",
            )
        elements = sum(a.size for a in arrays.values())
        if elements > settings.max_elements_per_request:
            raise PayloadTooLargeError(
                f"the request has {elements} elements, over the limit of "
                f"{settings.max_elements_per_request} per request (setting "
                "serve.max_elements_per_request); send them in smaller requests",
                field="inputs",
            )
        return rows

    def served_names(self) -> list[str]:
        """The model names served here, in the order the server was given them."""
        return list(self._repository.models)

    def is_served(self, name: str) -> bool:
        return name in self._repository.models

    def default(self, name: str) -> ServedVersion | None:
        """The version unversioned requests for `name` get, if one is loaded (never raises)."""
        return self._repository.default(name)

    def versions(self, name: str) -> list[int]:
        """The version numbers held for `name` (404 if it is not served)."""
        self._repository.status(name)
        return sorted(self._repository.models[name].versions)

    def readiness(self) -> Readiness:
        """Every served model and its state; the one body of /readyz, /v2/health/ready and /ping."""
        return self._repository.readiness()

    def status(self, name: str, version: int | None = None) -> ModelStatus:
        """How one model (or version) stands; 404 if it is not served."""
        return self._repository.status(name, version)

    def statistics(self, name: str | None = None, version: int | None = None) -> list[VersionStats]:
        """Request, row and batch counts of one served version, or of every version held."""
        if name is not None:
            chosen = [self._repository.get(name, version)]
        else:
            chosen = [s for m in self._repository.models.values() for s in m.versions.values()]
        return [
            VersionStats(s.version.name, s.version.version, s.requests, s.rows, s.batches, s.statistics)
            for s in chosen
        ]

    async def index(self) -> list[IndexEntry]:
        return await self._repository.index()

    async def load(self, ref: ModelRef, *, actor: str | None = None) -> int:
        """Serve `ref` at run time; returns the version unversioned requests now get."""
        model = await self._repository.load(ref, actor=actor)
        if model.default is None:
            raise RuntimeError(f"{ref} loaded without a default version")  # load always sets one
        return model.default

    async def load_from(self, name: str, source: Registry, version: ModelVersion) -> None:
        """Serve `version` of the registry `source` under `name` (SageMaker's multi-model load)."""
        await self._repository.load_from(name, source, version)

    async def unload(self, name: str, *, actor: str | None = None) -> None:
        await self._repository.unload(name, actor=actor)


class ClientDisconnectedError(Exception):
    """The client closed the connection before its result was ready."""


async def _unless_disconnected(
    work: Awaitable[dict[str, np.ndarray]], disconnected: Callable[[], Awaitable[None]]
) -> dict[str, np.ndarray]:
    current = asyncio.current_task()
    gone = False

    def on_disconnect(_: asyncio.Future[None]) -> None:
        nonlocal gone
        gone = True
        if current is not None:
            current.cancel()  # cancels the awaited queue item, which the batcher then skips

    watcher = asyncio.ensure_future(disconnected())
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise ClientDisconnectedError from None
        raise
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
