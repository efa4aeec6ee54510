"""The harness's window on one session: read the log incrementally, append events under the
runner's lease, publish stream-only deltas, and notice interrupts while work is in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, select, update

from core import log
from core.bus import Bus
from core.byok import ResolvedModel, resolve_model
from core.db import Database, session_events, sessions
from core.log import NewEvent, StoredEvent
from core.providers import Providers
from core.providers.base import Usage
from core.tools.web_search import SearchBackend
from core.vaults import VaultStore

T = TypeVar("T")


class Interrupted(Exception):
    """A queued `user.interrupt` cut the in-flight model call or tool short."""


@dataclass(frozen=True)
class HarnessSettings:
    max_retries: int = 4
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    tool_timeout_seconds: float = 120.0
    max_tokens: int = 8192
    # Compact older turns when the estimated prompt passes this many tokens.
    compact_at_tokens: int = 150_000
    # Let web_fetch reach loopback/private addresses (off: agents must not probe the host's network).
    web_fetch_allow_private: bool = False
    # web_search's backend (core/tools/web_search.py); None: the tool is not offered.
    web_search: SearchBackend | None = None

    @property
    def available_tools(self) -> frozenset[str]:
        return frozenset({"web_search"}) if self.web_search is not None else frozenset()


SandboxGetter = Callable[[], Awaitable[Any]]


@dataclass
class TurnContext:
    session_id: str
    tenant_id: str
    owner: str
    db: Database
    bus: Bus
    providers: Providers
    settings: HarnessSettings
    sandbox: SandboxGetter
    http: Any = None
    # Where model keys come from before the settings (bring-your-own-key); None: settings only.
    vaults: VaultStore | None = None
    # Runner-provided: whether this is the first run after the session was claimed from
    # another (crashed) owner or from a restart.
    recovering: bool = False
    session: Any = None
    events: list[StoredEvent] = field(default_factory=list)
    queued_seqs: set[int] = field(default_factory=set)
    _seen_generation: int = -1

    # --- reading -------------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Bring `events`, `queued_seqs` and `session` up to date (reads only what is new).

        Skipped when the bus says nothing was appended since the last read: every append in this
        process, and (on PostgreSQL) in any process, bumps the session's generation."""
        if not force and self._seen_generation == self.bus.generation(self.session_id):
            return
        generation = self.bus.generation(self.session_id)
        after = self.events[-1].seq if self.events else 0
        self._apply(await self.db.run_read(lambda c: _read(c, self.session_id, after)))
        self._seen_generation = generation

    def _apply(self, read: _Read) -> None:
        self.events.extend(read.events)
        self.queued_seqs = read.queued
        self.session = read.session

    @property
    def status(self) -> str:
        return str(self.session.status) if self.session is not None else "idle"

    async def resolve_model(self, model_id: str) -> ResolvedModel:
        """Provider, model and key for a model call (ConfigError if there is no usable key)."""
        vault_ids = list(self.session.vault_ids or []) if self.session is not None else []
        return await resolve_model(self.providers, self.vaults, self.tenant_id, vault_ids, model_id)

    # --- writing -------------------------------------------------------------------------------

    async def emit(
        self,
        events: Sequence[NewEvent],
        *,
        status: str | None = None,
        processed: Sequence[int] = (),
        usage: Usage | None = None,
        active_seconds: float | None = None,
        finish: NewEvent | None = None,
    ) -> list[StoredEvent]:
        """Append under the lease, then read back everything new, in one transaction.

        `finish` (a `session.status_idle`) is appended too, in the same write, when no user
        input is queued; otherwise it is dropped and the harness carries on with that input."""
        generation = self.bus.generation(self.session_id)
        session_id, owner, postgres = self.session_id, self.owner, not self.db.sqlite
        after = self.events[-1].seq if self.events else 0

        def transaction(conn: Connection) -> tuple[list[StoredEvent], _Read]:
            batch, new_status, seconds = list(events), status, active_seconds
            if finish is not None:
                waiting = conn.execute(
                    select(session_events.c.seq)
                    .where(session_events.c.session_id == session_id, session_events.c.processed_at.is_(None))
                    .limit(1)
                ).first()
                if waiting is None:
                    batch.append(finish)
                    new_status = "idle"
                else:
                    seconds = None
            stored = log.append_sync(conn, session_id, batch, status=new_status, postgres=postgres, lease_owner=owner)
            if processed:
                log.mark_processed_sync(conn, session_id, processed)
            if usage is not None or seconds is not None:
                row = conn.execute(
                    select(sessions.c.usage, sessions.c.stats).where(sessions.c.id == session_id)
                ).first()
                assert row is not None
                values: dict[str, Any] = {}
                if usage is not None:
                    values["usage"] = add_usage(row.usage, usage)
                if seconds is not None:
                    stats = dict(row.stats)
                    stats["active_seconds"] = round(float(stats.get("active_seconds") or 0) + seconds, 3)
                    values["stats"] = stats
                conn.execute(update(sessions).where(sessions.c.id == session_id).values(**values))
            return stored, _read(conn, session_id, after)

        stored, read = await self.db.run_write(transaction)
        self._apply(read)
        self.bus.notify(self.session_id)
        # Our own notify is the only bump we have read past; any other means "read again".
        self._seen_generation = generation + 1
        return stored

    def publish_delta(self, frame: dict[str, Any]) -> None:
        self.bus.publish_delta(self.session_id, frame)

    # --- interrupts ----------------------------------------------------------------------------

    async def interruptible(self, work: Awaitable[T]) -> T:
        """Run `work`; cancel it and raise Interrupted as soon as a user.interrupt is queued."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self._wait_for_interrupt())
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise Interrupted()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _wait_for_interrupt(self) -> None:
        if any(e.type == "user.interrupt" for e in self.events if e.seq in self.queued_seqs):
            return
        timed_out = False
        while True:
            seen = self.bus.generation(self.session_id)
            # Query only when something was appended since our last read (or a wait timed out:
            # another process may have appended without a wake-up reaching us).
            if timed_out or seen != self._seen_generation:
                async with self.db.read() as conn:
                    found = await conn.execute(
                        select(session_events.c.seq)
                        .where(
                            session_events.c.session_id == self.session_id,
                            session_events.c.processed_at.is_(None),
                            session_events.c.type == "user.interrupt",
                        )
                        .limit(1)
                    )
                    if found.first() is not None:
                        return
            timed_out = not await self.bus.wait(self.session_id, seen, 5.0)


@dataclass(frozen=True, slots=True)
class _Read:
    events: list[StoredEvent]
    queued: set[int]
    session: Any


def _read(conn: Connection, session_id: str, after: int) -> _Read:
    events: list[StoredEvent] = []
    while True:
        batch = log.read_after_sync(conn, session_id, after)
        events.extend(batch)
        if len(batch) < 1000:
            break
        after = batch[-1].seq
    rows = conn.execute(
        select(session_events.c.seq).where(
            session_events.c.session_id == session_id, session_events.c.processed_at.is_(None)
        )
    )
    session = conn.execute(select(sessions).where(sessions.c.id == session_id)).first()
    return _Read(events, {r.seq for r in rows}, session)


def add_usage(current: dict[str, Any], usage: Usage) -> dict[str, Any]:
    out = dict(current)
    out["input_tokens"] = int(out.get("input_tokens") or 0) + usage.input_tokens
    out["output_tokens"] = int(out.get("output_tokens") or 0) + usage.output_tokens
    out["cache_read_input_tokens"] = int(out.get("cache_read_input_tokens") or 0) + usage.cache_read_input_tokens
    creation = dict(out.get("cache_creation") or {})
    creation["ephemeral_5m_input_tokens"] = (
        int(creation.get("ephemeral_5m_input_tokens") or 0) + usage.cache_creation_input_tokens
    )
    creation.setdefault("ephemeral_1h_input_tokens", 0)
    out["cache_creation"] = creation
    return out
