"""Log models to an MLflow tracking server, as an MLflow user would: run with .venv-mlflow's
python by test_import_mlflow.py, never imported by Shipyard's tests (mlflow is not installed there).

    python mlflow_log_models.py TRACKING_URI OUT.json [LOCAL_FOLDER]

Registers `iris` (ONNX, two versions: `champion` on 1, `challenger` on 2), `iris-skops` (sklearn
saved with skops) and `iris-pickle` (sklearn saved with pickle); each run logs metrics, params,
tags, a signature and an input example. Writes the run ids to OUT.json; with LOCAL_FOLDER, also
saves the ONNX model there as a model folder (no server needed to read it).
"""

import json
import sys

import mlflow
import numpy as np
from mlflow.models import infer_signature
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

uri, out = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("shipyard-import")
X, y = load_iris(return_X_y=True)
X = X.astype(np.float32)
example = X[:2]
runs = {}


def onnx_model(C: float):
    model = LogisticRegression(C=C, max_iter=500).fit(X, y)
    # zipmap=False: plain label and probability tensors, as Shipyard serves them.
    return model, to_onnx(model, X[:1], options={"zipmap": False}, target_opset=17)


for number, C in ((1, 0.05), (2, 1.0)):
    model, graph = onnx_model(C)
    with mlflow.start_run(run_name=f"iris-onnx-{number}") as run:
        mlflow.log_params({"C": C, "max_iter": 500})
        mlflow.log_metric("accuracy", float(model.score(X, y)))
        mlflow.log_metric("loss", 0.5 / number, step=0)
        mlflow.log_metric("loss", 0.1 / number, step=1)  # the latest value is the one that counts
        mlflow.set_tag("team", "vision")
        signature = infer_signature(example, model.predict(example).astype(np.int64))
        mlflow.onnx.log_model(
            graph,
            name="model",
            signature=signature,
            input_example=example,
            registered_model_name="iris",
            save_as_external_data=False,
        )
        runs[f"iris-{number}"] = run.info.run_id

client = mlflow.MlflowClient()
client.set_registered_model_alias("iris", "champion", "1")
client.set_registered_model_alias("iris", "challenger", "2")

for fmt in ("skops", "pickle"):
    model = LogisticRegression(max_iter=500).fit(X, y)
    with mlflow.start_run(run_name=f"iris-{fmt}") as run:
        mlflow.log_param("serialization", fmt)
        mlflow.log_metric("accuracy", float(model.score(X, y)))
        mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format=fmt,
            signature=infer_signature(X[:2].astype(np.float64), model.predict(X[:2])),
            input_example=X[:2].astype(np.float64),
            registered_model_name=f"iris-{fmt}",
        )
        runs[f"iris-{fmt}"] = run.info.run_id

if len(sys.argv) > 3:
    mlflow.onnx.save_model(
        onnx_model(1.0)[1], sys.argv[3], input_example=example, save_as_external_data=False
    )

with open(out, "w") as fh:
    json.dump(runs, fh)
