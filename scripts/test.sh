#!/usr/bin/env bash
# The test suite, on a fresh machine: bootstrap, the tests' own prerequisites
# (pgbouncer, chromium, ...), lint, type check (mypy), then pytest.
#
#   scripts/test.sh           everything, as CI runs it (.ci/run)
#   scripts/test.sh --fast    the ring to run on every change: all but the
#                             tests marked `slow`
#
# Other arguments go to pytest (a path, -k, -x). Tests run on several workers
# (INTAKE_TEST_WORKERS, default 3: most of a test's time is spent waiting on
# PostgreSQL, a webhook or a subprocess, so more workers than cores pays). The
# tests marked `serial` assert on wall-clock time; they run after the others,
# one at a time in pytest's own process, so that no other test's load decides
# them. Beside them, in a pytest of its own, runs the real pg_cron test
# (marked `real_minute`): most of its minute is spent idle, waiting for
# pg_cron's next run.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi

bash scripts/bootstrap.sh
bash scripts/test-deps.sh
.venv/bin/ruff check src tests
.venv/bin/mypy

if [ "$fast" = 1 ]; then
  marks="not slow and "
  durations=()
else
  marks=""
  # CI's log says where the time goes.
  durations=(--durations=25)
fi
workers=${INTAKE_TEST_WORKERS:-3}

status=0
# loadscope: a module's tests run on one worker, so that what a module shares
# (a webhook server, an event: fixtures of scope "module") is built once.
.venv/bin/python -m pytest -n "$workers" --dist loadscope "${durations[@]}" \
  -m "${marks}not serial" "$@" || status=$?
minute_log=$(mktemp)
.venv/bin/python -m pytest "${durations[@]}" -m "${marks}serial and real_minute" "$@" \
  >"$minute_log" 2>&1 &
minute_pid=$!
serial=0
.venv/bin/python -m pytest "${durations[@]}" -m "${marks}serial and not real_minute" "$@" \
  || serial=$?
minute=0
wait "$minute_pid" || minute=$?
echo "--- the real_minute test, run beside the serial pass:"
cat "$minute_log"
rm -f "$minute_log"
# 5: no test collected, as when the arguments name only tests of another pass.
# The first failure decides; 5 only when no pass collected anything.
for pass in "$serial" "$minute"; do
  if [ "$status" = 5 ] && [ "$pass" != 5 ]; then
    status=0
  fi
  if [ "$pass" != 0 ] && [ "$pass" != 5 ] && { [ "$status" = 0 ] || [ "$status" = 5 ]; }; then
    status=$pass
  fi
done
exit "$status"
