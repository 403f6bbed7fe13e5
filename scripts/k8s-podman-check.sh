#!/usr/bin/env bash
# k8s-podman-check.sh: run what `shipyard k8s` writes as real pods with `podman kube play`
# (issue 14): the image of iris@production is built first when missing (scripts/build-image-check.sh,
# kept with KEEP_IMAGE=1), then tests/integration/test_k8s_podman.py plays the Deployment with its
# ConfigMap and a Secret, waits for readiness, predicts, checks the security context and tears
# the pod down. Needs root and apt-get (podman, runc and debootstrap are installed when missing);
# minutes on a first run, so it is not part of `make test`, where that test skips.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export SHIPYARD_K8S_CHECK_IMAGE="${SHIPYARD_K8S_CHECK_IMAGE:-localhost/shipyard-check:latest}"

for tool in podman runc; do
  bash "$ROOT/scripts/install-debian-tool.sh" "$tool" --required
done
if ! podman image exists "$SHIPYARD_K8S_CHECK_IMAGE"; then
  echo "== building $SHIPYARD_K8S_CHECK_IMAGE (scripts/build-image-check.sh)"
  KEEP_IMAGE=1 bash "$ROOT/scripts/build-image-check.sh"
fi
echo "== podman kube play"
cd "$ROOT"
"$ROOT/.venv/bin/python" -m pytest tests/integration/test_k8s_podman.py -q -p no:cacheprovider -rs
