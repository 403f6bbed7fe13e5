"""`shipyard entrypoint`: a container's ENTRYPOINT, serving by the contract of the platform that
started it (SageMaker, Vertex AI, Azure ML, or plain Docker/Kubernetes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli._context import state
from shipyard.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from shipyard.serve.platforms import PlatformPlan
    from shipyard.settings import Platform, Settings

ROUTES = {
    "sagemaker": "GET /ping, POST /invocations, /models (multi-model)",
    "vertex": "health {health}, predict {predict}",
    "azure": "GET / (liveness, readiness), POST /score",
    "generic": "every Shipyard route; probes GET /healthz, GET /readyz",
}


def entrypoint(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[serve] [REF]...",
            help="References to serve (else $SHIPYARD_REFS, else every version of the embedded "
            "registry); SageMaker's `serve` argument is accepted and selects SageMaker.",
        ),
    ] = None,
    platform: Annotated[
        str | None,
        typer.Option(
            envvar="SHIPYARD_PLATFORM",
            help="sagemaker, vertex, azure or generic (default: detected from the environment).",
        ),
    ] = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="SHIPYARD_MODEL_DIR",
            help="A folder holding an embedded registry (registry.db, artifacts/), read-only; "
            "looked for after the platform's own model folder.",
        ),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="SHIPYARD_WORK_DIR",
            help="Writable folder for the embedded registry's working copy and logs "
            "(default: a new temp folder).",
        ),
    ] = None,
) -> None:
    """Serve as a container's ENTRYPOINT, by the contract of the platform that started it."""
    from shipyard.cli.serve import _check_tls, _require_refs, _require_safe_bind
    from shipyard.serve import platforms
    from shipyard.serve.server import ServeSpec, run

    words = list(args or [])
    chosen = _platform(platform, words)
    if words[:1] == ["serve"]:
        words = words[1:]
    if words[:1] == ["train"]:
        raise InvalidInputError(
            "this image serves models; it cannot train (SageMaker passed `train`)", field="args"
        )
    plan = platforms.plan(chosen, os.environ)
    settings = _settings(ctx, plan, model_dir, work_dir)
    refs = _refs(settings, words, allow_none=plan.multi_model)
    _check_tls(settings)
    _require_safe_bind(settings)
    if not settings.serve.wait_for_refs:
        _require_refs(settings, refs)
    for note in plan.notes:
        typer.echo(f"shipyard: {note}", err=True)

    def announce(bound_host: str, bound_port: int) -> None:
        serve = settings.serve
        where = f"http://{bound_host}:{bound_port}"
        served = ", ".join(refs) or "no model yet (SageMaker multi-model: POST /models loads one)"
        typer.echo(f"shipyard: serving {served} on {where} ({serve.workers} worker(s))")
        routes = ROUTES[plan.platform].format(
            health=serve.vertex_health_route or "/ping", predict=serve.vertex_predict_route or "/invocations"
        )
        typer.echo(f"  platform: {plan.platform}: {routes}")
        source = settings.home if settings.registry_url is None else settings.artifact_root
        typer.echo(f"  models from: {source}")

    code = run(ServeSpec(settings, refs), announce)
    if code:
        raise typer.Exit(code)


def _platform(given: str | None, words: list[str]) -> Platform:
    from shipyard.serve import platforms

    if given is None:
        return platforms.detect(os.environ, words)
    for known in platforms.PLATFORMS:
        if given == known:
            return known
    raise InvalidInputError(
        f"unknown platform {given!r}; choose one of {', '.join(platforms.PLATFORMS)}", field="platform"
    )


def _settings(
    ctx: typer.Context, plan: PlatformPlan, model_dir: Path | None, work_dir: Path | None
) -> Settings:
    """The platform's required options over everything, its defaults under what the environment
    and config file set; an embedded registry found in the platform's model folder (or
    --model-dir) is served from a working copy."""
    from shipyard.serve import embedded
    from shipyard.settings import Settings

    cli = state(ctx)
    folder = embedded.find([*plan.model_dirs, *([model_dir] if model_dir else [])])
    where: dict[str, Any] = {"home": cli.home}
    if folder is not None:
        work = work_dir or Path(tempfile.mkdtemp(prefix="shipyard-"))
        where["home"] = work
        where["registry_url"], where["artifact_url"] = embedded.working_copy(folder, work)
    elif model_dir is not None:
        raise NotFoundError(
            f"--model-dir {str(model_dir)!r} holds no Shipyard registry (registry.db)", field="model_dir"
        )
    # A managed platform authenticates callers before they reach the container; plain Docker does not.
    required = {**plan.required, "insecure": True if plan.platform != "generic" else None}
    base = Settings.load(cli.config, serve=required, **where)
    defaults = {k: v for k, v in plan.defaults.items() if k not in base.serve.model_fields_set}
    if not defaults:
        return base
    return Settings.load(cli.config, serve={**required, **defaults}, **where)


def _refs(settings: Settings, words: list[str], *, allow_none: bool) -> list[str]:
    """The references named (arguments, else $SHIPYARD_REFS), else every version the registry holds."""
    from shipyard.registry import Registry
    from shipyard.serve import embedded
    from shipyard.types import ModelRef

    named = words or os.environ.get("SHIPYARD_REFS", "").replace(",", " ").split()
    for ref in named:
        ModelRef.parse(ref)
    if named:
        return list(dict.fromkeys(named))
    with Registry(settings=settings) as registry:
        refs = embedded.every_version(registry)
    if not refs and not allow_none:
        raise NotFoundError(
            f"no models to serve: the registry at {settings.home} is empty and no reference was given; "
            "pass REF arguments, set SHIPYARD_REFS, or mount a registry with --model-dir",
            field="refs",
        )
    return refs


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(entrypoint)
