"""Commands that derive versions: optimize, convert, quantize, prune, distill; and compare."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli._context import state
from shipyard.errors import InvalidInputError

EvalOption = Annotated[
    Path | None, typer.Option("--eval", help="CSV, JSONL or Parquet: inputs and labels (or sentence pairs).")
]
LabelOption = Annotated[str | None, typer.Option(help="The label (or score) column; default label/target/y.")]
AliasOption = Annotated[str | None, typer.Option(help="Point this alias at the new version.")]
ThreadsOption = Annotated[
    int | None, typer.Option(min=1, help="Threads for every model (default: all cores).")
]
SecondsOption = Annotated[float, typer.Option(min=0.1, help="Timing budget per model, in seconds.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


MaxDropOption = Annotated[
    str, typer.Option(help="Refuse a result whose metric fell further: 1% (relative) or 0.01 (absolute).")
]
ForceOption = Annotated[bool, typer.Option("--force", help="Register the result even beyond --max-drop.")]

if TYPE_CHECKING:
    from shipyard.optimize.report import Report
    from shipyard.optimize.session import ProgressEvent


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[ProgressEvent], None]]:
    """A bar that advances as models are measured, with the current step beside it (stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # logs and pipes get the table, not a redrawn bar
        yield lambda _event: None
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} measured"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task("starting", total=total)

        def report(event: ProgressEvent) -> None:
            if event.measuring:
                bar.advance(task)
            bar.update(task, description=event.text)

        yield report


def _show(report: Report, as_json: bool, path: Path | None = None) -> None:
    from shipyard.cli import _render
    from shipyard.optimize.report import render

    if as_json:
        _render.print_json(report.to_dict())
        return
    _render.console.print(render(report), markup=False, end="")
    if path is not None:
        _render.console.print(f"report: {path}", markup=False)


@contextlib.contextmanager
def _showing_refusals(as_json: bool) -> Iterator[None]:
    """A result refused for its metric still shows its report before the one-line error."""
    from shipyard.optimize.report import BudgetExceededError

    try:
        yield
    except BudgetExceededError as exc:
        _show(exc.details, as_json, exc.report_path)
        raise


@contextlib.contextmanager
def _figures_to_tensorboard(folder: Path | None) -> Iterator[Callable[[Report], None]]:
    """Yields a function adding a report's figures to TensorBoard in `folder` (None: nothing);
    a report refused for its metric is added too (its figures were measured). A missing
    tensorboardX or an unwritable folder fails before any work."""
    from shipyard.optimize.report import BudgetExceededError

    if folder is None:
        yield lambda _report: None
        return
    from shipyard.monitor.tensorboard import require_writer

    require_writer()
    _writable(folder)
    try:
        yield partial(_to_tensorboard, folder)
    except BudgetExceededError as exc:
        _to_tensorboard(folder, exc.details)
        raise


def _to_tensorboard(folder: Path, report: Report) -> None:
    """Each model's figures, one point per figure in its own run `folder/<name>`, at this time."""
    from shipyard.monitor.tensorboard import write_runs
    from shipyard.optimize.report import figures

    taken = time.time()
    try:
        write_runs(folder.expanduser(), figures(report), int(taken), taken)
    except OSError as exc:
        raise _unwritable(folder, exc) from exc


def _writable(folder: Path) -> None:
    try:
        folder.expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    if not os.access(folder.expanduser(), os.W_OK):
        raise _unwritable(folder, PermissionError(13, "Permission denied"))


def _unwritable(folder: Path, exc: OSError) -> InvalidInputError:
    return InvalidInputError(
        f"cannot write {str(folder)!r} (--tensorboard): {exc.strerror or exc}; choose a writable folder",
        field="tensorboard",
    )


def _step(ctx: typer.Context, json_: bool, step: Callable[..., Any], ref: str, **options: Any) -> None:
    """Run one single step (convert, quantize, prune, distill) and show what it registered."""
    with _showing_refusals(json_), _progress(2) as progress:
        outcome = step(state(ctx).registry(), ref, progress=progress, **options)
    _show(outcome.report, json_, outcome.report_path)


def optimize(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The version to optimize: NAME, NAME:VERSION or NAME@ALIAS.")],
    eval_: Annotated[Path, typer.Option("--eval", help="CSV, JSONL or Parquet eval file.")],
    metric: Annotated[
        str | None, typer.Option(help="accuracy, f1_macro, spearman, pearson, r2, mae, cosine_agreement.")
    ] = None,
    max_drop: Annotated[
        str, typer.Option(help="Allowed metric drop: 1% (relative) or 0.01 (absolute).")
    ] = "1%",
    objective: Annotated[
        str, typer.Option(help="latency (batch 1), throughput (batch 32) or size.")
    ] = "latency",
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration inputs (default: a held-out slice of --eval).")
    ] = None,
    min_cosine: Annotated[
        float, typer.Option(min=0, max=1, help="Embeddings: least mean cosine to the original's.")
    ] = 0.99,
    alias: AliasOption = None,
    label: LabelOption = None,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 2.0,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Also add each candidate's figures to TensorBoard, one run per candidate under DIR "
            "(the tensorboard extra).",
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Register the fastest variant of REF whose metric stays within --max-drop."""
    from shipyard.optimize.search import MAX_CANDIDATES
    from shipyard.optimize.search import optimize as run

    registry = state(ctx).registry()
    with (
        _showing_refusals(json_),
        _figures_to_tensorboard(tensorboard) as add_figures,
        _progress(MAX_CANDIDATES + 1) as progress,
    ):
        outcome = run(
            registry,
            ref,
            eval_,
            metric=metric,
            max_drop=max_drop,
            objective=objective,
            calibration=calibration,
            alias=alias,
            label=label,
            threads=threads,
            seconds=seconds,
            min_cosine=min_cosine,
            progress=progress,
        )
        add_figures(outcome.report)
    _show(outcome.report, json_, outcome.report_path)
    if tensorboard is not None and not json_:
        typer.echo(f"tensorboard: {tensorboard} (one run per candidate)")


def convert(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="A scikit-learn or transformers version.")],
    to: Annotated[str, typer.Option(help="Target format.")] = "onnx",
    eval_: EvalOption = None,
    label: LabelOption = None,
    alias: AliasOption = None,
    max_drop: MaxDropOption = "1%",
    force: ForceOption = False,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.0,
    json_: JsonOption = False,
) -> None:
    """Convert REF to ONNX, checked against the original, and register it."""
    from shipyard.optimize.steps import convert_version

    _step(
        ctx,
        json_,
        convert_version,
        ref,
        to=to,
        alias=alias,
        max_drop=max_drop,
        force=force,
        eval_path=eval_,
        label=label,
        threads=threads,
        seconds=seconds,
    )


def quantize(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="A version; scikit-learn and transformers ones are converted first.")
    ],
    mode: Annotated[str, typer.Option(help="dynamic or static (QDQ, MinMax calibration).")] = "dynamic",
    per_channel: Annotated[bool, typer.Option(help="One scale per output channel.")] = False,
    reduce_range: Annotated[bool, typer.Option(help="7-bit weights (CPUs without VNNI).")] = False,
    calibration: Annotated[Path | None, typer.Option(help="Calibration inputs (static mode).")] = None,
    eval_: EvalOption = None,
    label: LabelOption = None,
    alias: AliasOption = None,
    max_drop: MaxDropOption = "1%",
    force: ForceOption = False,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.0,
    json_: JsonOption = False,
) -> None:
    """Quantize REF to int8 (converting it to ONNX first if needed) and register the measured result."""
    from shipyard.optimize.steps import quantize_version

    _step(
        ctx,
        json_,
        quantize_version,
        ref,
        mode=mode,
        per_channel=per_channel,
        reduce_range=reduce_range,
        calibration=calibration,
        alias=alias,
        max_drop=max_drop,
        force=force,
        eval_path=eval_,
        label=label,
        threads=threads,
        seconds=seconds,
    )


def prune(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="A version; scikit-learn and transformers ones are converted first.")
    ],
    sparsity: Annotated[float, typer.Option(help="Fraction of weights (or hidden units) to remove.")] = 0.5,
    structured: Annotated[
        bool, typer.Option(help="Remove whole hidden units (smaller and faster) instead of single weights.")
    ] = False,
    eval_: EvalOption = None,
    label: LabelOption = None,
    alias: AliasOption = None,
    max_drop: MaxDropOption = "1%",
    force: ForceOption = False,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.0,
    json_: JsonOption = False,
) -> None:
    """Prune REF by weight magnitude and register the measured result."""
    from shipyard.optimize.steps import prune_version

    _step(
        ctx,
        json_,
        prune_version,
        ref,
        sparsity=sparsity,
        structured=structured,
        alias=alias,
        max_drop=max_drop,
        force=force,
        eval_path=eval_,
        label=label,
        threads=threads,
        seconds=seconds,
    )


def distill(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Argument(help="The teacher version (tabular classifier or regressor).")],
    student: Annotated[
        str,
        typer.Option(help='MLP config as JSON or a .json file ({"hidden": [64]}), or a scikit-learn REF.'),
    ],
    data: Annotated[
        Path, typer.Option(help="Training inputs (CSV, JSONL or Parquet); labels are not needed.")
    ],
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs (overrides the config).")] = None,
    eval_: EvalOption = None,
    label: LabelOption = None,
    alias: AliasOption = None,
    max_drop: MaxDropOption = "1%",
    force: ForceOption = False,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.0,
    json_: JsonOption = False,
) -> None:
    """Train a small student on TEACHER's outputs and register it as the teacher's next version."""
    from shipyard.optimize.steps import distill_version

    _step(
        ctx,
        json_,
        distill_version,
        teacher,
        student=student,
        data=data,
        epochs=epochs,
        alias=alias,
        max_drop=max_drop,
        force=force,
        eval_path=eval_,
        label=label,
        threads=threads,
        seconds=seconds,
    )


def compare(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Two or more versions; the first is the reference.")],
    eval_: Annotated[Path, typer.Option("--eval", help="CSV, JSONL or Parquet eval file.")],
    metric: Annotated[str | None, typer.Option(help="The task metric (default: inferred).")] = None,
    label: LabelOption = None,
    threads: ThreadsOption = None,
    seconds: SecondsOption = 1.0,
    json_: JsonOption = False,
) -> None:
    """Measure versions side by side on one eval set."""
    from shipyard.optimize.steps import compare as run

    with _progress(len(refs)) as progress:
        report = run(
            state(ctx).registry(),
            refs,
            eval_,
            metric=metric,
            label=label,
            threads=threads,
            seconds=seconds,
            progress=progress,
        )
    _show(report, json_)


def register(app: typer.Typer) -> None:
    for command in (optimize, convert, quantize, prune, distill, compare):
        app.command(command.__name__)(command)
