"""The facts a packager records about a new artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.types import Signature


@dataclass(frozen=True, slots=True)
class Packaged:
    """What a packager learned while writing an artifact into the staging folder."""

    format: str
    framework: str
    signature: Signature
    library_versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Loading it needed --trust (code-executing format or types off the allow-list): recorded on
    # the version so serving may load it the same way.
    needs_trust: bool = False
