"""The bad-input corpus: each case an input, the exit code intake must give, and a
piece of the message it must print. How to add one: docs/bad-input.md.

Four kinds, each run by its own harness:

- CONFIG: an intake.yaml (text or bytes, or a path that is not a plain file),
  read by `config.load` in-process (tests/unit/test_bad_input_corpus.py);
  the ones marked `cli=True` also through the real `intake -c FILE status`
  (tests/acceptance/test_bad_input_corpus.py).
- CLI: command-line arguments, run through `intake_cli.faces.cli.main` in-process;
  `cli=True` ones in a subprocess too. `{dir}` in an argument is the case's
  own scratch directory, which holds a valid embedded-cluster `intake.yaml`.
- WEBHOOK: what a validation webhook answers (a status, or a whole scripted
  response), classified by the real drain (`intake drain --once --json`) or
  by the webhook client alone; `outcome` is the verdict.
- RPC: a SQLSTATE the DB2 commit RPC raises for one payload; the drain exits
  0 and the intent is retried or dead-lettered, never counted committed.

Every message is checked for `fragment`, for no traceback, and for none of
the strings in `absent` (the secrets a case carries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

USAGE = 2  # ConfigError and UsageError: bad configuration or arguments

# A secret each case may carry; it must never be printed back.
SECRET = "hunter2"
GOOD_WHSEC = "whsec_c2VjcmV0LWtleQ=="


@dataclass(frozen=True)
class Case:
    id: str
    input: Any
    exit: int
    fragment: str
    absent: tuple[str, ...] = ()
    # Environment for the case; None unsets a variable.
    env: Mapping[str, str | None] = field(default_factory=dict)
    # Also run through the real CLI in a subprocess (a representative subset).
    cli: bool = False
    # WEBHOOK and RPC: what became of the intent (validated, rejected, retry, …).
    outcome: str = ""


# ---------------------------------------------------------------------------
# CONFIG: intake.yaml text (str), raw bytes, or Special (a path, not content)


@dataclass(frozen=True)
class Special:
    """Name this instead of a written file: "dir", "fifo", "missing", or an absolute path."""

    what: str


POOL = {
    "pool_id": "drop",
    "inventory": 10,
    "validation_webhook_url": "https://pay.example/validate",
}


def _scalar(value: Any) -> str:
    # One flow-style line, so a case can append more lines of the pool after it.
    return yaml.safe_dump([value], default_flow_style=True, width=math.inf).strip()[1:-1]


def pool(**fields: Any) -> str:
    """A valid one-pool intake.yaml with the pool's `fields` changed (None: left out).

    Laid out as an operator writes it, so a case may add lines to the pool
    ("    key: value\n") or to the top level ("key: value\n").
    """
    spec = {**POOL, **fields}
    lines = [f"    {key}: {_scalar(value)}" for key, value in spec.items() if value is not None]
    return "pools:\n  - " + "\n".join(lines)[4:] + "\n"


def top(**fields: Any) -> str:
    """A valid one-pool intake.yaml with these top-level keys added."""
    return yaml.safe_dump({**fields, "pools": [POOL]}, sort_keys=False)


def dsn(value: str, database: str = "db1") -> str:
    return top(**{database: {"dsn": value}})


BASE = pool()
_LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefg", "bcdefgh", strict=True)
)

# fmt: off
CONFIG: list[Case] = [
    # -- Reading: what a file may cost, and files that are not text --------
    Case("non-utf8-byte", b"pools:\n  - pool_id: \xff\n", USAGE, "line 2: not UTF-8", cli=True),
    Case("latin1-file", BASE.replace("drop", "dr\xf6p").encode("latin-1"), USAGE, "not UTF-8"),
    Case("utf16-file", BASE.encode("utf-16"), USAGE, "not UTF-8 (byte 0xff at offset 0)"),
    Case("nul-character", BASE + "event: a\x00b\n", USAGE, "U+0000 is not allowed"),
    Case("escape-character", BASE + "event: a\x1bb\n", USAGE, "U+001B is not allowed"),
    Case(
        "60000-deep-flow-nesting",
        "pools: " + "[" * 60_000 + "]" * 60_000 + "\n",
        USAGE,
        "nested more than 32 levels deep",
        cli=True,
    ),
    Case("deep-block-nesting", "pools:\n" + "- " * 200 + "x\n", USAGE, "nested more than 32"),
    Case("deep-mapping-nesting", "a: " + "{b: " * 100 + "1" + "}" * 100, USAGE, "nested more"),
    Case(
        "billion-laughs",
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + _LAUGHS
        + "pools: *h\n",
        USAGE,
        "expands to more than 100,000 values",
        cli=True,
    ),
    Case(
        "merge-key-laughs",
        "a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n"
        + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 12)}]\n"
            for p, n in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "pools:\n  - <<: *a\n    extra: *h\n",
        USAGE,
        "expands to more than 100,000 values",
    ),
    Case("alias-to-itself", "pools: &p [*p]\n", USAGE, "refers to the node that contains it"),
    Case("over-a-mebibyte", BASE + "#" + "x" * (1 << 20) + "\n", USAGE, "larger than 1,024 KiB"),
    Case("dev-zero", Special("/dev/zero"), USAGE, "not a regular file", cli=True),
    Case("a-directory", Special("dir"), USAGE, "not a regular file"),
    Case("a-fifo", Special("fifo"), USAGE, "not a regular file"),
    Case("missing-file", Special("missing"), USAGE, "file not found"),
    Case("impossible-date", BASE + "event: 2024-13-01\n", USAGE, "cannot read this timestamp"),
    Case("tagged-int-not-a-number", pool(inventory=None) + "    inventory: !!int ten\n", USAGE,
         "cannot read this int value"),
    Case("python-object-tag", BASE + "event: !!python/object/apply:os.system [id]\n", USAGE,
         "could not determine a constructor"),
    Case("unhashable-key", BASE + "? [a, b]\n: 1\n", USAGE, "found unhashable key"),
    Case("huge-integer", pool(batch_size=None) + "    batch_size: 0x" + "f" * 5000 + "\n",
         USAGE, "got an integer of 20,000 bits"),
    Case("unclosed-bracket", "pools:\n  - pool_id: [unclosed\n", USAGE, "malformed YAML"),
    Case("tab-indentation", "pools:\n\t- pool_id: drop\n", USAGE, "malformed YAML"),
    Case("top-level-list", "- pools\n- drop\n", USAGE, "expected a mapping at the top level"),
    Case("empty-file", "", USAGE, "expected a mapping at the top level, got nothing"),
    Case("two-documents", BASE + "---\n" + BASE, USAGE, "found another document"),
    # -- A key repeated in one mapping: the last one would silently win ----
    Case(
        "repeated-pool-key",
        BASE + "    inventory: 20\n",
        USAGE,
        'key "inventory" is repeated in this mapping (first on line',
        cli=True,
    ),
    Case("repeated-top-key", BASE + "pools: []\n", USAGE, 'key "pools" is repeated'),
    Case("repeated-db-key", top(db1={"dsn": ""}) + "db2: {pgenv: true, pgenv: false}\n",
         USAGE, 'key "pgenv" is repeated'),
    Case("repeated-flow-key", "pools: [{pool_id: a, pool_id: b}]\n", USAGE, 'key "pool_id"'),
    Case("repeated-as-yaml-1-1-bool", BASE + "yes: 1\non: 2\n", USAGE, "key True is repeated"),
    # -- Secrets come from the environment only ----------------------------
    Case("dsn-password-default", dsn("host=db password=${UNSET_PW:-hunter2}"), USAGE,
         "a password takes no default", (SECRET,), {"UNSET_PW": None}, cli=True),
    Case("dsn-password-dollar-literal", dsn("host=db password=$hunter2"), USAGE,
         "holds a password written in the file", (SECRET,)),
    Case("dsn-password-quoted", dsn("host=db password='hunter2 x'"), USAGE,
         "holds a password written in the file", (SECRET,)),
    Case("dsn-url-password", dsn("postgresql://app:hunter2@db.example/intake"), USAGE,
         "holds a password written in the file", (SECRET,)),
    Case("dsn-url-password-default", dsn("postgresql://app:${PW:-hunter2}@db/x"), USAGE,
         "a password takes no default", (SECRET,), {"PW": None}),
    Case("dsn-sslpassword", dsn("host=db sslkey=k.pem sslpassword=hunter2"), USAGE,
         "holds a password written in the file", (SECRET,)),
    Case("dsn-url-query-password", dsn("postgresql://db/x?user=app&password=hunter2"), USAGE,
         "holds a password written in the file", (SECRET,)),
    Case("dsn-url-query-sslpassword", dsn("postgres://db/x?sslpassword=hunter2"), USAGE,
         "holds a password written in the file", (SECRET,)),
    Case("dsn-whole-default-with-password", dsn("${UNSET_DSN:-host=db password=hunter2}"),
         USAGE, "the default of ${UNSET_DSN:-…} holds a password", (SECRET,),
         {"UNSET_DSN": None}),
    Case("dsn-whole-default-url-password", dsn("${UNSET_DSN:-postgresql://u:hunter2@db/x}"),
         USAGE, "holds a password", (SECRET,), {"UNSET_DSN": None}),
    Case("db2-dsn-password", dsn("host=ledger password=hunter2", "db2"), USAGE,
         "db2.dsn: holds a password written in the file", (SECRET,)),
    Case("dsn-not-a-mapping-echoes-no-password", "db1: postgresql://u:hunter2@db/x\n" + BASE,
         USAGE, 'db1: expected a mapping, got "postgresql://***@db/x"', (SECRET,)),
    Case("dsn-unparsable", dsn("host=db port"), USAGE, "is not a libpq connection string"),
    Case("dsn-unknown-option", dsn("host=db colour=blue"), USAGE,
         'invalid connection option "colour"'),
    Case("secret-default", pool(webhook_secret="${UNSET_SECRET:-whsec_aHVudGVyMg==}"), USAGE,
         "a secret takes no default", ("aHVudGVyMg",), {"UNSET_SECRET": None},
         cli=True),
    Case("secret-literal", pool(webhook_secret="whsec_aHVudGVyMg=="), USAGE,
         "secrets are read from the environment", ("aHVudGVyMg",)),
    Case("secret-dollar-literal", pool(webhook_secret="$hunter2"), USAGE,
         "secrets are read from the environment", (SECRET,)),
    Case("secret-required-but-empty", pool(webhook_secret="${HOOK_SECRET}"), USAGE,
         "environment variable HOOK_SECRET is empty", env={"HOOK_SECRET": ""}),
    Case("secret-unset", pool(webhook_secret="${HOOK_SECRET}"), USAGE,
         "environment variable HOOK_SECRET is not set", env={"HOOK_SECRET": None}),
    Case("whsec-not-base64", pool(webhook_secret="${HOOK_SECRET}"), USAGE,
         "must be base64 after the prefix", ("hunter2",), {"HOOK_SECRET": "whsec_hunter2!"},
         cli=True),
    Case("whsec-bad-padding", pool(webhook_secret="${HOOK_SECRET}"), USAGE,
         "must be base64", env={"HOOK_SECRET": "whsec_abc"}),
    Case("whsec-empty-key", pool(webhook_secret="${HOOK_SECRET}"), USAGE,
         "the webhook secret is empty", env={"HOOK_SECRET": "whsec_"}),
    Case("webhook-url-userinfo", pool(validation_webhook_url="https://shop:hunter2@pay.example/v"),
         USAGE, "may not carry credentials", (SECRET,), cli=True),
    Case("webhook-url-user-only", pool(validation_webhook_url="https://shop@pay.example/v"),
         USAGE, "may not carry credentials"),
    Case("webhook-url-userinfo-from-default",
         pool(validation_webhook_url="${UNSET_URL:-https://u:hunter2@pay.example/v}"), USAGE,
         "may not carry credentials", (SECRET,), {"UNSET_URL": None}),
    Case("log-drain-url-userinfo", top(log_drain_url="https://logs:hunter2@logs.example/in"),
         USAGE, "log_drain_url: may not carry credentials", (SECRET,)),
    Case("bad-value-echo-redacted", pool(batch_size="password=hunter2"), USAGE,
         'got "password=***"', (SECRET,)),
    # -- URLs intake could never call --------------------------------------
    Case("url-unclosed-ipv6", pool(validation_webhook_url="http://[::1"), USAGE,
         "validation_webhook_url: is not a valid URL (invalid IPv6 URL)", cli=True),
    Case("url-space-in-host", pool(validation_webhook_url="http://pay example/v"), USAGE,
         "has a space or a control character", cli=True),
    Case("url-tab-in-host", pool(validation_webhook_url="http://pay\texample/v"), USAGE,
         "has a space or a control character"),
    Case("url-trailing-space", pool(validation_webhook_url="http://pay.example/v "), USAGE,
         "has a space"),
    Case("url-port-out-of-range", pool(validation_webhook_url="http://pay.example:99999/"),
         USAGE, "port out of range"),
    Case("url-port-not-a-number", pool(validation_webhook_url="http://pay.example:https/"),
         USAGE, "is not a valid URL"),
    Case("url-port-zero", pool(validation_webhook_url="http://pay.example:0/"), USAGE,
         "port 0"),
    Case("url-bad-host-character", pool(validation_webhook_url="http://pay$example/"), USAGE,
         'host "pay$example" is not a valid host name'),
    Case("url-empty-label", pool(validation_webhook_url="http://pay..example/"), USAGE,
         "is not a valid host name"),
    Case("url-five-part-ip", pool(validation_webhook_url="http://10.0.0.1.5/v"), USAGE,
         "is not an IPv4 address"),
    Case("url-no-host", pool(validation_webhook_url="http://:8080/v"), USAGE, "has no host"),
    Case("url-bad-ipv6", pool(validation_webhook_url="http://[fe80::zz]/v"), USAGE,
         "validation_webhook_url: is not a valid URL"),
    Case("url-ftp", pool(validation_webhook_url="ftp://pay.example/v"), USAGE,
         "expected an http:// or https:// URL"),
    Case("url-a-list", pool(validation_webhook_url=["http://pay.example/"]), USAGE,
         "expected a non-empty string"),
    Case("log-drain-url-space", top(log_drain_url="http://logs example/in"), USAGE,
         "log_drain_url: has a space"),
    Case("url-from-env-space", pool(validation_webhook_url="${HOOK_URL}"), USAGE,
         "has a space", env={"HOOK_URL": "http://pay example/"}),
    # -- Numbers that do not fit together or are not numbers ----------------
    Case("retry-base-above-default-max", pool(retry_base_seconds=120), USAGE,
         "retry_base_seconds (120) is above retry_max_seconds (60)", cli=True),
    Case("retry-base-above-max", pool(retry_base_seconds=10, retry_max_seconds=5), USAGE,
         "pools[0]: retry_base_seconds (10) is above retry_max_seconds (5)"),
    Case("retry-base-nan", pool(retry_base_seconds=math.nan), USAGE,
         "retry_base_seconds: expected a number of seconds"),
    Case("retry-max-inf", pool(retry_max_seconds=math.inf), USAGE,
         "retry_max_seconds: expected a number of seconds"),
    Case("batch-size-inf", pool(batch_size=math.inf), USAGE, "batch_size: expected an integer"),
    # -- Paths ----------------------------------------------------------------
    Case("state-dir-nul", top(state_dir="ev\x00ent"), USAGE, "state_dir: a path cannot hold a NUL"),
    Case("state-dir-too-long", top(state_dir="d" * 5000), USAGE, "longer than 4096 bytes"),
    Case("inventory-file-nul", pool(inventory=None, inventory_file="ids\x00.txt"), USAGE,
         "inventory_file: a path cannot hold a NUL"),
    Case("inventory-file-dev-zero", pool(inventory=None, inventory_file="/dev/zero"), USAGE,
         "not a regular file: /dev/zero"),
    # -- Shapes ---------------------------------------------------------------
    Case("pools-a-mapping", "pools: {drop: 1}\n", USAGE, "pools: expected a list"),
    Case("unknown-key", pool(colour="blue"), USAGE, "pools[0].colour: unknown key"),
    Case("log-drain-buffer-too-small", top(log_drain_buffer=5), USAGE,
         "log_drain_buffer: expected an integer from 10"),
    Case("pool-id-twice", yaml.safe_dump({"pools": [POOL, POOL]}), USAGE, "is used twice"),
]
# fmt: on


# ---------------------------------------------------------------------------
# CLI: arguments after `intake -c {dir}/intake.yaml` (a valid config, no event up)

# fmt: off
CLI: list[Case] = [
    Case("drain-webhook-timeout-inf", ["drain", "--webhook-timeout", "inf"], USAGE,
         "--webhook-timeout", cli=True),
    Case("drain-webhook-timeout-nan", ["drain", "--webhook-timeout", "nan"], USAGE,
         "--webhook-timeout", cli=True),
    Case("drain-webhook-timeout-negative", ["drain", "--webhook-timeout", "-1"], USAGE,
         "--webhook-timeout"),
    Case("drain-webhook-timeout-huge", ["drain", "--webhook-timeout", "1e308"], USAGE,
         "--webhook-timeout"),
    Case("drain-webhook-timeout-zero", ["drain", "--webhook-timeout", "0"], USAGE,
         "--webhook-timeout"),
    Case("drain-webhook-timeout-word", ["drain", "--webhook-timeout", "soon"], USAGE,
         "--webhook-timeout"),
    Case("drain-shutdown-timeout-nan", ["drain", "--shutdown-timeout", "nan"], USAGE,
         "--shutdown-timeout"),
    Case("drain-shutdown-timeout-inf", ["drain", "--shutdown-timeout", "inf"], USAGE,
         "--shutdown-timeout"),
    Case("drain-connect-timeout-inf", ["drain", "--once", "--connect-timeout", "inf"], USAGE,
         "--connect-timeout"),
    Case("drain-connect-timeout-negative", ["drain", "--connect-timeout", "-5"], USAGE,
         "--connect-timeout"),
    Case("drain-concurrency-zero", ["drain", "--concurrency", "0"], USAGE, "--concurrency"),
    Case("drain-concurrency-float", ["drain", "--concurrency", "1e3"], USAGE, "--concurrency"),
    Case("drain-workers-zero", ["drain", "--workers", "0"], USAGE, "--workers"),
    Case("drain-workers-negative", ["drain", "--workers", "-2"], USAGE, "--workers"),
    Case("drain-workers-too-many", ["drain", "--workers", "100000"], USAGE, "--workers"),
    Case("drain-workers-word", ["drain", "--workers", "all"], USAGE, "--workers"),
    Case("drain-workers-bad-pool", ["drain", "--workers", "2", "--pool", "Drop One"], USAGE,
         "--pool: expected"),
    Case("drain-log-level", ["drain", "--log-level", "loud"], USAGE, "--log-level"),
    Case("drain-log-format", ["drain", "--log-format", "xml"], USAGE, "--log-format"),
    Case("drain-pool-id", ["drain", "--pool", "Drop One"], USAGE, "--pool: expected"),
    Case("watch-refresh-nan", ["watch", "--refresh", "nan"], USAGE, "--refresh"),
    Case("watch-refresh-inf", ["watch", "--refresh", "inf"], USAGE, "--refresh"),
    Case("dlq-list-limit-beyond-bigint", ["dlq", "list", "--limit", "9" * 23], USAGE, "--limit"),
    Case("init-missing-directory", ["init", "{dir}/missing/intake.yaml"], USAGE,
         "missing is not a directory: create it first", cli=True),
    Case("init-force-onto-directory", ["init", "--force", "{dir}"], USAGE, "is a directory",
         cli=True),
    Case("init-onto-directory", ["init", "{dir}"], USAGE, "is a directory"),
    Case("init-existing-file", ["init", "{dir}/intake.yaml"], USAGE, "exists; pass --force"),
    Case("init-force-onto-device", ["init", "--force", "/dev/null"], USAGE,
         "is not a regular file"),
    Case("claim-user-not-utf8", ["claim", "drop", "user-\udcff"], USAGE,
         "user id: expected UTF-8 text", cli=True),
    Case("claim-bad-pool", ["claim", "Drop One", "alice"], USAGE, "pool id: expected"),
    Case("burst-no-users", ["burst", "drop", "--users", "0"], USAGE, "--users"),
    Case("burst-concurrency-huge", ["burst", "drop", "--concurrency", "100000"], USAGE,
         "--concurrency"),
    Case("burst-bad-pool", ["burst", "drop;", "--users", "5"], USAGE, "pool id: expected"),
    Case("config-set-key-twice",
         ["config", "set", "drop", "retry_base_seconds=1", "retry_base_seconds=2"], USAGE,
         "retry_base_seconds is given twice", cli=True),
    Case("config-set-retry-pair",
         ["config", "set", "drop", "retry_base_seconds=120", "retry_max_seconds=60"], USAGE,
         "retry_base_seconds (120) is above retry_max_seconds (60)"),
    Case("config-set-int-too-long", ["config", "set", "drop", "batch_size=" + "9" * 5000],
         USAGE, "batch_size: expected an integer from 1 to 10000"),
    Case("config-set-int-arabic-digits", ["config", "set", "drop", "batch_size=\u0661\u0662"],
         USAGE, "batch_size: expected an integer"),
    Case("config-set-int-underscore", ["config", "set", "drop", "batch_size=1_0"], USAGE,
         "batch_size: expected an integer"),
    Case("config-set-seconds-nan", ["config", "set", "drop", "retry_max_seconds=nan"], USAGE,
         "retry_max_seconds: expected a number of seconds"),
    Case("config-set-seconds-inf", ["config", "set", "drop", "retry_base_seconds=inf"], USAGE,
         "retry_base_seconds: expected a number of seconds"),
    Case("config-set-seconds-overflow", ["config", "set", "drop", "retry_base_seconds=1e400"],
         USAGE, "retry_base_seconds: expected a number of seconds"),
    Case("config-set-url-credentials",
         ["config", "set", "drop", "validation_webhook_url=https://u:hunter2@pay.example/"],
         USAGE, "may not carry credentials", (SECRET,), cli=True),
    Case("config-set-url-space",
         ["config", "set", "drop", "validation_webhook_url=http://pay example/"], USAGE,
         "has a space"),
    Case("config-set-url-unclosed-ipv6",
         ["config", "set", "drop", "validation_webhook_url=http://[::1"], USAGE,
         "is not a valid URL"),
    Case("config-set-secret", ["config", "set", "drop", "webhook_secret=whsec_aHVudGVyMg=="],
         USAGE, "webhook_secret: not a live setting", ("aHVudGVyMg",)),
    Case("config-set-inventory", ["config", "set", "drop", "inventory=5"], USAGE,
         "inventory: not a live setting"),
    Case("config-set-no-equals", ["config", "set", "drop", "https://u:hunter2@pay.example/"],
         USAGE, "expected KEY=VALUE", (SECRET,)),
    Case("config-set-bad-pool", ["config", "set", "Drop One", "batch_size=5"], USAGE,
         "pool id: expected"),
    Case("config-dev-zero", ["-c", "/dev/zero", "status"], USAGE, "not a regular file"),
    Case("config-missing", ["-c", "{dir}/absent.yaml", "status"], USAGE, "file not found"),
]
# fmt: on


# ---------------------------------------------------------------------------
# WEBHOOK: answers, as the drain (and its webhook client) must take them.
# STATUSES: the real test webhook (`intake webhook-server`) answers every call
# with the status; the real `intake drain --once --json` classifies it.
# `outcome` is the count in drain's JSON that goes up.

WEBHOOK_STATUSES: list[Case] = [
    Case("status-200", 200, 0, "", outcome="committed"),
    Case("status-201", 201, 0, "", outcome="committed"),
    Case("status-400", 400, 0, "HTTP 400", outcome="rejected"),
    Case("status-402", 402, 0, "HTTP 402", outcome="rejected"),
    Case("status-409", 409, 0, "HTTP 409", outcome="rejected"),
    Case("status-422", 422, 0, "HTTP 422", outcome="rejected"),
    Case("status-302-not-followed", 302, 0, "HTTP 302", outcome="retried"),
    Case("status-401-misconfigured", 401, 0, "HTTP 401", outcome="retried"),
    Case("status-404-misconfigured", 404, 0, "HTTP 404", outcome="retried"),
    Case("status-418-unknown", 418, 0, "HTTP 418", outcome="retried"),
    # The provider meters its callers: handed back, no attempt charged.
    Case("status-429", 429, 0, "HTTP 429", outcome="deferred"),
    Case("status-500", 500, 0, "HTTP 500", outcome="retried"),
    Case("status-503", 503, 0, "HTTP 503", outcome="retried"),
    Case("status-599", 599, 0, "HTTP 599", outcome="retried"),
]

# BODIES: a scripted server answers exactly this (status, content type, body,
# and how); the webhook client's verdict is `outcome` and its reason holds
# `fragment`. `cli=True` ones also go through a real `intake drain --once`.
# fmt: off
WEBHOOK_BODIES: list[Case] = [
    Case("json-reason", {"status": 402, "body": b'{"reason": "card declined"}'}, 0,
         "HTTP 402: card declined", outcome="rejected", cli=True),
    Case("nested-error-message", {"status": 422, "body": b'{"error": {"message": "expired"}}'},
         0, "HTTP 422: expired", outcome="rejected"),
    Case("invalid-json", {"status": 409, "body": b'{"reason": '}, 0, "HTTP 409",
         outcome="rejected"),
    Case("json-not-an-object", {"status": 400, "body": b"[1, 2, 3]"}, 0, "HTTP 400",
         outcome="rejected"),
    Case("non-utf8-body", {"status": 402, "type": "text/plain", "body": b"no \xff\xfe way"}, 0,
         "HTTP 402: no", outcome="rejected"),
    Case("html-error-page", {"status": 503, "type": "text/html",
                             "body": b"<html><h1>Bad gateway</h1></html>"}, 0, "HTTP 503",
         outcome="retry"),
    Case("huge-body", {"status": 402, "type": "text/plain", "body": b"x" * 2_000_000}, 0,
         "HTTP 402: xxx", outcome="rejected"),
    Case("long-reason-cut", {"status": 402, "body": b'{"reason": "' + b"y" * 1000 + b'"}'}, 0,
         "…", outcome="rejected"),
    Case("approve-with-garbage-body", {"status": 200, "type": "application/json",
                                       "body": b"\x00\x01not json"}, 0, "HTTP 200",
         outcome="validated", cli=True),
    Case("approve-empty-body", {"status": 204, "body": b""}, 0, "HTTP 204",
         outcome="validated"),
    Case("redirect-not-followed", {"status": 307, "headers": {"Location": "http://127.0.0.1:9/"},
                                   "body": b""}, 0, "HTTP 307", outcome="retry"),
    Case("too-slow", {"status": 200, "delay_s": 3.0, "body": b"{}"}, 0, "timeout after",
         outcome="retry", cli=True),
    Case("hangs-up-without-answer", {"mode": "close"}, 0, "disconnected", outcome="retry"),
    Case("not-http-at-all", {"mode": "garbage"}, 0, "", outcome="retry"),
]
# fmt: on


# ---------------------------------------------------------------------------
# RPC: DB2's commit RPC raises this SQLSTATE for one payload. Whatever the
# classification (the payload's own error, or DB2 unavailable), the stable
# outcome: `drain --once` exits 0 and the intent is not committed.

RPC: list[Case] = [
    Case(f"sqlstate-{code}", code, 0, f"corpus {code}", outcome="not committed")
    for code in ("57014", "40001", "23505", "22023", "P0001", "42501", "XX000")
]


# ---------------------------------------------------------------------------
# The faces' edges (issue 21), one list per owner; each joins CONFIG or CLI.

# fmt: off
RENDER_CLI: list[Case] = [
    # `intake render --out`: a path that cannot be intake's output directory is
    # refused with exit 2 before anything is written (engine/render.py).
    Case("render-out-empty", ["render", "--target", "supabase", "--out", ""], USAGE,
         "--out '': empty; name a directory", cli=True),
    Case("render-out-blank", ["render", "--target", "supabase", "--out", "   "], USAGE,
         "': only whitespace; name a directory"),
    Case("render-out-newline", ["render", "--target", "supabase", "--out", "\n"], USAGE,
         "only whitespace"),
    Case("render-out-nul", ["render", "--target", "supabase", "--out", "{dir}/out\x00"], USAGE,
         "contains a NUL character"),
    Case("render-out-nul-only", ["render", "--target", "supabase", "--out", "\x00"], USAGE,
         "contains a NUL character"),
    Case("render-out-is-a-file", ["render", "--target", "supabase", "--out", "{dir}/intake.yaml"],
         USAGE, "intake.yaml: exists and is not a directory"),
    Case("render-out-is-a-file-forced", ["render", "--target", "supabase", "--force",
                                         "--out", "{dir}/intake.yaml"], USAGE,
         "intake.yaml: exists and is not a directory"),
    Case("render-out-under-a-file", ["render", "--target", "supabase", "--drain-tick", "--force",
                                     "--out", "{dir}/intake.yaml/out"], USAGE,
         "intake.yaml/out: cannot write there: Not a directory", cli=True),
    Case("render-out-dotdot-under-a-file", ["render", "--target", "supabase",
                                            "--out", "{dir}/intake.yaml/.."], USAGE,
         "Not a directory"),
    Case("render-out-parent-missing", ["render", "--target", "supabase",
                                       "--out", "{dir}/missing/out"], USAGE,
         "missing does not exist; create it first"),
    Case("render-out-proc-child", ["render", "--target", "supabase", "--out", "/proc/intake"],
         USAGE, "--out /proc/intake:"),
    Case("render-out-proc", ["render", "--target", "supabase", "--force", "--out", "/proc"],
         USAGE, "--out /proc:"),
    Case("render-out-proc-sys", ["render", "--target", "supabase", "--out", "/proc/sys/intake"],
         USAGE, "--out /proc/sys/intake:"),
    Case("render-out-proc-file", ["render", "--target", "supabase", "--out", "/proc/version"],
         USAGE, "--out /proc/version: exists and is not a directory"),
    Case("render-out-device", ["render", "--target", "supabase", "--force", "--out", "/dev/null"],
         USAGE, "--out /dev/null: exists and is not a directory"),
    Case("render-out-under-a-device", ["render", "--target", "supabase",
                                       "--out", "/dev/null/out"], USAGE, "Not a directory"),
    Case("render-out-symlink", ["render", "--target", "supabase", "--force",
                                "--out", "/proc/self"], USAGE,
         "--out /proc/self: is a symbolic link"),
    Case("render-out-name-too-long", ["render", "--target", "supabase",
                                      "--out", "{dir}/" + "x" * 300], USAGE,
         "File name too long"),
    Case("render-out-path-too-long", ["render", "--target", "supabase",
                                      "--out", "{dir}/" + "d/" * 2100], USAGE,
         "File name too long"),
]
GATEWAY_CONFIG: list[Case] = [
    # The buyers' signing keys: https, or plain http from this host only
    # (localhost, 127.0.0.0/8, [::1]); judged after ${NAME} is filled in.
    *(
        Case(f"gateway-jwks-{name}", top(gateway={"jwks_url": url}), USAGE, fragment,
             absent=(SECRET,) if SECRET in url else (), env=env,
             cli=name == "plain-http")
        for name, url, fragment, env in (
            ("plain-http", "http://203.0.113.10/auth/v1/.well-known/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {}),
            ("upper-case-http", "HTTP://203.0.113.10/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {}),
            ("localhost-lookalike", "http://localhost.evil.example/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {}),
            ("loopback-in-dns-name", "http://127.0.0.1.nip.io/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {}),
            ("v4-mapped-loopback", "http://[::ffff:7f00:1]/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {}),
            ("any-address", "http://0.0.0.0:8000/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {}),
            ("decimal-address", "http://2130706433/jwks.json", "is not an IPv4 address", {}),
            ("userinfo-loopback", "http://127.0.0.1@evil.example/jwks.json",
             "may not carry credentials", {}),
            ("credentials", f"https://svc:{SECRET}@auth.example/jwks.json",
             "may not carry credentials", {}),
            ("file-scheme", "file:///etc/jwks.json", "expected an http:// or https:// URL", {}),
            ("interpolated-plain-http", "${AUTH_URL}/auth/v1/.well-known/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {"AUTH_URL": "http://203.0.113.10"}),
            ("default-plain-http", "${CORPUS_UNSET_AUTH_URL:-http://auth.example}/jwks.json",
             "gateway.jwks_url: must be an https:// URL", {"CORPUS_UNSET_AUTH_URL": None}),
        )
    ),
]
GATEWAY_CLI: list[Case] = [
    # A weak INTAKE_JWT_SECRET stops `intake gateway` before DB1 is looked up
    # or a port bound (the scratch config has no event up: exit 5 would mean
    # it got that far), and the secret is never printed back.
    *(
        Case(f"gateway-jwt-secret-{name}", ["gateway"], USAGE, fragment,
             absent=(secret,) if secret.strip() else (), env={"INTAKE_JWT_SECRET": secret},
             cli=name in ("1-byte", "supabase-example"))
        for name, secret, fragment in (
            ("1-byte", "Z", "it is 1 byte long; at least 32 are required"),
            ("31-bytes", "Kq8vN3xW7pL2mR9tY4bH6cJ1fD5gS0a", "it is 31 bytes long"),
            ("27-bytes-in-9-characters", "日本語の秘密鍵です", "it is 27 bytes long"),
            ("one-character-repeated", "a" * 64, "it repeats a shorter value"),
            ("word-repeated", "abc" * 20, "it repeats a shorter value"),
            ("random-half-repeated", "Kq8vN3xW7pL2mR9t" * 2, "it repeats a shorter value"),
            ("supabase-example", "super-secret-jwt-token-with-at-least-32-characters-long",
             "it is a published example value"),
            ("zeros-and-a-one", "0" * 40 + "1", "half of it or more is one piece repeated"),
            ("two-characters", "101000100001100010000100001100100010000111111100",
             "too few different characters to be random"),
            ("16-distinct-characters", "日本語の秘密鍵です一二三四五六七",
             "too few different characters to be random"),
            ("empty", "", "INTAKE_JWT_SECRET is set but empty"),
            ("blanks", " " * 40, "INTAKE_JWT_SECRET is set but empty"),
        )
    ),
    Case("gateway-jwt-secret-weak-with-workers", ["gateway", "--workers", "4", "--port", "18081"],
         USAGE, "INTAKE_JWT_SECRET is too weak", absent=("Kq8vN3xW7pL2mR9t",),
         env={"INTAKE_JWT_SECRET": "Kq8vN3xW7pL2mR9t" * 2}, cli=True),
    Case("gateway-jwt-secret-missing", ["gateway"], USAGE, "INTAKE_JWT_SECRET",
         env={"INTAKE_JWT_SECRET": None}),
]
DLQ_CLI: list[Case] = [
    # A dead letter id is a pgmq message id (bigint, from 1): anything else is
    # refused before DB1 is asked (faces/cli/dead_letters.py).
    Case("dlq-show-id-zero", ["dlq", "show", "0"], USAGE,
         "Input should be greater than or equal to 1"),
    Case("dlq-show-id-past-bigint", ["dlq", "show", "9223372036854775808"], USAGE,
         "less than or equal to 9223372036854775807", cli=True),
    Case("dlq-show-id-23-digits", ["dlq", "show", "9" * 23], USAGE,
         "less than or equal to 9223372036854775807"),
    Case("dlq-show-id-word", ["dlq", "show", "many"], USAGE, "valid integer"),
    Case("dlq-show-id-fraction", ["dlq", "show", "1.5"], USAGE, "valid integer"),
    Case("dlq-show-id-arabic-digit", ["dlq", "show", "\u0663"], USAGE, "valid integer"),
    Case("dlq-replay-id-zero", ["dlq", "replay", "0"], USAGE,
         "Input should be greater than or equal to 1"),
    Case("dlq-replay-one-id-past-bigint", ["dlq", "replay", "7", "9" * 20], USAGE,
         "less than or equal to 9223372036854775807"),
    Case("dlq-replay-ids-and-all", ["dlq", "replay", "7", "--all"], USAGE,
         "name dead letter ids to replay, or pass --all (not both)"),
]
SERVE_CLI: list[Case] = [
    Case("serve-admin-token-one-byte", ["serve"], USAGE,
         "INTAKE_ADMIN_TOKEN is too weak to be a secret: it is 1 byte long",
         env={"INTAKE_ADMIN_TOKEN": "a"}, cli=True),
    Case("serve-admin-token-31-bytes", ["serve"], USAGE, "it is 31 bytes long",
         absent=("Kq3v9XzP0mW7tR2yB5nL8cJ4hF6dG1s",),
         env={"INTAKE_ADMIN_TOKEN": "Kq3v9XzP0mW7tR2yB5nL8cJ4hF6dG1s"}),
    Case("serve-admin-token-hunter2", ["serve"], USAGE, "openssl rand -hex 32",
         absent=(SECRET,), env={"INTAKE_ADMIN_TOKEN": SECRET}),
    Case("serve-admin-token-repeated-word", ["serve"], USAGE, "it repeats a shorter value",
         absent=("passwordpassword",), env={"INTAKE_ADMIN_TOKEN": "password" * 5}),
    Case("serve-admin-token-one-character", ["serve"], USAGE, "it repeats a shorter value",
         env={"INTAKE_ADMIN_TOKEN": "x" * 64}),
    Case("serve-admin-token-few-characters", ["serve"], USAGE,
         "too few different characters",
         env={"INTAKE_ADMIN_TOKEN": "aabbbbbaabababbaabbbbbaabbaabbbbbabbaabaabaabbba"}),
    Case("serve-admin-token-half-a-word-repeated", ["serve"], USAGE,
         "half of it or more is one piece repeated",
         env={"INTAKE_ADMIN_TOKEN": "passwordpasswordpassword12345678"}),
    Case("serve-admin-token-alphabet", ["serve"], USAGE, "a run like abcd or 1234",
         env={"INTAKE_ADMIN_TOKEN": "0123456789abcdefghijklmnopqrstuv"}),
    Case("serve-admin-token-published", ["serve"], USAGE, "a published example value",
         env={"INTAKE_ADMIN_TOKEN": "super-secret-jwt-token-with-at-least-32-characters-long"}),
    Case("serve-admin-token-blank", ["serve"], USAGE, "INTAKE_ADMIN_TOKEN is set but empty",
         env={"INTAKE_ADMIN_TOKEN": "   "}),
    Case("serve-admin-token-with-a-space", ["serve"], USAGE,
         "characters a bearer token cannot carry",
         absent=("9f8e7d6c5b4a",),
         env={"INTAKE_ADMIN_TOKEN": "9f8e7d6c5b4a 3f2e1d0c9b8a7f6e5d4c3b2a"}),
    Case("serve-admin-token-non-ascii", ["serve"], USAGE,
         "characters a bearer token cannot carry",
         env={"INTAKE_ADMIN_TOKEN": "é9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a"}),
    Case("serve-admin-token-weak-off-loopback", ["serve", "--host", "0.0.0.0"], USAGE,
         "INTAKE_ADMIN_TOKEN is too weak", env={"INTAKE_ADMIN_TOKEN": "a"}),
    Case("serve-off-loopback-without-token", ["serve", "--host", "0.0.0.0"], USAGE,
         "refusing to serve on 0.0.0.0 without INTAKE_ADMIN_TOKEN",
         env={"INTAKE_ADMIN_TOKEN": None}, cli=True),
    Case("serve-tick-token-weak", ["serve"], USAGE, "INTAKE_TICK_TOKEN is too weak",
         env={"INTAKE_ADMIN_TOKEN": None, "INTAKE_TICK_TOKEN": "tick"}),
    Case("serve-tick-token-blank", ["serve"], USAGE, "INTAKE_TICK_TOKEN is set but empty",
         env={"INTAKE_TICK_TOKEN": ""}),
    Case("serve-tick-token-same-as-admin", ["serve"], USAGE,
         "INTAKE_TICK_TOKEN must differ from INTAKE_ADMIN_TOKEN",
         absent=("c0ffee",),
         env={"INTAKE_ADMIN_TOKEN": "c0ffee5e1a9b7d3f2c8e4a6b0d9f1e3a7c5b",
              "INTAKE_TICK_TOKEN": "c0ffee5e1a9b7d3f2c8e4a6b0d9f1e3a7c5b"}),
    Case("serve-allowed-host-wildcard", ["serve", "--allowed-host", "*.example.com"], USAGE,
         "--allowed-host '*.example.com': expected a DNS name"),
    Case("serve-allowed-host-url", ["serve", "--allowed-host", "http://intake.example"],
         USAGE, "expected a DNS name"),
    Case("serve-allowed-host-with-port", ["serve", "--allowed-host", "intake.example:8080"],
         USAGE, "no port"),
    Case("serve-allowed-host-empty", ["serve", "--allowed-host", ""], USAGE,
         "expected a DNS name"),
    Case("serve-allowed-host-underscore", ["serve", "--allowed-host", "evil_host.example"],
         USAGE, "expected a DNS name"),
    Case("serve-tick-stale-after-nan", ["serve", "--tick-stale-after", "nan"], USAGE,
         "--tick-stale-after"),
    Case("serve-tick-stale-after-inf", ["serve", "--tick-stale-after", "inf"], USAGE,
         "--tick-stale-after"),
    Case("serve-tick-stale-after-zero", ["serve", "--tick-stale-after", "0"], USAGE,
         "--tick-stale-after"),
    Case("serve-tick-stale-after-negative", ["serve", "--tick-stale-after", "-5"], USAGE,
         "--tick-stale-after"),
    Case("serve-tick-stale-after-a-word", ["serve", "--tick-stale-after", "soon"], USAGE,
         "--tick-stale-after"),
    Case("serve-tick-stale-after-a-year", ["serve", "--tick-stale-after", "31536000"], USAGE,
         "--tick-stale-after"),
]
# DB1's failover (issue 22): {dir}'s config is embedded, without a standby.
FAILOVER_CLI: list[Case] = [
    Case("failover-how-unknown", ["failover", "--how", "gently"], USAGE,
         "--how: expected kill or immediate", cli=True),
    Case("failover-how-empty", ["failover", "--how", ""], USAGE, "--how: expected"),
    Case("failover-without-standby", ["failover"], USAGE,
         "intake failover needs a standby: set embedded.standby: true"),
    Case("failover-keep-data-without-standby", ["failover", "--keep-data", "--json"], USAGE,
         "needs a standby"),
]
# A pool's fair opening (issue 25).
OPENING_CLI: list[Case] = [
    Case("opening-verify-bad-pool-id", ["opening", "verify", "Drop Pool"], USAGE, "pool id",
         cli=True),
    Case("opening-verify-empty-pool-id", ["opening", "verify", ""], USAGE, "pool id"),
    Case("opening-open-control-characters", ["opening", "open", "drop\x1b[2J"], USAGE,
         "pool id", absent=("\x1b[2J",)),
    Case("opening-verify-no-pool", ["opening", "verify"], USAGE, "Missing argument"),
]
# fmt: on
CONFIG += GATEWAY_CONFIG
CLI += [*RENDER_CLI, *GATEWAY_CLI, *DLQ_CLI, *SERVE_CLI, *FAILOVER_CLI, *OPENING_CLI]

ALL = [*CONFIG, *CLI, *WEBHOOK_STATUSES, *WEBHOOK_BODIES, *RPC]
