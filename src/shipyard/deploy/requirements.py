"""Which libraries an image needs for its models, pinned to what the registry recorded.

Pure: versions in, requirement file text out. A format maps to the packages its runtime imports
(not its framework: an ONNX export of a PyTorch module needs onnxruntime, never torch).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shipyard.errors import UnprocessableError
from shipyard.types import ModelVersion

TORCH = "torch"
TORCH_VERSION = "2.13.0"  # the [torch] extra's pin, for a model that did not record one
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# The packages each format's runtime imports, beyond Shipyard's own dependencies.
FORMAT_PACKAGES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime"),
    "skops": ("scikit-learn", "skops", "numpy"),
    "pickle": ("scikit-learn", "numpy"),
    "joblib": ("scikit-learn", "numpy"),
    "transformers": ("transformers", "tokenizers", "safetensors", TORCH),
    "transformers-onnx": ("transformers", "tokenizers", "onnxruntime"),
    "keras": ("keras", "h5py", TORCH),
    "keras-h5": ("keras", "h5py", TORCH),
    "tflite": ("ai-edge-litert",),
}
# Packages with manylinux (glibc) wheels only: a musl base (Alpine) cannot install them.
_GLIBC_ONLY = ("onnxruntime", TORCH, "ai-edge-litert")
_RELEASE = re.compile(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Pin:
    """One package: its version (None: left to pip) and where that version came from."""

    package: str
    version: str | None
    source: str
    others: tuple[str, ...] = ()  # other versions recorded by the models, not installed


@dataclass(frozen=True, slots=True)
class Requirements:
    """The pins of an image: the models' libraries and, separately, torch (its own index)."""

    pins: tuple[Pin, ...]
    torch: Pin | None
    formats: tuple[str, ...] = field(default=())


def _release(version: str) -> str | None:
    """`2.13.0+cpu` → `2.13.0`; None for what pip cannot be pinned to reliably (a dev build)."""
    plain = version.split("+", 1)[0].strip()
    return plain if _RELEASE.fullmatch(plain) else None


def _newest(versions: Iterable[str]) -> list[str]:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"[0-9]+", v))

    return sorted(set(versions), key=key, reverse=True)


def check_base(versions: Iterable[ModelVersion], base: str) -> None:
    """Refuse a model the base image cannot serve: an unknown format, or a musl base for the
    glibc-only wheels every Shipyard image needs (onnxruntime) or a model needs (torch, LiteRT)."""
    for version in versions:
        if version.format not in FORMAT_PACKAGES:
            raise UnprocessableError(
                f"{version.ref} has format {version.format!r}, which `shipyard build` cannot install "
                f"a runtime for (it can: {', '.join(sorted(FORMAT_PACKAGES))})",
                field="ref",
            )
    if "alpine" in base.lower() or "musl" in base.lower():
        raise UnprocessableError(
            f"base image {base!r} is musl-based: {', '.join(_GLIBC_ONLY)} have no musl wheels; use a "
            "Debian-based image such as python:3.11-slim-bookworm",
            field="base",
        )


def plan_requirements(
    versions: Iterable[ModelVersion], installed: Mapping[str, str] | None = None
) -> Requirements:
    """Pins for the models' packages: the version the registry recorded (the newest when models
    disagree), else the one `installed` where the image is built, else none."""
    installed = installed or {}
    recorded: dict[str, dict[str, list[str]]] = {}  # package → version → refs
    wanted: dict[str, None] = {}
    formats: dict[str, None] = {}
    for version in versions:
        formats[version.format] = None
        for package in FORMAT_PACKAGES[version.format]:
            wanted[package] = None
            found = version.library_versions.get(package)
            pinned = _release(found) if found else None
            if pinned:
                recorded.setdefault(package, {}).setdefault(pinned, []).append(str(version.ref))
    pins = []
    for package in wanted:
        if package in recorded:
            newest = _newest(recorded[package])
            refs = ", ".join(recorded[package][newest[0]])
            pins.append(Pin(package, newest[0], f"recorded by {refs}", tuple(newest[1:])))
        elif package == TORCH:
            pins.append(Pin(package, TORCH_VERSION, "Shipyard's [torch] pin"))
        elif (local := _release(installed.get(package, ""))) is not None:
            pins.append(Pin(package, local, "installed where the image was built"))
        else:
            pins.append(Pin(package, None, "not recorded: pip chooses"))
    torch = next((p for p in pins if p.package == TORCH), None)
    rest = tuple(p for p in pins if p.package != TORCH)
    return Requirements(rest, torch, tuple(formats))


def _line(pin: Pin) -> str:
    spec = pin.package if pin.version is None else f"{pin.package}=={pin.version}"
    note = pin.source + (f"; also recorded: {', '.join(pin.others)}" if pin.others else "")
    return f"{spec}  # {note}"


def render_requirements(requirements: Requirements) -> str:
    """requirements.txt: the models' libraries (torch is in its own file)."""
    lines = [
        "# The libraries this image's models need, pinned to what the registry recorded.",
        "# Shipyard's own dependencies come with its wheel (wheels/).",
        *(_line(pin) for pin in requirements.pins),
    ]
    return "\n".join(lines) + "\n"


def render_torch_requirements(requirements: Requirements) -> str | None:
    """torch.txt, installed first from the CPU index (or PyPI's CUDA build with --gpu); None if
    no model needs torch, so the image has no torch at all."""
    if requirements.torch is None:
        return None
    return f"# Installed before requirements.txt, from its own index.\n{_line(requirements.torch)}\n"
