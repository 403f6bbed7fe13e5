"""`shipyard build`: a container build context (and, with --build, the image) for some models."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, state
from shipyard.errors import InvalidInputError


class PlatformChoice(StrEnum):
    sagemaker = "sagemaker"
    vertex = "vertex"
    azure = "azure"
    generic = "generic"


class EngineChoice(StrEnum):
    docker = "docker"
    podman = "podman"


def build(
    ctx: typer.Context,
    refs: Annotated[
        list[str], typer.Argument(help="Versions to put in the image: NAME, NAME:VERSION, NAME@ALIAS.")
    ],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder to write the build context to.")],
    base: Annotated[
        str | None,
        typer.Option(
            metavar="IMAGE",
            help="Base image, Debian-based with Python 3.11+ (default python:3.11-slim-bookworm).",
        ),
    ] = None,
    platform: Annotated[
        PlatformChoice,
        typer.Option(
            metavar="sagemaker|vertex|azure|generic",
            help="Where the image runs: selects its entrypoint, port and health check.",
        ),
    ] = PlatformChoice.generic,
    tag: Annotated[
        str | None, typer.Option(metavar="IMAGE", help="Image name (default shipyard-NAME:VERSION).")
    ] = None,
    gpu: Annotated[
        bool, typer.Option("--gpu", help="torch with CUDA (default: the CPU-only build).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out if it holds a context written before.")
    ] = False,
    build_image: Annotated[
        bool, typer.Option("--build", help="Also build the image with Docker or Podman.")
    ] = False,
    push: Annotated[
        str | None,
        typer.Option(
            metavar="REGISTRY", help="After --build, push the image to REGISTRY (host[:port][/path])."
        ),
    ] = None,
    engine: Annotated[
        EngineChoice | None,
        typer.Option(
            metavar="docker|podman", help="Container engine for --build (default: docker, else podman)."
        ),
    ] = None,
    wheel: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Shipyard wheel to install (default: built from the source tree)."),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Write a build context (Dockerfile, embedded registry, wheel, requirements) for some models."""
    from shipyard.deploy.context import BuildConfig, installed_versions, write_context
    from shipyard.deploy.dockerfile import DEFAULT_BASE
    from shipyard.deploy.engine import Engine, find_engine, push_image
    from shipyard.deploy.engine import build_image as run_build

    if push is not None and not build_image:
        raise InvalidInputError("--push needs --build: there is no image to push yet", field="push")
    found: Engine | None = None
    if build_image:  # before writing anything: a missing engine is known at once
        found = find_engine(engine.value if engine else None)
    config = BuildConfig(
        refs=tuple(refs),
        out=out.expanduser(),
        platform=platform.value,
        base=base or DEFAULT_BASE,
        tag=tag,
        gpu=gpu,
        force=force,
        wheel=wheel.expanduser() if wheel else None,
    )
    context = write_context(state(ctx).registry(), config, installed=installed_versions())
    spec = context.spec
    result: dict[str, object] = {
        "context": str(context.path),
        "tag": context.tag,
        "platform": spec.platform.name,
        "models": [{"ref": str(v.ref), "format": v.format, "digest": v.digest} for v in spec.versions],
        "torch": spec.requirements.torch is not None,
        "engine": None,
        "pushed": None,
    }
    if not json_:
        typer.echo(f"wrote {context.path}: {', '.join(spec.pinned)} for {spec.platform.name}")
    if found is not None:
        if not json_:
            typer.echo(f"building {context.tag} with {found.name} ({found.path})", err=True)
        run_build(found, context.path, context.tag)
        result["engine"] = found.name
        if not json_:
            typer.echo(f"built {context.tag} with {found.name}")
        if push is not None:
            result["pushed"] = pushed = push_image(found, context.tag, push)
            if not json_:
                typer.echo(f"pushed {pushed}")
    if json_:
        from shipyard.cli._render import print_json

        print_json(result)
    elif found is None:
        typer.echo(f"build it: cd {context.path} && docker build --tag {context.tag} .")


def register(app: typer.Typer) -> None:
    app.command()(build)
