#!/usr/bin/env bash
# install-kserve.sh [KSERVE_DIR [MLSERVER_DIR]]: KServe's Python SDK 0.21.0 (its REST and gRPC
# inference clients) in one venv (default .venv-kserve/) and MLServer 1.7.1 (`mlserver infer`) in
# another (default .venv-mlserver/), for the tests that run those official clients against a real
# `shipyard serve` (tests/integration/serve/test_serve_kserve_clients.py). Two venvs: kserve 0.21
# needs starlette>=1.3.1 and mlserver 1.7.1 a fastapi that wants starlette<0.47, and both pin
# protobuf 6 where the main venv has 7. Idempotent: a venv already complete (.installed) is left
# as it is. Pinned: a new release must not break the tests on a fresh machine.
set -euo pipefail
kserve_dir="${1:-.venv-kserve}"
mlserver_dir="${2:-.venv-mlserver}"

install() {  # install DIR PACKAGE...
  local dir="$1"
  shift
  if [ -f "$dir/.installed" ]; then
    return 0
  fi
  "${PYTHON:-python3}" -m venv "$dir"
  # -q, and without the warnings a pip.conf's missing find-links folders print for every
  # package; pip's own exit status still decides (pipefail).
  { PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/bin/pip" install -q "$@" 2>&1 1>&3 |
      { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2; } 3>&1
  touch "$dir/.installed"
  echo "installed $* into $dir"
}

install "$kserve_dir" kserve==0.21.0
install "$mlserver_dir" mlserver==1.7.1
