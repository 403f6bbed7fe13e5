"""Push every example model (iris, digits, digits-onnx, breast-cancer, and with the extras
digits-torch and minilm) into one registry, skipping the examples whose models it already has.

`make run` calls this with SHIPYARD_HOME=.shipyard-run, then `shipyard list`, so a second run
starts serving at once. Prints one line per pushed version: reference, digest and metrics.

    SHIPYARD_HOME=/tmp/shipyard python examples/push_examples.py
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import shipyard

# Each example script and the models it pushes.
EXAMPLES = {
    "train_iris": ("iris",),
    "train_digits": ("digits", "digits-onnx"),
    "train_breast_cancer": ("breast-cancer",),
    "train_torch": ("digits-torch",),
    "push_minilm": ("minilm",),
}
HERE = Path(__file__).resolve().parent


def _example(module: str) -> Callable[..., list[shipyard.ModelVersion]]:
    """The `main` of a sibling example script, however this file was started."""
    if str(HERE) not in sys.path:  # e.g. under runpy.run_path, which leaves sys.path alone
        sys.path.insert(0, str(HERE))
    main: Callable[..., list[shipyard.ModelVersion]] = importlib.import_module(module).main
    return main


def summarize(version: shipyard.ModelVersion) -> str:
    """One line: reference, aliases, digest and metrics."""
    aliases = "".join(f" @{a}" for a in version.aliases)
    metrics = " ".join(f"{k}={v:.4f}" for k, v in version.metrics.items())
    return f"{str(version.ref) + aliases:<28} {version.format:<12} {version.digest}  {metrics}"


def main(home: str | Path | None = None) -> list[shipyard.ModelVersion]:
    """Run every example whose models the registry lacks; returns the versions they pushed."""
    started = time.perf_counter()
    present = {row["name"] for row in shipyard.Registry(home=home).list_models()}
    pushed = []
    for module, names in EXAMPLES.items():
        if present.issuperset(names):
            print(f"{module}: {', '.join(names)} already in the registry")
            continue
        for version in _example(module)(home=home):
            print(summarize(version), flush=True)
            pushed.append(version)
    print(f"pushed {len(pushed)} versions in {time.perf_counter() - started:.1f}s")
    return pushed


if __name__ == "__main__":
    main()
