"""intake.yaml → typed settings.

Validation collects every problem with the path of the field it concerns
(`pools[0].batch_size: expected an integer from 1 to 10000, got "ten"`), so an
operator fixes the file in one pass. Nothing is applied to any database until
the whole file is valid.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from intake_cli import inventory
from intake_cli.errors import ConfigError

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


@dataclass(frozen=True)
class DatabaseSettings:
    """Where a database lives. Neither a DSN nor pgenv means: the embedded cluster."""

    dsn: str | None = None
    pgenv: bool = False
    # DB2 only: install the example ledger when the commit RPC is missing.
    # Unset means: yes for the embedded cluster, no for a configured server.
    install_example_ledger: bool | None = None

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
    # The operator's own unit ids, one per unit in order; None: intake numbers
    # the units itself. Absolute. Only counted here (every command loads the
    # config); `inventory.read_ids` checks every line when `intake up` seeds.
    inventory_file: Path | None = None


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


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "nothing"
    return repr(value)


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


def _secret(problems: _Problems, path: str, raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not ENV_REFERENCE.fullmatch(raw.strip()):
        problems.add(
            path,
            "secrets are read from the environment: write ${VARIABLE_NAME} "
            "and export the secret in that variable",
        )
        return None
    value = _interpolate(problems, path, raw.strip())
    return value or None


def _webhook_url(problems: _Problems, path: str, value: Any) -> str | None:
    text = _string(problems, path, value)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.add(path, f"expected an http:// or https:// URL, got {_show(text)}")
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


_DSN_PASSWORD = re.compile(r"(password\s*=\s*[^\s$]|://[^/@\s]*:[^@/\s$][^@/\s]*@)")


def _database(
    problems: _Problems, path: str, raw: Any, *, ledger: bool = False
) -> DatabaseSettings:
    keys = {"dsn", "pgenv", "install_example_ledger"} if ledger else {"dsn", "pgenv"}
    spec = _mapping(problems, path, raw, keys)
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
    if dsn_raw is None:
        return DatabaseSettings(pgenv=pgenv, install_example_ledger=install)
    if not isinstance(dsn_raw, str):
        problems.add(f"{path}.dsn", f"expected a connection string, got {_show(dsn_raw)}")
        return DatabaseSettings()
    if _DSN_PASSWORD.search(dsn_raw):
        problems.add(
            f"{path}.dsn",
            "holds a literal password: reference it from the environment "
            "(${DB_PASSWORD}) or use PGPASSWORD / ~/.pgpass",
        )
    dsn = _interpolate(problems, f"{path}.dsn", dsn_raw).strip()
    if pgenv and dsn:
        problems.add(path, "set either dsn or pgenv, not both")
    # An empty DSN after interpolation (${DB1_DSN:-}) means "not configured".
    return DatabaseSettings(dsn=dsn or None, pgenv=pgenv, install_example_ledger=install)


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


def live_setting(key: str, text: str) -> Any:
    """Parse and check `key=text` from the command line by the file's own rules."""
    problems = _Problems()
    value: Any = None
    if key not in LIVE_SETTINGS:
        problems.add(key, f"not a live setting (live: {', '.join(sorted(LIVE_SETTINGS))})")
    elif key in INTEGER_BOUNDS:
        number: Any = int(text) if re.fullmatch(r"-?\d+", text) else text
        value = _integer(problems, key, number, *INTEGER_BOUNDS[key])
    elif key in SECONDS_BOUNDS:
        try:
            number = float(text)
        except ValueError:
            number = text
        value = _seconds(problems, key, number, SECONDS_BOUNDS[key])
    elif key == "validation_webhook_url":
        value = _webhook_url(problems, key, text)
    elif (reason := check_rpc_name(text)) is not None:
        problems.add(key, reason)
    else:
        value = text
    if problems.items:
        raise ConfigError(problems.items)
    return value


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
    "inventory_file",
}


def _inventory_file(
    problems: _Problems, path: str, raw: Any, base: Path
) -> tuple[Path | None, int | None]:
    """The resolved file and its id count, from cheap checks only."""
    text = _string(problems, path, _interpolate(problems, path, raw))
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
    values["webhook_secret"] = _secret(
        problems, f"{path}.webhook_secret", raw.get("webhook_secret")
    )
    if len(problems.items) > before:
        return None
    return PoolSettings(**values)


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
}


def parse(data: Any, path: Path) -> Settings:
    """Validate an already-parsed YAML document."""
    problems = _Problems()
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {_show(data)}", str(path))
    _mapping(problems, "", data, _TOP_KEYS)

    state_dir_raw = data.get("state_dir", ".intake")
    state_dir = _string(problems, "state_dir", _interpolate(problems, "state_dir", state_dir_raw))
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

    emb = _mapping(
        problems,
        "embedded",
        data.get("embedded"),
        {"max_connections", "shared_buffers", "synchronous_commit"},
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
    )


def load(path: str | Path) -> Settings:
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "file not found (create one with `intake init`)", str(config_path)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", str(config_path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}malformed YAML ({problem})", str(config_path)) from None
    return parse(data, config_path.resolve())
