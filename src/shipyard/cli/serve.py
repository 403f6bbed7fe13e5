"""`shipyard serve` (the inference server) and `shipyard ps` (what a running server serves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli._context import state
from shipyard.errors import InvalidInputError, NotFoundError, NotReadyError, ShipyardError

if TYPE_CHECKING:
    from shipyard.settings import ServeSettings, Settings

DEFAULT_URL = "http://127.0.0.1:8000"


def serve(
    ctx: typer.Context,
    refs: Annotated[
        list[str], typer.Argument(help="NAME (latest), NAME@ALIAS (followed) or NAME:VERSION (pinned).")
    ],
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8000; $AIP_HTTP_PORT on Vertex AI).")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="Port of the V2 gRPC service (default 8001; 0 = no gRPC).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes sharing the port.", min=1)] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Rows per batch.", min=1)] = None,
    max_batch_delay_ms: Annotated[
        float | None, typer.Option(help="Longest wait to fill a batch.", min=0)
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Queued requests per model before 503.", min=1)
    ] = None,
    max_queue_wait_s: Annotated[
        float | None,
        typer.Option(help="How long a request waits for a place in a full queue before 503.", min=0),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Start even if a reference does not resolve yet; serve it once it appears."
        ),
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve a non-loopback address without API keys (not advised).")
    ] = False,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS. Reloaded on SIGHUP or change.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="Require client certificates issued by this PEM CA (mutual TLS).")
    ] = None,
    admin_port: Annotated[
        int | None,
        typer.Option(help="Serve management and /metrics only on this port (loopback; 0 = any free port)."),
    ] = None,
    require_signed: Annotated[
        Path | None,
        typer.Option(
            metavar="PUBKEY_FILE", help="Load only versions signed by this Ed25519 key (see `shipyard sign`)."
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
) -> None:
    """Serve models over HTTP (V2/Triton, V1/TF Serving, SageMaker, Vertex AI)."""
    from shipyard.serve.admin import reserved_admin_port
    from shipyard.serve.server import ServeSpec, run
    from shipyard.types import ModelRef

    for ref in refs:
        ModelRef.parse(ref)  # a malformed reference fails here, before anything starts
    refs = list(dict.fromkeys(refs))  # a ref given twice is served once
    flags = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "max_batch_size": max_batch_size,
        "max_batch_delay_ms": max_batch_delay_ms,
        "max_queue": max_queue,
        "max_queue_wait_s": max_queue_wait_s,
        "wait_for_refs": True if wait else None,  # absent: the environment or file may say so
        "insecure": True if insecure else None,
        "tls_cert": _text(tls_cert),
        "tls_key": _text(tls_key),
        "tls_client_ca": _text(tls_client_ca),
        "admin_port": admin_port,
        "require_signed": require_signed,
    }
    settings = state(ctx).settings(config, serve=flags)
    _check_tls(settings)
    from shipyard.monitor.tracing import require_tracing

    require_tracing(settings.tracing)  # a missing extra is one line here, not N failing workers
    if settings.serve.require_signed is not None:  # a bad key file is one line, before the port is bound
        from shipyard.registry.signing import load_public_key

        load_public_key(settings.serve.require_signed, "require_signed")
    _require_safe_bind(settings)
    if settings.serve.insecure:
        typer.echo(
            "WARNING: --insecure: serving without API keys; anyone who can reach it may use it", err=True
        )
    if not settings.serve.wait_for_refs:  # --wait: the registry may not even exist yet
        _require_refs(settings, refs)

    def announce(bound_host: str, bound_port: int) -> None:
        serve = settings.serve
        base_url = _url(serve, bound_host, bound_port)
        typer.echo(f"shipyard: serving {', '.join(refs)} on {base_url} ({serve.workers} worker(s))")
        for name in dict.fromkeys(ModelRef.parse(ref).name for ref in refs):
            typer.echo(f"  V2:  POST {base_url}/v2/models/{name}/infer")
            typer.echo(f"  V1:  POST {base_url}/v1/models/{name}:predict")
        if serve.grpc_port:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            typer.echo(f"  gRPC: {shown}:{serve.grpc_port} (inference.GRPCInferenceService)")
        admin_url = base_url if serve.admin_port is None else _url(serve, serve.admin_host, serve.admin_port)
        typer.echo(f"  docs: {base_url}/docs   metrics: {admin_url}/metrics   ready: {base_url}/readyz")
        if serve.admin_port is not None:
            typer.echo(f"  admin: {admin_url} (management and metrics only)")

    with reserved_admin_port(settings) as settings:
        code = run(ServeSpec(settings, refs), announce)
    if code:
        raise typer.Exit(code)


def _require_safe_bind(settings: Settings) -> None:
    """A non-loopback address needs API keys (or --insecure); refused before anything binds."""
    from shipyard.registry import Registry
    from shipyard.serve.auth import is_loopback, require_safe_bind

    if is_loopback(settings.serve.host):
        return  # no registry needed: a loopback server is safe without keys
    with Registry(settings=settings) as registry:
        require_safe_bind(settings, registry)


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _url(serve: ServeSettings, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"{'https' if serve.tls_cert else 'http'}://{shown}:{port}"


def _check_tls(settings: Settings) -> None:
    """Certificate problems are one line and exit code 2 here, before any worker starts."""
    from shipyard.serve.tls import TlsFiles, build_context

    files = TlsFiles.from_settings(settings.serve)
    if files is not None:
        build_context(files)


def _require_refs(settings: Settings, refs: list[str]) -> None:
    """The artifact store answers and every reference resolves before the port is bound: a typo,
    a bucket out of reach or missing credentials is one line and an exit code, not a server that
    stays unready forever."""
    from shipyard.registry import Registry

    with Registry(settings=settings) as registry:
        registry.store.check()
        for ref in refs:
            try:
                registry.resolve(ref)
            except NotFoundError as exc:
                hint = "" if "`shipyard list" in exc.message else "; see `shipyard list`"
                raise NotFoundError(
                    f"cannot serve {ref}: {exc.message}{hint} (or pass --wait to serve it once it appears)",
                    field="ref",
                ) from exc


def ps(
    url: Annotated[str, typer.Argument(help="The server's address.")] = DEFAULT_URL,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a running server serves: each model version, its state, and why if not ready."""
    from shipyard.cli import _render

    base = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
    if not base.startswith(("http://", "https://")):
        raise InvalidInputError(f"URL {url!r} is not an http(s) address", field="url")
    body = _fetch_readiness(base)
    ready = bool(body.get("ready"))
    models = _served_models(body.get("models"))
    if json_:
        _render.print_json({"url": base, "ready": ready, "models": models})
        return
    typer.echo(f"{base}: {'ready' if ready else 'not ready'}")
    if models:
        columns = [_render.Column("model"), _render.Column("version", "number"), _render.Column("state")]
        rows = [
            [m["name"], "-" if m["version"] is None else str(m["version"]), m["state"], m["reason"] or "-"]
            for m in models
        ]
        _render.print_table([*columns, _render.Column("reason")], rows)


def _fetch_readiness(base: str) -> dict[str, Any]:
    """The server's /readyz body (answered with 200 or 503)."""
    import urllib.error
    import urllib.request

    address = f"{base}/readyz"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        if exc.code != 503:
            raise ShipyardError(
                f"{address} answered {exc.code}: is a Shipyard server listening there?"
            ) from exc
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise NotReadyError(
            f"nothing answers at {base} ({why}); start a server with `shipyard serve REF`, "
            "or give its address: `shipyard ps URL`"
        ) from exc
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ShipyardError(f"{address} did not answer with JSON: is a Shipyard server listening there?")
    return body


def _served_models(models: Any) -> list[dict[str, Any]]:
    """Rows of name, version, state, reason from /readyz's `models` (served name → its status)."""
    rows = []
    for key, status in (models or {}).items():
        entry = status if isinstance(status, dict) else {}
        rows.append(
            {
                "name": str(key),
                "version": entry.get("version"),
                "state": str(entry.get("state", "?")),
                "reason": str(entry.get("reason") or ""),
            }
        )
    return rows


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(ps)
