"""Pure data shared by every part: model references, tensor signatures and version records."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shipyard.errors import InvalidInputError

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
ALIAS_PATTERN = r"[a-z][a-z0-9._-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
_ALIAS_RE = re.compile(ALIAS_PATTERN)
_VERSION_RE = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
MAX_VERSION = 2**31 - 1  # fits every database's INTEGER
_REF_RE = re.compile(r"(?P<name>[^:@]*)(?::(?P<version>[^:@]*)|@(?P<alias>[^:@]*))?")
# NAME:VERSION@sha256:<hex>: a version pinned to its content (the digest must match).
_DIGEST_REF_RE = re.compile(r"(?P<ref>[^@]*:[^:@]*)@(?P<digest>sha256:[0-9a-f]{64})", re.ASCII)

# Open Inference Protocol V2 datatypes, the vocabulary of every signature.
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
)


def validate_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise InvalidInputError."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
            field="name",
        )
    return name


def validate_alias(alias: str) -> str:
    """Return `alias` if it is a valid alias name, else raise InvalidInputError."""
    if not _ALIAS_RE.fullmatch(alias):
        raise InvalidInputError(
            f"invalid alias {alias!r}: use 1-64 lowercase letters, digits, '-', '_' or '.', "
            "starting with a letter",
            field="alias",
        )
    return alias


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A selector for one version: `name` (latest), `name:3`, `name@production`, or
    `name:3@sha256:<hex>` (version 3, which must hold exactly that content)."""

    name: str
    version: int | None = None
    alias: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse the reference syntax; the one parser used by the CLI, API and server."""
        pinned = _DIGEST_REF_RE.fullmatch(text.strip())
        if pinned is not None:
            ref = cls.parse(pinned["ref"])
            return cls(ref.name, version=ref.version, digest=pinned["digest"])
        match = _REF_RE.fullmatch(text.strip())
        if match is None or not text.strip():
            raise InvalidInputError(
                f"malformed model reference {text!r}: expected NAME, NAME:VERSION, NAME@ALIAS "
                "or NAME:VERSION@sha256:DIGEST",
                field="ref",
            )
        name, version, alias = match["name"], match["version"], match["alias"]
        validate_name(name)
        if version is not None:
            if not _VERSION_RE.fullmatch(version) or int(version) > MAX_VERSION:
                raise InvalidInputError(
                    f"malformed model reference {text!r}: the version must be a positive integer (NAME:3)",
                    field="ref",
                )
            return cls(name, version=int(version))
        if alias is not None:
            return cls(name, alias=validate_alias(alias))
        return cls(name)

    @property
    def is_pinned(self) -> bool:
        return self.version is not None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}" + (f"@{self.digest}" if self.digest else "")
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor: V2 datatype and shape, with -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def describe(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {self.datatype}[{dims}]"


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs and outputs of a model; batch is axis 0."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data.get("inputs", [])),
            tuple(TensorSpec.from_dict(t) for t in data.get("outputs", [])),
        )

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def describe(self) -> str:
        ins = ", ".join(t.describe() for t in self.inputs)
        outs = ", ".join(t.describe() for t in self.outputs)
        return f"inputs ({ins}) -> outputs ({outs})"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """The registry's record of one immutable version."""

    name: str
    version: int
    format: str
    digest: str  # "sha256:<hex>" over the artifact's manifest
    size: int
    files: tuple[dict[str, Any], ...]  # [{"path", "sha256", "size"}], relative to the artifact
    signature: Signature
    framework: str = ""
    library_versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    created_at: str = ""
    created_by: str = ""
    git_commit: str | None = None
    parent: str | None = None  # "name:version" this was derived from
    recipe: dict[str, Any] | None = None
    data_profile: dict[str, Any] | None = None
    serving: dict[str, Any] = field(default_factory=dict)  # per-version batching options
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (classes, opset)
    trusted: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, version=self.version)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["signature"] = self.signature.to_dict()
        data["files"] = [dict(f) for f in self.files]
        data["aliases"] = list(self.aliases)
        data["ref"] = str(self.ref)
        return data
