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
if ! .venv/bin/python -c 'import intake_cli, pytest, matplotlib' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.intake-installed ]; then
  # bench: matplotlib, for the benchmark's chart (optional for users, here
  # so that the benchmark runs as documented).
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
  touch .venv/.intake-installed
fi

pg_major=${INTAKE_PG_MAJOR:-15}
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
