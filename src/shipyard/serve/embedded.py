"""A registry shipped inside a container image or a platform's model folder, served read-only.

Such a folder holds `registry.db` and `artifacts/` as a Shipyard home does. Platforms mount it
read-only (SageMaker's /opt/ml/model, Azure's AZUREML_MODEL_DIR) while SQLite's WAL mode and the
server's audit and prediction logs write, so the database is copied into a writable working home
and the artifacts are read where they lie (their digests are still checked on every load).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from shipyard.registry import Registry

DATABASE = "registry.db"


def find(folders: Iterable[Path]) -> Path | None:
    """The first folder holding a registry, itself or one level down (Azure ML mounts a
    registered model folder inside AZUREML_MODEL_DIR)."""
    for folder in folders:
        if (folder / DATABASE).is_file():
            return folder
        if folder.is_dir():
            inner = sorted(p.parent for p in folder.glob(f"*/{DATABASE}"))
            if inner:
                return inner[0]
    return None


def working_copy(folder: Path, work: Path) -> tuple[str, str]:
    """(registry URL, artifact root) serving `folder`'s versions from a copy of its database in
    `work`; a WAL file beside the database comes along, so nothing committed is lost."""
    work.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        source = folder / f"{DATABASE}{suffix}"
        if source.is_file():
            shutil.copyfile(source, work / source.name)
    return f"sqlite:///{work / DATABASE}", str(folder / "artifacts")


def every_version(registry: Registry) -> list[str]:
    """`NAME:VERSION` for every version the registry holds: each is served, and a request that
    names no version gets the highest."""
    refs: list[str] = []
    for summary in registry.list_models():
        name = summary["name"]
        refs.extend(
            f"{name}:{v.version}" for v in sorted(registry.list_versions(name), key=lambda v: v.version)
        )
    return refs
