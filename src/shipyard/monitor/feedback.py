"""Feedback: a request's true label (or value) joined with the prediction the log kept for it.

A caller names a request by the `X-Request-ID` of its response. The prediction log finds it (in
any worker's segments, hours later while retention keeps it); its summary holds the outputs'
values when they are small, such as a classifier's labels, which truth.py reads and checks the
given truth against. Joined records go to the `FeedbackStore`, which every process shares (see
feedback_store.py): a request is labelled once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shipyard.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ShipyardError,
)
from shipyard.monitor.feedback_store import FeedbackStore, Labelled
from shipyard.monitor.predictions import Entry, PredictionStore
from shipyard.monitor.truth import Label, judge, prediction_of, quoted
from shipyard.settings import Settings
from shipyard.types import ModelVersion

_MAX_ID = 128  # characters: the longest request id the server keeps (serve.request_ids)
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item: its stored record, or why it was refused."""

    request_id: str | None
    record: Labelled | None = None
    error: ShipyardError | None = None

    def to_dict(self, index: int | None = None) -> dict[str, Any]:
        """The item's answer (with its `index` in a batch)."""
        body: dict[str, Any] = {} if index is None else {"index": index}
        body["request_id"] = self.request_id
        if self.record is not None:
            body.update(status=200, version=self.record.version)
        elif self.error is not None:
            body.update(status=self.error.status_code, error=self.error.message, field=self.error.field)
        return body


def batch_body(model: str, outcomes: list[Outcome]) -> dict[str, Any]:
    """A batch's answer: how many items were accepted, and each item's status, error and field."""
    accepted = sum(1 for o in outcomes if o.record is not None)
    return {
        "model": model,
        "accepted": accepted,
        "failed": len(outcomes) - accepted,
        "results": [o.to_dict(i) for i, o in enumerate(outcomes)],
    }


def parse_feedback(body: Any, max_batch: int) -> tuple[list[Label | ShipyardError], bool]:
    """The items of a feedback body, `{"request_id", "label" | "value"}` or `{"feedback": [...]}`,
    and whether it was a batch. In a batch a malformed item is its own error; the body's shape,
    or more than `max_batch` items, fails the whole request."""
    if not isinstance(body, dict):
        raise InvalidInputError(
            'feedback must be a JSON object: {"request_id": ..., "label": ...} or {"feedback": [...]}',
            field="body",
        )
    if "feedback" not in body:
        return [parse_item(body)], False
    items = body["feedback"]
    if not isinstance(items, list) or not items:
        raise InvalidInputError(
            'feedback must be a non-empty list of {"request_id": ..., "label" or "value": ...}',
            field="feedback",
        )
    if len(items) > max_batch:
        raise PayloadTooLargeError(
            f"{len(items)} feedback items are over the limit of {max_batch} per request (setting "
            "quality.max_batch); send them in smaller batches",
            field="feedback",
        )
    parsed: list[Label | ShipyardError] = []
    for item in items:
        try:
            parsed.append(parse_item(item))
        except ShipyardError as exc:
            parsed.append(exc)
    return parsed, True


def parse_item(item: Any) -> Label:
    if not isinstance(item, dict):
        raise InvalidInputError(
            f'a feedback item must be {{"request_id": ..., "label" or "value": ...}}, got {quoted(item)}',
            field="feedback",
        )
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= _MAX_ID:
        raise InvalidInputError(
            "request_id must be the X-Request-ID of a response (text of 1 to 128 characters), got "
            f"{quoted(request_id)}",
            field="request_id",
        )
    given = [name for name in ("label", "value") if name in item]
    if len(given) != 1:
        raise InvalidInputError(
            f"feedback for {request_id!r} needs exactly one of label (a class) or value (a number)",
            field="label",
        )
    return Label(request_id, item[given[0]], given[0])


class FeedbackIntake:
    """Joins feedback with the prediction log and stores it (one call per request or file)."""

    def __init__(
        self,
        store: FeedbackStore,
        predictions: PredictionStore,
        version_of: Callable[[str, int], ModelVersion | None],
        retention_s: float,
    ) -> None:
        self.store = store
        self.predictions = predictions
        self._version_of = version_of
        self._retention_s = retention_s
        self._pruned_at = 0.0

    @classmethod
    def of(cls, settings: Settings, version_of: Callable[[str, int], ModelVersion | None]) -> FeedbackIntake:
        """The intake of a registry home: its feedback store, its prediction log and retention."""
        return cls(
            FeedbackStore(settings.feedback_path),
            PredictionStore(settings.predictions_dir),
            version_of,
            settings.prediction_log.max_age_s,
        )

    def submit(
        self,
        model: str,
        items: Sequence[Label | ShipyardError],
        *,
        version: int | None = None,
        flush: Callable[[], object] | None = None,
    ) -> list[Outcome]:
        """Each item's outcome, in order. `version`: the requests must have been answered by it;
        `flush`: writes this process's queued log entries, tried once when an id is not found."""
        wanted = {item.request_id for item in items if isinstance(item, Label)}
        found = self._find(model, version, wanted)
        if flush is not None and len(found) < len(wanted):
            flush()  # the writer drains about once a second: the request may be waiting in it
            found.update(self._find(model, version, wanted - set(found)))
        now = time.time()
        outcomes: list[Outcome] = []
        versions: dict[int, ModelVersion | None] = {}
        taken: set[str] = set()
        for item in items:
            if not isinstance(item, Label):
                outcomes.append(Outcome(None, error=item))
                continue
            try:
                if item.request_id in taken:
                    raise ConflictError(
                        f"request {item.request_id!r} appears twice in this feedback; a request is "
                        "labelled once",
                        field="request_id",
                    )
                entry = found.get(item.request_id)
                if entry is None:
                    raise self._not_found(model, version, item.request_id)
                if entry.version is not None and entry.version not in versions:
                    versions[entry.version] = self._version_of(model, entry.version)
                prediction = prediction_of(entry, versions.get(entry.version or 0))
                truth = judge(item, prediction, f"{model}:{entry.version}")
            except ShipyardError as exc:
                outcomes.append(Outcome(item.request_id, error=exc))
                continue
            taken.add(item.request_id)
            record = Labelled(
                model,
                item.request_id,
                entry.version,
                prediction.task,
                entry.time,
                now,
                prediction.values,
                truth,
            )
            outcomes.append(Outcome(item.request_id, record))
        self._store(outcomes)
        return outcomes

    def _store(self, outcomes: list[Outcome]) -> None:
        """Write the joined records; those labelled already (by anyone, at any time) become 409s."""
        joined = [i for i, o in enumerate(outcomes) if o.record is not None]
        stored = self.store.add([r for i in joined if (r := outcomes[i].record) is not None])
        for i, ok in zip(joined, stored, strict=True):
            if not ok:
                request_id = outcomes[i].request_id
                outcomes[i] = Outcome(
                    request_id,
                    error=ConflictError(
                        f"request {request_id!r} has feedback already; a request is labelled once",
                        field="request_id",
                    ),
                )
        if time.time() - self._pruned_at > 3600:  # records of predictions the log no longer keeps
            self._pruned_at = time.time()
            self.store.prune(self._pruned_at - self._retention_s)

    def _find(self, model: str, version: int | None, request_ids: set[str]) -> dict[str, Entry]:
        """The newest logged entry of `model` (and `version`) for each id found."""
        found: dict[str, Entry] = {}
        for entry in self.predictions.lookup(request_ids):  # newest first
            if entry.model == model and (version is None or entry.version == version):
                found.setdefault(entry.request_id, entry)
        return found

    def _not_found(self, model: str, version: int | None, request_id: str) -> NotFoundError:
        which = model if version is None else f"{model}:{version}"
        kept = next(
            (f"{self._retention_s / size:g}{unit}" for unit, size in _UNITS if self._retention_s >= size),
            f"{self._retention_s:g}s",
        )
        return NotFoundError(
            f"no logged prediction of {which} has request id {request_id!r}: it was not sampled "
            f"(prediction_log.sample_rate), is older than the log keeps ({kept}), was answered by "
            "another model, or was logged less than a second ago by another worker (retry)",
            field="request_id",
        )
