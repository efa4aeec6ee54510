"""The runner: claims sessions that have work by lease, runs their harness, recovers sessions
whose owner died. Many sessions run concurrently on one event loop, up to a cap.

A lease is (owner, expiry) on the session row. Owners renew all their leases in one UPDATE per
heartbeat; a session whose lease expired is claimable by any runner, which then recovers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update

from core.bus import WORK, Bus
from core.db import Database, agent_versions, session_events, sessions
from core.harness.default import DefaultHarness
from core.harness.turn import HarnessSettings, TurnContext
from core.ids import now_us
from core.log import LeaseLost
from core.providers import Providers
from core.vaults import VaultStore

log = logging.getLogger("oma.runner")

Harness = Callable[[TurnContext], Awaitable[None]]
ACTIVE = ("running", "rescheduling")


def _alive(owner: str, me: str) -> bool:
    """Whether the runner `owner` (host:pid:token, same host as `me`) may still be running."""
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid():
        return owner == me  # same pid, other token: an earlier life of this process id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def default_harness(ctx: TurnContext) -> None:
    await DefaultHarness(ctx).run()


@dataclass(frozen=True)
class RunnerSettings:
    concurrency: int = 64
    lease_seconds: float = 30.0
    poll_seconds: float = 2.0


class Harnesses:
    """Harnesses by name. An agent picks one with metadata `oma.harness`; default otherwise."""

    def __init__(self) -> None:
        self._by_name: dict[str, Harness] = {"default": default_harness}

    def register(self, name: str, harness: Harness) -> None:
        self._by_name[name] = harness

    def get(self, name: str | None) -> Harness:
        return self._by_name.get(name or "default", default_harness)


class Runner:
    def __init__(
        self,
        *,
        db: Database,
        bus: Bus,
        providers: Providers,
        sandboxes: Any,
        harness_settings: HarnessSettings,
        settings: RunnerSettings,
        harnesses: Harnesses | None = None,
        http: Any = None,
        vaults: VaultStore | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.providers = providers
        self.sandboxes = sandboxes
        self.harness_settings = harness_settings
        self.settings = settings
        self.harnesses = harnesses or Harnesses()
        self.http = http
        # Model keys come from vaults (bring-your-own-key) before the settings.
        self.vaults = vaults
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._main: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_owner_check = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._main = asyncio.create_task(self._loop(), name="runner")
        self._heartbeat = asyncio.create_task(self._beat(), name="runner-heartbeat")

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._main, self._heartbeat, *self._tasks.values()):
            if task is not None:
                task.cancel()
        for task in (self._main, self._heartbeat, *self._tasks.values()):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # Hand our sessions back at once rather than making others wait for the lease to expire.
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )

    @property
    def running(self) -> int:
        return len(self._tasks)

    # --- claiming ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            seen = self.bus.generation(WORK)
            try:
                await self._claim_some()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("runner claim pass failed")
            await self.bus.wait(WORK, seen, self.settings.poll_seconds)

    async def _free_dead_owners(self) -> None:
        """Leases held by a process of this host that no longer exists are released at once, so a
        restart resumes its sessions without waiting for their leases to expire."""
        host = socket.gethostname()
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(sessions.c.lease_owner)
                .where(sessions.c.lease_owner.like(f"{host}:%"), sessions.c.lease_owner != self.owner)
                .distinct()
            )
            owners = [r.lease_owner for r in rows]
        dead = [o for o in owners if not _alive(o, self.owner)]
        if dead:
            async with self.db.write() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.lease_owner.in_(dead))
                    .values(lease_owner=None, lease_expires_at=None)
                )
            log.info("released the leases of %d dead runner(s) of this host", len(dead))

    async def _candidates(self, limit: int) -> list[str]:
        now = now_us()
        free = or_(sessions.c.lease_owner.is_(None), sessions.c.lease_expires_at < now)
        queued = (
            select(session_events.c.session_id)
            .where(session_events.c.processed_at.is_(None))
            .distinct()
            .scalar_subquery()
        )
        query = (
            select(sessions.c.id)
            .where(
                free,
                or_(sessions.c.status.in_(ACTIVE), and_(sessions.c.status != "terminated", sessions.c.id.in_(queued))),
            )
            .order_by(sessions.c.updated_at)
            .limit(limit)
        )
        if not self.db.sqlite:
            query = query.with_for_update(skip_locked=True)
        if self.db.sqlite:
            # Look before taking SQLite's single write lock: most passes find nothing to claim.
            async with self.db.read() as conn:
                if not [r.id for r in await conn.execute(query) if r.id not in self._tasks]:
                    return []
        async with self.db.write() as conn:
            ids = [r.id for r in await conn.execute(query) if r.id not in self._tasks]
            if not ids:
                return []
            claimed = await conn.execute(
                update(sessions)
                .where(sessions.c.id.in_(ids), free)
                .values(lease_owner=self.owner, lease_expires_at=now + int(self.settings.lease_seconds * 1e6))
                .returning(sessions.c.id, sessions.c.status)
            )
            return [r.id for r in claimed]

    async def _claim_some(self) -> None:
        room = self.settings.concurrency - len(self._tasks)
        if room <= 0:
            return
        if time.monotonic() >= self._next_owner_check:
            self._next_owner_check = time.monotonic() + self.settings.poll_seconds
            await self._free_dead_owners()
        for session_id in await self._candidates(room):
            self._tasks[session_id] = asyncio.create_task(self._run(session_id), name=f"session-{session_id}")

    # --- running -------------------------------------------------------------------------------

    async def _run(self, session_id: str) -> None:
        recovering = True  # the first pass after a claim closes whatever a previous owner left open
        released = False
        try:
            while True:
                found = await self._context(session_id, recovering)
                if found is None:
                    return
                ctx, harness_name = found
                await self.harnesses.get(harness_name)(ctx)
                recovering = False
                if await self._release_if_done(session_id):
                    released = True
                    return
        except LeaseLost:
            log.warning("lost the lease of %s; another runner continues it", session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Keep the lease: the session is retried (and recovered) when it expires, which is
            # also the back-off that keeps a persistent failure from spinning.
            log.exception("harness failed on session %s; retrying after the lease expires", session_id)
            self._tasks.pop(session_id, None)
            return
        finally:
            if self._tasks.get(session_id) is asyncio.current_task():
                self._tasks.pop(session_id, None)
                if not self._stopping:
                    if not released:
                        await self._release(session_id)
                    self.sandboxes.idle(session_id)
                    self.bus.forget(session_id)
                    self.bus.notify(WORK)

    async def _context(self, session_id: str, recovering: bool) -> tuple[TurnContext, str | None] | None:
        """The turn context, and the harness the session's agent version asks for."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(sessions, agent_versions.c.body.label("agent_body"))
                    .select_from(
                        sessions.outerjoin(
                            agent_versions,
                            and_(
                                agent_versions.c.agent_id == sessions.c.agent_id,
                                agent_versions.c.version == sessions.c.agent_version,
                            ),
                        )
                    )
                    .where(sessions.c.id == session_id)
                )
            ).first()
        if row is None or row.lease_owner != self.owner:
            return None
        environment_id = row.environment_id

        async def sandbox() -> Any:
            return await self.sandboxes.get(session_id, environment_id)

        ctx = TurnContext(
            session_id=session_id,
            tenant_id=row.tenant_id,
            owner=self.owner,
            db=self.db,
            bus=self.bus,
            providers=self.providers,
            settings=self.harness_settings,
            sandbox=sandbox,
            http=self.http,
            vaults=self.vaults,
            recovering=recovering and row.status in ACTIVE,
        )
        harness = ((row.agent_body or {}).get("metadata") or {}).get("oma.harness")
        return ctx, harness

    async def _release_if_done(self, session_id: str) -> bool:
        """Release the lease unless user events are queued (then the caller runs again)."""
        queued = (
            select(session_events.c.seq)
            .where(session_events.c.session_id == session_id, session_events.c.processed_at.is_(None))
            .exists()
        )
        async with self.db.write() as conn:
            result = await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.lease_owner == self.owner, ~queued)
                .values(lease_owner=None, lease_expires_at=None)
            )
            return bool(result.rowcount)

    async def _release(self, session_id: str) -> None:
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )

    async def _beat(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self._tasks:
                continue
            try:
                async with self.db.write() as conn:
                    await conn.execute(
                        update(sessions)
                        .where(sessions.c.lease_owner == self.owner)
                        .values(lease_expires_at=now_us() + int(self.settings.lease_seconds * 1e6))
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease heartbeat failed")
