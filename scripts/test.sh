#!/usr/bin/env bash
# The whole test suite, on a fresh machine: bootstrap, the tests' own
# prerequisites (pgbouncer), lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/test-deps.sh
.venv/bin/ruff check src tests
.venv/bin/python -m pytest "$@"
