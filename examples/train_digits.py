"""Train a random forest on scikit-learn's bundled 8×8 digits and push it twice.

1. "digits": the scikit-learn estimator itself, stored with skops. Its trees are
   `sklearn.tree._tree.Tree` objects, which skops does not trust by default but Shipyard's
   allow-list accepts (scikit-learn's own classes), so no `trust=True` is needed.
2. "digits-onnx": the same forest converted to ONNX with skl2onnx and pushed from the .onnx
   file, with `parent` pointing at the scikit-learn version and the conversion as its recipe.
   skl2onnx comes with the `[dev]` extra only; without it this step is skipped with a note.

    SHIPYARD_HOME=/tmp/shipyard python examples/train_digits.py
    shipyard diff digits:1 digits-onnx:1
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

import shipyard

SEED = 0
TARGET_OPSET = 17
TAGS = {"dataset": "sklearn.datasets.load_digits", "task": "classification"}


def main(home: str | Path | None = None) -> list[shipyard.ModelVersion]:
    """Train, push the estimator, then (if skl2onnx is installed) its ONNX conversion."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    hyperparameters = {"n_estimators": 30, "max_depth": 12, "min_samples_leaf": 1}
    model = RandomForestClassifier(**hyperparameters, random_state=SEED, n_jobs=1)
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)

    estimator = shipyard.push(
        "digits",
        model,
        home=home,
        sample_input=x_test[:5],
        alias="production",
        metrics={"accuracy": accuracy_score(y_test, predicted)},
        params={"model": "RandomForestClassifier", **hyperparameters},
        tags=TAGS,
        description="Handwritten digit (0-9) from an 8×8 image of grey levels 0-16, flattened to 64",
    )
    pushed = [estimator]
    onnx_version = _push_onnx(model, x_test, predicted, y_test, parent=str(estimator.ref), home=home)
    if onnx_version is not None:
        pushed.append(onnx_version)
    return pushed


def _push_onnx(
    model: RandomForestClassifier,
    x_test: np.ndarray,
    sklearn_predicted: np.ndarray,
    y_test: np.ndarray,
    *,
    parent: str,
    home: str | Path | None,
) -> shipyard.ModelVersion | None:
    """Convert to ONNX, check it against the estimator and push the file; None without skl2onnx."""
    try:
        from skl2onnx import to_onnx
    except ImportError:
        print("note: skl2onnx is not installed (pip install -e '.[dev]'); skipping digits-onnx")
        return None
    import onnxruntime as ort

    x32 = x_test.astype(np.float32)
    # zipmap=False: plain label and probability tensors instead of a list of {class: p} maps.
    options = {id(model): {"zipmap": False}}
    onnx_model = to_onnx(model, x32[:1], options=options, target_opset=TARGET_OPSET)
    with tempfile.TemporaryDirectory(prefix="shipyard-digits-") as tmp:
        path = Path(tmp) / "digits.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        label = session.run(["label"], {session.get_inputs()[0].name: x32})[0]
        return shipyard.push(
            "digits-onnx",
            path,
            home=home,
            parent=parent,
            recipe={
                "converter": "skl2onnx.to_onnx",
                "target_opset": TARGET_OPSET,
                "options": {"zipmap": False},
                "input_dtype": "float32",
            },
            metrics={
                "accuracy": accuracy_score(y_test, label),
                # Share of test rows where ONNX and scikit-learn predict the same digit.
                "agreement": float(np.mean(label == sklearn_predicted)),
            },
            tags={**TAGS, "converted_from": parent},
            description="The digits random forest converted to ONNX (float32 input)",
        )


if __name__ == "__main__":
    for pushed in main():
        print(f"{pushed.ref}  {pushed.digest}  accuracy={pushed.metrics['accuracy']:.4f}")
