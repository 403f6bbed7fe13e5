"""`shipyard serve`: the inference server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._context import state


def serve(
    ctx: typer.Context,
    refs: Annotated[
        list[str], typer.Argument(help="NAME (latest), NAME@ALIAS (followed) or NAME:VERSION (pinned).")
    ],
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8000; $AIP_HTTP_PORT on Vertex AI).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes sharing the port.", min=1)] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Rows per batch.", min=1)] = None,
    max_batch_delay_ms: Annotated[
        float | None, typer.Option(help="Longest wait to fill a batch.", min=0)
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Queued requests per model before 503.", min=1)
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
) -> None:
    """Serve models over HTTP (V2/Triton, V1/TF Serving, SageMaker, Vertex AI)."""
    from shipyard.serve.server import ServeSpec, run
    from shipyard.settings import with_updates
    from shipyard.types import ModelRef

    for ref in refs:
        ModelRef.parse(ref)  # a malformed reference fails here, before anything starts
    refs = list(dict.fromkeys(refs))  # a ref given twice is served once
    cli = state(ctx)
    if config is not None:
        cli.config = config
    # Vertex AI says which port to use; validated with the flags (a bad value is one clear line).
    bind_port: int | str | None = port if port is not None else os.environ.get("AIP_HTTP_PORT") or None
    base = cli.settings()
    serve_opts = with_updates(
        base.serve,
        host=host,
        port=bind_port,
        workers=workers,
        max_queue=max_queue,
        max_batch_size=max_batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
    )
    runtime = base.runtime
    if runtime.intra_op_threads == 0 and serve_opts.workers > 1:
        # N workers each using every core would oversubscribe the CPU: share the cores out.
        cores = len(os.sched_getaffinity(0))
        runtime = with_updates(runtime, intra_op_threads=max(1, cores // serve_opts.workers))
    settings = base.model_copy(update={"serve": serve_opts, "runtime": runtime})
    overrides = {"max_batch_size": max_batch_size, "max_batch_delay_ms": max_batch_delay_ms}
    vertex = (os.environ.get("AIP_HEALTH_ROUTE"), os.environ.get("AIP_PREDICT_ROUTE"))

    def announce(bound_host: str, bound_port: int) -> None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address
        base_url = f"http://{shown}:{bound_port}"
        typer.echo(f"shipyard: serving {', '.join(refs)} on {base_url} ({settings.serve.workers} worker(s))")
        for name in dict.fromkeys(ModelRef.parse(ref).name for ref in refs):
            typer.echo(f"  V2:  POST {base_url}/v2/models/{name}/infer")
            typer.echo(f"  V1:  POST {base_url}/v1/models/{name}:predict")
        typer.echo(f"  docs: {base_url}/docs   metrics: {base_url}/metrics   ready: {base_url}/readyz")

    code = run(ServeSpec(settings, refs, overrides, vertex), announce)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(serve)
