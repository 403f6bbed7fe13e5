#!/usr/bin/env bash
# build-image-check.sh: build and run a real image from what `shipyard build` writes, with Podman,
# on machines that cannot pull base images (issue 13): debootstrap a Debian 12 root filesystem,
# `podman import` it as the base, `shipyard build --base … --build --engine podman` (which runs
# `podman build --isolation=chroot`), then `podman run --runtime runc` and check it as a user would:
# health, a prediction through V2, the non-root user, the image's size, a SIGTERM stop.
#
# Needs root and apt-get (it installs debootstrap, podman and runc when missing) and takes
# minutes: it is not part of `make test`. WORK=DIR keeps the files; KEEP_IMAGE=1 keeps the image.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.venv/bin"
WORK="${WORK:-$(mktemp -d /tmp/shipyard-image-check.XXXXXX)}"
BASE="localhost/shipyard-debian12:latest"
TAG="localhost/shipyard-check:latest"
NAME="shipyard-check-$$"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

for tool in debootstrap podman runc; do
  bash "$ROOT/scripts/install-debian-tool.sh" "$tool" --required
done

# The machine's own containers.conf stays untouched: these defaults apply to this script only.
# The default OCI runtime and the default limits are refused on these machines.
export CONTAINERS_CONF="$WORK/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
CONF

if ! podman image exists "$BASE"; then
  if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
    echo "== debootstrap Debian 12 (bookworm) into $WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log"
  fi
  # RUN steps reach PyPI as the host does: through the same certificate authorities (a proxy
  # here re-signs TLS), which pip reads from PIP_CERT. Only this local base carries them.
  host_ca="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
  if [ -f "$host_ca" ]; then
    cp "$host_ca" "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  tar -C "$WORK/rootfs" -c . | podman import \
    --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" - "$BASE" >/dev/null
fi

echo "== a registry with iris@production (examples/train_iris.py)"
export SHIPYARD_HOME="$WORK/home"
(cd "$WORK" && "$BIN/python" "$ROOT/examples/train_iris.py" >/dev/null)

echo "== shipyard build --build --engine podman"
start=$(date +%s)
"$BIN/shipyard" build iris@production --out "$WORK/context" --force --base "$BASE" --tag "$TAG" \
  --build --engine podman
echo "built in $(($(date +%s) - start)) s; size: $(podman image inspect --format '{{.Size}}' "$TAG") bytes"

port="$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
podman run -d --name "$NAME" --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  -p "127.0.0.1:$port:8080" "$TAG" >/dev/null
cleanup() {
  podman rm -f "$NAME" "$NAME-ro" >/dev/null 2>&1 || true
  [ "${KEEP_IMAGE:-0}" = "1" ] || podman rmi -f "$TAG" >/dev/null 2>&1 || true
}
trap cleanup EXIT

serves() {  # serves PORT: ready within 180 s, then a correct prediction through V2
  "$BIN/python" - "$1" <<'PY'
import json
import sys
import time
import urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
start = time.monotonic()
while True:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
            if response.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() - start > 180:
        sys.exit("the container was not ready within 180 s")
    time.sleep(0.5)
print(f"ready {time.monotonic() - start:.1f} s after start")
body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
request = urllib.request.Request(
    f"{base}/v2/models/iris/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}
)
with urllib.request.urlopen(request, timeout=10) as response:
    outputs = json.load(response)["outputs"]
label = next(o for o in outputs if o["name"] == "label")["data"]
assert label == [0], outputs
print("predicted", label)
PY
}

echo "== checks on 127.0.0.1:$port"
serves "$port"
if podman run --rm --entrypoint python3 "$TAG" -c 'import importlib.util as u; print(u.find_spec("torch"))' | grep -qv None; then
  echo "the scikit-learn image has torch in it" >&2
  exit 1
fi
echo "no torch in the image"
if ! podman image inspect --format '{{.HealthCheck}}' "$TAG" | grep -q healthcheck.py; then
  echo "the image lost its HEALTHCHECK" >&2
  exit 1
fi
echo "HEALTHCHECK kept"
uid="$(podman exec "$NAME" id -u)"
[ "$uid" = "10001" ] || { echo "the server runs as uid $uid, not 10001" >&2; exit 1; }
echo "runs as uid $uid"
start=$(date +%s)
podman stop --time 30 "$NAME" >/dev/null
echo "stopped by SIGTERM in $(($(date +%s) - start)) s (exit code $(podman inspect --format '{{.State.ExitCode}}' "$NAME"))"
echo "== a read-only root filesystem (a tmpfs on /tmp)"
port="$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
podman run -d --name "$NAME-ro" --read-only --tmpfs /tmp --runtime runc --ulimit nofile=1024:1024 \
  --ulimit nproc=1024:1024 -p "127.0.0.1:$port:8080" "$TAG" >/dev/null
serves "$port" || { podman logs "$NAME-ro" >&2; podman rm -f "$NAME-ro" >/dev/null; exit 1; }
podman rm -f "$NAME-ro" >/dev/null
echo "== a tampered artifact fails the build"
artifact="$(find "$WORK/context/home/artifacts" -type f | head -n 1)"
chmod u+w "$artifact"
printf 'x' >>"$artifact"
if podman build --isolation=chroot --format=docker --tag "$TAG-tampered" "$WORK/context" >"$WORK/tampered.log" 2>&1; then
  podman rmi -f "$TAG-tampered" >/dev/null 2>&1 || true
  echo "the build of a tampered context succeeded" >&2
  exit 1
fi
grep -m 1 "FAILED" "$WORK/tampered.log" || true
echo "image check passed ($WORK)"
