"""Print branch coverage per package of shipyard from the data `make test` collected.

Lines and branches are counted together, as coverage.py's own percentage does. Modules of the
packages that must stay covered are listed when they fall under the threshold.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import coverage

WATCHED = ("serve", "registry")
LOW = 60.0


def package_of(path: Path) -> str:
    parts = path.parts[path.parts.index("shipyard") + 1 :]
    return parts[0] if len(parts) > 1 else "(top level)"


def percent(covered: int, total: int) -> float:
    return 100.0 * covered / total if total else 100.0


def format_row(name: str, row: list[int]) -> str:
    lines, branches = f"{row[0]}/{row[1]}", f"{row[2]}/{row[3]}"
    return f"{name:<14}{lines:>14}{branches:>14}{percent(row[0] + row[2], row[1] + row[3]):>7.1f}%"


def main() -> int:
    cov = coverage.Coverage()
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out))
        files = json.loads(out.read_text())["files"]
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    low: list[tuple[float, str]] = []
    for name, data in files.items():
        path = Path(name)
        s = data["summary"]
        row = totals[package_of(path)]
        row[0] += s["covered_lines"]
        row[1] += s["num_statements"]
        row[2] += s["covered_branches"]
        row[3] += s["num_branches"]
        share = percent(s["covered_lines"] + s["covered_branches"], s["num_statements"] + s["num_branches"])
        if package_of(path) in WATCHED and share < LOW:
            low.append((share, "/".join(path.parts[path.parts.index("shipyard") :])))
    print(f"\n{'package':<14}{'lines':>14}{'branches':>14}{'cover':>8}")
    everything = [0, 0, 0, 0]
    for package, row in sorted(totals.items()):
        everything = [a + b for a, b in zip(everything, row, strict=True)]
        print(format_row(package, row))
    print(format_row("total", everything))
    for share, module in sorted(low):
        print(f"low: {module} {share:.1f}%")
    # A module of the watched packages that no test runs at all fails the build.
    return 1 if any(share == 0.0 for share, _ in low) else 0


if __name__ == "__main__":
    sys.exit(main())
