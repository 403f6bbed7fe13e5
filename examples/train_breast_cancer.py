"""Train gradient-boosted trees on scikit-learn's bundled breast cancer data; push "breast-cancer".

Accuracy and ROC AUC on a held-out split are recorded as metrics.

    SHIPYARD_HOME=/tmp/shipyard python examples/train_breast_cancer.py
    shipyard show breast-cancer --json
"""

from __future__ import annotations

from pathlib import Path

from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

import shipyard

SEED = 0


def main(home: str | Path | None = None) -> list[shipyard.ModelVersion]:
    """Train, evaluate on a held-out split and push; returns the pushed version."""
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=SEED, stratify=data.target
    )
    hyperparameters = {"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3}
    model = GradientBoostingClassifier(**hyperparameters, random_state=SEED)
    model.fit(x_train, y_train)
    # Column 1 is the probability of class 1, "benign".
    scores = model.predict_proba(x_test)[:, 1]

    version = shipyard.push(
        "breast-cancer",
        model,
        home=home,
        sample_input=x_test[:5],
        alias="production",
        metrics={
            "accuracy": accuracy_score(y_test, model.predict(x_test)),
            "roc_auc": roc_auc_score(y_test, scores),
        },
        params={"model": "GradientBoostingClassifier", **hyperparameters},
        tags={"dataset": "sklearn.datasets.load_breast_cancer", "task": "classification"},
        description="Malignant (0) or benign (1) tumour from 30 features of a cell-nuclei image",
    )
    return [version]


if __name__ == "__main__":
    for pushed in main():
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in pushed.metrics.items())
        print(f"{pushed.ref}  {pushed.digest}  {metrics}")
