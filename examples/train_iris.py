"""Train a scaled logistic regression on scikit-learn's bundled iris data and push it as "iris".

The held-out accuracy is recorded as a metric and the version becomes `iris@production`.

    SHIPYARD_HOME=/tmp/shipyard python examples/train_iris.py
    shipyard show iris@production
"""

from __future__ import annotations

from pathlib import Path

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import shipyard

SEED = 0


def main(home: str | Path | None = None) -> list[shipyard.ModelVersion]:
    """Train, evaluate on a held-out split and push; returns the pushed version."""
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=SEED, stratify=data.target
    )
    hyperparameters = {"C": 1.0, "max_iter": 1000, "solver": "lbfgs"}
    model = make_pipeline(StandardScaler(), LogisticRegression(**hyperparameters, random_state=SEED))
    model.fit(x_train, y_train)
    accuracy = accuracy_score(y_test, model.predict(x_test))

    version = shipyard.push(
        "iris",
        model,
        home=home,
        sample_input=x_test[:5],
        alias="production",
        metrics={"accuracy": accuracy},
        params={"model": "StandardScaler+LogisticRegression", **hyperparameters},
        tags={"dataset": "sklearn.datasets.load_iris", "task": "classification"},
        description="Iris species from sepal and petal measurements (cm); "
        f"classes: {', '.join(data.target_names)}",
    )
    return [version]


if __name__ == "__main__":
    for pushed in main():
        print(f"{pushed.ref}  {pushed.digest}  accuracy={pushed.metrics['accuracy']:.4f}")
