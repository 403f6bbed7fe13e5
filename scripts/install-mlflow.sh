#!/usr/bin/env bash
# install-mlflow.sh [DIR]: MLflow 3.17.2 (with onnx, onnxruntime, skl2onnx, scikit-learn, skops) in its own venv
# (default .venv-mlflow/), for the `shipyard import mlflow` tests: they start a real tracking server
# and log models with it. Shipyard itself never imports mlflow (see importers/mlflow.py), so it
# stays out of the main venv. Idempotent: a venv that is already complete is left as it is.
set -euo pipefail
dir="${1:-.venv-mlflow}"
if [ -f "$dir/.installed" ]; then
  exit 0
fi
python3 -m venv "$dir"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/bin/pip" install -q mlflow==3.17.2 onnx onnxruntime skl2onnx scikit-learn skops
touch "$dir/.installed"
echo "installed MLflow into $dir"
