#!/usr/bin/env bash
# What the test suite needs beyond scripts/bootstrap.sh (the quick start does
# not): Debian's pgbouncer, the transaction-mode pooler the pooled-life test
# puts in front of DB1 and DB2. Safe to run again: it only does what is missing.
set -euo pipefail

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "test-deps: installing pgbouncer with apt" >&2
    # A new machine knows no package lists until apt-get update has run once.
    apt-get update -qq >/dev/null
    # Only the binary is wanted: the package's own service stays off (tests
    # start their own pooler as the unprivileged server user).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
  else
    echo "test-deps: pgbouncer is not installed; the pooled-life test will be skipped." >&2
    echo "test-deps: install it with: sudo apt-get install pgbouncer" >&2
  fi
fi
