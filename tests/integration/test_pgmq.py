"""pgmq: the claim's intent is an ordinary pgmq message, and intake stays
inside the function subset that hosted Supabase's pgmq versions share."""

from __future__ import annotations

import re
import time
from pathlib import Path

import psycopg
from pgmq import SyncPGMQueue

from intake_cli.engine import claims, queue
from intake_cli.platform.sqlfiles import sql_root
from tests.conftest import ROOT, pool_spec
from tests.integration.test_claims import provision


def official_client(dsn: str) -> SyncPGMQueue:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    # The client takes a password, not a passfile: the embedded cluster's,
    # from the passfile intake's DSN names.
    password = next(
        line.rsplit(":", 1)[1]
        for line in Path(info["passfile"]).read_text().splitlines()
        if line.startswith(f"127.0.0.1:{info['port']}:")
    )
    return SyncPGMQueue(
        host=info["host"],
        port=str(info["port"]),
        database=info["dbname"],
        username=info["user"],
        password=password,
        # SQL-only install: there is no extension for the client to create.
        init_extension=False,
    )


def test_claimed_intent_is_read_reshown_and_archived_by_the_official_client(
    workdir, db1_dsn, db2_dsn
):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("mq", 5))
    client = official_client(db1_dsn)
    try:
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            claimed = claims.claim(conn, "mq", "alice")
        sent_id = client.send("intents", {"probe": True})

        rows = {m.msg_id: m for m in client.read("intents", vt=1, qty=10)}
        assert set(rows) == {claimed.msg_id, sent_id}
        ours, theirs = rows[claimed.msg_id], rows[sent_id]
        assert ours.message["idempotency_key"] == str(claimed.idempotency_key)
        assert ours.message["resource_id"] == str(claimed.resource_id)
        # The same shape as pgmq.send: first read, no headers, fresh vt.
        assert (ours.read_ct, ours.headers) == (theirs.read_ct, theirs.headers) == (1, None)
        assert ours.enqueued_at <= theirs.enqueued_at

        assert client.read("intents", vt=1, qty=10) == []  # hidden while leased
        time.sleep(1.2)
        again = client.read("intents", vt=30, qty=10)
        assert sorted(m.msg_id for m in again) == sorted([claimed.msg_id, sent_id])
        assert {m.read_ct for m in again} == {2}

        assert client.archive("intents", claimed.msg_id) is True
        with psycopg.connect(db1_dsn) as conn:
            archived = conn.execute(
                "select msg_id, message->>'idempotency_key' from pgmq.a_intents"
            ).fetchall()
            assert archived == [(claimed.msg_id, str(claimed.idempotency_key))]
            assert queue.metrics(conn, "intents").queue_length == 1
    finally:
        client.close()


_CALL = re.compile(r"\bpgmq\.\"?([a-z_]+)\"?\s*\(")
_SEND_WITH_HEADERS = re.compile(r"pgmq\.send(?:_batch)?\s*\([^)]*\bheaders\b", re.IGNORECASE)


def project_sources() -> list[Path]:
    files = [*(ROOT / "src").rglob("*.py"), *sql_root().rglob("*.sql*")]
    return [f for f in files if f.is_file()]


def test_only_functions_of_pgmq_1_4_4_and_1_5_1_are_called():
    called: dict[str, set[str]] = {}
    for path in project_sources():
        text = path.read_text(encoding="utf-8")
        for name in _CALL.findall(text):
            called.setdefault(name, set()).add(str(path.relative_to(ROOT)))
        assert not _SEND_WITH_HEADERS.search(text), f"{path}: headers overload of send"
    outside = {
        name: where for name, where in called.items() if name not in queue.PORTABLE_FUNCTIONS
    }
    assert outside == {}, f"pgmq functions outside the 1.4.4 ∩ 1.5.1 subset: {outside}"
    # The scan finds what the engine does call, so an empty result means a broken regex.
    assert {"create", "read", "set_vt", "archive", "metrics", "send"} <= set(called)


def test_pgmq_is_not_installed_twice(workdir, empty_db_dsn, db2_dsn):
    from intake_cli.engine import schema

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        first = schema.apply_db1(conn, "intents", "intents_dlq")
        second = schema.apply_db1(conn, "intents", "intents_dlq")
        assert (first.pgmq.source, first.pgmq_installed_now) == ("bundled-sql", True)
        assert first.pgmq.version == "1.13.0"
        assert (second.pgmq.source, second.pgmq_installed_now) == ("bundled-sql", False)
        assert second.migrations_applied == () and second.queues_created == ()
