#!/usr/bin/env bash
# The main job on the embedded default: `intake demo` provisions a pool of
# 10,000 units on local PostgreSQL clusters, starts the test payment webhook
# and two drain workers, lets 100,000 buyers claim concurrently, shows the
# live view while it drains, prints the final report and tears it all down.
# Arguments go to `intake demo` (e.g. --keep, --no-watch, --buyers N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/intake demo "$@"
