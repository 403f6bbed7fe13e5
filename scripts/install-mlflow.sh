#!/usr/bin/env bash
# install-mlflow.sh [DIR]: MLflow 3.17.2 with onnx, onnxruntime, skl2onnx, scikit-learn and skops
# in its own venv (default .venv-mlflow/), for the `shipyard import mlflow` tests: they start a
# real tracking server and log models with it. Shipyard itself never imports mlflow (see
# importers/mlflow.py), so it stays out of the main venv. Idempotent: a venv already complete
# (.installed) is left as it is. All pinned: a new release of one of them must not break the
# tests on a fresh machine.
set -euo pipefail
dir="${1:-.venv-mlflow}"
if [ -f "$dir/.installed" ]; then
  exit 0
fi
"${PYTHON:-python3}" -m venv "$dir"
# -q, and without the warnings a pip.conf's missing find-links folders print for every package;
# pip's own exit status still decides (pipefail).
{ PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/bin/pip" install -q \
    mlflow==3.17.2 onnx==1.23.2 onnxruntime==1.32.0 skl2onnx==1.20.0 scikit-learn==1.9.1 skops==0.16.0 2>&1 1>&3 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; } 3>&1
touch "$dir/.installed"
echo "installed MLflow into $dir"
