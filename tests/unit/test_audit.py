"""`intake audit` without a database: where DB2's sales are read from, how the
comparison's rows become each pool's verdict, and what an operator reads.

The comparison itself is SQL (sql/queries/audit.sql), run against real
databases in tests/acceptance/test_audit.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import sql

from intake_cli.engine import audit
from intake_cli.platform import config
from intake_cli.platform.errors import ConfigError, LedgerContractError

POOL = {"pool_id": "drop", "inventory": 10, "validation_webhook_url": "https://pay.example/v"}
K1, K2, K3 = (f"{n}0000000-0000-4000-8000-000000000000" for n in (1, 2, 3))
R1, R2 = (f"{n}aaaaaaa-0000-4000-8000-000000000000" for n in (1, 2))


def _parse(db2: object) -> config.Settings:
    return config.parse({"db2": db2, "pools": [POOL]}, Path("/srv/intake.yaml"))


# ---------------------------------------------------------------------------
# db2.sold_query


def test_sold_query_is_optional_and_kept_as_written():
    assert _parse({}).db2.sold_query is None
    assert _parse({"sold_query": "ledger.sold"}).db2.sold_query == "ledger.sold"
    assert _parse({"sold_query": "sold", "dsn": "host=x"}).db2.sold_query == "sold"


@pytest.mark.parametrize(
    "value",
    [
        "public.tickets; drop table public.tickets",
        'public."tickets"',
        "Public.Tickets",
        "a.b.c",
        "tickets()",
        "",
        42,
        ["public.tickets"],
        {"name": "x"},
    ],
)
def test_an_unsafe_sold_query_is_refused_with_its_path(value):
    with pytest.raises(ConfigError) as caught:
        _parse({"sold_query": value})
    assert [p.split(":")[0] for p in caught.value.problems] == ["db2.sold_query"]


def test_sold_query_is_db2s_alone():
    with pytest.raises(ConfigError) as caught:
        config.parse({"db1": {"sold_query": "x"}, "pools": [POOL]}, Path("/srv/intake.yaml"))
    assert any(p.startswith("db1") and "sold_query" in p for p in caught.value.problems)


# ---------------------------------------------------------------------------
# Where DB2's sales are read from


def test_a_configured_view_is_selected_from_and_a_function_called():
    view = audit.configured_source("ledger.sold", relation=True, function=True)
    assert (str(view), view.builtin) == ("ledger.sold", False)
    assert view.composed().as_string(None) == '"ledger"."sold"'
    function = audit.configured_source("sold_units", relation=False, function=True)
    assert str(function) == "public.sold_units()"
    assert function.composed().as_string(None) == '"public"."sold_units"()'


def test_a_configured_name_db2_lacks_is_refused():
    with pytest.raises(LedgerContractError, match=r"no view, table or function ledger\.gone"):
        audit.configured_source("ledger.gone", relation=False, function=False)


def test_an_unchecked_name_never_becomes_a_source():
    with pytest.raises(LedgerContractError, match=r"db2\.sold_query"):
        audit.SoldSource("public", 'x"; drop table y; --', "relation")


def test_the_example_ledgers_tickets_are_the_default_only_where_it_is_in_use():
    rpcs = {"a": "public.finalize_transaction", "b": "finalize_transaction"}
    source = audit.example_source(True, rpcs)
    assert (str(source), source.kind, source.builtin) == ("public.tickets", "relation", True)
    with pytest.raises(LedgerContractError, match="not intake's example ledger"):
        audit.example_source(False, rpcs)
    with pytest.raises(LedgerContractError, match=r"b \(shop\.commit\); set db2\.sold_query"):
        audit.example_source(True, {"a": "public.finalize_transaction", "b": "shop.commit"})


def test_the_copy_statement_quotes_what_configuration_gave():
    source = audit.configured_source("ledger.sold", relation=True, function=False)
    statement = sql.SQL(audit._q("copy_sold")).format(
        source=source.composed(), pools=sql.Literal(["drop", "o'hara"])
    )
    text = statement.as_string(None)
    assert 'from "ledger"."sold" as s' in text
    assert "any('{drop,o''hara}'::text[])" in text


# ---------------------------------------------------------------------------
# The comparison's rows, per pool


def _totals(pool_id: str, **counts: int) -> dict:
    base = {"db1_intents": 3, "db1_committed": 3, "committed_late": 0, "db2_rows": 3}
    return {"pool_id": pool_id, **base, "db2_keys": 3, **counts}


def test_pools_with_no_finding_agree():
    (pool,) = audit.assemble(["drop"], [_totals("drop")], {name: [] for name in audit.FINDINGS})
    assert pool.agrees and pool.discrepancies == 0 and pool.lines() == []
    assert pool.totals() == "DB1 knows 3 intents, 3 committed; DB2 sold 3 keys in 3 rows"
    assert all(f == {"found": 0, "examples": []} for f in pool.as_json()["findings"].values())


def test_findings_land_in_their_pool_with_their_counts():
    rows = {
        "sold_twice": [{"pool_id": "b", "found": 1, "resource_id": R1, "keys": [K1, K2]}],
        "unknown_to_db1": [
            {"pool_id": "b", "found": 2, "idempotency_key": K1, "resource_id": R1},
            {"pool_id": "b", "found": 2, "idempotency_key": K2, "resource_id": R1},
        ],
        "missing_from_db2": [],
    }
    a, b, c = audit.assemble(["a", "b", "c"], [_totals("a"), _totals("b", db2_rows=4)], rows)
    assert a.agrees and not b.agrees
    # A pool the totals did not mention (no intents, no sales) is all zeros.
    assert c.agrees and (c.db1_intents, c.db2_rows) == (0, 0)
    assert b.discrepancies == 3 and b.db2_rows == 4
    assert b.finding("sold_twice") == audit.Finding(1, ({"resource_id": R1, "keys": [K1, K2]},))
    assert b.finding("unknown_to_db1").found == 2
    assert b.finding("repeated_keys") == audit.Finding()
    report = audit.AuditReport(
        audit.example_source(True, {}), datetime(2025, 1, 1, tzinfo=UTC), (a, b, c)
    )
    assert not report.agrees
    data = report.as_json()
    assert data["sold_query"] == "public.tickets" and data["sold_query_builtin"] is True
    assert [p["agrees"] for p in data["pools"]] == [True, False, True]
    assert data["pools"][1]["findings"]["unknown_to_db1"]["examples"][1]["idempotency_key"] == K2


def test_an_empty_event_agrees():
    report = audit.AuditReport(audit.example_source(True, {}), datetime.now(UTC), ())
    assert report.agrees and report.as_json()["pools"] == []


def test_lines_name_each_finding_and_cap_its_examples():
    unknown = [
        {"pool_id": "p", "found": 25, "idempotency_key": f"k{n}", "resource_id": f"r{n}"}
        for n in range(12)  # at most the sample limit comes back; 25 in all
    ]
    rows = {
        "unknown_to_db1": unknown,
        "resource_mismatch": [
            {
                "pool_id": "p",
                "found": 1,
                "idempotency_key": K3,
                "db1_resource_id": R1,
                "db2_resource_id": R2,
            }
        ],
        "repeated_keys": [{"pool_id": "p", "found": 1, "idempotency_key": K1, "sold_rows": 2}],
        "sold_twice": [{"pool_id": "p", "found": 1, "resource_id": R1, "keys": [K1, K2]}],
    }
    (pool,) = audit.assemble(["p"], [_totals("p", committed_late=2)], rows)
    lines = pool.lines(shown=3)
    assert lines == [
        f"{audit.TITLES['sold_twice']}: 1",
        f"  resource {R1}: keys {K1}, {K2}",
        f"{audit.TITLES['unknown_to_db1']}: 25",
        "  key k0 (resource r0)",
        "  key k1 (resource r1)",
        "  key k2 (resource r2)",
        "  … and 22 more",
        f"{audit.TITLES['resource_mismatch']}: 1",
        f"  key {K3}: DB1 resource {R1}, DB2 resource {R2}",
        f"{audit.TITLES['repeated_keys']}: 1",
        f"  key {K1}: 2 rows",
    ]
    assert "3 committed, 2 during the audit" in pool.totals()


def test_every_finding_has_a_query_and_a_title():
    names = audit.queries("audit")
    assert all(name in names and name in audit.TITLES for name in audit.FINDINGS)
