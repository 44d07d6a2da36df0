"""`intake status` reads the pgmq version live (issue 16, item 4).

The pgmq extension is not installable on our machines, so its
`ALTER EXTENSION pgmq UPDATE` is staged in the catalog: a throwaway DB1 gets
a pg_extension row for pgmq (allow_system_table_mods, superuser only), which
is then moved from 1.4.4 to 1.5.1 as the update would. intake reads only
pg_extension.extversion, which is what the real update changes.
"""

from __future__ import annotations

import json

import psycopg

from tests.conftest import intake, pool_spec, write_config


def _pgmq(config) -> dict:
    return json.loads(intake("status", "--json", config=config, check=True).stdout)["pgmq"]


def test_status_follows_alter_extension_update(workdir, db1_dsn, db2_dsn):
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec()])
    intake("up", config=config, check=True)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        # As `up` records an extension install it found at 1.4.4.
        conn.execute("update intake.pgmq_install set source = 'extension', version = '1.4.4'")
        conn.execute("set allow_system_table_mods = on")
        conn.execute(
            "insert into pg_extension (oid, extname, extowner, extnamespace, extrelocatable,"
            " extversion) select (select max(oid::int) + 1 from pg_extension)::oid, 'pgmq',"
            " 10, 'pgmq'::regnamespace, false, '1.4.4'"
        )
    assert _pgmq(config) == {
        "source": "extension",
        "version": "1.4.4",
        "version_from": "pg_extension",
    }
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute("set allow_system_table_mods = on")
        conn.execute("update pg_extension set extversion = '1.5.1' where extname = 'pgmq'")
    assert _pgmq(config)["version"] == "1.5.1"
    text = intake("status", config=config, check=True).stdout
    assert "pgmq: extension 1.5.1\n" in text
    # `up` replaces the stale record with the live version (issue 16, item 3).
    intake("up", config=config, check=True)
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        recorded = conn.execute("select source, version from intake.pgmq_install").fetchall()
    assert recorded == [("extension", "1.5.1")]


def test_status_says_the_bundled_sql_version_is_the_one_recorded(workdir, db1_dsn, db2_dsn):
    config = write_config(workdir, db1_dsn, db2_dsn, [pool_spec()])
    intake("up", config=config, check=True)
    first = _pgmq(config)
    assert (first["source"], first["version_from"]) == ("bundled-sql", "recorded at install")
    with psycopg.connect(db1_dsn, autocommit=True) as conn:
        conn.execute("update intake.pgmq_install set version = '1.99.0'")
    assert _pgmq(config)["version"] == "1.99.0"
    text = intake("status", config=config, check=True).stdout
    assert "pgmq: bundled-sql 1.99.0 (recorded at install)" in text
