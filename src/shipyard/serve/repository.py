"""The versions a server holds: loading, readiness, and hot swap when a moving reference moves.

A bare `NAME` or `NAME@ALIAS` follows the registry: a poller re-resolves it, loads the new
version beside the old, switches new requests to it once it is ready, then drains the old one
(requests already holding it finish) and unloads it. `NAME:VERSION` pins. On PostgreSQL the poller
is woken at once by the registry's notification of a move (LISTEN/NOTIFY), so every server follows
within a request's time; the poll interval is the bound when notifications are lost or absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import ConflictError, ModelError, NotFoundError, NotReadyError, ShipyardError
from shipyard.monitor import metrics
from shipyard.monitor.resources import resident_bytes
from shipyard.registry import Registry, signing
from shipyard.runtimes import GenerationEngine, Runtime, is_generative, load_generator, load_runtime
from shipyard.runtimes.onnx import extra_signatures, signature_runtimes
from shipyard.serve.batching import Batcher
from shipyard.serve.statistics import VersionStatistics
from shipyard.settings import Settings
from shipyard.types import ModelRef, ModelVersion, Signature

if TYPE_CHECKING:
    from shipyard.monitor.tracing import Tracer
    from shipyard.monitor.windows import DriftMonitor

log = logging.getLogger("shipyard.serve")


@dataclass(frozen=True, slots=True)
class SignatureServing:
    """One extra signature of a served version: its inputs and outputs, runtime and batcher."""

    signature: Signature
    runtime: Runtime
    batcher: Batcher


@dataclass(eq=False)
class ServedVersion:
    version: ModelVersion
    state: str = "loading"  # loading | ready | failed | draining | unloaded
    reason: str = ""
    runtime: Runtime | None = None
    batcher: Batcher | None = None
    engine: GenerationEngine | None = None  # a generative model: an engine instead of runtime + batcher
    in_flight: int = 0
    sample_gauges: Callable[[], None] | None = None  # also called when in_flight drops to 0
    drift_window: Any = None  # its live inputs, for drift: set by monitor.windows on first use
    requests: int = 0
    rows: int = 0
    batches: int = 0
    statistics: VersionStatistics = field(default_factory=VersionStatistics)  # Triton's shape
    # A converted TensorFlow SavedModel's signatures beyond the default: each its own graph and batcher.
    signatures: dict[str, SignatureServing] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """How one served model or version stands, as every readiness route reports it."""

    state: str  # loading | ready | failed | draining
    version: int | None = None
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state in ("ready", "draining")  # a draining version still answers

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state, "version": self.version}
        if self.reason:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True, slots=True)
class Readiness:
    """The server is ready when every model it serves is."""

    models: dict[str, ModelStatus]

    @property
    def ready(self) -> bool:
        return all(status.ready for status in self.models.values())

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "models": {k: v.to_dict() for k, v in self.models.items()}}


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the model-repository index."""

    name: str
    version: int | None
    state: str  # a ServedVersion state, or unavailable (not resolved) / unloaded (registry only)
    reason: str = ""


def _no_version(model: ServedModel, version: int) -> NotFoundError:
    listing = ", ".join(str(v) for v in sorted(model.versions)) or "none"
    return NotFoundError(
        f"model {model.name!r} has no version {version} served here (served versions: {listing})",
        field="version",
    )


def _status_of(served: ServedVersion) -> ModelStatus:
    return ModelStatus(served.state, served.version.version, served.reason)


@dataclass(eq=False)
class ServedModel:
    """Every version of one name the server holds, and which one unversioned requests get."""

    name: str
    refs: list[ModelRef] = field(default_factory=list)
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    default: int | None = None
    error: str = ""  # why the name could not be resolved or loaded
    source: Registry | None = None  # where its versions come from, if not the server's registry

    @property
    def moving(self) -> ModelRef | None:
        return next((r for r in self.refs if not r.is_pinned), None)

    @property
    def pinned(self) -> set[int]:
        return {r.version for r in self.refs if r.version is not None}


class ModelRepository:
    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        tracer: Tracer | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.tracer = tracer
        self.drift = drift  # sees the inputs of every batch a model ran
        self.models: dict[str, ServedModel] = {}
        self._poller: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()  # the registry notified a move: poll now
        self._stop_listening = threading.Event()
        self._swapping: set[str] = set()
        required = settings.serve.require_signed
        self._required_key = signing.load_public_key(required, "require_signed") if required else None

    def get(self, name: str, version: int | None = None) -> ServedVersion:
        """The served version for a request; 404 naming what is served, 503 if not ready."""
        model = self.models.get(name)
        if model is None:
            raise self._not_served(name)
        number = model.default if version is None else version
        served_version = model.versions.get(number) if number is not None else None
        if served_version is None:  # unloaded versions leave `versions` as they go
            if version is None:
                raise NotReadyError(f"model {name!r} is not ready: {model.error or 'loading'}")
            raise _no_version(model, version)
        if served_version.state not in ("ready", "draining"):
            raise NotReadyError(
                f"model {name}:{served_version.version.version} is not ready "
                f"({served_version.state}{': ' + served_version.reason if served_version.reason else ''})"
            )
        return served_version

    def default(self, name: str) -> ServedVersion | None:
        """The version unversioned requests for `name` get, if it is loaded (never raises)."""
        model = self.models.get(name)
        if model is None or model.default is None:
            return None
        return model.versions.get(model.default)

    def status(self, name: str, version: int | None = None) -> ModelStatus:
        """How `name` (or one of its versions) stands; 404 if it is not served at all."""
        model = self.models.get(name)
        if model is None:
            raise self._not_served(name)
        if version is None:
            current = self.default(name)
            if current is None:
                return ModelStatus("failed" if model.error else "loading", model.default, model.error)
            if model.error and current.ready:
                # Still ready (the old version answers), but a target that could not be loaded,
                # e.g. one failing its integrity check, must show: readiness says why.
                return ModelStatus(current.state, current.version.version, model.error)
            return _status_of(current)
        served = model.versions.get(version)
        if served is None:
            raise _no_version(model, version)
        return _status_of(served)

    def _not_served(self, name: str) -> NotFoundError:
        served = ", ".join(sorted(self.models)) or "none"
        # Triton's wording first: clients and scripts written for Triton look for it.
        return NotFoundError(
            f"Request for unknown model: {name!r} is not served here (served: {served})", field="model"
        )

    def readiness(self) -> Readiness:
        """Every served name (and each pinned version as `NAME:VERSION`) and how it stands."""
        models: dict[str, ModelStatus] = {}
        for name, model in self.models.items():
            models[name] = self.status(name)
            for number in sorted(model.pinned):
                served = model.versions.get(number)
                models[f"{name}:{number}"] = (
                    _status_of(served) if served is not None else ModelStatus("loading", number)
                )
        return Readiness(models)

    async def index(self) -> list[IndexEntry]:
        """Every version served here, then every registry model not served (Triton's index)."""
        entries = []
        for model in self.models.values():
            for number, served in sorted(model.versions.items()):
                entries.append(IndexEntry(model.name, number, served.state, served.reason))
            if not model.versions:
                entries.append(IndexEntry(model.name, None, "unavailable", model.error))
        for summary in await asyncio.to_thread(self.registry.list_models):
            if summary["name"] not in self.models:
                entries.append(IndexEntry(summary["name"], int(summary["latest"]), "unloaded"))
        return entries

    async def start(self, refs: list[str]) -> None:
        """Resolve and load every reference; a failure leaves that model unready, not the server."""
        for text in refs:
            ref = ModelRef.parse(text)
            self.models.setdefault(ref.name, ServedModel(ref.name)).refs.append(ref)
        await asyncio.gather(*(self._load_model(m) for m in self.models.values()))
        self._ensure_poller()

    def _ensure_poller(self) -> None:
        """Poll the registry while any served reference can move (NAME or NAME@ALIAS)."""
        if self._poller is None and any(m.moving for m in self.models.values()):
            loop = asyncio.get_running_loop()
            self._poller = loop.create_task(self._poll())

            def moved(_name: str) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed before the listener stopped
                    loop.call_soon_threadsafe(self._moved.set)

            if self.settings.serve.listen:
                self.registry.metadata.listen(moved, self._stop_listening)

    async def _load_model(self, model: ServedModel) -> None:
        try:
            targets = [await asyncio.to_thread(self.registry.resolve, r) for r in model.refs]
        except ShipyardError as exc:
            model.error = exc.message
            log.error("cannot resolve %s: %s", model.name, exc.message)
            return
        for version in {v.version: v for v in targets}.values():
            loaded = model.versions.get(version.version)
            if loaded is None or loaded.state == "failed":  # never load a ready version twice
                await self._load_version(model, version)
        if model.moving is not None:
            model.default = targets[model.refs.index(model.moving)].version
        else:
            model.default = max(model.pinned)

    async def _load_version(self, model: ServedModel, version: ModelVersion) -> ServedVersion:
        served = ServedVersion(version)
        model.versions[version.version] = served
        started, memory_before = time.perf_counter(), resident_bytes()
        try:
            batch_options = self._batch_options(version)
            source = model.source or self.registry
            build: Callable[[ModelVersion, Registry], Any] = (
                self._build_engine if is_generative(version) else self._build_runtime
            )
            building = asyncio.ensure_future(asyncio.to_thread(build, version, source))
            try:
                built = await asyncio.shield(building)
            except asyncio.CancelledError:
                # A thread cannot be stopped: close what it builds when it is done, else it leaks.
                building.add_done_callback(_close_built_runtime)
                raise
        except ShipyardError as exc:
            served.state, served.reason = "failed", exc.message
            log.error("cannot load %s: %s", version.ref, exc.message)
            return served
        except Exception as exc:  # a runtime library failing in its own way
            served.state, served.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("cannot load %s", version.ref)
            return served
        labels = (model.name, str(version.version))
        served.sample_gauges = _gauge_sampler(served, labels)
        if is_generative(version):
            served.engine = built
            return self._ready(served, labels, started, memory_before)
        served.runtime = built
        if extra_signatures(version):
            try:
                extras = await asyncio.to_thread(self._build_signatures, version, source)
            except ShipyardError as exc:
                await asyncio.to_thread(built.close)
                served.state, served.reason = "failed", exc.message
                log.error("cannot load %s: %s", version.ref, exc.message)
                return served
            for name, runtime in extras.items():
                batcher = Batcher(
                    runtime.predict,
                    can_batch=runtime.can_batch,
                    name=model.name,
                    max_queue=self.settings.serve.max_queue,
                    max_queue_wait_s=self.settings.serve.max_queue_wait_s,
                    on_batch=_batch_observer(served, labels, None),
                    **batch_options,
                )
                batcher.start()
                served.signatures[name] = SignatureServing(runtime.signature, runtime, batcher)
        served.batcher = Batcher(
            served.runtime.predict,
            can_batch=served.runtime.can_batch,
            name=model.name,
            max_queue=self.settings.serve.max_queue,
            max_queue_wait_s=self.settings.serve.max_queue_wait_s,
            on_batch=_batch_observer(served, labels, self.drift),
            on_idle=served.sample_gauges,
            trace_batch=None if self.tracer is None else self.tracer.batches(model.name, version.version),
            **batch_options,
        )
        served.batcher.start()
        if self.drift is not None:
            self.drift.attach(served)
        return self._ready(served, labels, started, memory_before)

    def _ready(
        self, served: ServedVersion, labels: tuple[str, str], started: float, memory_before: int | None
    ) -> ServedVersion:
        version = served.version
        served.state = "ready"
        metrics.LOAD_TIME.labels(*labels).observe(time.perf_counter() - started)
        metrics.LOADED_MODELS.inc()
        # A generative version's queue is its engine's (requests waiting for a slot).
        generative = served.engine is not None
        capacity = self.settings.generation.max_queue if generative else self.settings.serve.max_queue
        _publish_sizes(served, labels, capacity, memory_before)
        log.info("loaded %s in %.3fs", version.ref, time.perf_counter() - started)
        return served

    def _build_runtime(self, version: ModelVersion, registry: Registry) -> Runtime:
        if self._required_key is not None:  # before any byte of the artifact is read
            registry.check_signature(version, self._required_key)
        path = registry.artifact_path(version)
        return load_runtime(version, path, self.settings.runtime)

    def _build_signatures(self, version: ModelVersion, registry: Registry) -> dict[str, Runtime]:
        """The runtimes of a version's extra signatures (its artifact was checked by the main load)."""
        return dict(signature_runtimes(version, registry.artifact_path(version), self.settings.runtime))

    def _build_engine(self, version: ModelVersion, registry: Registry) -> GenerationEngine:
        if self._required_key is not None:
            registry.check_signature(version, self._required_key)
        path = registry.artifact_path(version)
        return load_generator(version, path, self.settings.runtime, self.settings.generation)

    def _batch_options(self, version: ModelVersion) -> dict[str, Any]:
        """The server's settings, with options stored with the version where the server set none."""
        serve = self.settings.serve.for_version(version.serving, str(version.ref))
        return {
            "max_batch_size": serve.max_batch_size,
            "max_delay_s": serve.max_batch_delay_ms / 1000,
            "preferred_batch_sizes": tuple(serve.preferred_batch_sizes),
        }

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), self.settings.serve.poll_interval_s)
            self._moved.clear()
            for model in list(self.models.values()):
                if model.moving is not None and model.name not in self._swapping:
                    try:
                        await self.refresh(model)
                    except Exception:  # keep polling; the next round retries
                        log.exception("refreshing %s failed", model.name)

    async def refresh(self, model: ServedModel) -> None:
        """Follow a moved alias (or a new latest version) with zero failed requests."""
        ref = model.moving
        if ref is None:
            return
        try:
            target = await asyncio.to_thread(self.registry.resolve, ref)
        except ShipyardError as exc:
            model.error = exc.message  # e.g. alias deleted: keep serving what we have
            return
        if target.version == model.default:
            return
        self._swapping.add(model.name)
        try:
            served = model.versions.get(target.version)
            if served is None or not served.ready:
                served = await self._load_version(model, target)
            if not served.ready:
                model.error = (
                    f"{ref} points at version {target.version}, which cannot be served: {served.reason}"
                )
                return
            old = model.default
            model.default, model.error = target.version, ""
            log.info("%s now serves %s (was %s)", ref, target.ref, old)
            if old is not None and old not in model.pinned:
                await self._drain(model, old)
        finally:
            self._swapping.discard(model.name)

    async def _drain(self, model: ServedModel, number: int) -> None:
        served = model.versions.get(number)
        if served is None:
            return
        served.state = "draining"
        deadline = time.perf_counter() + self.settings.serve.grace_period_s
        while served.in_flight and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await self._unload(model, served)

    async def _unload(self, model: ServedModel, served: ServedVersion) -> None:
        was_ready = served.state in ("ready", "draining")
        served.state = "unloaded"
        model.versions.pop(served.version.version, None)
        if served.batcher is not None:
            await served.batcher.close(self.settings.serve.grace_period_s)
        if served.runtime is not None:
            await asyncio.to_thread(served.runtime.close)
        for extra in served.signatures.values():
            await extra.batcher.close(self.settings.serve.grace_period_s)
            await asyncio.to_thread(extra.runtime.close)
        if served.engine is not None:  # ends its running sequences with an error chunk
            await asyncio.to_thread(served.engine.close)
            labels = (model.name, str(served.version.version))
            for gauge in (
                metrics.LLM_REQUESTS_RUNNING,
                metrics.LLM_REQUESTS_WAITING,
                metrics.LLM_KV_CACHE_USAGE,
            ):
                gauge.labels(*labels).set(0)
        if was_ready:
            metrics.LOADED_MODELS.dec()
            _publish_sizes(served, (model.name, str(served.version.version)), 0, None)

    async def load(self, ref: ModelRef, *, actor: str | None = None) -> ServedModel:
        """Management: serve (or re-resolve) a reference at run time.

        The reference is resolved first, so an unknown name, version or alias is a 404 that
        leaves the server as it was; a version that fails to load is not kept (a 500: the
        request was fine, the model was not).
        """
        target = await asyncio.to_thread(self.registry.resolve, ref)
        model = self.models.get(ref.name)
        if model is not None and ref in model.refs:
            await self.refresh(model)
            await self._audit_load(target, ref, actor)
            return model
        fresh = model is None
        if model is None:
            model = ServedModel(ref.name)
        served = model.versions.get(target.version)
        if served is None or not served.ready:
            served = await self._load_version(model, target)
        if not served.ready:
            if fresh:
                await self._unload(model, served)
            else:
                model.versions.pop(target.version, None)
            raise ModelError(
                f"{target.ref} failed to load: {served.reason}",
                public=f"{target.ref} failed to load; the server log has the details",
            )
        model.refs.append(ref)
        if not ref.is_pinned or model.default is None:
            model.default = target.version
        model.error = ""
        self.models[ref.name] = model
        self._ensure_poller()
        await self._audit_load(target, ref, actor)
        return model

    async def _audit_load(self, target: ModelVersion, ref: ModelRef, actor: str | None) -> None:
        await asyncio.to_thread(
            self.registry.audit, "serve.load", target=str(target.ref), actor=actor, detail={"ref": str(ref)}
        )

    async def load_from(self, name: str, source: Registry, version: ModelVersion) -> ServedModel:
        """Serve `version` of another registry (a folder SageMaker unpacked) under `name`, pinned;
        409 if `name` is served already. The repository closes `source` when it unloads `name`."""
        if name in self.models or name in self._swapping:
            raise ConflictError(f"model {name!r} is loaded already; unload it first", field="model_name")
        model = ServedModel(name, [ModelRef(version.name, version.version)], source=source)
        # Out of `models` until it is ready, so readiness (SageMaker's /ping) stays as it was.
        self._swapping.add(name)
        try:
            served = await self._load_version(model, version)
        finally:
            self._swapping.discard(name)
        if not served.ready:
            await self._unload(model, served)
            await asyncio.to_thread(source.close)
            raise ModelError(
                f"{version.ref} failed to load as {name!r}: {served.reason}",
                public=f"{version.ref} failed to load; the server log has the details",
            )
        model.default = version.version
        self.models[name] = model
        return model

    async def unload(self, name: str, *, actor: str | None = None) -> None:
        model = self.models.pop(name, None)
        if model is None:
            raise NotFoundError(f"model {name!r} is not loaded", field="model")
        for served in list(model.versions.values()):
            await self._unload(model, served)
        if model.source is not None:
            await asyncio.to_thread(model.source.close)
        await asyncio.to_thread(self.registry.audit, "serve.unload", target=name, actor=actor)

    async def close(self) -> None:
        self._stop_listening.set()
        if self._poller is not None:
            self._poller.cancel()
        for model in list(self.models.values()):
            for served in list(model.versions.values()):
                await self._unload(model, served)
            if model.source is not None:
                await asyncio.to_thread(model.source.close)


def _gauge_sampler(served: ServedVersion, labels: tuple[str, str]) -> Callable[[], None]:
    """Sets the in-flight and queue-depth gauges from the version's state. They are sampled, not
    moved on every request (cheaper): after each batch, when the queue runs dry, and when the
    version's last request finishes, so they read 0 once it is quiet."""
    in_flight, depth = metrics.IN_FLIGHT.labels(*labels), metrics.QUEUE_DEPTH.labels(*labels)

    def sample() -> None:
        in_flight.set(served.in_flight)
        depth.set(served.batcher.depth if served.batcher is not None else 0)

    return sample


def _batch_observer(
    served: ServedVersion, labels: tuple[str, str], drift: DriftMonitor | None
) -> Callable[[int, float, list[float], dict[str, np.ndarray], dict[str, np.ndarray]], None]:
    """What follows each batch a version ran: its metrics and statistics, and its inputs (and
    outputs, which drift keeps of an embedding model) for drift. Drift sees whole batches, not
    requests: one entry per batch in the window, so a busy server holds a fraction of the objects
    (measured: per-request entries cost a request several µs in memory traffic, more than the
    append itself)."""
    batch_size = metrics.BATCH_SIZE.labels(*labels)  # labels() costs microseconds: once
    inference_time = metrics.INFERENCE_TIME.labels(*labels)
    queue_time = metrics.QUEUE_TIME.labels(*labels)

    def observe(
        rows: int,
        seconds: float,
        waits: list[float],
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        served.batches += 1
        served.statistics.ran_batch(rows, seconds, waits)
        if served.sample_gauges is not None:
            served.sample_gauges()
        batch_size.observe(rows)
        inference_time.observe(seconds)
        for wait in waits:
            queue_time.observe(wait)
        if drift is not None:
            drift.observe(served, inputs, rows, outputs)

    return observe


def _publish_sizes(
    served: ServedVersion, labels: tuple[str, str], max_queue: int, memory_before: int | None
) -> None:
    """A version's queue capacity, artifact size and memory estimate; all 0 once it is unloaded
    (`max_queue` 0). The estimate is what this process grew by while the version loaded: other
    versions loading at the same time blur it."""
    metrics.QUEUE_CAPACITY.labels(*labels).set(max_queue)
    metrics.MODEL_ARTIFACT.labels(*labels).set(served.version.size if max_queue else 0)
    memory_after = resident_bytes()
    grown = memory_after - memory_before if memory_before is not None and memory_after is not None else 0
    metrics.MODEL_MEMORY.labels(*labels).set(max(0, grown))


def _close_built_runtime(building: asyncio.Future[Runtime | GenerationEngine]) -> None:
    if not building.cancelled() and building.exception() is None:
        building.result().close()
