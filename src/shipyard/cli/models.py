"""Commands on versions: push, list, show, diff, rm, export, verify, gc, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli._context import parse_pairs, read_json_arg, state
from shipyard.errors import IntegrityError, InvalidInputError


def push(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name: lowercase letters, digits, - _ .")],
    path: Annotated[Path, typer.Argument(help="Model file (ONNX, skops; pickle/joblib with --trust).")],
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="KEY=NUMBER, repeatable.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    parent: Annotated[str | None, typer.Option(help="Version this one was derived from.")] = None,
    sample_input: Annotated[
        str | None, typer.Option(help="Example rows as JSON or @FILE (sets the input signature).")
    ] = None,
    trust: Annotated[
        bool, typer.Option(help="Allow formats that run code when loaded (pickle, joblib).")
    ] = False,
    task: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face task: feature-extraction, text-classification, token-classification."
        ),
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="Text models: cut over-long texts (flagged) instead of refusing them.")
    ] = True,
) -> None:
    """Store a model file as the next version of NAME."""
    sample = read_json_arg(sample_input, "sample-input") if sample_input else None
    registry = state(ctx).registry()
    version = registry.push(
        name,
        path,
        alias=alias,
        sample_input=sample,
        metrics=parse_pairs(metric, "metric"),
        params=parse_pairs(param, "param"),
        tags=parse_pairs(tag, "tag"),
        description=description,
        parent=parent,
        trust=trust,
        task=task,
        truncate=truncate,
    )
    suffix = f" ({alias} → {version.version})" if alias else ""
    typer.echo(f"pushed {version.ref} {version.digest}{suffix}")


def list_(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="List this model's versions.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List models, or the versions of NAME."""
    from shipyard.cli import _render

    registry = state(ctx).registry()
    if name is None:
        summary = registry.list_models()
        _render.print_json(summary) if json_ else _render.models_table(summary)
        return
    versions = registry.list_versions(name)
    if json_:
        _render.print_json([v.to_dict() for v in versions])
    else:
        _render.versions_table(versions)


def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one version: signature, digest, metrics, lineage."""
    from shipyard.cli import _render

    version = state(ctx).registry().resolve(ref)
    _render.print_json(version.to_dict()) if json_ else _render.show_version(version)


def diff(
    ctx: typer.Context,
    left: Annotated[str, typer.Argument(help="First reference.")],
    right: Annotated[str, typer.Argument(help="Second reference.")],
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare two versions side by side."""
    from shipyard.cli import _render

    result = state(ctx).registry().diff(left, right)
    _render.print_json(result) if json_ else _render.diff_table(result)


def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to remove (NAME:VERSION).")],
    force: Annotated[bool, typer.Option(help="Also remove aliases pointing at it.")] = False,
) -> None:
    """Remove a version (its number is never reused; files are freed by `shipyard gc`)."""
    version, dropped = state(ctx).registry().remove(ref, force=force)
    extra = f"; removed alias(es) {', '.join(dropped)}" if dropped else ""
    typer.echo(f"removed {version.ref}{extra}")


def export(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to export.")],
    dest: Annotated[Path, typer.Argument(help="Destination file or folder.")],
) -> None:
    """Copy a version's verified artifact out of the registry."""
    target = state(ctx).registry().export(ref, dest)
    typer.echo(f"exported {ref} to {target}")


def verify(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="One version (default: all).")] = None,
) -> None:
    """Re-hash artifacts against their digests; exits non-zero on any mismatch."""
    results = state(ctx).registry().verify(ref)
    bad = 0
    for version, problems in results:
        if problems:
            bad += 1
            typer.echo(f"FAILED {version.ref}: {'; '.join(problems)}")
        else:
            typer.echo(f"ok     {version.ref} {version.digest}")
    if bad:
        raise IntegrityError(f"{bad} of {len(results)} version(s) failed verification")
    typer.echo(f"{len(results)} version(s) verified")


def gc(
    ctx: typer.Context,
    grace_seconds: Annotated[
        float, typer.Option(help="Keep leftovers younger than this (pushes in flight).", min=0)
    ] = 600.0,
) -> None:
    """Delete unreferenced artifacts and leftovers of interrupted pushes."""
    from shipyard.cli._render import human_size

    removed, freed = state(ctx).registry().gc(grace_seconds)
    typer.echo(f"removed {removed} unreferenced item(s), freed {human_size(freed)}")


def predict(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to run.")],
    input_: Annotated[
        str,
        typer.Option(
            "--input", "-i", help='{"inputs": [[...], ...]} or {"inputs": {"name": [...]}}, inline or @FILE.'
        ),
    ],
) -> None:
    """Run a version in-process on JSON input and print the outputs as JSON."""
    import json

    from shipyard.tensors import to_jsonable

    payload: Any = read_json_arg(input_, "input")
    if isinstance(payload, dict):
        if "inputs" not in payload:
            raise InvalidInputError(
                'input JSON must have an "inputs" key: {"inputs": [[...], ...]} or '
                '{"inputs": {"name": [...]}}',
                field="inputs",
            )
        payload = payload["inputs"]
    with state(ctx).registry().load(ref) as model:
        outputs = model.predict(payload)
        result = {"model": str(model.version.ref), "outputs": {k: to_jsonable(v) for k, v in outputs.items()}}
    typer.echo(json.dumps(result, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command()(push)
    app.command("list")(list_)
    app.command()(show)
    app.command()(diff)
    app.command()(rm)
    app.command()(export)
    app.command()(verify)
    app.command()(gc)
    app.command()(predict)
