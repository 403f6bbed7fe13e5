"""The short Python API: `shipyard.push` and `shipyard.load` on the default registry, and reading
the prediction log the servers write."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, ModelError, ShipyardError
from shipyard.monitor.predictions import Entry, PredictionStore
from shipyard.monitor.profile import build_profile
from shipyard.monitor.reference import reference_inputs
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


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
