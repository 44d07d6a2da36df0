"""The bad-input corpus through the real CLI, a real drain, and real databases.

- A representative subset of the configuration and argument cases (`cli=True`)
  runs as an operator runs intake, in a subprocess: exit code, message, no
  traceback on the terminal, no secret printed, nothing on disk changed.
- Webhook answers and commit RPC errors are classified by `intake drain --once
  --json` on a real event.
- Bad configuration and bad live settings leave DB1, DB2 and the files as they
  were (compared before and after).

Only the first runs each case in a Python of its own; the others call the
CLI's entry point in this process (tests.conftest.intake): exit code, stdout
and stderr as a subprocess shows them, without an interpreter's start-up each.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import yaml

from intake_cli.engine import claims
from intake_cli.tools.webhook_process import WebhookServer
from tests.acceptance.drain_support import Event, make_event
from tests.conftest import INTAKE, ROOT, intake, new_database, snapshot
from tests.corpus import cases
from tests.corpus.harness import ScriptedWebhook, arguments, config_path, flat, tree

# ---------------------------------------------------------------------------
# Configuration files and arguments, through the real CLI

SUBPROCESS_CASES = [case for case in (*cases.CONFIG, *cases.CLI) if case.cli]


def _run(case: cases.Case, directory: Path) -> dict:
    if case in cases.CONFIG:
        argv = ["-c", str(config_path(case, directory)), "status"]
    else:
        argv = arguments(case, directory)
    env = {**os.environ, "COLUMNS": "200"}
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    before = tree(directory)
    proc = subprocess.run(
        [*INTAKE, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    return {"proc": proc, "changed": tree(directory) != before}


@pytest.fixture(scope="module")
def through_the_cli(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every subprocess case, run at once: each costs a Python start-up, not a test's worth."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            case.id: pool.submit(_run, case, tmp_path_factory.mktemp(case.id))
            for case in SUBPROCESS_CASES
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=lambda case: case.id)
def test_through_the_cli(case: cases.Case, through_the_cli: dict[str, dict]):
    result = through_the_cli[case.id]
    proc = result["proc"]
    output = proc.stderr + proc.stdout
    assert proc.returncode == case.exit, output
    assert case.fragment in flat(output), output
    assert "Traceback" not in output
    for secret in case.absent:
        assert secret not in output
    assert not result["changed"]


# ---------------------------------------------------------------------------
# One event for the drain cases: webhook answers and commit RPC errors


# Retries wait an hour: an intent a case left for later is never read by the next case.
RETRY_LATER = {"retry_base_seconds": 3000, "retry_max_seconds": 3600}

RPC_ERRORS = """
create table public.corpus_rpc_errors (user_id text primary key, sqlstate text not null);
create function public.corpus_rpc_error() returns trigger
language plpgsql as $$
declare
    code text;
begin
    select e.sqlstate into code from public.corpus_rpc_errors e where e.user_id = new.user_id;
    if code is not null then
        raise exception 'corpus %', code using errcode = code;
    end if;
    return new;
end $$;
create trigger corpus_rpc_error before insert on public.tickets
    for each row execute function public.corpus_rpc_error();
"""


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedWebhook]:
    with ScriptedWebhook() as server:
        yield server


@pytest.fixture(scope="module")
def event(workdir, cluster, template_db, db2_cluster, webhook) -> Event:
    home = workdir / f"corpus-{time.monotonic_ns()}"
    home.mkdir(mode=0o755)
    db1, db2 = new_database(cluster, template_db), new_database(db2_cluster)
    made = make_event(home, db1, db2, webhook.url, 500, batch_size=100, max_retries=5)
    made.set(**RETRY_LATER)
    with psycopg.connect(db2, autocommit=True) as conn:
        conn.execute(RPC_ERRORS)
    return made


def _claim_one(event: Event, user: str) -> str:
    with psycopg.connect(event.db1, autocommit=True) as conn:
        result = claims.claim(conn, event.pool_id, user)
    assert result.outcome == "claimed", result
    return str(result.idempotency_key)


def _drain_once(event: Event, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = intake("drain", "--once", "--json", "--log-level", "info", *args, config=event.config)
    assert "Traceback" not in proc.stderr
    stats = json.loads(proc.stdout) if proc.returncode == 0 else {}
    return proc, stats


# drain --json counts by what became of an intent; the webhook client's verdicts.
_COUNTED = {"validated": "committed", "rejected": "rejected", "retry": "retried"}


@pytest.mark.slow
@pytest.mark.parametrize("case", cases.WEBHOOK_STATUSES, ids=lambda case: case.id)
def test_webhook_status(case: cases.Case, event: Event, webhook: WebhookServer):
    # A path of its own per case: each its own provider to the drain's
    # governor, so one case's failures are not the next one's outage.
    event.set(validation_webhook_url=f"{webhook.url}/{case.id}")
    if case.input == 200:
        webhook.script(fail_first=0)
    else:
        webhook.script(fail_first=10**9, fail_status=case.input)
    _claim_one(event, f"status-{case.id}")
    proc, stats = _drain_once(event)
    if case.outcome == "deferred":
        # Handed back for a second, uncharged: not to be read by the next case.
        with psycopg.connect(event.db1, autocommit=True) as conn:
            conn.execute(
                "delete from pgmq.q_intents where message->>'user_id' = %s", (f"status-{case.id}",)
            )
    assert proc.returncode == case.exit, proc.stderr
    assert stats["read"] == 1 and stats[case.outcome] == 1, stats
    assert case.fragment in proc.stderr


BODIES_THROUGH_THE_DRAIN = [case for case in cases.WEBHOOK_BODIES if case.cli]


@pytest.mark.parametrize("case", BODIES_THROUGH_THE_DRAIN, ids=lambda case: case.id)
def test_webhook_answer_through_the_drain(
    case: cases.Case, event: Event, scripted: ScriptedWebhook
):
    event.set(validation_webhook_url=scripted.url)
    scripted.answer = case.input
    _claim_one(event, f"body-{case.id}")
    proc, stats = _drain_once(event, "--webhook-timeout", "1")
    assert proc.returncode == case.exit, proc.stderr
    assert stats["read"] == 1 and stats[_COUNTED[case.outcome]] == 1, stats
    # A yes is logged without the webhook's words; a no and a failure with them.
    assert case.outcome == "validated" or case.fragment in proc.stderr


@pytest.mark.parametrize("case", cases.RPC, ids=lambda case: case.id)
def test_commit_rpc_error(case: cases.Case, event: Event, webhook: WebhookServer):
    """The stable outcome only: how DB2's errors are told apart is the worker's business."""
    event.set(validation_webhook_url=webhook.url)
    webhook.script(fail_first=0)
    user = f"rpc-{case.input}"
    with psycopg.connect(event.db2, autocommit=True) as conn:
        conn.execute("insert into public.corpus_rpc_errors values (%s, %s)", (user, case.input))
    key = _claim_one(event, user)
    proc, stats = _drain_once(event)
    assert proc.returncode == case.exit, proc.stderr
    assert stats["read"] == 1 and stats["committed"] == 0, stats
    assert stats["retried"] + stats["dead"] == 1, stats
    assert key not in event.tickets()
    with psycopg.connect(event.db1) as conn:
        state = conn.execute(
            "select state from intake.intent_state where idempotency_key = %s", (key,)
        ).fetchone()
        status = conn.execute(
            "select status::text from intake.allocations where idempotency_key = %s", (key,)
        ).fetchone()
    assert state is None or state[0] != "committed"
    assert status is not None and status[0] != "consumed"
    assert case.fragment in proc.stderr


# ---------------------------------------------------------------------------
# Refused means unchanged: DB1, DB2 and the files, before and after


def _db2_state(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select (select count(*) from public.tickets),"
            " (select md5(string_agg(p.oid::regprocedure::text || md5(p.prosrc), ','"
            "                        order by p.oid::regprocedure::text))"
            "    from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            "   where n.nspname = 'public')"
        ).fetchall()


def _everything(event: Event) -> tuple:
    return snapshot(event.db1), _db2_state(event.db2), tree(event.config.parent)


def _variant(event: Event, name: str) -> bytes:
    """The event's own intake.yaml with one bad input, and one real change (batch_size
    77), so that a bad input that got through would show in DB1."""
    data = yaml.safe_load(event.config.read_text())
    pool = data["pools"][0]

    def variant(**changes: object) -> str:
        return yaml.safe_dump({**data, "pools": [{**pool, "batch_size": 77, **changes}]})

    good = variant()
    texts = {
        "repeated-key": lambda: good.replace("batch_size: 77", "batch_size: 5\n  batch_size: 77"),
        "password-default": lambda: yaml.safe_dump(
            {
                **data,
                "db1": {"dsn": data["db1"]["dsn"] + " password=${CORPUS_UNSET:-hunter2}"},
                "pools": [{**pool, "batch_size": 77}],
            }
        ),
        "secret-default": lambda: variant(webhook_secret="${CORPUS_UNSET:-whsec_aHVudGVyMg==}"),
        "whsec-not-base64": lambda: variant(webhook_secret="${CORPUS_SECRET}"),
        "url-credentials": lambda: variant(validation_webhook_url="http://u:hunter2@127.0.0.1:9/"),
        "url-space-in-host": lambda: variant(validation_webhook_url="http://pay example/v"),
        "url-unclosed-ipv6": lambda: variant(validation_webhook_url="http://[::1"),
        "retry-base-above-max": lambda: variant(retry_base_seconds=3600, retry_max_seconds=60),
        "deep-nesting": lambda: good + "event: " + "[" * 60_000 + "]" * 60_000 + "\n",
        "billion-laughs": lambda: good.replace("pools:", _LAUGHS + "pools:", 1),
    }
    if name == "not-utf8":
        return (good + "event: caf\xe9\n").encode("latin-1")
    return texts[name]().encode()


# Under `event`, which takes any value: only the cost of reading it can refuse it.
_LAUGHS = 'event:\n  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True)
)
BAD_CONFIGS = [
    "repeated-key",
    "password-default",
    "secret-default",
    "whsec-not-base64",
    "url-credentials",
    "url-space-in-host",
    "url-unclosed-ipv6",
    "retry-base-above-max",
    "deep-nesting",
    "billion-laughs",
    "not-utf8",
]


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_configuration_changes_nothing(event: Event, name: str):
    """`intake up` with a bad file: exit 2 naming it, and DB1, DB2 and the files as they were."""
    bad = event.config.with_name(f"bad-{name}.yaml")
    bad.write_bytes(_variant(event, name))
    try:
        before = _everything(event)
        proc = intake("up", config=bad, env={"CORPUS_SECRET": "whsec_not base64!"})
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "hunter2" not in proc.stderr
        assert "aHVudGVyMg" not in proc.stderr and bad.name in proc.stderr
        assert _everything(event) == before
    finally:
        bad.unlink()


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("retry_max_seconds=0.5", "retry_base_seconds (3000) is above retry_max_seconds (0.5)"),
        ("retry_base_seconds=3601", "expected a number of seconds above 0 and at most 3600"),
        ("validation_webhook_url=http://shop:hunter2@127.0.0.1:9/v", "may not carry credentials"),
        ("validation_webhook_url=http://pay example/v", "has a space"),
    ],
)
def test_bad_live_setting_changes_nothing(event: Event, assignment: str, fragment: str):
    before = _everything(event)
    proc = intake("config", "set", event.pool_id, assignment, config=event.config)
    output = proc.stderr + proc.stdout
    assert proc.returncode == 2, output
    assert fragment in flat(output) and "hunter2" not in output
    assert "Traceback" not in output
    assert _everything(event) == before


@pytest.mark.slow
def test_a_bad_drain_option_changes_nothing(event: Event, webhook: WebhookServer):
    """`drain --webhook-timeout inf` crashed the worker after it had read a batch."""
    event.set(validation_webhook_url=webhook.url)
    _claim_one(event, "timeout-inf")
    for value in ("inf", "nan", "-1", "1e308"):
        before = _everything(event)
        proc = intake("drain", "--once", "--webhook-timeout", value, config=event.config)
        assert proc.returncode == 2, proc.stderr
        assert "--webhook-timeout" in flat(proc.stderr) and "Traceback" not in proc.stderr
        assert _everything(event) == before
