#!/bin/sh
# `make test` needs headless Chromium for the report's browser test. Find it; else install it where that is possible
# (Debian or Ubuntu, as root); else stop at once with one line saying how, rather than failing tests minutes later.
# MEDQA_BENCH_CHROMIUM names a Chrome or Chromium binary to use instead (tests/test_browser.py reads it too).
found() {
  if [ -n "${MEDQA_BENCH_CHROMIUM:-}" ] && [ -x "$MEDQA_BENCH_CHROMIUM" ]; then return 0; fi
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then return 0; fi
  done
  return 1
}
found && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "make test: installing headless Chromium for the browser test (apt-get install chromium)" >&2
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1
  found && exit 0
  echo "make test: apt-get install chromium failed; install Chromium by hand or set MEDQA_BENCH_CHROMIUM=/path/to/chrome" >&2
  exit 1
fi
if command -v apt-get >/dev/null 2>&1; then
  how="install it with \`sudo apt-get install -y chromium\`"
elif command -v dnf >/dev/null 2>&1; then
  how="install it with \`sudo dnf install -y chromium\`"
elif command -v brew >/dev/null 2>&1; then
  how="install it with \`brew install --cask chromium\`"
else
  how="install Chromium with your package manager"
fi
echo "make test: headless Chromium is missing (the browser test needs it): $how, or set MEDQA_BENCH_CHROMIUM=/path/to/chrome" >&2
exit 1
