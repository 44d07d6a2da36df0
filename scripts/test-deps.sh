#!/usr/bin/env bash
# What the test suite needs beyond scripts/bootstrap.sh (the quick start does
# not): Debian's pgbouncer, the transaction-mode pooler the pooled-life test
# puts in front of DB1 and DB2, and chromium with its driver for the
# dashboard's browser test. Safe to run again: it only does what is missing.
set -euo pipefail

can_install() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; }

# A new machine knows no package lists until apt-get update has run once.
updated=0
apt_update_once() {
  if [ "$updated" = 0 ]; then
    apt-get update -qq >/dev/null
    updated=1
  fi
}

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  if can_install; then
    echo "test-deps: installing pgbouncer with apt" >&2
    apt_update_once
    # Only the binary is wanted: the package's own service stays off (tests
    # start their own pooler as the unprivileged server user).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
  else
    echo "test-deps: pgbouncer is not installed; the pooled-life test will be skipped." >&2
    echo "test-deps: install it with: sudo apt-get install pgbouncer" >&2
  fi
fi

# Debian's chromium and its driver, for the dashboard's browser test
# (tests/acceptance/test_dashboard_browser.py drives /usr/bin/chromium
# through /usr/bin/chromedriver). The quick start never pulls in a browser.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if can_install; then
    echo "test-deps: installing chromium and chromium-driver with apt" >&2
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver >/dev/null
  else
    echo "test-deps: chromium is not installed; the dashboard browser test will be skipped." >&2
    echo "test-deps: install it with: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
