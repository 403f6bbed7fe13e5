"""What `shipyard deploy` shares across the managed clouds.

A deploy is first a plan: the exact calls (or YAML documents) it will make, built and validated
offline against the cloud's own request schemas before anything is sent. `--dry-run` writes the
plan; otherwise each cloud's module runs it. Model artifacts travel as an embedded registry (what
`shipyard build` puts in an image), so the container's entrypoint serves them unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.deploy import output
from shipyard.deploy.context import embed
from shipyard.errors import CloudError, DeadlineExceededError
from shipyard.registry import Registry
from shipyard.types import ModelVersion

PLAN_FILE = "deploy-plan.json"  # marks a folder `--dry-run` wrote, so --force may replace it


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a cloud API, exactly as it is sent."""

    service: str  # "s3", "sagemaker", "aiplatform.ModelService", …
    operation: str  # the API's own name: CreateModel, UploadModel, …
    request: dict[str, Any]


@dataclass(slots=True)
class Plan:
    platform: str
    endpoint: str
    region: str
    calls: list[Call]
    files: dict[str, Path] = field(default_factory=dict)  # name in the plan folder -> local file
    documents: dict[str, str] = field(default_factory=dict)  # name -> text (Azure's YAML)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "endpoint": self.endpoint,
            "region": self.region,
            "calls": [
                {"service": c.service, "operation": c.operation, "request": c.request} for c in self.calls
            ],
            "files": sorted([*self.files, *self.documents]),
        }


def endpoint_name(versions: Iterable[ModelVersion]) -> str:
    """`shipyard-iris-3`: letters, digits and hyphens, as every cloud accepts in endpoint names."""
    parts = [f"{v.name}-{v.version}" for v in versions]
    return re.sub(r"[^a-zA-Z0-9-]+", "-", "shipyard-" + "-".join(parts))


def model_folder(registry: Registry, refs: Iterable[str], folder: Path) -> tuple[list[ModelVersion], Path]:
    """The versions `refs` select as an embedded registry in `folder/model`: what Azure mounts at
    AZUREML_MODEL_DIR, and what `archive` packs for SageMaker."""
    home = folder / "model"
    return embed(registry, refs, home, actor="shipyard deploy"), home


def archive(home: Path) -> Path:
    """`home` as `model.tar.gz` beside it (SageMaker unpacks it into /opt/ml/model), reproducible:
    sorted entries, no owners, no times."""
    target = home.with_name("model.tar.gz")

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(target, "w:gz", compresslevel=6) as tar:
        for path in sorted(p for p in home.rglob("*") if p.is_file()):
            tar.add(path, arcname=path.relative_to(home).as_posix(), filter=clean)
    return target


def left(done: list[str], fix: str) -> str:
    """What a failed deploy leaves on the cloud, and `fix`: how to remove it or start over."""
    return f"created so far ({fix}): {'; '.join(done)}" if done else "nothing was created"


def check_out(out: Path, force: bool) -> None:
    """`--out` must be new or empty, or (with --force) a plan this command wrote before."""
    output.check_out(
        out,
        force,
        what="a plan",
        command="shipyard deploy --dry-run",
        ours=lambda o: (o / PLAN_FILE).is_file(),
    )


def write_plan(plan: Plan, out: Path, force: bool) -> list[Path]:
    """Write the plan's calls, documents and files to `out`, replacing it only as a whole."""
    check_out(out, force)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        (staging / PLAN_FILE).write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        for name, text in plan.documents.items():
            (staging / name).write_text(text)
        for name, source in plan.files.items():
            target = staging / name
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(out.iterdir())


def wait_for(
    state: Callable[[], tuple[str, str | None]],
    *,
    ready: str,
    failed: Iterable[str],
    timeout_s: float,
    interval_s: float,
    what: str,
    left: str,
    echo: Callable[[str], None] = lambda _line: None,
) -> None:
    """Poll `state()` -> (status, reason) until it is `ready`; a failed status or the deadline
    raises with `left`: what exists now and what to delete or how to resume."""

    deadline = time.monotonic() + timeout_s
    failed = set(failed)
    last = ""
    while True:
        status, reason = state()
        if status != last:
            echo(f"{what}: {status}")
            last = status
        if status == ready:
            return
        if status in failed:
            raise CloudError(f"{what} is {status}: {reason or 'no reason given'}; {left}")
        if time.monotonic() >= deadline:
            raise DeadlineExceededError(f"{what} is still {status} after {timeout_s:g} s; {left}")
        time.sleep(interval_s)
