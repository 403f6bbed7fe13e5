"""`POST /v2/models/{model}/feedback` (true labels or values of logged requests) and
`GET /v2/models/{model}[/versions/{version}]/quality?window=…` (live quality, as `shipyard quality`).

Feedback needs the `infer:<model>` scope: whoever may use a model may report how its answers
turned out, and a labelling job needs no key that can read or manage anything else. One item,
`{"request_id": …, "label" | "value": …}`, answers 200 or the item's error (404 unknown request
id, 400 naming `label` or `value`, 409 labelled already). A batch, `{"feedback": [...]}` of at
most `quality.max_batch` items (413 beyond), stores every good item and answers 200 when all
were accepted, else 207 with each item's status, error and field: one expired id does not cost
the rest of a day's labels.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import NotFoundError, ShipyardError
from shipyard.monitor.feedback import FeedbackIntake, batch_body, parse_feedback
from shipyard.monitor.prediction_recorder import PredictionRecorder
from shipyard.monitor.quality import QualityMonitor, Window, report
from shipyard.registry import Registry
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import (
    endpoint,
    json_response,
    parse_json,
    parse_version,
    read_body,
    require_json,
)
from shipyard.settings import Settings
from shipyard.types import ModelRef, ModelVersion


def feedback_routes(
    dataplane: DataPlane,
    registry: Registry,
    settings: Settings,
    quality: QualityMonitor,
    recorder: PredictionRecorder | None,
) -> list[Route]:
    def version_of(name: str, number: int) -> ModelVersion | None:
        """The record of the version that answered (served here, or since unloaded)."""
        try:
            return dataplane.model(name, number).version
        except ShipyardError:  # not served here (any more): the registry has it
            pass
        try:
            return registry.resolve(ModelRef(name, version=number))
        except NotFoundError:
            return None

    intake = FeedbackIntake.of(settings, version_of)
    flush = None if recorder is None else recorder.flush

    async def feedback(request: Request) -> Response:
        name = request.path_params["model"]
        dataplane.versions(name)  # 404 naming the served models; any version it answered with joins
        require_json(request)
        body = parse_json(await read_body(request, settings.serve.max_body_bytes))
        items, batch = parse_feedback(body, settings.quality.max_batch)
        outcomes = await asyncio.to_thread(intake.submit, name, items, flush=flush)
        quality.note(o.record for o in outcomes if o.record is not None)
        if not batch:
            (outcome,) = outcomes
            if outcome.error is not None:
                raise outcome.error
            return json_response({"model": name, **outcome.to_dict()})
        answer = batch_body(name, outcomes)
        return json_response(answer, 200 if not answer["failed"] else 207)

    async def live_quality(request: Request) -> Response:
        name = request.path_params["model"]
        dataplane.versions(name)
        window = Window.parse(request.query_params.get("window"), settings)
        return json_response(await asyncio.to_thread(report, settings, name, parse_version(request), window))

    wrap = endpoint("feedback", dataplane.is_served)
    read = wrap(live_quality)
    return [
        Route("/v2/models/{model}/feedback", wrap(feedback), methods=["POST"]),
        Route("/v2/models/{model}/quality", read, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/quality", read, methods=["GET"]),
    ]
