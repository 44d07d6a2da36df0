#!/usr/bin/env bash
# The main job on the embedded default: provision an event on local
# PostgreSQL clusters, let a small herd claim, show the state, tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
intake=(.venv/bin/intake -c examples/intake.yaml)
"${intake[@]}" up
"${intake[@]}" burst spring-drop --users 20000 --concurrency 64
"${intake[@]}" status
# The intents are exported, not lost: the drain worker would commit them.
"${intake[@]}" down --export examples/.intents-export.jsonl
