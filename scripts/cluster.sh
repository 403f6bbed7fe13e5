#!/usr/bin/env bash
# cluster.sh up REF… | down [RUN] | status: several `shipyard serve` hosts on this machine, each in
# its own network namespace, sharing one registry (a fresh PostgreSQL database and one artifact
# store), behind HAProxy balancing them as a Kubernetes Service does. Needs root, iproute2 and
# PostgreSQL on /var/run/postgresql; `up` installs haproxy when missing. `down` with no RUN removes
# every run and whatever a failed one left behind. The implementation is tests/netns_cluster.py,
# the one the cluster tests use.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [ "${1:-}" = "up" ]; then
  bash "$root/scripts/install-debian-tool.sh" haproxy --required
fi
exec "$python" "$root/tests/netns_cluster.py" "$@"
