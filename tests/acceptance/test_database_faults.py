"""A database that fails in the middle of a command: a clear one-line error and
exit 3, never a traceback (found by crashing DB1 under `intake burst`)."""

from __future__ import annotations

import psycopg

from tests.conftest import intake, pool_spec, write_config
from tests.integration.test_claims import provision


def test_a_database_failing_mid_command_is_reported_not_traced(workdir, db1_dsn, db2_dsn):
    provision(workdir, db1_dsn, db2_dsn, pool_spec("drop", 50))
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec("drop", 50)])
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        # Reads still work (the pool is found); every claim is then refused.
        conn.execute(f'alter database "{dbname}" set default_transaction_read_only = on')
    burst = intake("burst", "drop", "--users", "20", "--concurrency", "2", config=config)
    assert burst.returncode == 3, burst
    assert "Traceback" not in burst.stderr
    last = burst.stderr.strip().splitlines()[-1]
    assert last.startswith("error: database: ReadOnlySqlTransaction: cannot execute"), burst
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute("set default_transaction_read_only = off")
        conn.execute(f'alter database "{dbname}" reset default_transaction_read_only')
        held = conn.execute("select count(*) from intake.allocations where locked_by is not null")
        assert held.fetchone()[0] == 0
