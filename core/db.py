"""The schema (SQLAlchemy Core) and the database handle shared by every store.

Timestamps are integers (microseconds since the epoch) so that ordering, keyset pagination and
range filters behave the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

T = TypeVar("T")

metadata = MetaData()

# Plain JSON on PostgreSQL too: we never query inside documents, and JSONB rejects "\u0000",
# which tool output can contain.
JSONType = JSON()

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(256), nullable=False),
    # sha256 of the key: keys are 256-bit random, so a fast hash is enough and a lookup is O(1).
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Index("ix_agents_tenant_created", "tenant_id", "created_at", "id"),
)

# Every version of an agent is kept whole: sessions pin a version, and `versions.list` shows them.
agent_versions = Table(
    "agent_versions",
    metadata,
    Column("agent_id", String(40), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("body", JSONType, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

environments = Table(
    "environments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(256), nullable=False),
    Column("description", Text),
    Column("config", JSONType, nullable=False),
    Column("metadata", JSONType, nullable=False),
    Column("scope", String(32)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Index("ix_environments_tenant_created", "tenant_id", "created_at", "id"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("agent_id", String(40), nullable=False),
    Column("agent_version", Integer, nullable=False),
    # The agent snapshot the session runs with (with overrides applied).
    Column("agent", JSONType, nullable=False),
    Column("environment_id", String(40), nullable=False),
    Column("title", Text),
    Column("metadata", JSONType, nullable=False),
    Column("resources", JSONType, nullable=False),
    Column("vault_ids", JSONType, nullable=False),
    Column("budget", JSONType),
    # Cached from the log, written in the same transaction as the event that changes it.
    Column("status", String(16), nullable=False),
    Column("usage", JSONType, nullable=False),
    Column("stats", JSONType, nullable=False),
    # Highest seq in session_events: appends take the next numbers under this row's lock.
    Column("last_seq", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    # The runner that owns the session, until when (renewed by its heartbeat).
    Column("lease_owner", String(64)),
    Column("lease_expires_at", BigInteger),
    Index("ix_sessions_tenant_created", "tenant_id", "created_at", "id"),
    Index("ix_sessions_tenant_agent", "tenant_id", "agent_id"),
    Index("ix_sessions_status", "status"),
)

# Secrets given with a session (repository tokens) live apart from the session row so that no
# query that renders a session can reach them. `secret` is a vault envelope sealed with `key_id`
# (core/vaults.py); rows from before the vault have key_id null until sealed at start-up.
session_secrets = Table(
    "session_secrets",
    metadata,
    Column("session_id", String(40), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("resource_id", String(40), primary_key=True),
    Column("secret", Text, nullable=False),
    Column("key_id", String(32)),
)

# --- the vault (core/vaults.py): credentials whose secret fields are sealed (vault/keyring.py) ---

vaults = Table(
    "vaults",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("display_name", String(256), nullable=False),
    Column("metadata", JSONType, nullable=False),
    # Mirrors metadata "oma.tenant_default": "true" (its provider keys serve every session).
    Column("tenant_default", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Index("ix_vaults_tenant_created", "tenant_id", "created_at", "id"),
)

vault_credentials = Table(
    "vault_credentials",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("vault_id", String(40), ForeignKey("vaults.id", ondelete="CASCADE"), nullable=False),
    # auth.type, and what the credential is for (one active credential per identity and vault).
    Column("kind", String(32), nullable=False),
    Column("identity", String(128), nullable=False),
    # The auth object as rendered: its non-secret fields only.
    Column("auth", JSONType, nullable=False),
    # The secret fields, sealed; null once archived (archiving purges the secret).
    Column("secret", Text),
    Column("key_id", String(32)),
    Column("display_name", String(256)),
    Column("metadata", JSONType, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("archived_at", BigInteger),
    Index("ix_vault_credentials_vault_created", "vault_id", "created_at", "id"),
    Index(
        "ux_vault_credentials_active_identity",
        "vault_id",
        "identity",
        unique=True,
        sqlite_where=text("archived_at IS NULL"),
        postgresql_where=text("archived_at IS NULL"),
    ),
)

session_events = Table(
    "session_events",
    metadata,
    Column("session_id", String(40), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(40), nullable=False, unique=True),
    Column("type", String(64), nullable=False),
    Column("payload", JSONType, nullable=False),
    # Null while a user event is queued; set when the runner consumes it.
    Column("processed_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    # Runners look for queued user events; this index holds only those.
    Index(
        "ix_session_events_queued",
        "session_id",
        sqlite_where=text("processed_at IS NULL"),
        postgresql_where=text("processed_at IS NULL"),
    ),
)

# --- workspace adapters (adapters/base.py): shared by every platform ------------------------------

# Inbound dedup: delivery keys seen (Slack event_id, GitHub X-GitHub-Delivery, …), kept until the
# platform's retry window has passed.
adapter_deliveries = Table(
    "adapter_deliveries",
    metadata,
    Column("platform", String(32), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_adapter_deliveries_expires", "expires_at"),
)

# Accepted deliveries waiting to become user events: written before the webhook is answered,
# deleted in the transaction that appends their events, so each is appended exactly once.
adapter_inbox = Table(
    "adapter_inbox",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("platform", String(32), nullable=False),
    Column("binding_key", String(255), nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_until", BigInteger),
    Index("ix_adapter_inbox_platform_created", "platform", "created_at"),
)

# Which agent and environment answer in which workspace (a Slack team, a GitHub installation, …).
adapter_installations = Table(
    "adapter_installations",
    metadata,
    Column("platform", String(32), primary_key=True),
    Column("workspace", String(255), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("agent_id", String(40), nullable=False),
    Column("environment_id", String(40), nullable=False),
    Column("config", JSONType, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# A platform conversation (a Slack thread, a GitHub issue, …) bound to a session, with its reply
# outbox: every event up to `delivered_seq` has reached the platform; `outbox` is the adapter's
# delivery state (the platform ids it created, a call in flight). Both advance only after the
# platform accepted a call, under the pump's lease.
adapter_bindings = Table(
    "adapter_bindings",
    metadata,
    Column("platform", String(32), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("tenant_id", String(40), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("session_id", String(40), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("address", JSONType, nullable=False),
    Column("delivered_seq", BigInteger, nullable=False),
    Column("outbox", JSONType, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_adapter_bindings_session", "session_id"),
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_sync_sqlite_engine(url: str, *, immediate: bool = False, pool_size: int = 8) -> Engine:
    engine = create_engine(
        url.replace("sqlite+aiosqlite://", "sqlite+pysqlite://", 1),
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=pool_size,
        max_overflow=0,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    if immediate:
        _begin_immediate(engine)
    return engine


def _begin_immediate(engine: Engine) -> None:
    """Write transactions take SQLite's write lock when they begin. Two writers (the worker thread
    and the async engine) then queue on the lock (busy_timeout) instead of one failing: a deferred
    transaction that read first cannot upgrade to a writer once the other has committed."""

    def autocommit_driver(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None

    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", autocommit_driver)
    event.listen(engine, "begin", begin)


def _sqlite_pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 20, immediate: bool = False) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(
            url,
            json_serializer=_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if immediate:
            _begin_immediate(engine.sync_engine)
        return engine
    return create_async_engine(
        url,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
    )


class Database:
    """The engine plus the write discipline.

    SQLite allows one writer at a time; inside one process we queue writers on an asyncio lock
    instead of letting them fail with "database is locked" (busy_timeout covers other processes).

    Hot paths use `run_write`/`run_read` with a plain function of a *sync* Connection: on
    PostgreSQL it runs through the async engine (`run_sync`, asyncpg underneath); on SQLite it runs
    whole in a worker thread on a pysqlite connection. aiosqlite costs a thread round-trip per
    cursor call (about 25 per small transaction); this costs one per transaction.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self.engine = make_engine(url)
        # SQLite: writes go through engines whose transactions BEGIN IMMEDIATE (see below).
        self.write_engine = make_engine(url, immediate=True) if self.sqlite else self.engine
        self._write_lock = asyncio.Lock() if self.sqlite else None
        self._sync_engine: Engine | None = None
        self._sync_write_engine: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._writer_conn: Connection | None = None
        self._readers: ThreadPoolExecutor | None = None
        if self.sqlite:
            self._sync_engine = make_sync_sqlite_engine(url)
            self._sync_write_engine = make_sync_sqlite_engine(url, immediate=True, pool_size=1)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
            self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sqlite-reader")

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.write_engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """`fn` in one write transaction (committed if it returns, rolled back if it raises)."""
        if self._sync_write_engine is None or self._writer is None:
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)

        def transaction() -> T:
            # The worker keeps one connection for good: no pool checkout and reset per write.
            conn = self._writer_conn
            if conn is None or conn.closed:
                assert self._sync_write_engine is not None
                conn = self._writer_conn = self._sync_write_engine.connect()
            try:
                with conn.begin():
                    return fn(conn)
            except BaseException:
                if conn.invalidated:
                    self._writer_conn = None
                raise

        # The single worker runs queued transactions back to back, without a trip through the
        # event loop between them.
        return await asyncio.get_running_loop().run_in_executor(self._writer, transaction)

    async def run_read(self, fn: Callable[[Connection], T]) -> T:
        if self._sync_engine is None or self._readers is None:
            async with self.engine.connect() as conn:
                return await conn.run_sync(fn)
        engine = self._sync_engine

        def reading() -> T:
            with engine.connect() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._readers, reading)

    async def close(self) -> None:
        for pool in (self._writer, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()
        for sync_engine in (self._sync_engine, self._sync_write_engine):
            if sync_engine is not None:
                sync_engine.dispose()
