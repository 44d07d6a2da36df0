"""The whole file: its top-level keys, each section checked by its owner, and the result."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from intake_cli.platform.config.database import _database
from intake_cli.platform.config.environment import _interpolate
from intake_cli.platform.config.gateway import _gateway
from intake_cli.platform.config.names import QUEUE_NAME_PATTERN
from intake_cli.platform.config.pools import _pool
from intake_cli.platform.config.problems import _Problems, _show
from intake_cli.platform.config.settings import (
    DEFAULT_CONFIG,
    EmbeddedSettings,
    PoolSettings,
    Settings,
)
from intake_cli.platform.config.urls import _webhook_url
from intake_cli.platform.config.validate import _integer, _mapping, _path_text
from intake_cli.platform.config.yamlload import _document, _read
from intake_cli.platform.errors import ConfigError

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


def loads(text: str, path: str | Path = DEFAULT_CONFIG) -> Settings:
    """Validate intake.yaml's text as `load` does; `path` anchors relative paths, names errors."""
    config_path = Path(path)
    return parse(_document(text, config_path), config_path.resolve())


def load(path: str | Path) -> Settings:
    config_path = Path(path)
    return loads(_read(config_path), config_path)
