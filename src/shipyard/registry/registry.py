"""The model registry: immutable versions of content-addressed artifacts, with aliases."""

from __future__ import annotations

import contextlib
import hmac
import math
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import (
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    UnauthorizedError,
    UntrustedArtifactError,
)
from shipyard.packaging import package
from shipyard.registry import keys, signing
from shipyard.registry._git import current_commit
from shipyard.registry.audit import AuditEntry
from shipyard.registry.keys import ApiKey
from shipyard.registry.metadata import AliasChange, MetadataStore, current_user, utc_now
from shipyard.registry.store import ArtifactStore, LocalArtifactStore, Progress, manifest_digest
from shipyard.runtimes import load_runtime
from shipyard.runtimes.model import Model
from shipyard.settings import Settings
from shipyard.types import MAX_VERSION, ModelRef, ModelVersion, Signature, validate_alias, validate_name

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DIFF_FIELDS = (
    "format",
    "framework",
    "digest",
    "size",
    "signature",
    "metrics",
    "params",
    "tags",
    "library_versions",
    "parent",
    "git_commit",
    "trusted",
    "created_at",
    "description",
)


def _str_map(values: dict[str, Any] | None, what: str) -> dict[str, str]:
    out = {}
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"{what} names must be non-empty strings", field=what)
        out[key] = str(value)
    return out


def _metric_map(values: dict[str, Any] | None) -> dict[str, float]:
    out = {}
    for key, value in (values or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"metric {key!r} must be a number, got {value!r}", field="metrics"
            ) from None
        if not math.isfinite(number):
            raise InvalidInputError(f"metric {key!r} must be finite, got {value!r}", field="metrics")
        out[str(key)] = number
    return out


class Registry:
    """Versions, aliases and artifacts under one home (SQLite + folder) or a database URL."""

    def __init__(self, home: str | Path | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load(home=home)
        self.metadata = MetadataStore(self.settings.database_url)
        self.store = open_store(self.settings)

    def close(self) -> None:
        self.metadata.close()

    @property
    def location(self) -> str:
        """Where the versions live, for messages: the home (as `~/…`) or the database URL."""
        url = self.settings.registry_url
        if url is not None:
            return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)  # never show a password
        home = self.settings.home.expanduser()
        try:
            return str(Path("~") / home.relative_to(Path.home()))
        except ValueError:
            return str(home)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """The version a reference selects, with a message listing what exists if none."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if ref.alias is not None:
            number = self.metadata.resolve_alias(ref.name, ref.alias)
            if number is None:
                self._require_model(ref.name)
                known = sorted(self.metadata.aliases(ref.name))
                raise NotFoundError(
                    f"model {ref.name!r} has no alias {ref.alias!r} "
                    f"(aliases: {', '.join(known) or 'none'}); set one with "
                    f"`shipyard alias {ref.name} {ref.alias} VERSION`",
                    field="ref",
                )
        elif ref.version is not None:
            if not 1 <= ref.version <= MAX_VERSION:
                raise InvalidInputError(
                    f"version {ref.version} is out of range (1-{MAX_VERSION})", field="version"
                )
            number = ref.version
        else:
            number = self.metadata.latest_version(ref.name)
            if number is None:
                self._require_model(ref.name)
        found = self.metadata.get(ref.name, number) if number is not None else None
        if found is None:
            numbers = self._require_model(ref.name)
            raise NotFoundError(
                f"model {ref.name!r} has no version {number} (versions: "
                f"{_ranges(numbers)}; latest is {numbers[-1]}); see `shipyard list {ref.name}`",
                field="ref",
            )
        # A pin by digest holds only if the record and the file list it names both hash to it.
        if ref.digest is not None and {found.digest, manifest_digest(found.files)} != {ref.digest}:
            raise IntegrityError(
                f"{found.ref} holds {found.digest}, not {ref.digest} as {ref} pins: refusing other "
                f"content; see `shipyard show {found.ref}`"
            )
        return found

    def _require_model(self, name: str) -> list[int]:
        numbers = self.metadata.version_numbers(name)
        if not numbers:
            names = sorted(self.metadata.model_names())
            shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
            if not names:
                raise NotFoundError(
                    f"no model named {name!r} in the registry (models: none yet): "
                    f"{self.location} is empty (set SHIPYARD_HOME or --home to use another)",
                    field="ref",
                )
            raise NotFoundError(f"no model named {name!r} in the registry (models: {shown})", field="ref")
        return numbers

    def get(self, ref: str | ModelRef) -> ModelVersion:
        return self.resolve(ref)

    def list_models(self) -> list[dict[str, Any]]:
        return self.metadata.list_models()

    def list_versions(self, name: str) -> list[ModelVersion]:
        validate_name(name)
        self._require_model(name)
        return self.metadata.list_versions(name)

    def history(self, name: str, alias: str) -> list[AliasChange]:
        validate_name(name)
        validate_alias(alias)
        self._require_model(name)
        return self.metadata.history(name, alias)

    def diff(self, left: str | ModelRef, right: str | ModelRef) -> dict[str, Any]:
        """Field by field: {field: {"left", "right", "same"}} for two versions."""
        a, b = self.resolve(left).to_dict(), self.resolve(right).to_dict()
        return {
            "left": a["ref"],
            "right": b["ref"],
            "fields": {f: {"left": a[f], "right": b[f], "same": a[f] == b[f]} for f in DIFF_FIELDS},
        }

    def push(
        self,
        name: str,
        model: Any,
        *,
        sample_input: Any = None,
        alias: str | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        description: str = "",
        trust: bool = False,
        parent: str | ModelRef | None = None,
        recipe: dict[str, Any] | None = None,
        serving: dict[str, Any] | None = None,
        data_profile: dict[str, Any] | Callable[[Signature], dict[str, Any]] | None = None,
        cwd: str | Path | None = None,
        task: str | None = None,
        tokenizer: Any = None,
        truncate: bool = True,
        attachments: dict[str, bytes] | None = None,
        actor: str | None = None,
        progress: Progress | None = None,
    ) -> ModelVersion:
        """Store `model` (an estimator or a file path) as the next version of `name`.

        `attachments` (relative path → content) are stored inside the immutable artifact beside
        the model, e.g. the optimization report that justified this version. `data_profile` (the
        reference for drift) may be a function of the model's signature, called before anything
        is stored, so a reference that does not fit the model fails the push. The push and its
        trust decision go to the audit log (`actor`: who pushed; default the OS user); so does a
        push refused because the artifact would run code. `progress(done, total)` follows the
        upload to a remote store."""
        validate_name(name)
        if alias is not None:
            validate_alias(alias)
        parent_ref = str(self.resolve(parent).ref) if parent is not None else None
        record_meta = {
            "metrics": _metric_map(metrics),
            "params": _str_map(params, "params"),
            "tags": _str_map(tags, "tags"),
        }
        commit, dirty = current_commit(Path(cwd) if cwd else Path.cwd())
        with self.store.staging() as staging:
            try:
                packaged = package(
                    model,
                    staging,
                    sample_input=sample_input,
                    trust=trust,
                    task=task,
                    tokenizer=tokenizer,
                    truncate=truncate,
                    limits=self.settings.push,
                )
            except UntrustedArtifactError as exc:
                self.audit(
                    "push.refused",
                    target=name,
                    actor=actor,
                    detail={"trusted": False, "trust_flag": trust, "reason": exc.message},
                )
                raise
            if callable(data_profile):
                data_profile = data_profile(packaged.signature)
            for relative, content in (attachments or {}).items():
                target = staging / relative
                if target.exists() or Path(relative).is_absolute() or ".." in Path(relative).parts:
                    raise InvalidInputError(f"attachment {relative!r} clashes with the model's files")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            info = self.store.commit(staging, progress)
        extra = dict(packaged.extra)
        if dirty:
            extra["git_dirty"] = True
        record = {
            "name": name,
            "format": packaged.format,
            "framework": packaged.framework,
            "digest": info.digest,
            "size": info.size,
            "files": list(info.files),
            "signature": packaged.signature.to_dict(),
            "library_versions": packaged.library_versions,
            **record_meta,
            "description": description or "",
            "created_at": utc_now(),
            "created_by": current_user(),
            "git_commit": commit,
            "parent": parent_ref,
            "recipe": recipe,
            "data_profile": data_profile,
            "serving": serving or {},
            "extra": extra,
            "trusted": packaged.needs_trust,
        }
        trust_detail = {
            "digest": info.digest,
            "format": packaged.format,
            "trusted": packaged.needs_trust,
            "trust_flag": trust,
            "reason": (
                f"{packaged.format} runs code or uses types off the allow-list when loaded; accepted "
                "because --trust was given"
                if packaged.needs_trust
                else f"{packaged.format} loads as data or allow-listed types only"
            ),
        }
        number = self.metadata.add_version(record, alias=alias, actor=actor, audit_detail=trust_detail)
        return self.resolve(ModelRef(name, version=number))

    def import_version(
        self,
        version: ModelVersion,
        source: str | Path,
        *,
        aliases: tuple[str, ...] = (),
        actor: str | None = None,
    ) -> ModelVersion:
        """Store a version of another registry here under the same name, number and metadata.

        `source` is its artifact folder (e.g. `other.artifact_path(version)`); the files are
        re-hashed as they are stored and must give the version's recorded digest, so a copy is
        never silently different from what it claims to be. `aliases` are pointed at it."""
        validate_name(version.name)
        for alias in aliases:
            validate_alias(alias)
        with self.store.staging() as staging:
            shutil.copytree(Path(source), staging, dirs_exist_ok=True)
            info = self.store.commit(staging)
        if info.digest != version.digest:
            raise IntegrityError(
                f"artifact of {version.ref} does not match its digest while copying "
                f"(recorded {version.digest}, copied {info.digest}); run `shipyard verify {version.ref}`"
            )
        record = {
            key: value
            for key, value in version.to_dict().items()
            if key not in ("aliases", "ref")  # derived, not columns
        }
        record["files"] = list(info.files)
        self.metadata.import_version(
            record, aliases, actor=actor, audit_detail={"digest": info.digest, "format": version.format}
        )
        return self.resolve(version.ref)

    def set_data_profile(
        self, ref: str | ModelRef, profile: dict[str, Any], *, actor: str | None = None
    ) -> ModelVersion:
        """Store (or replace) a version's reference profile for drift, and audit it. The profile
        is metadata about the version's data: the artifact stays as it was."""
        version = self.resolve(ref)
        detail = {
            "rows": profile.get("rows"),
            "features": len(profile.get("features", [])),
            "source": profile.get("source"),
        }
        self.metadata.set_data_profile(
            version.name, version.version, profile, actor=actor, audit_detail=detail
        )
        return self.resolve(version.ref)

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None) -> int | None:
        """Point NAME@ALIAS at a version; returns the previous target (kept in history)."""
        validate_alias(alias)
        self.resolve(ModelRef(validate_name(name), version=version))  # lists versions if absent
        return self.metadata.set_alias(name, alias, version, actor=actor)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> int:
        validate_name(name)
        validate_alias(alias)
        self._require_model(name)
        return self.metadata.delete_alias(name, alias, actor=actor)

    def rollback(self, name: str, alias: str, *, actor: str | None = None) -> tuple[int | None, int]:
        """Restore the alias's previous target; (from, to)."""
        validate_name(name)
        validate_alias(alias)
        self.history(name, alias)  # a clear error for an unknown model or alias
        return self.metadata.rollback_alias(name, alias, actor=actor)

    def remove(
        self, ref: str | ModelRef, *, force: bool = False, actor: str | None = None
    ) -> tuple[ModelVersion, list[str]]:
        """Delete one version's record; its files go at the next `gc` unless shared."""
        version = self.resolve(ref)
        removed_aliases = self.metadata.delete_version(
            version.name, version.version, force=force, actor=actor
        )
        return version, removed_aliases

    def gc(self, grace_s: float = 600.0, *, actor: str | None = None) -> tuple[int, int]:
        """Remove unreferenced artifacts and abandoned staging folders; (removed, bytes freed).
        A run that removed something is audited."""
        removed, freed = self.store.collect_garbage(self.metadata.referenced_digests(), grace_s)
        if removed:
            self.audit("gc", target="artifacts", actor=actor, detail={"removed": removed, "bytes": freed})
        return removed, freed

    def disk_bytes(self) -> int:
        """Bytes the registry takes on this machine: its artifact store, and its SQLite database
        with the database's journal files (a server database is not on this machine)."""
        size = self.store.disk_bytes()
        if self.settings.registry_url is None:
            home = self.settings.home
            for path in (home / "registry.db", home / "registry.db-wal", home / "registry.db-shm"):
                with contextlib.suppress(FileNotFoundError):
                    size += path.stat().st_size
        return size

    def garbage_in_grace(self, grace_s: float = 600.0) -> tuple[int, int]:
        """What `gc(grace_s)` would keep because it is too recent; (items, bytes)."""
        return self.store.fresh_garbage(self.metadata.referenced_digests(), grace_s)

    def create_key(self, name: str, scopes: list[str], expires: str | None = None) -> tuple[ApiKey, str]:
        """A new key: its record and the full key, which is shown once and never stored."""
        keys.validate_key_name(name)
        record = {
            "name": name,
            "scopes": list(keys.parse_scopes(scopes)),
            "created_at": utc_now(),
            "created_by": current_user(),
            "expires_at": keys.parse_expiry(expires),
            "last_used_at": None,
            "revoked": False,
        }
        key_id, secret, key_hash = keys.new_key()
        self.metadata.add_key({**record, "id": key_id, "key_hash": key_hash})
        found = self.metadata.key_with_hash(key_id)
        assert found is not None
        self.audit(
            "key.create",
            target=key_id,
            detail={"name": name, "scopes": record["scopes"], "expires_at": record["expires_at"]},
        )
        return found[0], secret

    def list_keys(self) -> list[ApiKey]:
        """Every key's record (never a secret or a hash), revoked and expired ones included."""
        return self.metadata.keys()

    def revoke_key(self, id_or_name: str) -> ApiKey:
        revoked = self.metadata.revoke_key(id_or_name)
        if revoked is None:
            raise NotFoundError(
                f"no API key with id or name {id_or_name!r}; see `shipyard keys list`", field="key"
            )
        self.audit("key.revoke", target=revoked.id, detail={"name": revoked.name})
        return revoked

    def auth_enabled(self) -> bool:
        """Whether any key was ever created (servers then require one on every request)."""
        return self.metadata.any_key()

    def authenticate(self, presented: str, *, touch: bool = True) -> ApiKey:
        """The record of a valid key; UnauthorizedError if unknown, revoked or expired."""
        key_id, secret = keys.split_key(presented)
        found = self.metadata.key_with_hash(key_id)
        # Hash and compare even for an unknown id, so timing does not tell which ids exist.
        stored = found[1] if found is not None else "0" * 64
        matches = hmac.compare_digest(keys.hash_secret(secret), stored)
        if found is None or not matches:
            raise UnauthorizedError("the API key is not valid", field="authorization")
        key = found[0]
        if key.revoked:
            raise UnauthorizedError(f"API key {key.id} was revoked", field="authorization")
        if key.expired():
            raise UnauthorizedError(f"API key {key.id} expired at {key.expires_at}", field="authorization")
        if touch and _stale(key.last_used_at):
            self.metadata.touch_key(key.id, utc_now())
        return key

    def audit(
        self, action: str, *, target: str, actor: str | None = None, detail: dict[str, Any] | None = None
    ) -> AuditEntry:
        """Append an entry to the audit log (e.g. a server's load, a key's use).

        `actor` names who acted (a user name or a key's id, never a secret; default the OS
        user), `target` what was acted on (usually a reference), `detail` any JSON object."""
        return self.metadata.record(action, target, actor=actor, detail=detail)

    def audit_log(self, *, since: str | None = None, action: str | None = None) -> list[AuditEntry]:
        """Audit entries oldest first, from `since` (an ISO time) on, of `action` (or `action.*`)."""
        return self.metadata.audit_entries(since=since, action=action)

    def verify_audit(self) -> tuple[int, str]:
        """(entries, head hash) if the chain is intact; IntegrityError naming the first bad entry."""
        return self.metadata.verify_audit()

    def sign(self, ref: str | ModelRef, key_file: str | Path, *, actor: str | None = None) -> dict[str, Any]:
        """Sign a version (name, number, digest) with an Ed25519 private key, after re-hashing
        its artifact so a damaged one is never vouched for; returns the stored signature."""
        key = signing.load_private_key(Path(key_file))
        version = self.resolve(ref)
        self.artifact_path(version)
        row = {
            "name": version.name,
            "version": version.version,
            "fingerprint": signing.fingerprint(key.public_key()),
            "digest": version.digest,
            "signature": signing.sign(key, version.name, version.version, version.digest),
            "signed_at": utc_now(),
            "signed_by": actor or current_user(),
        }
        self.metadata.add_signature(row, actor=actor)
        return {"ref": str(version.ref), **row}

    def signatures(self, ref: str | ModelRef) -> list[dict[str, Any]]:
        version = self.resolve(ref)
        return self.metadata.signatures_of(version.name, version.version)

    def check_signature(self, version: ModelVersion, key: Ed25519PublicKey) -> str:
        """The key's fingerprint if it signed this exact version; IntegrityError (exit 7) if not."""
        stored = self.metadata.signatures_of(version.name, version.version)
        return signing.check(key, stored, version.name, version.version, version.digest)

    def artifact_path(self, ref: str | ModelRef | ModelVersion) -> Path:
        """The artifact folder of a version, after re-hashing every file against its digest."""
        version = ref if isinstance(ref, ModelVersion) else self.resolve(ref)
        return self.store.verify(version.digest, version.files, what=f"artifact of {version.ref}")

    def verify(
        self, ref: str | ModelRef | None = None, *, signed_by: str | Path | None = None
    ) -> list[tuple[ModelVersion, list[str]]]:
        """Re-hash the artifacts of one version (or all); each with its problems (none = ok).
        With `signed_by` (a public key file), a missing or mismatching signature is a problem."""
        key = signing.load_public_key(Path(signed_by)) if signed_by is not None else None
        targets = [self.resolve(ref)] if ref is not None else self.metadata.all_versions()
        results = []
        for version in targets:
            problems = self.store.problems(version.digest, version.files)
            if key is not None:
                try:
                    self.check_signature(version, key)
                except IntegrityError as exc:
                    problems.append(exc.message)
            results.append((version, problems))
        return results

    def export(self, ref: str | ModelRef, dest: str | Path) -> Path:
        """Copy a version's verified artifact out and return where it went.

        An existing folder, or a path written with a trailing `/`, receives the files inside it
        (created if needed); otherwise a one-file artifact becomes the file `dest`."""
        version = self.resolve(ref)
        source = self.artifact_path(version)
        into_folder = str(dest).endswith(("/", os.sep))
        dest = Path(dest).expanduser()
        if len(version.files) == 1 and not into_folder and not dest.is_dir():
            if dest.exists():
                raise InvalidInputError(f"{dest} already exists; choose another destination")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / str(version.files[0]["path"]), dest)
            return dest
        if dest.exists() and not dest.is_dir():
            raise InvalidInputError(f"{dest} is a file; the artifact needs a folder", field="dest")
        clashes = [str(f["path"]) for f in version.files if (dest / str(f["path"])).exists()]
        if clashes:
            raise InvalidInputError(
                f"{dest / clashes[0]} already exists; choose another destination", field="dest"
            )
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return dest / str(version.files[0]["path"]) if len(version.files) == 1 else dest

    def load(self, ref: str | ModelRef) -> Model:
        """Load a version for prediction (digest verified, trust tier enforced)."""
        version = self.resolve(ref)
        path = self.artifact_path(version)
        return Model(version, load_runtime(version, path, self.settings.runtime))


def open_store(settings: Settings) -> ArtifactStore:
    """The artifact store `settings.artifact_url` names: a local folder (a path or `file://`), or
    any other fsspec URL (e.g. `s3://bucket/prefix`) with a local cache of what is pulled."""
    root = settings.artifact_root
    scheme = root.split("://", 1)[0] if "://" in root else ""
    if scheme in ("", "file", "local"):
        return LocalArtifactStore(root.split("://", 1)[-1])
    from shipyard.registry.cache import ArtifactCache
    from shipyard.registry.remote import FsspecArtifactStore

    cache = ArtifactCache(settings.artifact_cache_dir, settings.cache_max_bytes)
    return FsspecArtifactStore(
        root, cache=cache, options=settings.artifact_options, part_bytes=settings.artifact_part_bytes
    )


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 → '1-3, 5'."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


_TOUCH_EVERY_S = 60.0  # a key's last use is written at most this often: a busy key is not a write each lookup


def _stale(last_used_at: str | None) -> bool:
    """Whether a key's recorded last use is older than `_TOUCH_EVERY_S` (or missing)."""
    if last_used_at is None:
        return True
    age = datetime.now(UTC) - datetime.fromisoformat(last_used_at)
    return age.total_seconds() >= _TOUCH_EVERY_S
