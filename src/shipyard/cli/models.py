"""Commands on versions: push, list, show, diff, rm, export, verify, gc, predict."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.cli._context import JsonFlag, parse_pairs, read_json_arg, state, steps
from shipyard.errors import IntegrityError, InvalidInputError, ModelError
from shipyard.types import ModelRef


def push(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name: lowercase letters, digits, - _ .")],
    path: Annotated[
        Path,
        typer.Argument(
            help="Model file (ONNX, skops, GGUF; pickle/joblib with --trust) or folder "
            "(Hugging Face, TensorFlow SavedModel)."
        ),
    ],
    alias: Annotated[
        str | None, typer.Option(metavar="ALIAS", help="Point this alias at the new version.")
    ] = None,
    metric: Annotated[list[str] | None, typer.Option(metavar="KEY=NUMBER", help="Repeatable.")] = None,
    param: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Repeatable.")] = None,
    tag: Annotated[list[str] | None, typer.Option(metavar="KEY=VALUE", help="Repeatable.")] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    parent: Annotated[
        str | None, typer.Option(metavar="REF", help="Version this one was derived from.")
    ] = None,
    sample_input: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Example rows as JSON or @FILE (sets the input signature)."),
    ] = None,
    trust: Annotated[
        bool, typer.Option(help="Allow formats that run code when loaded (pickle, joblib).")
    ] = False,
    reference: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Sample inputs (CSV, JSON, Parquet, NPY): the reference for drift."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face task: feature-extraction, text-classification, token-classification."
        ),
    ] = None,
    truncate: Annotated[
        bool, typer.Option(help="Text models: cut over-long texts (flagged) instead of refusing them.")
    ] = True,
    json_: JsonFlag = False,
) -> None:
    """Store a model file as the next version of NAME."""
    sample = read_json_arg(sample_input, "sample-input") if sample_input else None
    registry = state(ctx).registry()
    if path.is_dir():
        from shipyard.packaging.tf_savedmodel import saved_model_folder

        if saved_model_folder(path) is not None:  # TensorFlow's import and tf2onnx: seconds to minutes
            steps(json_)("converting the SavedModel's signatures to ONNX with tf2onnx and checking them")
    with _upload_bar(registry.store.location) as progress:
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
            data_profile=_profile_from(reference),
            progress=progress,
        )
    if json_:
        from shipyard.cli._render import print_json

        print_json(version.to_dict())
        return
    suffix = f" ({alias} → {version.version})" if alias else ""
    remote = registry.store.location
    where = f"{registry.location}, artifacts in {remote}" if "://" in remote else registry.location
    typer.echo(f"pushed {version.ref} {version.digest} to registry {where}{suffix}")


@contextlib.contextmanager
def _upload_bar(location: str) -> Iterator[Callable[[int, int], None]]:
    """A bar following the upload to a remote store (stderr, terminals only), shown once bytes move."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console = Console(stderr=True)
    if not console.is_terminal or "://" not in location:
        yield lambda _done, _total: None
        return
    bar = Progress(
        f"uploading to {location}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
    )
    task = None
    with bar:

        def report(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("upload", total=total)
            bar.update(task, completed=done)

        yield report


def _profile_from(reference: Path | None) -> Any:
    """A function of the pushed model's signature that profiles `reference` (None: no profile)."""
    if reference is None:
        return None
    from shipyard.cli.drift import profile_of, read_reference

    read_reference(reference)  # a missing or unreadable file fails before the model is packaged
    return lambda signature: profile_of(reference, signature)


def list_(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="List this model's versions.")] = None,
    json_: JsonFlag = False,
) -> None:
    """List models, or the versions of NAME."""
    from shipyard.cli import _render

    registry = state(ctx).registry()
    if name is None:
        summary = registry.list_models()
        if json_:
            _render.print_json(summary)
        elif summary:
            _render.models_table(summary)
        else:
            message = f"registry {registry.location} is empty (set SHIPYARD_HOME or --home to use another)"
            typer.echo(message, err=True)
        return
    versions = registry.list_versions(name)
    if json_:
        _render.print_json([v.to_dict() for v in versions])
    else:
        _render.versions_table(versions)


def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    json_: JsonFlag = False,
) -> None:
    """Show one version: signature, digest, metrics, lineage."""
    from shipyard.cli import _render

    version = state(ctx).registry().resolve(ref)
    _render.print_json(version.to_dict()) if json_ else _render.show_version(version)


def diff(
    ctx: typer.Context,
    left: Annotated[str, typer.Argument(help="First reference.")],
    right: Annotated[str, typer.Argument(help="Second reference.")],
    json_: JsonFlag = False,
) -> None:
    """Compare two versions side by side."""
    from shipyard.cli import _render

    result = state(ctx).registry().diff(left, right)
    _render.print_json(result) if json_ else _render.diff_table(result)


def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to remove: NAME:VERSION.")],
    force: Annotated[
        bool,
        typer.Option(
            help="Do not ask: accept NAME (the latest) or NAME@ALIAS, and drop aliases pointing at it."
        ),
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Remove a version (its number is never reused; files are freed by `shipyard gc`)."""
    registry = state(ctx).registry()
    if ModelRef.parse(ref).version is None and not force:
        _confirm_removal(ref, str(registry.resolve(ref).ref))
    version, dropped = registry.remove(ref, force=force)
    if json_:
        from shipyard.cli._render import print_json

        print_json({"removed": str(version.ref), "aliases_removed": dropped})
        return
    extra = f"; removed alias(es) {', '.join(dropped)}" if dropped else ""
    typer.echo(f"removed {version.ref}{extra}")


def _confirm_removal(ref: str, selected: str) -> None:
    """`rm NAME` removes whatever is latest at that moment: ask on a terminal, refuse elsewhere."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        typer.confirm(f"remove {selected} (what {ref!r} selects now)?", abort=True)
        return
    raise InvalidInputError(
        f"{ref!r} selects {selected}; name the version (`shipyard rm {selected}`) or add --force",
        field="ref",
    )


def export(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to export.")],
    dest: Annotated[
        str,  # not a Path: a trailing "/" (put the files in this folder) must survive
        typer.Argument(
            metavar="DEST", help="A file name, or a folder (existing, or ending with /) for the files."
        ),
    ],
    json_: JsonFlag = False,
) -> None:
    """Copy a version's verified artifact out of the registry."""
    registry = state(ctx).registry()
    target = registry.export(ref, dest)
    if json_:
        from shipyard.cli._render import print_json

        print_json({"ref": str(registry.resolve(ref).ref), "path": str(target)})
        return
    typer.echo(f"exported {ref} to {target}")


def verify(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="One version (default: all).")] = None,
    signed_by: Annotated[
        Path | None, typer.Option(metavar="PUBKEY", help="Also require a valid signature by this public key.")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Re-hash artifacts against their digests; exits non-zero on any mismatch."""
    results = state(ctx).registry().verify(ref, signed_by=signed_by)
    bad = sum(1 for _, problems in results if problems)
    if json_:
        from shipyard.cli._render import print_json

        checked = [
            {"ref": str(v.ref), "digest": v.digest, "ok": not problems, "problems": problems}
            for v, problems in results
        ]
        print_json({"versions": checked, "failed": bad})
    else:
        for version, problems in results:
            if problems:
                typer.echo(f"FAILED {version.ref}: {'; '.join(problems)}")
            else:
                typer.echo(f"ok     {version.ref} {version.digest}")
    if bad:
        raise IntegrityError(f"{bad} of {len(results)} version(s) failed verification")
    if not json_:
        typer.echo(f"{len(results)} version(s) verified")


def gc(
    ctx: typer.Context,
    grace_seconds: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Keep leftovers younger than this (pushes in flight).", min=0),
    ] = 600.0,
    json_: JsonFlag = False,
) -> None:
    """Delete unreferenced artifacts and leftovers of interrupted pushes."""
    from shipyard.cli._render import human_size, number, print_json

    registry = state(ctx).registry()
    removed, freed = registry.gc(grace_seconds)
    waiting, waiting_bytes = registry.garbage_in_grace(grace_seconds)
    if json_:
        print_json(
            {
                "removed": removed,
                "freed_bytes": freed,
                "kept_in_grace": waiting,
                "kept_in_grace_bytes": waiting_bytes,
                "grace_seconds": grace_seconds,
            }
        )
        return
    kept = ""
    if waiting:
        kept = (
            f"; kept {waiting} item(s) ({human_size(waiting_bytes)}) younger than "
            f"{number(grace_seconds)} s in case a push is in flight: "
            "`shipyard gc --grace-seconds 0` reclaims them now"
        )
    typer.echo(f"removed {removed} unreferenced item(s), freed {human_size(freed)}{kept}")


def predict(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to run.")],
    input_: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            metavar="JSON",
            help='{"inputs": [[...], ...]} or {"inputs": {"name": [...]}}, inline or @FILE.',
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(metavar="TEXT", help="Generative models: the prompt; the completion streams to stdout."),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Generative models: most tokens to generate.")
    ] = None,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Generative models: 0 picks the likeliest token each time.")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Generative models: same seed, same text.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Accepted; the result is always JSON.")] = False,
) -> None:
    """Run a version in-process: JSON input to JSON outputs, or a prompt to generated text."""
    import json

    from shipyard.tensors import to_jsonable

    if prompt is not None:
        _generate(ctx, ref, prompt, max_tokens, temperature, seed)
        return
    if input_ is None:
        raise InvalidInputError("pass --input JSON (or --prompt TEXT for a generative model)", field="input")
    from shipyard.runtimes import is_generative

    payload: Any = read_json_arg(input_, "input")
    registry = state(ctx).registry()
    if is_generative(registry.resolve(ref)):
        raise InvalidInputError(
            f"{ref} is a generative model: pass --prompt TEXT, not --input", field="input"
        )
    if isinstance(payload, dict):
        if "inputs" not in payload:
            raise InvalidInputError(
                'input JSON must have an "inputs" key: {"inputs": [[...], ...]} or '
                '{"inputs": {"name": [...]}}',
                field="inputs",
            )
        payload = payload["inputs"]
    with registry.load(ref) as model:
        outputs = model.predict(payload)
        result = {"model": str(model.version.ref), "outputs": {k: to_jsonable(v) for k, v in outputs.items()}}
    typer.echo(json.dumps(result, ensure_ascii=False))


def _generate(
    ctx: typer.Context, ref: str, prompt: str, max_tokens: int | None, temperature: float, seed: int | None
) -> None:
    """Stream a generative model's completion of `prompt` to stdout, token by token."""
    import asyncio

    from shipyard.runtimes import is_generative, load_generator
    from shipyard.runtimes.generation import GenerationRequest, SamplingParams

    registry = state(ctx).registry()
    version = registry.resolve(ref)
    if not is_generative(version):
        raise InvalidInputError(
            f"{version.ref} is a {version.format} model, not a generative one: use --input JSON",
            field="prompt",
        )
    settings = registry.settings
    engine = load_generator(version, registry.artifact_path(version), settings.runtime, settings.generation)
    params = SamplingParams(
        max_tokens=max_tokens or settings.generation.max_tokens_default, temperature=temperature, seed=seed
    )

    async def stream() -> str | None:
        async for chunk in engine.generate(GenerationRequest(prompt, params)):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            if chunk.finish_reason is not None:
                return chunk.error
        return None

    try:
        error = asyncio.run(stream())
    finally:
        engine.close()
    sys.stdout.write("\n")
    if error:
        raise ModelError(f"generation stopped: {error}", public=error)


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
