"""The schema (SQLAlchemy Core) and the database handle shared by every store.

Timestamps are integers (microseconds since the epoch) so that ordering, keyset pagination and
range filters behave the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

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
# query that renders a session can reach them.
session_secrets = Table(
    "session_secrets",
    metadata,
    Column("session_id", String(40), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("resource_id", String(40), primary_key=True),
    Column("secret", Text, nullable=False),
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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(
            url,
            json_serializer=_dumps,
            json_deserializer=orjson.loads,
            connect_args={"timeout": 30},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

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
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self.engine = make_engine(url)
        self._write_lock = asyncio.Lock() if self.sqlite else None

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        await self.engine.dispose()
