"""intake.yaml validation: every problem named by its field path."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from intake_cli.platform import config, inventory
from intake_cli.platform.errors import ConfigError, UsageError

BASE_POOL = {
    "pool_id": "drop-1",
    "inventory": 10,
    "validation_webhook_url": "https://pay.example/validate",
}


def parse(data: object) -> config.Settings:
    return config.parse(data, Path("/srv/event/intake.yaml"))


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return caught.value.problems


def test_minimal_file_gets_defaults():
    settings = parse({"pools": [BASE_POOL]})
    pool = settings.pools[0]
    assert settings.db1.embedded and settings.db2.embedded
    assert settings.state_dir == Path("/srv/event/.intake")
    assert settings.queue_name == "intents" and settings.dlq_name == "intents_dlq"
    assert (pool.per_user_limit, pool.batch_size, pool.visibility_timeout) == (1, 100, 45)
    assert pool.commit_rpc_name == "public.finalize_transaction"
    assert pool.max_retries == 10 and pool.webhook_secret is None


def test_wrong_type_names_the_path_and_value():
    assert problems_of({"pools": [{**BASE_POOL, "batch_size": "ten"}]}) == [
        'pools[0].batch_size: expected an integer from 1 to 10000, got "ten"'
    ]


def test_all_problems_reported_at_once():
    found = problems_of(
        {
            "colour": "blue",
            "pools": [
                {**BASE_POOL, "visibility_timeout": 0, "max_retries": True},
                {**BASE_POOL, "inventory": -5, "surprise": 1},
            ],
        }
    )
    assert found == [
        "colour: unknown key (known: db1, db2, embedded, event, gateway, log_drain_buffer, "
        "log_drain_url, pools, queue_name, state_dir)",
        "pools[0].visibility_timeout: expected an integer from 1 to 43200, got 0",
        "pools[0].max_retries: expected an integer from 0 to 1000, got True",
        "pools[1].surprise: unknown key (known: admit_per_second, batch_size, commit_rate_per_sec, "
        "commit_rpc_name, inventory, inventory_file, max_retries, opens_at, per_user_limit, "
        "pool_id, "
        "retry_base_seconds, retry_max_seconds, validation_webhook_url, "
        "visibility_timeout, webhook_rate_per_sec, webhook_secret)",
        "pools[1].inventory: expected an integer from 1 to 50000000, got -5",
    ]


@pytest.mark.parametrize(
    "rpc",
    [
        "x'); drop table tickets; --",
        "public.finalize_transaction()",
        'public."Finalize"',
        "a.b.c",
        "Finalize",
        "fn; select 1",
    ],
)
def test_rpc_names_carrying_sql_are_refused(rpc):
    [problem] = problems_of({"pools": [{**BASE_POOL, "commit_rpc_name": rpc}]})
    assert problem.startswith("pools[0].commit_rpc_name: expected [schema.]function")


@pytest.mark.parametrize("pool_id", ["x'); drop table intake.allocations; --", "A", "", "-x"])
def test_unsafe_pool_ids_are_refused(pool_id):
    [problem, *_] = problems_of({"pools": [{**BASE_POOL, "pool_id": pool_id}]})
    assert problem.startswith("pools[0].pool_id: expected")


@pytest.mark.parametrize("url", ["ftp://pay.example/x", "pay.example/validate", "http://", 5])
def test_webhook_url_must_be_http(url):
    [problem] = problems_of({"pools": [{**BASE_POOL, "validation_webhook_url": url}]})
    assert problem.startswith("pools[0].validation_webhook_url: expected")


def test_queue_name_pattern_and_duplicate_pools():
    found = problems_of({"queue_name": "Intents;", "pools": [BASE_POOL, BASE_POOL]})
    assert found[0].startswith("queue_name: expected 1-40 characters")
    assert found[1] == 'pools[1].pool_id: "drop-1" is used twice'


def test_environment_interpolation(monkeypatch):
    monkeypatch.setenv("DB1_URL", "host=db1.internal dbname=intake")
    monkeypatch.setenv("HOOK_SECRET", "whsec_c2VjcmV0")
    monkeypatch.delenv("DB2_URL", raising=False)
    settings = parse(
        {
            "db1": {"dsn": "${DB1_URL}"},
            "db2": {"dsn": "${DB2_URL:-}"},
            "pools": [{**BASE_POOL, "webhook_secret": "${HOOK_SECRET}"}],
        }
    )
    assert settings.db1.dsn == "host=db1.internal dbname=intake"
    assert settings.db2.embedded
    assert settings.pools[0].webhook_secret == "whsec_c2VjcmV0"


def test_missing_environment_variable_is_an_error(monkeypatch):
    monkeypatch.delenv("NOPE_DSN", raising=False)
    assert problems_of({"db1": {"dsn": "${NOPE_DSN}"}, "pools": [BASE_POOL]}) == [
        "db1.dsn: environment variable NOPE_DSN is not set"
    ]


@pytest.mark.parametrize(
    "field, value",
    [
        ("webhook_secret", "whsec_literal"),
        ("dsn", "postgresql://app:hunter2@db.example/intake"),
        ("dsn", "host=db.example password=hunter2"),
    ],
)
def test_literal_secrets_are_refused(field, value):
    data: dict = {"pools": [dict(BASE_POOL)]}
    if field == "dsn":
        data["db1"] = {"dsn": value}
    else:
        data["pools"][0][field] = value
    [problem] = problems_of(data)
    assert "environment" in problem


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "intake.yaml"
    bad.write_text("pools:\n  - pool_id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: malformed YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "absent.yaml")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        config.load(bad)


def test_example_file_is_valid(monkeypatch):
    for name in ("INTAKE_DB1_DSN", "INTAKE_DB2_DSN", "INTAKE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    example = Path(__file__).resolve().parents[2] / "examples" / "intake.yaml"
    settings = config.load(example)
    assert settings.db1.embedded and settings.pools[0].pool_id == "spring-drop"


# inventory_file: only cheap checks at load; read_ids checks every line at `up`.

UNIT_IDS = "0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0\n5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d\n"


def file_pool(inventory_file: object, **extra: object) -> dict:
    pool = {key: value for key, value in BASE_POOL.items() if key != "inventory"}
    return {**pool, "inventory_file": inventory_file, **extra}


def test_inventory_file_sets_the_inventory_when_it_is_left_out(tmp_path):
    units = tmp_path / "units.txt"
    units.write_text(UNIT_IDS)
    pool = parse({"pools": [file_pool(str(units))]}).pools[0]
    assert (pool.inventory, pool.inventory_file) == (2, units)
    assert parse({"pools": [BASE_POOL]}).pools[0].inventory_file is None


def test_csv_inventory_file_does_not_count_its_header(tmp_path):
    units = tmp_path / "units.csv"
    units.write_text("seat,resource_id\r\nA1,0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0\r\n")
    assert parse({"pools": [file_pool(str(units))]}).pools[0].inventory == 1


def test_inventory_and_inventory_file_must_agree(tmp_path):
    units = tmp_path / "units.txt"
    units.write_text(UNIT_IDS)
    assert parse({"pools": [file_pool(str(units), inventory=2)]}).pools[0].inventory == 2
    assert problems_of({"pools": [file_pool(str(units), inventory=3)]}) == [
        f"pools[0].inventory: 3 does not match {units}, which lists 2 ids "
        "(leave inventory out to take the file's count)"
    ]


def test_relative_inventory_file_is_relative_to_the_config_file(tmp_path, monkeypatch):
    event = tmp_path / "event"
    (event / "lists").mkdir(parents=True)
    (event / "lists" / "units.txt").write_text(UNIT_IDS)
    cfg = event / "intake.yaml"
    cfg.write_text(
        "pools:\n  - pool_id: drop-1\n    inventory_file: lists/units.txt\n"
        "    validation_webhook_url: https://pay.example/validate\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pool = config.load(os.path.relpath(cfg, elsewhere)).pools[0]
    assert pool.inventory_file == event / "lists" / "units.txt"
    assert pool.inventory_file.is_absolute() and pool.inventory == 2


def test_inventory_file_path_may_use_the_environment(tmp_path, monkeypatch):
    (tmp_path / "units.txt").write_text(UNIT_IDS)
    monkeypatch.setenv("UNITS_DIR", str(tmp_path))
    pool = parse({"pools": [file_pool("${UNITS_DIR}/units.txt")]}).pools[0]
    assert pool.inventory_file == tmp_path / "units.txt"


def test_missing_inventory_file_is_named(tmp_path):
    absent = tmp_path / "absent.txt"
    # One problem: no "inventory: required" on top of the missing file.
    assert problems_of({"pools": [file_pool(str(absent))]}) == [
        f"pools[0].inventory_file: file not found: {absent}"
    ]


def test_inventory_file_must_be_a_regular_file(tmp_path):
    fifo = tmp_path / "units.fifo"
    os.mkfifo(fifo)  # opening it would block until a writer came: never opened
    for target in (tmp_path, fifo):
        assert problems_of({"pools": [file_pool(str(target))]}) == [
            f"pools[0].inventory_file: not a regular file: {target}"
        ]


def test_unreadable_inventory_file(tmp_path, monkeypatch):
    units = tmp_path / "units.txt"
    units.write_text(UNIT_IDS)

    def denied(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    # As root, chmod 000 still reads: stand in for the operating system.
    monkeypatch.setattr(inventory, "count_ids", denied)
    assert problems_of({"pools": [file_pool(str(units))]}) == [
        f"pools[0].inventory_file: cannot read {units}: Permission denied"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_unreadable_inventory_file_for_real(tmp_path):
    units = tmp_path / "units.txt"
    units.write_text(UNIT_IDS)
    units.chmod(0)
    assert problems_of({"pools": [file_pool(str(units))]}) == [
        f"pools[0].inventory_file: cannot read {units}: Permission denied"
    ]


def test_empty_inventory_file_and_bad_values(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert problems_of({"pools": [file_pool(str(empty))]}) == [
        f"pools[0].inventory_file: {empty} lists no ids"
    ]
    [problem] = problems_of({"pools": [file_pool(5)]})
    assert problem == "pools[0].inventory_file: expected a non-empty string, got 5"


def test_inventory_or_inventory_file_is_required():
    assert problems_of({"pools": [file_pool("")]}) == [
        'pools[0].inventory_file: expected a non-empty string, got ""'
    ]
    pool = {key: value for key, value in BASE_POOL.items() if key != "inventory"}
    assert problems_of({"pools": [pool]}) == [
        "pools[0].inventory: required: the number of units to seed, "
        "or an inventory_file listing their ids"
    ]


# What the bad-input rules must still let through (the refusals are in the
# corpus, tests/corpus/cases.py).


def test_a_password_from_the_environment_is_quoted_for_where_it_goes(monkeypatch):
    # Spaces, quotes and backslashes cannot break the string apart, in either form.
    monkeypatch.setenv("DB_PW", "a b'c\\d")
    keyword = parse({"db1": {"dsn": "host=db user=app password=${DB_PW}"}, "pools": [BASE_POOL]})
    assert keyword.db1.dsn == "host=db user=app password='a b\\'c\\\\d'"
    url = parse({"db1": {"dsn": "postgresql://app:${DB_PW}@db/intake"}, "pools": [BASE_POOL]})
    assert url.db1.dsn == "postgresql://app:a%20b%27c%5Cd@db/intake"
    for dsn in (keyword.db1.dsn, url.db1.dsn):
        assert psycopg.conninfo.conninfo_to_dict(dsn)["password"] == "a b'c\\d"


def test_a_whole_dsn_from_the_environment_may_hold_its_password(monkeypatch):
    monkeypatch.setenv("DB1_DSN", "host=db password=from-the-environment")
    settings = parse({"db1": {"dsn": "${DB1_DSN}"}, "pools": [BASE_POOL]})
    assert settings.db1.dsn == "host=db password=from-the-environment"


def test_an_empty_default_makes_a_secret_optional(monkeypatch):
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    pool = {**BASE_POOL, "webhook_secret": "${HOOK_SECRET:-}"}
    assert parse({"pools": [pool]}).pools[0].webhook_secret is None
    monkeypatch.setenv("HOOK_SECRET", "")
    assert parse({"pools": [pool]}).pools[0].webhook_secret is None
    monkeypatch.setenv("HOOK_SECRET", "plain-text-secret")
    assert parse({"pools": [pool]}).pools[0].webhook_secret == "plain-text-secret"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/validate",
        "http://[::1]:8080/v",
        "https://pay.example./v?shop=1#x",
        "https://bücher.example/v",
        "http://payments_service:8000/v",
        "HTTPS://PAY.EXAMPLE/V",
        "http://pay.example:/v",
    ],
)
def test_urls_intake_can_call_are_accepted(url):
    assert parse({"pools": [{**BASE_POOL, "validation_webhook_url": url}]}).pools[0]


def test_retry_base_may_equal_the_ceiling():
    pool = {**BASE_POOL, "retry_base_seconds": 5, "retry_max_seconds": 5}
    assert parse({"pools": [pool]}).pools[0].retry_base_seconds == 5.0


def test_merge_keys_may_be_overridden_and_aliases_reused(tmp_path):
    cfg = tmp_path / "intake.yaml"
    cfg.write_text(
        "defaults: &defaults\n"
        "  validation_webhook_url: https://pay.example/validate\n"
        "  batch_size: 50\n"
        "pools:\n"
        "  - <<: *defaults\n"
        "    pool_id: a\n"
        "    inventory: 5\n"
        "    batch_size: 10\n"
        "  - <<: *defaults\n"
        "    pool_id: b\n"
        "    inventory: 5\n"
    )
    with pytest.raises(ConfigError, match="defaults: unknown key"):
        config.load(cfg)  # `defaults` is not a known key, but the merges were read
    cfg.write_text(cfg.read_text().replace("defaults: &defaults", "event: &defaults"))
    pools = config.load(cfg).pools
    assert [(p.pool_id, p.batch_size) for p in pools] == [("a", 10), ("b", 50)]


def test_redact_hides_credentials_and_nothing_else():
    assert config.redact("host=db password=x user=u") == "host=db password=*** user=u"
    assert config.redact("postgresql://u:pw@db/x?sslpassword=y&a=1") == (
        "postgresql://***@db/x?sslpassword=***&a=1"
    )
    assert config.redact("https://pay.example/v?shop=1") == "https://pay.example/v?shop=1"


@pytest.mark.parametrize("user", ["alice", "ünïcødé", "user with spaces", "x" * 300, "a\x1bb"])
def test_user_ids_are_left_to_db1_unless_they_cannot_be_sent(user):
    assert config.check_user_id(user) is None
    assert config.check_user_id(user + "\udcff") is not None


def test_write_example_writes_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "intake.yaml"
    config.write_example(target)
    assert "pools:" in target.read_text()
    target.write_text("mine")
    with pytest.raises(UsageError, match="exists; pass --force"):
        config.write_example(target)
    assert target.read_text() == "mine"
    config.write_example(target, force=True)
    assert "pools:" in target.read_text()


def test_embedded_standby_is_off_unless_asked_for():
    assert parse({"pools": [BASE_POOL]}).embedded.standby is False
    settings = parse({"pools": [BASE_POOL], "embedded": {"standby": True}})
    assert settings.embedded.standby is True and settings.embedded.synchronous_commit


@pytest.mark.parametrize(("value", "shown"), [("yes", '"yes"'), (1, "1"), (None, "nothing")])
def test_embedded_standby_must_be_a_boolean(value, shown):
    assert problems_of({"pools": [BASE_POOL], "embedded": {"standby": value}}) == [
        f"embedded.standby: expected true or false, got {shown}"
    ]


def test_embedded_standby_refuses_commits_that_do_not_wait():
    found = problems_of(
        {"pools": [BASE_POOL], "embedded": {"standby": True, "synchronous_commit": False}}
    )
    assert found == [
        "embedded.standby: a synchronous standby needs synchronous_commit: remove "
        "embedded.synchronous_commit: false or the standby"
    ]


def test_intake_failover_refuses_a_configured_db1_before_touching_anything(tmp_path):
    from intake_cli.engine import lifecycle
    from intake_cli.platform.errors import UsageError

    path = tmp_path / "intake.yaml"
    path.write_text(
        "db1:\n  dsn: host=127.0.0.1 port=1 dbname=x\n"
        "pools:\n  - pool_id: drop\n    inventory: 1\n"
        "    validation_webhook_url: https://pay.example/validate\n"
    )
    with pytest.raises(UsageError, match="a configured DB1 is promoted by its own HA tool"):
        lifecycle.failover(config.load(str(path)), how="kill", lose_host=True)
