#!/usr/bin/env bash
# System tools the benchmarks drive: wrk (benchmarks/serve.py loads the servers with it).
# Installed from Debian when missing and when we may (root); otherwise say how to get it.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
else
  echo "wrk is not installed and cannot be installed here (needs root and apt-get): install it, then run make bench" >&2
  exit 1
fi
