"""intake.yaml → typed settings.

Validation collects every problem with the path of the field it concerns
(`pools[0].batch_size: expected an integer from 1 to 10000, got "ten"`), so an
operator fixes the file in one pass. Nothing is applied to any database until
the whole file is valid.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import psycopg
import yaml

from intake_cli.platform import inventory, signing
from intake_cli.platform.errors import ConfigError, UsageError

DEFAULT_CONFIG = "intake.yaml"

# Pool ids end up in queue payloads, metric labels and log lines; a strict
# pattern keeps them printable and makes quoting mistakes impossible.
POOL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# pgmq turns the queue name into table names (q_<name>, a_<name>) and caps
# its length; the DLQ adds a suffix, hence the shorter bound.
QUEUE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# schema.function, both plain lower-case identifiers: anything else (quotes,
# parentheses, semicolons) is refused before it can get near SQL text.
RPC_NAME_PATTERN = re.compile(r"^(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

MAX_INVENTORY = 50_000_000

# What reading intake.yaml may cost. A real file is a few kB and a few levels
# deep; these bounds are far above any of them, and far below what would
# exhaust memory or the stack ("billion laughs", 60,000 nested brackets).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32
# Counted with every alias expanded: what the document would be written out.
MAX_CONFIG_NODES = 100_000


@dataclass(frozen=True)
class DatabaseSettings:
    """Where a database lives. Neither a DSN nor pgenv means: the embedded cluster."""

    dsn: str | None = None
    pgenv: bool = False
    # DB2 only: install the example ledger when the commit RPC is missing.
    # Unset means: yes for the embedded cluster, no for a configured server.
    install_example_ledger: bool | None = None
    # DB2 only: DB2 cancels a commit statement that runs longer (a slow RPC
    # must not hold its batch, or the worker, indefinitely).
    commit_timeout_seconds: float = 10.0
    # DB2 only: the ledger's view (or function) of what it sold,
    # rows (idempotency_key, resource_id, pool_id), that `intake audit` reads.
    # intake never reads DB2's tables on its own: the operator names this.
    # Unset: the example ledger's public.tickets, where that ledger is in use.
    sold_query: str | None = None
    # DB1 only: which of DB1's standbys the drain waits for before a commit
    # goes to DB2 (engine/fence.py): all | synchronous | off.
    replication_fence: str = "all"

    @property
    def embedded(self) -> bool:
        return self.dsn is None and not self.pgenv

    @property
    def installs_example_ledger(self) -> bool:
        return self.embedded if self.install_example_ledger is None else self.install_example_ledger


@dataclass(frozen=True)
class EmbeddedSettings:
    max_connections: int = 300
    shared_buffers: str = "256MB"
    # Durable by default: a claim that answered "claimed" must survive a crash
    # of the server process. Benchmarks and tests may turn it off explicitly.
    synchronous_commit: bool = True
    # Advisory locks held until commit use the shared lock table, sized
    # max_locks_per_transaction x max_connections: a benchmark with many
    # clients claiming in batches needs more than the default.
    max_locks_per_transaction: int = 64
    # A synchronous streaming standby of DB1 on this machine, to try failover
    # before trusting it: a commit returns once the standby has flushed it.
    standby: bool = False


@dataclass(frozen=True)
class PoolSettings:
    pool_id: str
    inventory: int
    validation_webhook_url: str
    commit_rpc_name: str = "public.finalize_transaction"
    per_user_limit: int = 1
    batch_size: int = 100
    visibility_timeout: int = 45
    max_retries: int = 10
    commit_rate_per_sec: int = 0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    webhook_secret: str | None = field(default=None, repr=False)
    # A fair opening (intake gateway): claims before this instant wait and are
    # admitted in a random order at it; admit_per_second meters that (0: at once).
    opens_at: datetime | None = None
    admit_per_second: int = 0
    # The operator's own unit ids, one per unit in order; None: intake numbers
    # the units itself. Absolute. Only counted here (every command loads the
    # config); `inventory.read_ids` checks every line when `intake up` seeds.
    inventory_file: Path | None = None


# The buyers' door (`intake gateway`). The JWT secret is never here: it is
# read from INTAKE_JWT_SECRET; a JWKS URL is public and may be configured.
@dataclass(frozen=True)
class GatewaySettings:
    jwt_audience: str = "authenticated"
    jwks_url: str | None = None
    # Micro-batching: at most this many buyers per claim_resources call, and
    # at most this long (ms) for a batch to fill once its first buyer arrives.
    max_batch: int = 100
    max_wait_ms: float = 2.0
    # Token buckets, requests per second with a burst allowance.
    per_ip_rate: float = 50.0
    per_ip_burst: int = 100
    per_buyer_rate: float = 5.0
    per_buyer_burst: int = 10
    max_body_bytes: int = 4096
    # A client that has not sent its whole request in this long is dropped.
    client_timeout_s: float = 10.0


@dataclass(frozen=True)
class Settings:
    path: Path
    state_dir: Path
    queue_name: str
    db1: DatabaseSettings
    db2: DatabaseSettings
    embedded: EmbeddedSettings
    pools: tuple[PoolSettings, ...]
    # Optional HTTP log drain: the worker's JSON lines, batched, never blocking.
    log_drain_url: str | None = None
    log_drain_buffer: int = 10_000
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    @property
    def dlq_name(self) -> str:
        return f"{self.queue_name}_dlq"

    def pool(self, pool_id: str) -> PoolSettings | None:
        return next((p for p in self.pools if p.pool_id == pool_id), None)


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(f"{path}: {reason}")


# A password after `password=` / `sslpassword=` (libpq, or a URL's query),
# and a URL's user:password@ part.
_KEYWORD_SECRET = re.compile(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
SHOWN_CHARS = 120


def redact(text: str) -> str:
    """`text` with anything that may be a credential replaced by ***, for messages."""
    return _URL_USERINFO.sub(r"\1***@", _KEYWORD_SECRET.sub(r"\1***", text))


def _show(value: Any) -> str:
    """A value as an error message quotes it: short, and never a credential."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        text = f'"{redact(value)}"'
    else:
        try:
            text = redact(repr(value))
        except ValueError:  # an int too long to write in decimal
            return f"an integer of {value.bit_length():,} bits"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _integer(problems: _Problems, path: str, value: Any, low: int, high: int) -> int | None:
    # YAML booleans are ints in Python; "true" is never a batch size.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.add(path, f"expected an integer from {low} to {high}, got {_show(value)}")
        return None
    return value


def _seconds(problems: _Problems, path: str, value: Any, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
        problems.add(
            path, f"expected a number of seconds above 0 and at most {high:g}, got {_show(value)}"
        )
        return None
    return float(value)


def _string(problems: _Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        problems.add(path, f"expected a non-empty string, got {_show(value)}")
        return None
    return value


def _mapping(problems: _Problems, path: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {_show(value)}")
        return {}
    for key in value:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            problems.add(f"{path}.{key}" if path else str(key), f"unknown key (known: {hint})")
    return value


def _interpolate(problems: _Problems, path: str, value: Any) -> Any:
    """Replace ${NAME} and ${NAME:-default} from the environment."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.add(path, f"environment variable {name} is not set")
        return ""

    return ENV_REFERENCE.sub(substitute, value)


_FROM_ENVIRONMENT = "write ${VARIABLE_NAME} and export the secret in that variable"


def _secret(problems: _Problems, path: str, raw: Any) -> str | None:
    """A webhook signing secret: `${NAME}` (required) or `${NAME:-}` (optional), nothing else.

    A non-empty default would be a secret written in the file; so would a
    literal that merely looks like a reference (`$hunter2`).
    """
    if raw is None:
        return None
    match = ENV_REFERENCE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        problems.add(path, f"secrets are read from the environment: {_FROM_ENVIRONMENT}")
        return None
    name, default = match.groups()
    if default:
        problems.add(
            path,
            f"a secret takes no default (${{{name}:-…}} writes it in the file): "
            + _FROM_ENVIRONMENT,
        )
        return None
    value = os.environ.get(name)
    if value is None and default is None:
        problems.add(path, f"environment variable {name} is not set")
        return None
    if not value:
        if default is None:
            # ${NAME} says "required": an empty one would silently stop signing.
            problems.add(
                path,
                f"environment variable {name} is empty: export the secret, or write "
                f"${{{name}:-}} to send unsigned calls when it is unset or empty",
            )
        return None
    try:
        signing.check_secret(value)
    except ValueError as exc:
        # Every signed call would fail: refused now, never quoted.
        problems.add(path, f"the secret in {name} cannot sign: {exc}")
        return None
    return value


# A DNS name (underscores too: container service names have them), one label
# at a time; IP literals are checked by the ipaddress module.
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NOT_IN_URLS = re.compile(r"[\x00-\x20\x7f-\xa0\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000]")


def _host_problem(host: str, bracketed: bool) -> str | None:
    if bracketed:
        try:
            ipaddress.IPv6Address(unquote(host))
        except ValueError:
            return "is not an IPv6 address"
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return "is not a valid host name"
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return "is not a valid host name"
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(ascii_host.removesuffix("."))
        except ValueError:
            return "is not an IPv4 address"
    return None


def check_url(text: str) -> str | None:
    """The reason an http(s) URL cannot be used, or None. The reason never quotes credentials.

    Checked here, once, rather than found when every call to it fails: a host
    with a space in it, a bracket left open, a port out of range. A URL may not
    carry credentials (user:password@): it is stored in DB1 and shown by
    `config set`, logs and errors; a webhook proves who calls it with
    webhook_secret instead.
    """
    if _NOT_IN_URLS.search(text):
        return "has a space or a control character in it (write a space as %20)"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({str(exc)[0].lower()}{str(exc)[1:]})"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return "expected an http:// or https:// URL"
    if "@" in parts.netloc:
        return (
            "may not carry credentials (user:password@): intake stores and shows URLs "
            "in clear (a webhook checks intake's calls by their webhook_secret signature)"
        )
    host = parts.hostname
    if not host:
        return "has no host"
    if (why := _host_problem(host, parts.netloc.startswith("["))) is not None:
        return f"host {_show(host)} {why}"
    if port == 0:
        return "port 0 cannot be connected to"
    return None


def _webhook_url(problems: _Problems, path: str, value: Any) -> str | None:
    text = _string(problems, path, value)
    if text is None:
        return None
    if (reason := check_url(text)) is not None:
        problems.add(path, f"{reason}, got {_show(text)}")
        return None
    return text


def check_rpc_name(value: str) -> str | None:
    """The reason a commit RPC name is unsafe, or None when it is fine."""
    if not RPC_NAME_PATTERN.fullmatch(value):
        return (
            "expected [schema.]function in lower-case letters, digits and underscores, "
            f"got {_show(value)}"
        )
    return None


def check_pool_id(value: str) -> str | None:
    if not POOL_ID_PATTERN.fullmatch(value):
        return (
            "expected 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter "
            f"or digit, got {_show(value)}"
        )
    return None


# Bytes of an argument that were not UTF-8 arrive as these (surrogateescape).
_UNDECODED = re.compile(r"[\ud800-\udfff]")


def check_user_id(value: str) -> str | None:
    """The reason a buyer id cannot even be sent to DB1, or None.

    Only text that cannot be encoded is refused here; DB1's claim function
    judges the rest (length, control characters) and answers `invalid_user`.
    """
    if _UNDECODED.search(value):
        return "expected UTF-8 text (the argument holds bytes that are not)"
    return None


# libpq parameters whose value is a secret.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
# A ${NAME} reference while a DSN is read: "\x00<index>\x00" (NUL cannot be in a DSN).
_REF_MARK = re.compile("\x00([0-9]+)\x00")
_LIBPQ_SPACE = " \t\n\r\f\v"


def _keyword_secrets(text: str) -> list[tuple[int, int, str]] | None:
    """Spans of the password values in `key=value` conninfo, read as libpq reads it."""
    spans: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _LIBPQ_SPACE:
            i += 1
        if i >= n:
            return spans
        start = i
        while i < n and text[i] not in _LIBPQ_SPACE and text[i] != "=":
            i += 1
        key = text[start:i]
        while i < n and text[i] in _LIBPQ_SPACE:
            i += 1
        if _REF_MARK.fullmatch(key) and (i >= n or text[i] != "="):
            continue  # ${NAME} standing for whole key=value pairs (or the whole string)
        if not key or i >= n or text[i] != "=":
            return None
        i += 1
        while i < n and text[i] in _LIBPQ_SPACE:
            i += 1
        quoted = i < n and text[i] == "'"
        i += quoted
        begin = i
        while i < n and (text[i] != "'" if quoted else text[i] not in _LIBPQ_SPACE):
            i += 2 if text[i] == "\\" else 1
        if quoted and i >= n:
            return None  # the quote is never closed
        end = min(i, n)
        i += quoted
        if key in _SECRET_PARAMS:
            spans.append((begin, end, "quoted" if quoted else "bare"))


def _uri_secrets(text: str) -> list[tuple[int, int, str]]:
    """Spans of the password in a postgresql:// URI: user:PASSWORD@ and ?password=."""
    spans: list[tuple[int, int, str]] = []
    begin = text.index("://") + 3
    # As libpq: credentials end at the first "@" met before any "/".
    at = next((i for i in range(begin, len(text)) if text[i] in "@/"), len(text))
    if at < len(text) and text[at] == "@":
        colon = text.find(":", begin, at)
        if colon >= 0:
            spans.append((colon + 1, at, "url"))
    query = text.find("?", begin)
    if query >= 0:
        position = query + 1
        for part in text[query + 1 :].split("&"):
            key, equals, _ = part.partition("=")
            if equals and unquote(key) in _SECRET_PARAMS:
                spans.append((position + len(key) + 1, position + len(part), "url"))
            position += len(part) + 1
    return spans


def _conninfo_secrets(text: str) -> list[tuple[int, int, str]] | None:
    """Where a connection string's passwords are, as (start, end, how written); None: unreadable."""
    if text.startswith(("postgresql://", "postgres://")):
        return _uri_secrets(text)
    return _keyword_secrets(text)


def _holds_password(text: str) -> bool:
    spans = _conninfo_secrets(text)
    if spans is None:
        return redact(text) != text
    return any(start < end for start, end, _ in spans)


_DSN_PASSWORD_RULE = (
    "passwords are read from the environment only: write password=${VARIABLE} "
    "(user:${VARIABLE}@ in a URL), with no default, and export it; or use PGPASSWORD "
    "or ~/.pgpass"
)


def _dsn(problems: _Problems, path: str, raw: str) -> str:
    """The connection string with ${NAME} filled in, its passwords from the environment only.

    A password written in the file, one given as a default (`${PW:-hunter2}`),
    and a literal that merely looks like a reference (`$hunter2`) are all
    refused. A password taken from the environment is quoted for where it goes
    (libpq quoting, or percent-encoding in a URL), so no character in it can
    break the string apart, and no parse error can quote a piece of it.
    """
    if "\x00" in raw:
        problems.add(path, "holds a NUL character")
        return ""
    refs = list(ENV_REFERENCE.finditer(raw))
    numbers = iter(range(len(refs)))
    masked = ENV_REFERENCE.sub(lambda _: f"\x00{next(numbers)}\x00", raw)
    spans = _conninfo_secrets(masked)
    if spans is None:
        problems.add(
            path,
            "is not a libpq connection string (key=value pairs, values with spaces in "
            "'quotes'; or a postgresql:// URL)",
        )
        return ""
    before = len(problems.items)
    placed: dict[int, str] = {}
    for start, end, how in spans:
        reference = _REF_MARK.fullmatch(masked[start:end])
        if reference is None:
            if start < end:
                problems.add(path, f"holds a password written in the file: {_DSN_PASSWORD_RULE}")
            continue
        number = int(reference.group(1))
        name, default = refs[number].groups()
        if default:
            problems.add(
                path,
                f"a password takes no default (${{{name}:-…}} writes it in the file): "
                + _DSN_PASSWORD_RULE,
            )
        placed[number] = how
    for number, ref in enumerate(refs):
        name, default = ref.groups()
        if number not in placed and default and _holds_password(default):
            problems.add(
                path,
                f"the default of ${{{name}:-…}} holds a password: {_DSN_PASSWORD_RULE}",
            )
    if len(problems.items) > before:
        return ""

    def fill(mark: re.Match[str]) -> str:
        number = int(mark.group(1))
        name, default = refs[number].groups()
        value = os.environ.get(name, default)
        if value is None:
            problems.add(path, f"environment variable {name} is not set")
            return ""
        how = placed.get(number)
        if how == "url":
            return quote(value, safe="")
        if how in ("quoted", "bare"):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            return escaped if how == "quoted" else f"'{escaped}'"
        return value

    dsn = _REF_MARK.sub(fill, masked).strip()
    if len(problems.items) > before or not dsn:
        return dsn
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        if refs:
            # The environment's values may be in libpq's words: quote none of them.
            names = ", ".join(sorted({f"${{{r.group(1)}}}" for r in refs}))
            problems.add(path, f"is not a valid connection string once {names} is filled in")
        else:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problems.add(path, f"is not a valid connection string ({redact(detail)})")
    return dsn


def _database(
    problems: _Problems, path: str, raw: Any, *, ledger: bool = False
) -> DatabaseSettings:
    keys = (
        {"dsn", "pgenv", "install_example_ledger", "commit_timeout_seconds", "sold_query"}
        if ledger
        else {"dsn", "pgenv", "replication_fence"}
    )
    spec = _mapping(problems, path, raw, keys)
    fence = spec.get("replication_fence", DatabaseSettings.replication_fence)
    if fence not in REPLICATION_FENCES:
        problems.add(
            f"{path}.replication_fence",
            f"expected one of {', '.join(REPLICATION_FENCES)}, got {_show(fence)}",
        )
        fence = DatabaseSettings.replication_fence
    timeout = DatabaseSettings.commit_timeout_seconds
    if spec.get("commit_timeout_seconds") is not None:
        timeout = (
            _seconds(
                problems, f"{path}.commit_timeout_seconds", spec["commit_timeout_seconds"], 3600.0
            )
            or timeout
        )
    dsn_raw = spec.get("dsn")
    pgenv = spec.get("pgenv", False)
    if not isinstance(pgenv, bool):
        problems.add(f"{path}.pgenv", f"expected true or false, got {_show(pgenv)}")
        pgenv = False
    install = spec.get("install_example_ledger")
    if install is not None and not isinstance(install, bool):
        problems.add(
            f"{path}.install_example_ledger", f"expected true or false, got {_show(install)}"
        )
        install = None
    sold_query = None
    if spec.get("sold_query") is not None:
        # Checked like a commit RPC name: it reaches SQL only quoted by psycopg.sql.
        sold_query = _string(problems, f"{path}.sold_query", spec["sold_query"])
        if sold_query is not None and (reason := check_rpc_name(sold_query)):
            problems.add(f"{path}.sold_query", reason)
            sold_query = None
    if dsn_raw is None:
        return DatabaseSettings(
            pgenv=pgenv,
            install_example_ledger=install,
            commit_timeout_seconds=timeout,
            sold_query=sold_query,
            replication_fence=fence,
        )
    if not isinstance(dsn_raw, str):
        problems.add(f"{path}.dsn", f"expected a connection string, got {_show(dsn_raw)}")
        return DatabaseSettings()
    dsn = _dsn(problems, f"{path}.dsn", dsn_raw)
    if pgenv and dsn:
        problems.add(path, "set either dsn or pgenv, not both")
    # An empty DSN after interpolation (${DB1_DSN:-}) means "not configured".
    return DatabaseSettings(
        dsn=dsn or None,
        pgenv=pgenv,
        install_example_ledger=install,
        commit_timeout_seconds=timeout,
        sold_query=sold_query,
        replication_fence=fence,
    )


# What the drain's replication fence waits for (engine/fence.py, docs/failover.md).
REPLICATION_FENCES = ("all", "synchronous", "off")

INTEGER_BOUNDS = {
    "per_user_limit": (1, 1000),
    "batch_size": (1, 10_000),
    "visibility_timeout": (1, 43_200),
    "max_retries": (0, 1000),
    "commit_rate_per_sec": (0, 1_000_000),
}
SECONDS_BOUNDS = {"retry_base_seconds": 3600.0, "retry_max_seconds": 86400.0}
# What `intake config set` may change in a running event (inventory and
# secrets are not live settings).
LIVE_SETTINGS = (
    *INTEGER_BOUNDS,
    *SECONDS_BOUNDS,
    "validation_webhook_url",
    "commit_rpc_name",
)


# Numbers on the command line as a person writes them: int() and float() also
# take "١٢", "1_0", "nan", "inf" and 5,000 digits.
_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def check_retry_pair(base: float, ceiling: float) -> str | None:
    """Why a pool's backoff bounds do not fit together, or None."""
    if base > ceiling:
        return (
            f"retry_base_seconds ({base:g}) is above retry_max_seconds ({ceiling:g}): "
            "the first backoff step cannot be longer than the ceiling"
        )
    return None


def live_setting(key: str, text: str) -> Any:
    """Parse and check `key=text` from the command line by the file's own rules."""
    value: Any = text
    if key in INTEGER_BOUNDS and _PLAIN_INTEGER.fullmatch(text):
        value = int(text)
    elif key in SECONDS_BOUNDS and _PLAIN_DECIMAL.fullmatch(text):
        value = float(text)
    return live_value(key, value)


def live_value(key: str, value: Any) -> Any:
    """Check a typed live setting (the admin API's JSON, or a parsed argument) by the
    file's own rules: the same messages whichever face it came through."""
    problems = _Problems()
    checked: Any = None
    if key not in LIVE_SETTINGS:
        problems.add(key, f"not a live setting (live: {', '.join(sorted(LIVE_SETTINGS))})")
    elif key in INTEGER_BOUNDS:
        checked = _integer(problems, key, value, *INTEGER_BOUNDS[key])
    elif key in SECONDS_BOUNDS:
        checked = _seconds(problems, key, value, SECONDS_BOUNDS[key])
    elif key == "validation_webhook_url":
        checked = _webhook_url(problems, key, value)
    elif not isinstance(value, str):
        problems.add(key, f"expected a function name, got {_show(value)}")
    elif (reason := check_rpc_name(value)) is not None:
        problems.add(key, reason)
    else:
        checked = value
    if problems.items:
        raise ConfigError(problems.items)
    return checked


_POOL_KEYS = {
    "pool_id",
    "inventory",
    "validation_webhook_url",
    "commit_rpc_name",
    "per_user_limit",
    "batch_size",
    "visibility_timeout",
    "max_retries",
    "commit_rate_per_sec",
    "retry_base_seconds",
    "retry_max_seconds",
    "webhook_secret",
    "opens_at",
    "admit_per_second",
    "inventory_file",
}


def _path_text(problems: _Problems, path: str, value: Any) -> str | None:
    """A file or directory name: a non-empty string the operating system can take."""
    text = _string(problems, path, value)
    if text is not None and "\x00" in text:
        problems.add(path, "a path cannot hold a NUL character")
        return None
    if text is not None and len(os.fsencode(text)) > 4096:
        problems.add(path, "a path cannot be longer than 4096 bytes")
        return None
    return text


def _inventory_file(
    problems: _Problems, path: str, raw: Any, base: Path
) -> tuple[Path | None, int | None]:
    """The resolved file and its id count, from cheap checks only."""
    text = _path_text(problems, path, _interpolate(problems, path, raw))
    if text is None:
        return None, None
    # Relative to the config file, not the working directory: the same
    # intake.yaml must name the same file whichever directory intake runs in.
    file = (base / text).resolve()
    try:
        # stat before open: opening a FIFO or a device could block or never end.
        if not stat.S_ISREG(file.stat().st_mode):
            problems.add(path, f"not a regular file: {file}")
            return None, None
        count = inventory.count_ids(file)
    except FileNotFoundError:
        problems.add(path, f"file not found: {file}")
        return None, None
    except OSError as exc:
        problems.add(path, f"cannot read {file}: {exc.strerror}")
        return None, None
    if count == 0:
        problems.add(path, f"{file} lists no ids")
        return None, None
    if count > MAX_INVENTORY:
        problems.add(
            path, f"{file} lists {count:,} ids, more than a pool may hold ({MAX_INVENTORY:,})"
        )
        return None, None
    return file, count


def _instant(problems: _Problems, path: str, value: Any) -> datetime | None:
    """A moment with its time zone: YAML's own timestamp, or ISO 8601 text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime) or value.tzinfo is None:
        problems.add(path, "expected a date and time with its zone, like 2030-05-01T10:00:00Z")
        return None
    return value


def _pool(problems: _Problems, path: str, raw: Any, base: Path) -> PoolSettings | None:
    if not isinstance(raw, dict):
        problems.add(path, f"expected a mapping, got {_show(raw)}")
        return None
    _mapping(problems, path, raw, _POOL_KEYS)
    before = len(problems.items)
    values: dict[str, Any] = {}

    pool_id = _string(problems, f"{path}.pool_id", raw.get("pool_id"))
    if pool_id is not None and (reason := check_pool_id(pool_id)):
        problems.add(f"{path}.pool_id", reason)
    values["pool_id"] = pool_id
    file, listed = None, None
    if "inventory_file" in raw:
        file, listed = _inventory_file(
            problems, f"{path}.inventory_file", raw["inventory_file"], base
        )
        values["inventory_file"] = file
    if "inventory" in raw:
        declared = _integer(problems, f"{path}.inventory", raw["inventory"], 1, MAX_INVENTORY)
        values["inventory"] = declared
        if declared is not None and listed is not None and declared != listed:
            problems.add(
                f"{path}.inventory",
                f"{declared:,} does not match {file}, which lists {listed:,} ids"
                + (
                    f" (line {declared + 1 + inventory.is_csv(file)} is past the declared"
                    " inventory)"
                    if listed > declared
                    else ""
                )
                + " (leave inventory out to take the file's count)",
            )
    elif "inventory_file" in raw:
        values["inventory"] = listed
    else:
        problems.add(
            f"{path}.inventory",
            "required: the number of units to seed, or an inventory_file listing their ids",
        )
    values["validation_webhook_url"] = _webhook_url(
        problems,
        f"{path}.validation_webhook_url",
        _interpolate(problems, f"{path}.validation_webhook_url", raw.get("validation_webhook_url")),
    )
    if "commit_rpc_name" in raw:
        rpc = _string(problems, f"{path}.commit_rpc_name", raw["commit_rpc_name"])
        if rpc is not None and (reason := check_rpc_name(rpc)):
            problems.add(f"{path}.commit_rpc_name", reason)
        values["commit_rpc_name"] = rpc
    for key, (low, high) in INTEGER_BOUNDS.items():
        if key in raw:
            values[key] = _integer(problems, f"{path}.{key}", raw[key], low, high)
    for key, high in SECONDS_BOUNDS.items():
        if key in raw:
            values[key] = _seconds(problems, f"{path}.{key}", raw[key], high)
    if raw.get("opens_at") is not None:
        values["opens_at"] = _instant(problems, f"{path}.opens_at", raw["opens_at"])
    if "admit_per_second" in raw:
        values["admit_per_second"] = _integer(
            problems, f"{path}.admit_per_second", raw["admit_per_second"], 0, 1_000_000
        )
    values["webhook_secret"] = _secret(
        problems, f"{path}.webhook_secret", raw.get("webhook_secret")
    )
    if len(problems.items) > before:
        return None
    pool = PoolSettings(**values)
    if reason := check_retry_pair(pool.retry_base_seconds, pool.retry_max_seconds):
        problems.add(path, reason)
        return None
    return pool


_TOP_KEYS = {
    "event",
    "state_dir",
    "queue_name",
    "db1",
    "db2",
    "embedded",
    "pools",
    "log_drain_url",
    "log_drain_buffer",
    "gateway",
}

_GATEWAY_INTEGERS = {
    "max_batch": (1, 1000),
    "per_ip_burst": (1, 1_000_000),
    "per_buyer_burst": (1, 1_000_000),
    "max_body_bytes": (64, 1 << 20),
}
_GATEWAY_NUMBERS = {
    "max_wait_ms": 1000.0,
    "per_ip_rate": 1_000_000.0,
    "per_buyer_rate": 1_000_000.0,
    "client_timeout_s": 3600.0,
}


def check_jwks_url(text: str) -> str | None:
    """The reason `text` cannot be where the buyers' signing keys come from, or None.

    Whoever can alter the traffic of a plain-HTTP fetch can put their own key
    in the set and sign as any buyer, so keys come over https. Plain http is
    left to a key server on the gateway's own host, named only in the forms
    that cannot mean another one: `localhost`, an address in 127.0.0.0/8, or
    [::1]. Names that merely start like one (localhost.evil.example,
    127.0.0.1.nip.io) are resolved by DNS, and other spellings of loopback
    (0.0.0.0, [::ffff:127.0.0.1]) are refused rather than reasoned about.
    """
    if (reason := check_url(text)) is not None:
        return reason
    parts = urlsplit(text)
    if parts.scheme.lower() == "https" or _is_loopback_host(parts.hostname or ""):
        return None
    return (
        "must be an https:// URL (over plain http whoever can alter the traffic can "
        "replace the keys and sign as any buyer); http:// is accepted only for "
        "localhost, 127.0.0.0/8 or [::1]"
    )


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(unquote(host))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_loopback
    return address == ipaddress.IPv6Address("::1")


def _jwks_url(problems: _Problems, path: str, value: Any) -> str | None:
    text = _string(problems, path, value)
    if text is None:
        return None
    if (reason := check_jwks_url(text)) is not None:
        problems.add(path, f"{reason}, got {_show(text)}")
        return None
    return text


def _gateway(problems: _Problems, raw: Any) -> GatewaySettings:
    allowed = {"jwt_audience", "jwks_url", *_GATEWAY_INTEGERS, *_GATEWAY_NUMBERS}
    data = _mapping(problems, "gateway", raw, allowed)
    values: dict[str, Any] = {}
    if "jwt_audience" in data:
        values["jwt_audience"] = _string(problems, "gateway.jwt_audience", data["jwt_audience"])
    if data.get("jwks_url") is not None:
        # Checked after ${NAME} is filled in: the URL actually fetched is the one judged.
        values["jwks_url"] = _jwks_url(
            problems,
            "gateway.jwks_url",
            _interpolate(problems, "gateway.jwks_url", data["jwks_url"]),
        )
    for key, (low, high) in _GATEWAY_INTEGERS.items():
        if key in data:
            values[key] = _integer(problems, f"gateway.{key}", data[key], low, high)
    for key, high in _GATEWAY_NUMBERS.items():
        if key in data:
            number = data[key]
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not (0 < number <= high)
            ):
                problems.add(
                    f"gateway.{key}",
                    f"expected a number above 0 and at most {high:g}, got {_show(number)}",
                )
                values[key] = None
            else:
                values[key] = float(number)
    if any(value is None for value in values.values()):
        return GatewaySettings()
    return GatewaySettings(**values)


def parse(data: Any, path: Path) -> Settings:
    """Validate an already-parsed YAML document."""
    problems = _Problems()
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {_show(data)}", str(path))
    _mapping(problems, "", data, _TOP_KEYS)

    state_dir_raw = data.get("state_dir", ".intake")
    state_dir = _path_text(
        problems, "state_dir", _interpolate(problems, "state_dir", state_dir_raw)
    )
    queue_name = data.get("queue_name", "intents")
    if not isinstance(queue_name, str) or not QUEUE_NAME_PATTERN.fullmatch(queue_name):
        problems.add(
            "queue_name",
            "expected 1-40 characters of a-z, 0-9 or '_', starting with a letter, "
            f"got {_show(queue_name)}",
        )

    drain_url = None
    if data.get("log_drain_url") is not None:
        drain_url = _webhook_url(
            problems,
            "log_drain_url",
            _interpolate(problems, "log_drain_url", data["log_drain_url"]),
        )
    drain_buffer = _integer(
        problems, "log_drain_buffer", data.get("log_drain_buffer", 10_000), 10, 1_000_000
    )
    db1 = _database(problems, "db1", data.get("db1"))
    db2 = _database(problems, "db2", data.get("db2"), ledger=True)
    gateway = _gateway(problems, data.get("gateway"))

    emb = _mapping(
        problems,
        "embedded",
        data.get("embedded"),
        {"max_connections", "shared_buffers", "synchronous_commit", "standby"},
    )
    embedded_values: dict[str, Any] = {}
    if "max_connections" in emb:
        embedded_values["max_connections"] = _integer(
            problems, "embedded.max_connections", emb["max_connections"], 20, 5000
        )
    if "shared_buffers" in emb:
        sb = emb["shared_buffers"]
        if not isinstance(sb, str) or not re.fullmatch(r"\d{1,6}(kB|MB|GB)", sb):
            problems.add("embedded.shared_buffers", f"expected a size like 256MB, got {_show(sb)}")
        embedded_values["shared_buffers"] = sb
    if "synchronous_commit" in emb:
        sc = emb["synchronous_commit"]
        if not isinstance(sc, bool):
            problems.add("embedded.synchronous_commit", f"expected true or false, got {_show(sc)}")
        embedded_values["synchronous_commit"] = sc
    if "standby" in emb:
        standby = emb["standby"]
        if not isinstance(standby, bool):
            problems.add("embedded.standby", f"expected true or false, got {_show(standby)}")
        elif standby and emb.get("synchronous_commit") is False:
            # The standby is there so that nothing acknowledged is lost with
            # DB1's host: commits must wait for it.
            problems.add(
                "embedded.standby",
                "a synchronous standby needs synchronous_commit: remove "
                "embedded.synchronous_commit: false or the standby",
            )
        embedded_values["standby"] = standby

    pools_raw = data.get("pools")
    pools: list[PoolSettings] = []
    if not isinstance(pools_raw, list) or not pools_raw:
        problems.add("pools", f"expected a list with at least one pool, got {_show(pools_raw)}")
    else:
        seen: set[str] = set()
        for index, raw in enumerate(pools_raw):
            pool = _pool(problems, f"pools[{index}]", raw, path.parent)
            if pool is None:
                continue
            if pool.pool_id in seen:
                problems.add(f"pools[{index}].pool_id", f'"{pool.pool_id}" is used twice')
            seen.add(pool.pool_id)
            pools.append(pool)

    if problems.items:
        raise ConfigError(problems.items, str(path))
    assert state_dir is not None and isinstance(queue_name, str)
    state_path = Path(state_dir)
    if not state_path.is_absolute():
        state_path = path.parent / state_path
    return Settings(
        path=path,
        state_dir=state_path.resolve(),
        queue_name=queue_name,
        db1=db1,
        db2=db2,
        embedded=EmbeddedSettings(**embedded_values),
        log_drain_url=drain_url,
        log_drain_buffer=drain_buffer or 10_000,
        pools=tuple(pools),
        gateway=gateway,
    )


def write_example(path: Path, *, force: bool = False) -> None:
    """Write the commented example configuration to `path` (`intake init`).

    Refused, with nothing written, unless `path` names a regular file to
    create, or one to overwrite with `force`, in a directory that exists.
    """
    example = Path(__file__).resolve().parents[3] / "examples" / "intake.yaml"
    packaged = Path(__file__).parents[1] / "example.yaml"
    text = (example if example.exists() else packaged).read_text(encoding="utf-8")
    try:
        if path.is_dir():
            raise UsageError(
                f"{path} is a directory: name the file to write, e.g. {path / DEFAULT_CONFIG}"
            )
        if path.exists() or path.is_symlink():
            if not force:
                raise UsageError(f"{path} exists; pass --force to overwrite it")
            if not path.is_file():
                raise UsageError(f"{path} is not a regular file: --force overwrites only a file")
        if not path.parent.is_dir():
            raise UsageError(f"{path.parent} is not a directory: create it first")
        # "x" without --force: a file that appeared since the check is not overwritten.
        with path.open("w" if force else "x", encoding="utf-8") as stream:
            stream.write(text)
    except FileExistsError:
        raise UsageError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


class _Refused(yaml.MarkedYAMLError):
    """A document intake will not read, and where in it reading stopped."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses what it would silently get wrong or pay too much for.

    A key repeated in one mapping (the last one would silently win), nesting
    deeper than MAX_CONFIG_DEPTH (the composer recurses: 60,000 levels end in
    a RecursionError), a document larger than MAX_CONFIG_NODES once its
    aliases are expanded ("billion laughs"), an alias to the node that holds
    it, and a value PyYAML's own constructors choke on (`2024-13-01`).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # Expanded size of every node composed so far, by id: an alias costs
        # its anchor's whole size again, counted without building anything.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > MAX_CONFIG_DEPTH:
            raise _Refused(f"nested more than {MAX_CONFIG_DEPTH} levels deep", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            if id(node) not in self._sizes:
                raise _Refused("an alias refers to the node that contains it", mark)
            return node
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        if size > MAX_CONFIG_NODES:
            raise _Refused(
                f"expands to more than {MAX_CONFIG_NODES:,} values (aliases counted "
                "each time they are used)",
                mark,
            )
        self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *defaults` is meant to be overridden
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: SafeLoader's own error says so
                if earlier is not key_node.start_mark:
                    raise _Refused(
                        f"key {_show(key)} is repeated in this mapping (first on line "
                        f"{earlier.line + 1}): the last one would silently win",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            raise _Refused(f"cannot read this {kind} value ({exc})", node.start_mark) from None


def _read(path: Path) -> str:
    """The file's text, read only if it is a regular file of sensible size, in UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular
        # file reads the same either way.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("file not found (create one with `intake init`)", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(
            "not a regular file (a directory, device or pipe): write the configuration "
            "to a file and name that",
            str(path),
        )
    with os.fdopen(fd, "rb") as stream:
        try:
            data = stream.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the file: {exc.strerror}", str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"larger than {MAX_CONFIG_BYTES // 1024:,} KiB: not an intake configuration",
            str(path),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "save the file as UTF-8",
            str(path),
        ) from None


def _document(text: str, path: Path) -> Any:
    loader = None
    try:
        # The reader checks every character as it is built: inside the try.
        loader = _Loader(text)
        return loader.get_single_data()
    except _Refused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: "
        raise ConfigError(f"{where}{exc.problem}", str(path)) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"line {line}: malformed YAML (character U+{code:04X} is not allowed in YAML)",
            str(path),
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}malformed YAML ({problem})", str(path)) from None
    finally:
        if loader is not None:
            loader.dispose()


def loads(text: str, path: str | Path = DEFAULT_CONFIG) -> Settings:
    """Validate intake.yaml's text as `load` does; `path` anchors relative paths, names errors."""
    config_path = Path(path)
    return parse(_document(text, config_path), config_path.resolve())


def load(path: str | Path) -> Settings:
    config_path = Path(path)
    return loads(_read(config_path), config_path)
