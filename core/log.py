"""The append-only per-session event log: the only truth about a session.

`append` takes the next `seq` numbers under the session row's lock (UPDATE … RETURNING), so seqs
are gapless per session and a rolled-back transaction leaves no hole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core.bus import CHANNEL, notify_payload
from core.db import session_events, sessions
from core.errors import NotFound
from core.ids import new_id, now_us, us_to_rfc3339


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


async def append(
    conn: AsyncConnection,
    session_id: str,
    events: Sequence[NewEvent],
    *,
    status: str | None = None,
    postgres: bool = False,
    lease_owner: str | None = None,
) -> list[StoredEvent]:
    """Append events (and optionally the session status they imply) in the caller's transaction.

    With `lease_owner`, the append only happens while that runner still holds the session's lease
    (a fencing token): a runner that lost its lease raises LeaseLost instead of writing."""
    if not events:
        return []
    now = now_us()
    values: dict[str, Any] = {"last_seq": sessions.c.last_seq + len(events), "updated_at": now}
    if status is not None:
        values["status"] = status
    query = update(sessions).where(sessions.c.id == session_id)
    if lease_owner is not None:
        query = query.where(sessions.c.lease_owner == lease_owner)
    result = await conn.execute(query.values(**values).returning(sessions.c.last_seq))
    last = result.scalar_one_or_none()
    if last is None:
        if lease_owner is not None:
            raise LeaseLost(f"runner {lease_owner} no longer holds the lease of session {session_id}")
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
    await conn.execute(
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
        await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": notify_payload(session_id)})
    return stored


async def read_after(conn: AsyncConnection, session_id: str, after_seq: int, limit: int = 1000) -> list[StoredEvent]:
    rows = await conn.execute(
        select(*EVENT_COLUMNS)
        .where(and_(session_events.c.session_id == session_id, session_events.c.seq > after_seq))
        .order_by(session_events.c.seq)
        .limit(limit)
    )
    return [_row_to_event(r) for r in rows]


async def read_all(conn: AsyncConnection, session_id: str) -> list[StoredEvent]:
    rows = await conn.execute(
        select(*EVENT_COLUMNS).where(session_events.c.session_id == session_id).order_by(session_events.c.seq)
    )
    return [_row_to_event(r) for r in rows]


async def last_seq(conn: AsyncConnection, session_id: str) -> int | None:
    result = await conn.execute(select(sessions.c.last_seq).where(sessions.c.id == session_id))
    return result.scalar_one_or_none()


async def find_ids(conn: AsyncConnection, session_id: str, ids: Iterable[str], types: Iterable[str]) -> set[str]:
    """Which of `ids` are events of this session with one of `types`."""
    wanted = list(set(ids))
    if not wanted:
        return set()
    rows = await conn.execute(
        select(session_events.c.id).where(
            session_events.c.session_id == session_id,
            session_events.c.id.in_(wanted),
            session_events.c.type.in_(list(types)),
        )
    )
    return {r.id for r in rows}


async def mark_processed(conn: AsyncConnection, session_id: str, seqs: Iterable[int]) -> None:
    seq_list = list(seqs)
    if seq_list:
        await conn.execute(
            update(session_events)
            .where(session_events.c.session_id == session_id, session_events.c.seq.in_(seq_list))
            .values(processed_at=now_us())
        )


async def count(conn: AsyncConnection, session_id: str) -> int:
    result = await conn.execute(
        select(func.count()).select_from(session_events).where(session_events.c.session_id == session_id)
    )
    return int(result.scalar_one())


async def delete_all(conn: AsyncConnection, session_id: str) -> None:
    await conn.execute(delete(session_events).where(session_events.c.session_id == session_id))
