"""One entry of `pools`: its inventory, its webhook, its limits and its backoff."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from intake_cli.platform import inventory
from intake_cli.platform.config.environment import _interpolate, _secret
from intake_cli.platform.config.names import check_pool_id, check_rpc_name
from intake_cli.platform.config.problems import _Problems, _show
from intake_cli.platform.config.settings import PoolSettings
from intake_cli.platform.config.urls import _webhook_url
from intake_cli.platform.config.validate import (
    _instant,
    _integer,
    _mapping,
    _path_text,
    _seconds,
    _string,
)

MAX_INVENTORY = 50_000_000


INTEGER_BOUNDS = {
    "per_user_limit": (1, 1000),
    "batch_size": (1, 10_000),
    "visibility_timeout": (1, 43_200),
    "max_retries": (0, 1000),
    "commit_rate_per_sec": (0, 1_000_000),
    "webhook_rate_per_sec": (0, 1_000_000),
}
SECONDS_BOUNDS = {"retry_base_seconds": 3600.0, "retry_max_seconds": 86400.0}


def check_retry_pair(base: float, ceiling: float) -> str | None:
    """Why a pool's backoff bounds do not fit together, or None."""
    if base > ceiling:
        return (
            f"retry_base_seconds ({base:g}) is above retry_max_seconds ({ceiling:g}): "
            "the first backoff step cannot be longer than the ceiling"
        )
    return None


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
    "webhook_rate_per_sec",
    "retry_base_seconds",
    "retry_max_seconds",
    "webhook_secret",
    "opens_at",
    "admit_per_second",
    "inventory_file",
}


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
        if declared is not None and listed is not None and file is not None and declared != listed:
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
    for key, ceiling in SECONDS_BOUNDS.items():
        if key in raw:
            values[key] = _seconds(problems, f"{path}.{key}", raw[key], ceiling)
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
