"""What intake.yaml configures, as the rest of intake reads it: frozen, typed, already checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

DEFAULT_CONFIG = "intake.yaml"


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
    # A fleet-wide ceiling on calls to the payment provider (0: only what the
    # provider's own 429s and Retry-After ask for).
    webhook_rate_per_sec: int = 0
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
