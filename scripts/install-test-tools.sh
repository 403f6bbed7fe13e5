#!/usr/bin/env bash
# System tools the test suite drives: headless Chromium (the /docs page is checked in a real
# browser). Installed from Debian when missing and when we may (root); otherwise those tests skip.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "note: chromium is not installed and cannot be installed here; browser tests will skip" >&2
fi
