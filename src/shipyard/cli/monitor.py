"""`shipyard monitor export`: a Grafana dashboard and Prometheus alerting rules for the servers,
and a running server's latency and live quality as TensorBoard scalars."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli._context import JsonFlag, api_key_option
from shipyard.cli._help import PlainHelpGroup
from shipyard.errors import InvalidInputError, NotReadyError, ShipyardError

monitor_app = typer.Typer(
    name="monitor",
    cls=PlainHelpGroup,
    help="Dashboards and alerts for running servers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DASHBOARD_FILE = "shipyard.json"


def _threshold(help_text: str, metavar: str = "X") -> Any:
    return typer.Option(metavar=metavar, help=help_text, show_default=False)


@monitor_app.command()
def export(
    grafana: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help=f"Write the Grafana dashboard as DIR/{DASHBOARD_FILE}."),
    ] = None,
    prometheus_rules: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the Prometheus alerting rules to FILE.")
    ] = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Add the latency and live quality of the server at --url to the TensorBoard run in DIR.",
        ),
    ] = None,
    url: Annotated[
        str, typer.Option(metavar="URL", help="The server --tensorboard reads (its /metrics).")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, api_key_option("the read scope")] = None,
    error_rate: Annotated[float | None, _threshold("Alert above this share of 5xx answers (0.05).")] = None,
    p99_latency: Annotated[
        float | None, _threshold("Alert above this p99 request time in seconds (0.5).", "SECONDS")
    ] = None,
    queue_saturation: Annotated[
        float | None, _threshold("Alert above this share of a model's queue in use (0.8).")
    ] = None,
    drift_p_value: Annotated[
        float | None, _threshold("Alert under this drift test p-value of a feature (0.05).")
    ] = None,
    drift_distance: Annotated[
        float | None, _threshold("Alert from this drift distance of a feature (0.1).")
    ] = None,
    quality_min: Annotated[float | None, _threshold("Alert under this live accuracy / F1 (0.8).")] = None,
    quality_metrics: Annotated[
        str | None, _threshold("Quality metrics held to --quality-min (accuracy|f1_macro).", "REGEX")
    ] = None,
    open_files_ratio: Annotated[
        float | None, _threshold("Alert above this share of a worker's file limit (0.9).")
    ] = None,
    window: Annotated[str | None, _threshold("Range of rates and quantiles (5m).", "DURATION")] = None,
    pending: Annotated[
        str | None,
        typer.Option(
            "--for",
            metavar="DURATION",
            help="How long a condition holds before it fires (5m).",
            show_default=False,
        ),
    ] = None,
    job: Annotated[str | None, _threshold("Prometheus job of the servers (shipyard).", "NAME")] = None,
    json_: JsonFlag = False,
) -> None:
    """Write a Grafana dashboard and Prometheus alerting rules for Shipyard's metrics, and add a
    running server's latency and live quality to a TensorBoard run."""
    from shipyard.monitor.alerts import AlertConfig, alert_rules, render_rules
    from shipyard.monitor.dashboard import render_dashboard

    if grafana is None and prometheus_rules is None and tensorboard is None:
        raise InvalidInputError(
            "nothing to export: give --grafana DIR, --prometheus-rules FILE or --tensorboard DIR",
            field="grafana",
        )
    config = AlertConfig.of(
        error_rate=error_rate,
        p99_latency=p99_latency,
        queue_saturation=queue_saturation,
        drift_p_value=drift_p_value,
        drift_distance=drift_distance,
        quality_min=quality_min,
        quality_metrics=quality_metrics,
        open_files_ratio=open_files_ratio,
        window=window,
        pending=pending,
        job=job,
    )
    written: dict[str, Any] = {}
    if grafana is not None:
        path = grafana / DASHBOARD_FILE
        dashboard = render_dashboard()
        _write(path, json.dumps(dashboard, indent=2) + "\n", "grafana")
        written["grafana"] = {"path": str(path), "panels": len(dashboard["panels"])}
    if prometheus_rules is not None:
        _write(prometheus_rules, render_rules(config), "prometheus-rules")
        written["prometheus_rules"] = {
            "path": str(prometheus_rules),
            "alerts": [rule.alert for rule in alert_rules(config)],
            "thresholds": config.model_dump(),
        }
    if tensorboard is not None:
        written["tensorboard"] = _write_tensorboard(tensorboard, url.rstrip("/"), api_key)
    if json_:
        from shipyard.cli._render import print_json

        print_json(written)
        return
    if "grafana" in written:
        typer.echo(f"wrote the Grafana dashboard to {written['grafana']['path']}")
    if "prometheus_rules" in written:
        rules = written["prometheus_rules"]
        typer.echo(f"wrote {len(rules['alerts'])} Prometheus alerting rules to {rules['path']}")
    if "tensorboard" in written:
        board = written["tensorboard"]
        typer.echo(
            f"added {len(board['scalars'])} scalars of {board['url']} to the TensorBoard run {board['path']}"
        )


def _write_tensorboard(folder: Path, base: str, api_key: str | None) -> dict[str, Any]:
    from shipyard.monitor.tensorboard import scalars, write_scalars

    taken = time.time()
    values = scalars(_fetch_metrics(base, api_key))
    try:
        write_scalars(folder.expanduser(), values, int(taken), taken)
    except OSError as exc:
        raise _unwritable(folder, "tensorboard", exc) from exc
    return {"path": str(folder), "url": base, "step": int(taken), "scalars": values}


def _fetch_metrics(base: str, api_key: str | None) -> str:
    """The text of the server's /metrics."""
    import urllib.error
    import urllib.request

    address = f"{base}/metrics"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(address, headers=headers), timeout=10) as response:
            return bytes(response.read()).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        hint = "; give a key with the read scope: --api-key KEY" if exc.code in (401, 403) else ""
        raise ShipyardError(f"{address} answered {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        raise NotReadyError(
            f"nothing answers at {base} ({why}); start a server with `shipyard serve REF`, or give its --url"
        ) from exc


def _write(path: Path, text: str, option: str) -> None:
    """Write `text` to `path` whole or not at all (a temporary file renamed over it)."""
    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a Prometheus user
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise _unwritable(path, option, exc) from exc


def _unwritable(path: Path, option: str, exc: OSError) -> InvalidInputError:
    return InvalidInputError(
        f"cannot write {str(path)!r} (--{option}): {exc.strerror or exc}; choose a writable location",
        field=option,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app)
