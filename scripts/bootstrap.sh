#!/usr/bin/env bash
# Prepare this checkout to run intake: a virtual environment with the Python
# dependencies and, where missing, Debian's pg_cron for PostgreSQL 15.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import intake_cli, pytest, xdist, mypy, matplotlib' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.intake-installed ]; then
  # bench: matplotlib, for the benchmark's chart (optional for users, here
  # so that the benchmark runs as documented).
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
  touch .venv/.intake-installed
fi

# The PostgreSQL server the embedded clusters run on: INTAKE_PG_MAJOR, else
# the newest major installed, else (a fresh machine) the distribution's own.
newest_major() {
  ls /usr/lib/postgresql 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 || true
}
pg_major=${INTAKE_PG_MAJOR:-$(newest_major)}
have_server() {
  [ -n "${INTAKE_PG_BIN:-}" ] && return 0
  [ -n "$pg_major" ] && [ -x "/usr/lib/postgresql/${pg_major}/bin/initdb" ] && return 0
  [ -z "${INTAKE_PG_MAJOR:-}" ] && command -v initdb >/dev/null && return 0
  return 1
}
if ! have_server; then
  package="postgresql${pg_major:+-$pg_major}"
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "bootstrap: no PostgreSQL server found; installing ${package} with apt" >&2
    # intake starts its own clusters: the package's default cluster is not
    # wanted. Only on a machine that has no PostgreSQL configuration yet.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    apt-get update -qq >/dev/null
    # UCF_FORCE_CONFFOLD: keep the createcluster.conf written above.
    DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 apt-get install -y -qq "$package" >/dev/null
    pg_major=${INTAKE_PG_MAJOR:-$(newest_major)}
  else
    echo "bootstrap: no PostgreSQL server found (initdb, pg_ctl)." >&2
    echo "bootstrap: install it with: sudo apt-get install ${package}" >&2
    echo "bootstrap: (or set INTAKE_PG_BIN to its bin directory)" >&2
    exit 1
  fi
fi
pg_major=${pg_major:-15}

if [ ! -f "/usr/share/postgresql/${pg_major}/extension/pg_cron.control" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing postgresql-${pg_major}-cron (pg_cron) with apt" >&2
    # A new machine knows no package lists until apt-get update has run once.
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-${pg_major}-cron" >/dev/null
  else
    echo "bootstrap: pg_cron is not installed; metrics scheduling stays off." >&2
    echo "bootstrap: install it with: sudo apt-get install postgresql-${pg_major}-cron" >&2
  fi
fi
