"""Train a small PyTorch network on scikit-learn's digits and push it as "digits-torch".

Shipyard stores the module safely: an ONNX export checked against the module on the sample
batch, plus its weights as safetensors; no pickled code. Needs `pip install 'shipyard[torch]'`.

    SHIPYARD_HOME=/tmp/shipyard python examples/train_torch.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import shipyard

SEED = 0


def main(home: str | Path | None = None) -> list[shipyard.ModelVersion]:
    """Train for a few epochs, measure held-out accuracy and push (none without torch)."""
    try:
        import torch
    except ImportError:
        print("note: torch is not installed; skipping digits-torch (pip install 'shipyard[torch]')")
        return []
    torch.manual_seed(SEED)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    features, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(features), labels)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    version = shipyard.push(
        "digits-torch",
        net,
        home=home,
        sample_input=torch.from_numpy(x_test[:8]),
        metrics={"accuracy": accuracy},
        params={"epochs": 60, "lr": 0.01, "hidden": 64},
        tags={"dataset": "sklearn.datasets.load_digits", "input_scale": "pixels/16"},
        description="Two-layer MLP on 8x8 digit images scaled to 0-1",
    )
    return [version]


if __name__ == "__main__":
    for pushed in main():
        print(f"{pushed.ref}  {pushed.digest}  accuracy={pushed.metrics['accuracy']:.4f}")
