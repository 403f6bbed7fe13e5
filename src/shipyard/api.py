"""The short Python API: `shipyard.push` and `shipyard.load` on the default registry, reading
the prediction log the servers write, and live quality: feedback joined with it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, ModelError, NotFoundError, ShipyardError
from shipyard.monitor.feedback import FeedbackIntake, Outcome, batch_body, parse_feedback
from shipyard.monitor.predictions import Entry, PredictionStore
from shipyard.monitor.profile import build_profile
from shipyard.monitor.quality import Window
from shipyard.monitor.quality import report as quality_report
from shipyard.monitor.reference import reference_inputs
from shipyard.monitor.truth import Label
from shipyard.registry import Registry
from shipyard.runtimes.model import Model
from shipyard.settings import Settings
from shipyard.types import ModelRef, ModelVersion, Signature


def push(
    name: str, model: Any, *, home: str | Path | None = None, reference: Any = None, **metadata: Any
) -> ModelVersion:
    """Push an estimator or model file as the next version of `name` (see `Registry.push`).

    `reference`: sample inputs (an array, rows, records or a mapping of input names to arrays,
    e.g. the training features) whose profile is stored with the version for drift."""
    if reference is not None:
        metadata["data_profile"] = partial(_profile, reference)
    with Registry(home) as registry:
        return registry.push(name, model, **metadata)


def _profile(reference: Any, signature: Signature) -> dict[str, Any]:
    inputs, names = reference_inputs(reference, signature)
    return build_profile(inputs, signature, names=names).to_dict()


def load(ref: str | ModelRef, *, home: str | Path | None = None) -> Model:
    """Load `name`, `name:3` or `name@alias` for prediction."""
    with Registry(home) as registry:
        try:
            return registry.load(ref)
        except ShipyardError:
            raise
        except Exception as exc:  # a runtime library's own error: callers catch ShipyardError
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ModelError(
                f"loading {ref} failed in {type(exc).__module__}.{type(exc).__name__}: {detail}",
                public=f"model {ref} could not be loaded",
            ) from exc


def predictions(
    ref: str | ModelRef,
    *,
    since: datetime | timedelta | None = None,
    limit: int | None = 100,
    home: str | Path | None = None,
    settings: Settings | None = None,
) -> list[Entry]:
    """The prediction log's entries for `ref`, newest first: `NAME` covers every version, `NAME:3`
    and `NAME@ALIAS` one; `since` is a time or how long ago (at most what the log keeps)."""
    settings = settings or Settings.load(home=home)
    with Registry(settings=settings) as registry:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.version is None and ref.alias is None:
            registry.list_versions(ref.name)  # 404 naming the models there are, if it is unknown
            version = None
        else:
            version = registry.resolve(ref).version
    start = None
    if since is not None:
        start = time.time() - since.total_seconds() if isinstance(since, timedelta) else since.timestamp()
        kept = settings.prediction_log.max_age_s
        if start < time.time() - kept - 60:  # a minute of slack for "the last 7d" typed as 7d
            raise InvalidInputError(
                f"the prediction log keeps {_duration(kept)} (setting prediction_log.max_age_s); "
                f"ask for a window of at most {_duration(kept)}, or raise the setting for the future",
                field="since",
            )
    return PredictionStore(settings.predictions_dir).read(ref.name, version=version, since=start, limit=limit)


def lookup_predictions(
    request_ids: Iterable[str], *, home: str | Path | None = None, settings: Settings | None = None
) -> list[Entry]:
    """The logged entries of these request ids (the `X-Request-ID` of each response), newest
    first; an id not logged (not sampled, or past retention) has none."""
    settings = settings or Settings.load(home=home)
    return PredictionStore(settings.predictions_dir).lookup(request_ids)


def feedback(
    ref: str | ModelRef,
    request_id: str | None = None,
    label: Any = None,
    *,
    value: Any = None,
    items: Iterable[Mapping[str, Any]] | None = None,
    home: str | Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Give the true `label` (a classifier's) or `value` (a regressor's) of the logged request
    `request_id`, or of many: `items=[{"request_id": ..., "label": ...}, ...]`. No server needed:
    it joins the prediction log in the registry home and writes where every server scores from.

    `ref`: `NAME`, or `NAME:3` / `NAME@ALIAS` when the requests must have been answered by that
    version. One item raises its error (unknown id: NotFoundError; a label of the wrong type or
    class: InvalidInputError; labelled already: ConflictError); `items` answer each item's
    status, as the HTTP route does."""
    settings = settings or Settings.load(home=home)
    if items is None:
        if request_id is None or (label is None) == (value is None):
            raise InvalidInputError(
                "give request_id and one of label or value, or items=[{...}, ...]", field="request_id"
            )
        given = {"request_id": request_id, **({"label": label} if value is None else {"value": value})}
        (outcome,) = submit_feedback(ref, parse_feedback(given, 1)[0], settings)
        if outcome.error is not None:
            raise outcome.error
        return {"model": ModelRef.parse(str(ref)).name, **outcome.to_dict()}
    outcomes = submit_feedback(ref, parse_feedback({"feedback": list(items)}, 1 << 62)[0], settings)
    return batch_body(ModelRef.parse(str(ref)).name, outcomes)


def submit_feedback(
    ref: str | ModelRef, items: Sequence[Label | ShipyardError], settings: Settings
) -> list[Outcome]:
    """Join and store feedback for `ref`'s requests (see `feedback`), a batch at a time."""
    with Registry(settings=settings) as registry:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        version = _version_of_ref(registry, ref)

        def version_of(name: str, number: int) -> ModelVersion | None:
            try:
                return registry.resolve(ModelRef(name, version=number))
            except NotFoundError:
                return None

        intake = FeedbackIntake.of(settings, version_of)
        size = settings.quality.max_batch
        outcomes: list[Outcome] = []
        for start in range(0, len(items), size):
            outcomes += intake.submit(ref.name, items[start : start + size], version=version)
        return outcomes


def quality(
    ref: str | ModelRef,
    window: str | None = None,
    *,
    home: str | Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Live quality of `ref` (`NAME` for each version, `NAME:3` or `NAME@ALIAS` for one) over
    `window` (`1d`, `6h`, or `500` labelled rows; default what /metrics scores), with the delay
    and coverage of its feedback: what `shipyard quality` shows."""
    settings = settings or Settings.load(home=home)
    selected = Window.parse(window, settings)
    with Registry(settings=settings) as registry:
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        version = _version_of_ref(registry, ref)
    return quality_report(settings, ref.name, version, selected)


def _version_of_ref(registry: Registry, ref: ModelRef) -> int | None:
    """The version `ref` names, None for a bare name (404 naming the models there are if unknown)."""
    if ref.version is None and ref.alias is None:
        registry.list_versions(ref.name)
        return None
    return registry.resolve(ref).version


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
