"""The append-only per-session event log: the only truth about a session.

`append` takes the next `seq` numbers under the session row's lock (UPDATE … RETURNING), so seqs
are gapless per session and a rolled-back transaction leaves no hole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, and_, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.bus import CHANNEL, notify_payload
from core.db import session_events, sessions
from core.errors import NotFound
from core.ids import new_id, now_us, us_to_rfc3339


class AppendRefused(Exception):
    """The session row did not pass the append's guard; the caller explains why."""


class LeaseLost(Exception):
    """Another runner owns the session now; this one must stop working on it."""


@dataclass(slots=True)
class NewEvent:
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    # None: queued until the runner consumes it (user events). Otherwise: processed when written.
    queued: bool = False
    id: str | None = None


@dataclass(slots=True)
class StoredEvent:
    session_id: str
    seq: int
    id: str
    type: str
    payload: dict[str, Any]
    processed_at: int | None
    created_at: int

    def render(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "type": self.type}
        # Keys starting with "_" are the harness's private bookkeeping (what a model request
        # consumed, thinking signatures, compaction summaries): kept in the log, never rendered.
        body.update((k, v) for k, v in self.payload.items() if not k.startswith("_"))
        body["processed_at"] = us_to_rfc3339(self.processed_at)
        return body


def _row_to_event(row: Any) -> StoredEvent:
    return StoredEvent(
        session_id=row.session_id,
        seq=row.seq,
        id=row.id,
        type=row.type,
        payload=row.payload,
        processed_at=row.processed_at,
        created_at=row.created_at,
    )


EVENT_COLUMNS = (
    session_events.c.session_id,
    session_events.c.seq,
    session_events.c.id,
    session_events.c.type,
    session_events.c.payload,
    session_events.c.processed_at,
    session_events.c.created_at,
)


def append_sync(
    conn: Connection,
    session_id: str,
    events: Sequence[NewEvent],
    *,
    status: str | None = None,
    postgres: bool = False,
    lease_owner: str | None = None,
    writable_for: str | None = None,
) -> list[StoredEvent]:
    """Append events (and optionally the session status they imply) in the caller's transaction.

    With `lease_owner`, the append only happens while that runner still holds the session's lease
    (a fencing token): a runner that lost its lease raises LeaseLost instead of writing. With
    `writable_for` (a tenant id), the session must belong to that tenant and be neither archived
    nor terminated, or the append raises AppendRefused and writes nothing."""
    if not events:
        return []
    now = now_us()
    driver = conn.connection.driver_connection
    # pysqlite only: aiosqlite's connection (behind an AsyncConnection) has async methods.
    raw = driver if isinstance(driver, sqlite3.Connection) else None
    if raw is not None:
        # The hottest statements of all go straight to the driver on SQLite: no statement
        # construction, compilation or bind processing per append.
        sql = "UPDATE sessions SET last_seq = last_seq + ?, updated_at = ?"
        params: list[Any] = [len(events), now]
        if status is not None:
            sql += ", status = ?"
            params.append(status)
        sql += " WHERE id = ?"
        params.append(session_id)
        if lease_owner is not None:
            sql += " AND lease_owner = ?"
            params.append(lease_owner)
        if writable_for is not None:
            sql += " AND tenant_id = ? AND archived_at IS NULL AND status != 'terminated'"
            params.append(writable_for)
        row = raw.execute(sql + " RETURNING last_seq", params).fetchone()
        last = row[0] if row is not None else None
    else:
        values: dict[str, Any] = {"last_seq": sessions.c.last_seq + len(events), "updated_at": now}
        if status is not None:
            values["status"] = status
        query = update(sessions).where(sessions.c.id == session_id)
        if lease_owner is not None:
            query = query.where(sessions.c.lease_owner == lease_owner)
        if writable_for is not None:
            query = query.where(
                sessions.c.tenant_id == writable_for,
                sessions.c.archived_at.is_(None),
                sessions.c.status != "terminated",
            )
        last = conn.execute(query.values(**values).returning(sessions.c.last_seq)).scalar_one_or_none()
    if last is None:
        if lease_owner is not None:
            raise LeaseLost(f"runner {lease_owner} no longer holds the lease of session {session_id}")
        if writable_for is not None:
            raise AppendRefused(session_id)
        raise NotFound(f"session {session_id} not found")
    first = last - len(events) + 1
    stored = [
        StoredEvent(
            session_id=session_id,
            seq=first + i,
            id=ev.id or new_id("sevt"),
            type=ev.type,
            payload=ev.payload,
            processed_at=None if ev.queued else now,
            created_at=now,
        )
        for i, ev in enumerate(events)
    ]
    rows = [(e.session_id, e.seq, e.id, e.type, orjson.dumps(e.payload).decode(), e.processed_at, now) for e in stored]
    if raw is not None:
        raw.executemany(
            "INSERT INTO session_events (session_id, seq, id, type, payload, processed_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    else:
        conn.execute(
            session_events.insert(),
            [
                {
                    "session_id": e.session_id,
                    "seq": e.seq,
                    "id": e.id,
                    "type": e.type,
                    "payload": e.payload,
                    "processed_at": e.processed_at,
                    "created_at": e.created_at,
                }
                for e in stored
            ],
        )
    if postgres:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": notify_payload(session_id)})
    return stored


async def append(
    conn: AsyncConnection,
    session_id: str,
    events: Sequence[NewEvent],
    *,
    status: str | None = None,
    postgres: bool = False,
    lease_owner: str | None = None,
) -> list[StoredEvent]:
    """`append_sync` on an async connection."""
    return await conn.run_sync(
        lambda c: append_sync(c, session_id, events, status=status, postgres=postgres, lease_owner=lease_owner)
    )


def read_after_sync(conn: Connection, session_id: str, after_seq: int, limit: int = 1000) -> list[StoredEvent]:
    rows = conn.execute(
        select(*EVENT_COLUMNS)
        .where(and_(session_events.c.session_id == session_id, session_events.c.seq > after_seq))
        .order_by(session_events.c.seq)
        .limit(limit)
    )
    return [_row_to_event(r) for r in rows]


async def read_after(conn: AsyncConnection, session_id: str, after_seq: int, limit: int = 1000) -> list[StoredEvent]:
    return await conn.run_sync(lambda c: read_after_sync(c, session_id, after_seq, limit))


async def read_all(conn: AsyncConnection, session_id: str) -> list[StoredEvent]:
    rows = await conn.execute(
        select(*EVENT_COLUMNS).where(session_events.c.session_id == session_id).order_by(session_events.c.seq)
    )
    return [_row_to_event(r) for r in rows]


async def last_seq(conn: AsyncConnection, session_id: str) -> int | None:
    result = await conn.execute(select(sessions.c.last_seq).where(sessions.c.id == session_id))
    return result.scalar_one_or_none()


def find_ids_sync(conn: Connection, session_id: str, ids: Iterable[str], types: Iterable[str]) -> set[str]:
    """Which of `ids` are events of this session with one of `types`."""
    wanted = list(set(ids))
    if not wanted:
        return set()
    rows = conn.execute(
        select(session_events.c.id).where(
            session_events.c.session_id == session_id,
            session_events.c.id.in_(wanted),
            session_events.c.type.in_(list(types)),
        )
    )
    return {r.id for r in rows}


async def find_ids(conn: AsyncConnection, session_id: str, ids: Iterable[str], types: Iterable[str]) -> set[str]:
    return await conn.run_sync(lambda c: find_ids_sync(c, session_id, ids, types))


def mark_processed_sync(conn: Connection, session_id: str, seqs: Iterable[int]) -> None:
    seq_list = list(seqs)
    if seq_list:
        conn.execute(
            update(session_events)
            .where(session_events.c.session_id == session_id, session_events.c.seq.in_(seq_list))
            .values(processed_at=now_us())
        )


async def mark_processed(conn: AsyncConnection, session_id: str, seqs: Iterable[int]) -> None:
    await conn.run_sync(lambda c: mark_processed_sync(c, session_id, seqs))


async def count(conn: AsyncConnection, session_id: str) -> int:
    result = await conn.execute(
        select(func.count()).select_from(session_events).where(session_events.c.session_id == session_id)
    )
    return int(result.scalar_one())


async def delete_all(conn: AsyncConnection, session_id: str) -> None:
    await conn.execute(delete(session_events).where(session_events.c.session_id == session_id))
