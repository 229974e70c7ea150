#!/usr/bin/env bash
# Debian's chromium for the browser test (tests/e2e/test_web_browser.py), installed with apt-get like
# ops/stack installs clickhouse-server. Playwright is given /usr/bin/chromium; nothing downloads a browser
# (`playwright install` is never run). Without apt-get or root this says so and the browser test skips.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install Chromium yourself (or set DEFECTSTREAM_CHROMIUM); the browser test will skip" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-chromium: not root; run: sudo apt-get install -y chromium (the browser test will skip until then)" >&2
  exit 0
fi
echo "install-chromium: installing Debian's chromium with apt-get..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
  || { echo "install-chromium: apt-get install chromium failed" >&2; exit 1; }
