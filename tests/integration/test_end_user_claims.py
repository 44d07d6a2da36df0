"""The end users' door: as `authenticated`, a claim is for the JWT's user only."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from tests.conftest import pool_spec
from tests.integration.test_claims import provision

USER_A = str(uuid.uuid4())
USER_B = str(uuid.uuid4())


def as_user(conn: psycopg.Connection, user: str | None) -> None:
    """What PostgREST does for a request: the role, and the verified JWT's claims."""
    conn.execute("set role authenticated")
    claims = json.dumps({"sub": user, "role": "authenticated"}) if user else ""
    conn.execute("select set_config('request.jwt.claims', %s, false)", (claims,))


def test_authenticated_user_claims_only_for_themselves(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("fans", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        as_user(conn, USER_A)
        outcome, user_id = conn.execute(
            "select outcome, user_id from public.claim_resource('fans')"
        ).fetchone()
        assert (outcome, user_id) == ("claimed", USER_A)

        # No argument names somebody else: there is no such overload to call…
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute("select public.claim_resource('fans', %s)", (USER_B,))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        as_user(conn, USER_A)
        # …and the trusted two-argument form is not granted to end users.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select intake.claim_resource('fans', %s)", (USER_B,))
    for statement in (
        "select * from intake.allocations",
        "update intake.allocations set locked_by = 'me'",
        "delete from intake.released_units",
        "select * from intake.engine_config",
        "select * from pgmq.q_intents",
    ):
        with psycopg.connect(db1_dsn, autocommit=True) as conn:
            as_user(conn, USER_A)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        holders = conn.execute(
            "select locked_by from intake.allocations where locked_by is not null"
        ).fetchall()
        assert holders == [(USER_A,)]


def test_no_jwt_means_no_claim(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("fans", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        as_user(conn, None)
        assert conn.execute("select outcome from public.claim_resource('fans')").fetchone() == (
            "unauthenticated",
        )
        conn.execute("reset role")
        conn.execute("set role anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select public.claim_resource('fans')")


def test_service_role_may_claim_for_a_named_user(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("fans", 10))
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute("set role service_role")
        row = conn.execute("select outcome, user_id from intake.claim_resource('fans', 'b')")
        assert row.fetchone() == ("claimed", "b")
