"""`shipyard profile` (a version's reference for drift) and `shipyard drift` (how far the inputs
a server sees, or a local file, are from it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli._context import JsonFlag, api_key_option, state
from shipyard.cli._server import DEFAULT_URL, base_url, call_json
from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.types import ModelRef

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from shipyard.registry import Registry
    from shipyard.types import ModelVersion, Signature

Arrays = dict[str, "np.ndarray"]
_BATCH = 64  # reference rows per call when the model runs over them

REFERENCE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".npy")


def read_reference(path: Path) -> Any:
    """A reference file's rows: CSV, JSON (an array of rows or records, or JSON lines), Parquet
    or NPY. Records as the optimizer reads its eval files; NPY as one array."""
    path = path.expanduser()
    if not path.is_file():
        raise InvalidInputError(f"reference file {path} does not exist", field="reference")
    suffix = path.suffix.lower()
    if suffix not in REFERENCE_SUFFIXES:
        raise InvalidInputError(
            f"{path.name}: unknown reference file type {suffix or '(none)'}; use "
            f"{', '.join(REFERENCE_SUFFIXES)}",
            field="reference",
        )
    if suffix == ".npy":
        import numpy as np

        try:
            return np.load(path, allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise InvalidInputError(
                f"{path.name} is not a plain numeric .npy array ({exc}); save text references as CSV or JSON",
                field="reference",
            ) from exc
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None  # JSON lines, read below
        if isinstance(data, list | dict):
            return data
    from shipyard.optimize.evalset import read_records

    return read_records(path)


def profile_of(
    path: Path, signature: Signature, run: Callable[[Arrays], Arrays] | None = None
) -> dict[str, Any]:
    """The reference profile of the file at `path` for a model with `signature`; `run` gives the
    model's outputs on the inputs, for an embedding model's vectors (see `model_runner`)."""
    from shipyard.monitor.profile import build_profile
    from shipyard.monitor.reference import reference_inputs

    inputs, names = reference_inputs(read_reference(path), signature, path.name)
    outputs = run(inputs) if run is not None else None
    return build_profile(inputs, signature, names=names, source=path.name, outputs=outputs).to_dict()


def model_runner(registry: Registry, version: ModelVersion) -> Callable[[Arrays], Arrays] | None:
    """For an embedding model (its output vectors are what its drift profile summarises): a
    function running the version over reference inputs, in batches; None for other models."""
    from shipyard.monitor.profile import embedding_output

    watched = embedding_output(version.signature)
    if watched is None:
        return None

    def run(inputs: Arrays) -> Arrays:
        import numpy as np

        rows = len(next(iter(inputs.values())))
        with registry.load(version.ref) as model:
            parts = [
                model.predict({k: v[start : start + _BATCH] for k, v in inputs.items()})[watched]
                for start in range(0, rows, _BATCH)
            ]
        return {watched: np.concatenate(parts)}

    return run


def profile(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    file: Annotated[
        Path, typer.Argument(help="Reference inputs: CSV, JSON, JSON lines, Parquet or NPY.", metavar="FILE")
    ],
    json_: JsonFlag = False,
) -> None:
    """Compute the reference profile drift is measured against, from FILE, and store it with REF."""
    registry = state(ctx).registry()
    version = registry.resolve(ref)
    stored = profile_of(file, version.signature, model_runner(registry, version))
    version = registry.set_data_profile(version.ref, stored)
    if json_:
        from shipyard.cli._render import print_json

        print_json({"ref": str(version.ref), "profile": stored})
        return
    kinds = [f["kind"] for f in stored["features"]]
    note = f"; {stored['left_out']} more not watched" if stored["left_out"] else ""
    typer.echo(
        f"profiled {version.ref} from {file.name}: {stored['rows']} rows, {len(kinds)} features "
        f"({kinds.count('numeric')} numeric, {kinds.count('categorical')} categorical){note}"
    )


def drift(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="NAME (the server's default version), NAME:VERSION or NAME@ALIAS.")
    ],
    file: Annotated[
        Path | None,
        typer.Argument(help="Compare this file to the reference instead of asking a server.", metavar="FILE"),
    ] = None,
    url: Annotated[str, typer.Option(help="The server's address.")] = DEFAULT_URL,
    window: Annotated[
        str | None,
        typer.Option(
            metavar="WINDOW", help="Recent rows (500) or time (15m, 1h); default all the server keeps."
        ),
    ] = None,
    png: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write reference vs live histograms of the worst features."),
    ] = None,
    api_key: Annotated[str | None, api_key_option("the read scope")] = None,
    json_: JsonFlag = False,
) -> None:
    """Show input drift, worst feature first: from a running server, or of FILE offline."""
    from shipyard.cli import _drift_render

    if file is not None:
        if window is not None:
            raise InvalidInputError(
                "--window applies to a server's live inputs, not to a FILE", field="window"
            )
        body = _offline(ctx, ref, file)
    else:
        body = _from_server(ctx, ref, url, window, api_key)
    if png is not None:
        _drift_render.write_png(body, png)
    if json_:
        from shipyard.cli._render import print_json

        print_json(body)
        return
    _drift_render.show(body)
    if png is not None:
        typer.echo(f"wrote {png}")


def _offline(ctx: typer.Context, ref: str, file: Path) -> dict[str, Any]:
    from shipyard.monitor.drift import compare
    from shipyard.monitor.profile import Profile, output_key
    from shipyard.monitor.reference import reference_inputs

    cli = state(ctx)
    registry = cli.registry()
    version = registry.resolve(ref)
    reference = Profile.from_dict(_stored_profile(version)).check(version.signature, str(version.ref))
    inputs, _ = reference_inputs(read_reference(file), version.signature, file.name)
    run = model_runner(registry, version) if reference.outputs else None
    if run is not None:  # the profile summarises the model's vectors: the file's are computed too
        inputs = {**inputs, **{output_key(name): vectors for name, vectors in run(inputs).items()}}
    report = compare(reference, inputs, cli.settings().drift)
    return {
        "model": version.name,
        "version": version.version,
        "window": {"requested": file.name, "rows": report.rows},
        "reference": {"rows": reference.rows, "source": reference.source},
        **report.to_dict(),
    }


def _stored_profile(version: ModelVersion) -> dict[str, Any]:
    if version.data_profile is None:
        raise NotFoundError(
            f"{version.ref} has no reference profile; add one with `shipyard profile {version.ref} FILE`",
            field="profile",
        )
    return version.data_profile


def _from_server(
    ctx: typer.Context, ref: str, url: str, window: str | None, api_key: str | None
) -> dict[str, Any]:
    import urllib.parse

    parsed = ModelRef.parse(ref)
    number = parsed.version
    if parsed.alias is not None:  # the server knows versions, not aliases: ask the registry
        number = state(ctx).registry().resolve(parsed).version
    base = base_url(url)
    path = f"/v2/models/{parsed.name}" + (f"/versions/{number}" if number is not None else "") + "/drift"
    query = f"?{urllib.parse.urlencode({'window': window})}" if window else ""
    return call_json(
        base, path + query, api_key, hint=", or compare a file offline: `shipyard drift REF FILE`"
    )[1]


def register(app: typer.Typer) -> None:
    app.command()(profile)
    app.command()(drift)
