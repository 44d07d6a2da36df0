#!/usr/bin/env bash
# The main job on the embedded default: provision an event on local
# PostgreSQL clusters, let a herd claim, drain every intent through a test
# payment webhook (declining a few) into the example ledger, show the state,
# tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
intake=(.venv/bin/intake -c examples/intake.yaml)
work=$(mktemp -d)
cleanup() {
  [ -n "${drain_pid:-}" ] && kill -TERM "$drain_pid" 2>/dev/null || true
  [ -n "${hook_pid:-}" ] && kill -TERM "$hook_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"${intake[@]}" up
"${intake[@]}" burst spring-drop --users 20000 --concurrency 64

# The example config points the pool at http://127.0.0.1:8787/validate.
.venv/bin/intake webhook-server --port 8787 --decline-share 0.05 --ready-file "$work/ready" &
hook_pid=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.1; done
[ -s "$work/ready" ] || { echo "the test webhook did not start" >&2; exit 1; }

"${intake[@]}" drain --log-level warning --json > "$work/drain.json" &
drain_pid=$!
depth() { "${intake[@]}" status --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["queue"]["depth"])'; }
for _ in $(seq 300); do [ "$(depth)" = "0" ] && break; sleep 0.5; done
kill -TERM "$drain_pid"; wait "$drain_pid"; drain_pid=
echo "drain worker:"; cat "$work/drain.json"

"${intake[@]}" status
"${intake[@]}" down
