"""intake.yaml → typed settings.

Validation collects every problem with the path of the field it concerns
(`pools[0].batch_size: expected an integer from 1 to 10000, got "ten"`), so an
operator fixes the file in one pass. Nothing is applied to any database until
the whole file is valid.

One module per concern; this one only names what the rest of intake uses, so
that `from intake_cli.platform.config import …` never depends on the layout.
"""

from __future__ import annotations

from intake_cli.platform.config.database import REPLICATION_FENCES
from intake_cli.platform.config.document import load, loads, parse
from intake_cli.platform.config.environment import ENV_REFERENCE
from intake_cli.platform.config.example import write_example
from intake_cli.platform.config.live import LIVE_SETTINGS, live_setting, live_value
from intake_cli.platform.config.names import (
    POOL_ID_PATTERN,
    QUEUE_NAME_PATTERN,
    RPC_NAME_PATTERN,
    check_pool_id,
    check_rpc_name,
    check_user_id,
)
from intake_cli.platform.config.pools import (
    INTEGER_BOUNDS,
    MAX_INVENTORY,
    SECONDS_BOUNDS,
    check_retry_pair,
)
from intake_cli.platform.config.problems import SHOWN_CHARS, redact
from intake_cli.platform.config.settings import (
    DEFAULT_CONFIG,
    DatabaseSettings,
    EmbeddedSettings,
    GatewaySettings,
    PoolSettings,
    Settings,
)
from intake_cli.platform.config.urls import check_jwks_url, check_url
from intake_cli.platform.config.yamlload import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_NODES,
)

__all__ = [
    "DEFAULT_CONFIG",
    "ENV_REFERENCE",
    "INTEGER_BOUNDS",
    "LIVE_SETTINGS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_NODES",
    "MAX_INVENTORY",
    "POOL_ID_PATTERN",
    "QUEUE_NAME_PATTERN",
    "REPLICATION_FENCES",
    "RPC_NAME_PATTERN",
    "SECONDS_BOUNDS",
    "SHOWN_CHARS",
    "DatabaseSettings",
    "EmbeddedSettings",
    "GatewaySettings",
    "PoolSettings",
    "Settings",
    "check_jwks_url",
    "check_pool_id",
    "check_retry_pair",
    "check_rpc_name",
    "check_url",
    "check_user_id",
    "live_setting",
    "live_value",
    "load",
    "loads",
    "parse",
    "redact",
    "write_example",
]
