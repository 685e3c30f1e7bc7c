#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests
# (playwright-core drives it; no browser is ever downloaded by Playwright).
# As root it installs the package; otherwise it says what is missing.
set -euo pipefail
bin=${CHROMIUM_BIN:-/usr/bin/chromium}
if [ -x "$bin" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium: $bin is missing; install Debian's chromium package (as root: apt-get install -y chromium), or set CHROMIUM_BIN" >&2
  exit 1
fi
echo "chromium: $bin is missing; installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt may hold the lock for a while: wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >/dev/null
[ -x "$bin" ] || { echo "chromium: installed, but $bin is still missing" >&2; exit 1; }
