"""`GET /v2/models/{model}[/versions/{version}]/drift?window=…`: a served version's input drift.

Read scope, like the other metadata routes. The body has every feature's score, method,
threshold and verdict, worst first, with the reference and live histograms (shares per bucket)
that `shipyard drift` draws.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.monitor.windows import DriftMonitor
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import endpoint, json_response, parse_version


def drift_routes(dataplane: DataPlane, monitor: DriftMonitor) -> list[Route]:
    async def drift(request: Request) -> Response:
        name = request.path_params["model"]
        served = dataplane.model(name, parse_version(request))
        window, report = await monitor.report(served, request.query_params.get("window"))
        settings = monitor.settings
        body = {
            "model": name,
            "version": served.version.version,
            "window": {
                "requested": request.query_params.get("window") or "all",
                "rows": report.rows,
                "since": datetime.fromtimestamp(window.started, UTC).isoformat(timespec="seconds"),
                "max_rows": settings.max_rows,
                "max_age_s": settings.max_age_s,
                # With several workers: the rows each one's window gave (every worker's are merged).
                **({"workers": dict(report.workers)} if report.workers else {}),
            },
            "reference": {"rows": window.profile.rows, "source": window.profile.source},
            **report.to_dict(),
        }
        return json_response(body)

    handler = endpoint("v2", dataplane.is_served)(drift)
    return [
        Route("/v2/models/{model}/drift", handler, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/drift", handler, methods=["GET"]),
    ]
