#!/usr/bin/env bash
# What the test suite needs beyond scripts/bootstrap.sh (the quick start does
# not): Debian's pgbouncer (the transaction-mode pooler the pooled-life test
# and `bench claims --pooler` put in front of DB1), chromium with its driver
# (the dashboard's browser test), wrk (the gateway benchmark's smoke test),
# and Patroni with etcd (the test that loses DB1's host under Patroni).
# As root it installs what is missing with apt; otherwise it says what the
# missing package skips. Safe to run again: it only does what is missing.
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

# need "<what it enables>" <path that proves it is there> <package>...
need() {
  local what=$1 present=$2
  shift 2
  if [ -x "$present" ]; then
    return 0
  fi
  if can_install; then
    echo "test-deps: installing $* with apt" >&2
    apt_update_once
    # Only the binaries are wanted: the tests start their own servers
    # (pgbouncer, etcd, Patroni) on free loopback ports as the unprivileged
    # server user; a package's own service is never used.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "test-deps: $* not installed; $what will be skipped." >&2
    echo "test-deps: install with: sudo apt-get install $*" >&2
  fi
}

need "the pooled-life test" /usr/sbin/pgbouncer pgbouncer
need "the dashboard browser test" /usr/bin/chromium chromium
need "the dashboard browser test" /usr/bin/chromedriver chromium-driver
need "the gateway benchmark's smoke test" /usr/bin/wrk wrk
# Debian's patroni pulls python3-etcd, which both its etcd (v2) and etcd3
# clients need; etcd-server is etcd 3.4 (the v3 API the test uses).
need "the DB1-under-Patroni failover test" /usr/bin/patroni patroni
need "the DB1-under-Patroni failover test" /usr/bin/etcd etcd-server
