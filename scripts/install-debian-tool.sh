#!/usr/bin/env bash
# install-debian-tool.sh TOOL [--required]: the system tool TOOL (a Debian package of the same
# name), installed with apt-get when missing and when we may (root). The test suite drives
# chromium (the /docs page in a real browser) and prometheus (a real Prometheus scraping a server,
# and its promtool checking the exported alerting rules); those tests skip without them. The
# serving benchmark drives wrk, and the cluster (scripts/cluster.sh, tests/cluster/) haproxy
# (--required: without it, fail with a line saying why).
set -euo pipefail
tool="$1"
required="${2:-}"
if command -v "$tool" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
elif [ "$required" = "--required" ]; then
  echo "$tool is not installed and cannot be installed here (needs root and apt-get); install it first" >&2
  exit 1
else
  echo "note: $tool is not installed and cannot be installed here; what needs it will skip" >&2
fi
