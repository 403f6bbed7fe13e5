"""`shipyard feedback` (true labels or values of logged requests) and `shipyard quality` (how
right a model's answers were, with the delay and coverage of its feedback): on the local
registry home, or through a running server with `--url`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli._context import JsonFlag, api_key_option, state
from shipyard.cli._server import base_url, call_json, error_of
from shipyard.errors import InvalidInputError, ShipyardError
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from shipyard.monitor.truth import Label

_URL_HELP = "A running server's address; default: the registry home here (no server needed)."
UrlOption = Annotated[str | None, typer.Option(metavar="URL", help=_URL_HELP)]
_FILE_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_SHOWN_FAILURES = 10


def feedback(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, or NAME:VERSION / NAME@ALIAS to require that version.")],
    request_id: Annotated[
        str | None, typer.Option(metavar="ID", help="The X-Request-ID of the response.")
    ] = None,
    label: Annotated[str | None, typer.Option(metavar="L", help="The true class (a classifier).")] = None,
    value: Annotated[str | None, typer.Option(metavar="V", help="The true value (a regressor).")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Many at once: CSV or JSON lines with request_id and label (or value)."
        ),
    ] = None,
    url: UrlOption = None,
    api_key: Annotated[str | None, api_key_option("the scope infer:MODEL")] = None,
    json_: JsonFlag = False,
) -> None:
    """Give the true label or value of logged requests, joined with their predictions for live quality."""
    from shipyard.monitor.feedback import batch_body
    from shipyard.monitor.truth import Label

    if file is not None:
        if request_id is not None or label is not None or value is not None:
            raise InvalidInputError("give either --file or --request-id with --label/--value", field="file")
        items = read_feedback_file(file)
    else:
        if request_id is None or (label is None) == (value is None):
            raise InvalidInputError(
                "give --request-id ID with --label L (or --value V), or --file FILE", field="request-id"
            )
        items = [
            Label(request_id, label if value is None else value, "label" if value is None else "value", True)
        ]
    name = ModelRef.parse(ref).name
    if url is None:
        from shipyard.api import submit_feedback

        body = batch_body(name, submit_feedback(ref, items, state(ctx).settings()))
    else:
        body = _post(ctx, ref, items, url, api_key)
    _report(body, file is None, json_)


def read_feedback_file(path: Path) -> list[Label | ShipyardError]:
    """The items of a CSV (header with request_id and label or value; cells are text) or JSON
    lines file (one {"request_id", "label"|"value"} per line, typed as in the HTTP route)."""
    from shipyard.monitor.feedback import parse_item
    from shipyard.monitor.truth import Label

    path = path.expanduser()
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise InvalidInputError(
            f"{path.name}: feedback files are {', '.join(_FILE_SUFFIXES)}, not {suffix or '(none)'}",
            field="file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read feedback file {str(path)!r}: {exc}", field="file") from exc
    items: list[Label | ShipyardError] = []
    if suffix == ".csv":
        rows = csv.DictReader(text.splitlines())
        columns = rows.fieldnames or []
        truth = [c for c in ("label", "value") if c in columns]
        if "request_id" not in columns or len(truth) != 1:
            raise InvalidInputError(
                f"{path.name} needs a header with request_id and one of label or value, got "
                f"{', '.join(columns) or 'none'}",
                field="file",
            )
        for row in rows:
            items.append(Label(row["request_id"] or "", row[truth[0]], truth[0], True))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(parse_item(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(
                    f"{path.name} line {number} is not JSON: {exc.msg}", field="file"
                ) from exc
            except ShipyardError as exc:
                items.append(exc)
    if not items:
        raise InvalidInputError(f"{path.name} holds no feedback", field="file")
    return items


def _post(
    ctx: typer.Context, ref: str, items: list[Label | ShipyardError], url: str, api_key: str | None
) -> dict[str, Any]:
    """Send the items to the server in batches; a malformed item is reported, never sent."""
    parsed = ModelRef.parse(ref)
    if parsed.version is not None or parsed.alias is not None:
        raise InvalidInputError(
            "with --url give the model NAME: the server finds the version that answered each request",
            field="ref",
        )
    base = base_url(url)
    size = state(ctx).settings().quality.max_batch
    results: list[dict[str, Any]] = []
    sendable: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        if isinstance(item, ShipyardError):
            results.append(
                {
                    "index": index,
                    "request_id": None,
                    "status": item.status_code,
                    "error": item.message,
                    "field": item.field,
                }
            )
        else:
            truth = _typed(item.truth) if item.text else item.truth
            sendable.append((index, {"request_id": item.request_id, item.field: truth}))
    for start in range(0, len(sendable), size):
        chunk = sendable[start : start + size]
        _, answer = call_json(
            base, f"/v2/models/{parsed.name}/feedback", api_key, {"feedback": [i for _, i in chunk]}
        )
        for (index, _), result in zip(chunk, answer.get("results", []), strict=False):
            results.append({**result, "index": index})
    results.sort(key=lambda r: r["index"])
    accepted = sum(1 for r in results if r.get("status") == 200)
    return {"model": parsed.name, "accepted": accepted, "failed": len(results) - accepted, "results": results}


def _typed(text: Any) -> Any:
    """A flag's or CSV cell's text as JSON would type it (1 → 1, true → true), else the text:
    the server takes labels as JSON values."""
    if not isinstance(text, str):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float) else text


def _report(body: dict[str, Any], single: bool, as_json: bool) -> None:
    """Print what was accepted; every failure as a line on stderr; exit with the first one's code."""
    failures = [r for r in body["results"] if r.get("status") != 200]
    if as_json:
        from shipyard.cli._render import print_json

        print_json(body)
    elif single and not failures:
        (result,) = body["results"]
        typer.echo(
            f"accepted feedback for request {result['request_id']} ({body['model']}:{result['version']})"
        )
    elif not single:
        typer.echo(
            f"accepted {body['accepted']} of {len(body['results'])} feedback items for {body['model']}"
        )
    if not failures:
        return
    if single:
        first = failures[0]
        raise error_of(first["status"])(first["error"], field=first.get("field"))
    if not as_json:
        for failure in failures[:_SHOWN_FAILURES]:
            typer.echo(
                f"item {failure['index'] + 1} ({failure.get('request_id') or '-'}): {failure['error']}",
                err=True,
            )
        if len(failures) > _SHOWN_FAILURES:
            typer.echo(f"... and {len(failures) - _SHOWN_FAILURES} more", err=True)
    first = failures[0]
    raise error_of(first["status"])(
        f"{len(failures)} of {len(body['results'])} feedback items were refused (first: {first['error']})",
        field=first.get("field"),
    )


def quality(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="NAME (each version with feedback), NAME:VERSION or NAME@ALIAS.")
    ],
    window: Annotated[
        str | None,
        typer.Option(
            metavar="WINDOW",
            help="Predictions of the last 1d, 6h, 30m, or the latest 500 labelled rows; default what "
            "/metrics scores.",
        ),
    ] = None,
    url: UrlOption = None,
    api_key: Annotated[str | None, api_key_option("the read scope")] = None,
    json_: JsonFlag = False,
) -> None:
    """Show live accuracy, precision, recall and F1 (or MAE and RMSE) measured on feedback."""
    if url is None:
        from shipyard.api import quality as local_quality

        body = local_quality(ref, window, settings=state(ctx).settings())
    else:
        body = _quality_from_server(ctx, ref, window, url, api_key)
    if json_:
        from shipyard.cli._render import print_json

        print_json(body)
        return
    _show(body, ref)


def _quality_from_server(
    ctx: typer.Context, ref: str, window: str | None, url: str, api_key: str | None
) -> dict[str, Any]:
    import urllib.parse

    parsed = ModelRef.parse(ref)
    number = parsed.version
    if parsed.alias is not None:  # the server knows versions, not aliases: ask the registry
        number = state(ctx).registry().resolve(parsed).version
    path = f"/v2/models/{parsed.name}" + (f"/versions/{number}" if number is not None else "") + "/quality"
    query = f"?{urllib.parse.urlencode({'window': window})}" if window else ""
    return call_json(base_url(url), path + query, api_key)[1]


def _show(body: dict[str, Any], ref: str) -> None:
    from shipyard.cli._render import Column, number, print_table

    if not body["versions"]:
        typer.echo(
            f"no feedback for {ref} in the window ({body['window']['requested']}); give some with "
            f"`shipyard feedback {ref} --request-id ID --label L`",
            err=True,
        )
        return
    for version in body["versions"]:
        fed = version["feedback"]
        coverage = "-" if fed["coverage"] is None else f"{fed['coverage']:.1%}"
        delay = fed["delay_s"]
        typer.echo(
            f"{body['model']}:{version['version']} ({version['task']}): {version['rows']} labelled rows from "
            f"{fed['requests']} of {fed['logged']} logged requests (coverage {coverage}); feedback delay "
            f"median {_duration(delay['median'])}, p90 {_duration(delay['p90'])}"
        )
        rows = [[name, number(value)] for name, value in version["metrics"].items()]
        print_table([Column("metric"), Column("value", "number")], rows)
        if version["classes"]:
            columns = [
                Column("class"),
                *(Column(h, "number") for h in ("support", "precision", "recall", "f1")),
            ]
            print_table(
                columns,
                [
                    [
                        str(c["class"]),
                        str(c["support"]),
                        number(c["precision"]),
                        number(c["recall"]),
                        number(c["f1"]),
                    ]
                    for c in version["classes"]
                ],
            )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def register(app: typer.Typer) -> None:
    app.command()(feedback)
    app.command()(quality)
