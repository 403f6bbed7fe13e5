"""Write a build context: the embedded registry, Shipyard's wheel and the rendered files.

The context is assembled in a staging folder beside `out` and renamed into place, so a failed
build leaves no half-written context behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shipyard import __version__
from shipyard.deploy import contract
from shipyard.deploy.dockerfile import (
    DEFAULT_BASE,
    ImageSpec,
    render_checksums,
    render_dockerfile,
    render_dockerignore,
    render_healthcheck,
    render_readme,
)
from shipyard.deploy.output import check_out, holds
from shipyard.deploy.requirements import (
    FORMAT_PACKAGES,
    check_base,
    plan_requirements,
    render_requirements,
    render_torch_requirements,
)
from shipyard.errors import InvalidInputError
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.types import ModelRef, ModelVersion

_MARKER = "# Written by `shipyard build`"  # the Dockerfile's first comment: --force may replace it


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """The options of one `shipyard build`."""

    refs: tuple[str, ...]
    out: Path
    platform: str = "generic"
    base: str = DEFAULT_BASE
    tag: str | None = None
    gpu: bool = False
    force: bool = False
    wheel: Path | None = None  # a prebuilt Shipyard wheel; None: build one from the source tree


@dataclass(frozen=True, slots=True)
class BuildContext:
    """A written context: where it is and what it was rendered from."""

    path: Path
    spec: ImageSpec

    @property
    def tag(self) -> str:
        assert self.spec.tag is not None  # write_context always names one
        return self.spec.tag


def default_tag(versions: Iterable[ModelVersion]) -> str:
    """`shipyard-iris:3`, or `shipyard-iris-digits:3-1` for several models."""
    versions = list(versions)
    return f"shipyard-{'-'.join(v.name for v in versions)}:{'-'.join(str(v.version) for v in versions)}"


def installed_versions() -> dict[str, str]:
    """Versions installed here of the packages a format may need (pins for what no model recorded)."""
    found = {}
    for package in {p for packages in FORMAT_PACKAGES.values() for p in packages}:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def resolve_refs(registry: Registry, refs: Iterable[str]) -> tuple[list[ModelVersion], dict[str, set[str]]]:
    """The versions the references select (each once) and the aliases to keep on each."""
    versions: dict[str, ModelVersion] = {}
    aliases: dict[str, set[str]] = {}
    for text in refs:
        ref = ModelRef.parse(text)
        version = registry.resolve(ref)
        key = str(version.ref)
        versions.setdefault(key, version)
        aliases.setdefault(key, set())
        if ref.alias is not None:
            aliases[key].add(ref.alias)
    names = [v.name for v in versions.values()]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InvalidInputError(
            f"the references select two versions of {twice!r}; a server serves one version per model",
            field="ref",
        )
    return list(versions.values()), aliases


def _check_out(out: Path, force: bool, registry: Registry) -> None:
    home = registry.settings.home.expanduser().resolve()
    target = out.resolve()
    if target == home or target in home.parents or home in target.parents:
        raise InvalidInputError(
            f"--out {out} overlaps the registry home {registry.location}; choose a folder outside it",
            field="out",
        )
    check_out(out, force, what="a build context", command="shipyard build", ours=holds("Dockerfile", _MARKER))


def _copy_registry(
    registry: Registry,
    versions: list[ModelVersion],
    aliases: dict[str, set[str]],
    home: Path,
    *,
    actor: str = "shipyard build",
) -> None:
    """An embedded SQLite registry holding exactly `versions`, copied with their digests checked
    on both sides: the source's files re-hashed before, the copy's after."""
    settings = Settings.model_construct(home=home)  # never the environment's registry URL
    with Registry(settings=settings) as embedded:
        for version in versions:
            source = registry.artifact_path(version)
            embedded.import_version(
                version, source, aliases=tuple(sorted(aliases[str(version.ref)])), actor=actor
            )
    for leftover in ("registry.db-wal", "registry.db-shm", "registry.db-journal"):
        (home / leftover).unlink(missing_ok=True)  # empty once the last connection closed
    shutil.rmtree(home / "artifacts" / ".staging", ignore_errors=True)


def embed(registry: Registry, refs: Iterable[str], home: Path, *, actor: str) -> list[ModelVersion]:
    """Write an embedded registry holding exactly the versions `refs` select into `home` (a new
    folder): what an image carries, or a platform mounts as its model folder."""
    versions, aliases = resolve_refs(registry, refs)
    _copy_registry(registry, versions, aliases, home, actor=actor)
    return versions


def _checksums(root: Path, folder: str) -> str:
    files = []
    for dirpath, _, filenames in os.walk(root / folder):
        for name in filenames:
            path = Path(dirpath, name)
            files.append((path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest()))
    return render_checksums(files)


def write_context(
    registry: Registry,
    config: BuildConfig,
    *,
    installed: Mapping[str, str] | None = None,
    build_wheel: Callable[[Path], Path] | None = None,
) -> BuildContext:
    """Resolve the references and write the whole context to `config.out`."""
    versions, aliases = resolve_refs(registry, config.refs)
    check_base(versions, config.base)
    _check_out(config.out, config.force, registry)
    requirements = plan_requirements(versions, installed)
    out = config.out
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        _copy_registry(registry, versions, aliases, staging / "home")
        wheels = staging / "wheels"
        wheels.mkdir()
        if config.wheel is not None:
            if not config.wheel.is_file() or config.wheel.suffix != ".whl":
                raise InvalidInputError(f"--wheel {config.wheel} is not a wheel file", field="wheel")
            wheel = Path(shutil.copy2(config.wheel, wheels / config.wheel.name))
        elif build_wheel is not None:
            wheel = build_wheel(wheels)
        else:
            from shipyard.deploy.wheel import build_wheel as build_own_wheel

            wheel = build_own_wheel(wheels)
        spec = ImageSpec(
            versions=tuple(versions),
            refs=config.refs,
            platform=contract.platform(config.platform),
            requirements=requirements,
            wheel=wheel.name,
            shipyard_version=__version__,
            base=config.base,
            gpu=config.gpu,
            tag=config.tag or default_tag(versions),
        )
        reqs = staging / "requirements"
        reqs.mkdir()
        (reqs / "requirements.txt").write_text(render_requirements(requirements))
        torch = render_torch_requirements(requirements)
        if torch is not None:
            (reqs / "torch.txt").write_text(torch)
        (staging / "Dockerfile").write_text(render_dockerfile(spec))
        (staging / ".dockerignore").write_text(render_dockerignore())
        (staging / "healthcheck.py").write_text(render_healthcheck(spec))
        (staging / "README.md").write_text(render_readme(spec))
        (staging / "SHA256SUMS").write_text(_checksums(staging, "home"))
        if out.exists():
            shutil.rmtree(out)  # checked above: empty, or a context of ours with --force
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildContext(out, spec)
