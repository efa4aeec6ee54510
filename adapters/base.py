"""The contract every workspace adapter (Slack, GitHub, Linear, Lark) implements, and the machinery
they share: durable inbound dedup, the inbox, bindings (a platform conversation ↔ a session),
installations (which agent answers in which workspace) and the reply outbox with its pump.

The flow, for any platform:

    webhook ──verify──► Ingress.accept: dedup keys + inbox row, one transaction ──► 2xx
    AdapterWorker inbox loop: bind (create the session if new; earlier conversation as context)
        └─ append the user events and delete the inbox row, one transaction (exactly once)
    AdapterWorker pump: per binding with undelivered events (leased): read the log after
        `delivered_seq` ──► Adapter.deliver ──► platform calls; Delivery.commit advances the cursor
        only after the platform accepted a call

`Adapter.deliver` records what it is about to do (`Delivery.save`) before a call that creates
something on the platform, and reconciles after a crash: a call whose outcome is unknown is
looked up on the platform before it is made again, so a reply is neither lost nor doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core import log, schemas
from core.bus import WORK
from core.db import (
    adapter_bindings,
    adapter_deliveries,
    adapter_inbox,
    adapter_installations,
    agents,
    environments,
    sessions,
)
from core.errors import APIError, NotFound
from core.ids import new_id, now_us
from core.platform import Platform
from core.sessions import check_refs, event_to_new

logger = logging.getLogger("oma.adapters")

_USER_EVENTS: TypeAdapter[list[Any]] = TypeAdapter(list[schemas.UserEvent])


class LeaseLost(Exception):
    """Another process's pump owns the binding now; this one must stop delivering it."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One verified platform delivery, translated: which conversation, which user events."""

    binding_key: str
    # Where replies go (channel and thread, issue, …): the adapter's own data, stored on the binding.
    address: dict[str, Any]
    # User events as the /v1 API takes them: {"type": "user.message", "content": [...]}, …
    events: list[dict[str, Any]]
    # Delivery keys for dedup (Slack `event_id`, the message's channel+ts, …). Seen before: dropped.
    dedup_keys: tuple[str, ...] = ()
    # Whether this may start a session when the conversation is not bound yet (a mention may; a
    # button click may not).
    start: bool = True
    # Which workspace (Slack team, GitHub installation, …) it came from: picks the installation.
    workspace: str = ""
    # The adapter's hint for `Adapter.history` when the conversation is bound for the first time.
    context: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "binding_key": self.binding_key,
            "address": self.address,
            "events": self.events,
            "dedup_keys": list(self.dedup_keys),
            "start": self.start,
            "workspace": self.workspace,
            "context": self.context,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inbound:
        return cls(
            binding_key=data["binding_key"],
            address=data["address"],
            events=data["events"],
            dedup_keys=tuple(data.get("dedup_keys") or ()),
            start=bool(data.get("start", True)),
            workspace=data.get("workspace") or "",
            context=data.get("context"),
        )


@dataclass(frozen=True, slots=True)
class Route:
    """Who answers: the tenant, agent and environment a new session is created with."""

    tenant_id: str
    agent_id: str
    environment_id: str


@dataclass(slots=True)
class Binding:
    platform: str
    key: str
    tenant_id: str
    session_id: str
    address: dict[str, Any]
    delivered_seq: int
    outbox: dict[str, Any]


class Adapter(Protocol):
    """One platform. Inbound: its webhook/socket handlers call `Ingress.accept(Inbound)`.
    Outbound: the worker calls `deliver` with a binding's new session events."""

    platform: ClassVar[str]
    # How long delivery keys are remembered: at least the platform's retry window.
    dedup_ttl_seconds: ClassVar[float]

    async def history(self, inbound: Inbound) -> list[str]:
        """Earlier messages of the conversation (with authors), as text, when it is bound for the
        first time; [] when there are none."""
        ...

    async def refuse(self, inbound: Inbound, reason: str) -> None:
        """Tell the user, in the conversation, why nothing will happen (no agent configured, …)."""
        ...

    async def deliver(self, delivery: Delivery) -> float | None:
        """Turn `delivery.events` into platform calls, committing progress as the platform accepts
        them. Return None when done, or seconds to wait before being called again (rate limits,
        coalescing) with whatever events are new by then."""
        ...


# --- storage -----------------------------------------------------------------------------------


def _insert(postgres: bool) -> Any:
    return pg_insert if postgres else sqlite_insert


def remember_sync(conn: Connection, platform: str, keys: Sequence[str], ttl_seconds: float, *, postgres: bool) -> bool:
    """Record delivery keys; False if any was seen before and has not expired (the caller's
    transaction must then be rolled back or left without effect). One statement per key: a new
    key is inserted, an expired one renewed, a live one left alone (and reported)."""
    now = now_us()
    expires = now + int(ttl_seconds * 1e6)
    table = adapter_deliveries
    fresh = 0
    wanted = list(dict.fromkeys(keys))
    for key in wanted:
        stmt = _insert(postgres)(table).values(platform=platform, key=key, expires_at=expires)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.platform, table.c.key],
            set_={"expires_at": stmt.excluded.expires_at},
            where=table.c.expires_at <= now,
        )
        fresh += conn.execute(stmt).rowcount or 0
    return fresh == len(wanted)


class _Duplicate(Exception):
    pass


def _binding(row: Any) -> Binding:
    return Binding(
        platform=row.platform,
        key=row.key,
        tenant_id=row.tenant_id,
        session_id=row.session_id,
        address=row.address,
        delivered_seq=row.delivered_seq,
        outbox=row.outbox,
    )


class AdapterStore:
    """Installations and bindings of one platform."""

    def __init__(self, platform: Platform, name: str) -> None:
        self.platform = platform
        self.name = name

    @property
    def db(self) -> Any:
        return self.platform.db

    async def install(self, workspace: str, route: Route, config: dict[str, Any] | None = None) -> None:
        """Which agent and environment answer in `workspace` (created or replaced)."""
        now = now_us()
        values = {
            "tenant_id": route.tenant_id,
            "agent_id": route.agent_id,
            "environment_id": route.environment_id,
            "config": config or {},
            "updated_at": now,
        }
        stmt = (
            _insert(not self.db.sqlite)(adapter_installations)
            .values(platform=self.name, workspace=workspace, created_at=now, **values)
            .on_conflict_do_update(index_elements=["platform", "workspace"], set_=values)
        )
        async with self.db.write() as conn:
            await conn.execute(stmt)

    async def installation(self, workspace: str) -> Route | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(adapter_installations).where(
                        adapter_installations.c.platform == self.name,
                        adapter_installations.c.workspace == workspace,
                    )
                )
            ).first()
        return None if row is None else Route(row.tenant_id, row.agent_id, row.environment_id)

    async def agent_tenant(self, agent_id: str) -> str | None:
        async with self.db.read() as conn:
            result = await conn.execute(select(agents.c.tenant_id).where(agents.c.id == agent_id))
            return result.scalar_one_or_none()

    async def configured_route(self, agent_id: str, environment_id: str | None, environment_name: str) -> Route | None:
        """The route of an agent named in the settings (`OMA_<PLATFORM>_AGENT`): its tenant, and
        `environment_id` or else the tenant's environment called `environment_name` (created on
        first use). None if the agent does not exist."""
        tenant_id = await self.agent_tenant(agent_id)
        if tenant_id is None:
            return None
        if environment_id:
            return Route(tenant_id, agent_id, environment_id)
        async with self.db.read() as conn:
            found = (
                await conn.execute(
                    select(environments.c.id)
                    .where(
                        environments.c.tenant_id == tenant_id,
                        environments.c.name == environment_name,
                        environments.c.archived_at.is_(None),
                    )
                    .order_by(environments.c.created_at)
                    .limit(1)
                )
            ).scalar_one_or_none()
        if found is None:
            request = schemas.EnvironmentCreate(name=environment_name)
            found = (await self.platform.environments.create(tenant_id, request))["id"]
        return Route(tenant_id, agent_id, str(found))

    async def installation_record(self, workspace: str) -> tuple[Route, dict[str, Any]] | None:
        """An installation's route and the adapter's own data of it (where its workspace's
        credentials are in the vault, …)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(adapter_installations).where(
                        adapter_installations.c.platform == self.name,
                        adapter_installations.c.workspace == workspace,
                    )
                )
            ).first()
        if row is None:
            return None
        return Route(row.tenant_id, row.agent_id, row.environment_id), dict(row.config or {})

    async def update_config(self, workspace: str, config: dict[str, Any]) -> bool:
        """Replace an installation's config (e.g. rotated tokens); False if it is not installed."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(adapter_installations)
                .where(adapter_installations.c.platform == self.name, adapter_installations.c.workspace == workspace)
                .values(config=config, updated_at=now_us())
            )
        return bool(result.rowcount)

    async def binding(self, key: str) -> Binding | None:
        name = self.name

        def read(conn: Connection) -> Binding | None:
            row = conn.execute(
                select(adapter_bindings).where(adapter_bindings.c.platform == name, adapter_bindings.c.key == key)
            ).first()
            return None if row is None else _binding(row)

        return await self.db.run_read(read)

    async def bind(self, key: str, tenant_id: str, session_id: str, address: dict[str, Any]) -> Binding:
        """Bind the conversation to a new session. If another process bound it first, theirs wins."""
        now = now_us()
        stmt = (
            _insert(not self.db.sqlite)(adapter_bindings)
            .values(
                platform=self.name,
                key=key,
                tenant_id=tenant_id,
                session_id=session_id,
                address=address,
                delivered_seq=0,
                outbox={},
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        async with self.db.write() as conn:
            await conn.execute(stmt)
        found = await self.binding(key)
        if found is None:
            raise NotFound(f"binding {key} vanished")
        return found

    async def rebind(self, binding: Binding, session_id: str) -> Binding:
        """Point the conversation at a new session (the old one ended for good). The outbox starts
        over for the new session's log; the platform ids it created are kept."""
        outbox = {k: v for k, v in binding.outbox.items() if k == "posted"}
        async with self.db.write() as conn:
            await conn.execute(
                update(adapter_bindings)
                .where(
                    adapter_bindings.c.platform == self.name,
                    adapter_bindings.c.key == binding.key,
                    adapter_bindings.c.session_id == binding.session_id,
                )
                .values(session_id=session_id, delivered_seq=0, outbox=outbox, updated_at=now_us())
            )
        found = await self.binding(binding.key)
        if found is None:
            raise NotFound(f"binding {binding.key} vanished")
        return found


# --- inbound -----------------------------------------------------------------------------------


class Ingress:
    """What a webhook handler calls: durable dedup and the inbox, in one fast transaction."""

    def __init__(self, platform: Platform, name: str, ttl_seconds: float, wake: asyncio.Event) -> None:
        self._platform = platform
        self._name = name
        self._ttl = ttl_seconds
        self._wake = wake

    async def accept(self, inbound: Inbound) -> bool:
        """True if accepted; False if it is a duplicate of an earlier delivery."""
        postgres = not self._platform.db.sqlite
        name, ttl = self._name, self._ttl

        def transaction(conn: Connection) -> None:
            if not remember_sync(conn, name, inbound.dedup_keys, ttl, postgres=postgres):
                raise _Duplicate
            conn.execute(
                insert(adapter_inbox).values(
                    id=new_id("inbx"),
                    platform=name,
                    binding_key=inbound.binding_key,
                    payload=inbound.to_json(),
                    created_at=now_us(),
                )
            )

        try:
            await self._platform.db.run_write(transaction)
        except _Duplicate:
            return False
        self._wake.set()
        return True


# --- the worker: inbox and reply pump -----------------------------------------------------------


@dataclass(frozen=True)
class WorkerSettings:
    lease_seconds: float = 30.0
    poll_seconds: float = 2.0
    concurrency: int = 64
    # A binding whose session is idle and fully delivered is let go after this long without news.
    linger_seconds: float = 2.0


class Delivery:
    """A binding's new events, and the fenced writes that record delivery progress."""

    def __init__(self, worker: AdapterWorker, binding: Binding, events: list[log.StoredEvent]) -> None:
        self._worker = worker
        self.binding = binding
        self.events = events

    @property
    def outbox(self) -> dict[str, Any]:
        return self.binding.outbox

    async def save(self, outbox: dict[str, Any]) -> None:
        """Record the adapter's state (e.g. the call about to be made) without advancing."""
        await self._worker.write_outbox(self.binding, self.binding.delivered_seq, outbox)

    async def commit(self, delivered_seq: int, outbox: dict[str, Any]) -> None:
        """Everything up to `delivered_seq` reached the platform; `outbox` is the state after it."""
        await self._worker.write_outbox(self.binding, max(delivered_seq, self.binding.delivered_seq), outbox)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class AdapterWorker:
    """Runs one adapter's background work in this process: the inbox (deliveries → user events)
    and the reply pump (session events → platform calls), both leased so that several processes
    on one PostgreSQL share the work without doing anything twice."""

    def __init__(
        self,
        platform: Platform,
        adapter: Adapter,
        *,
        default_route: Callable[[], Awaitable[Route | None]] | None = None,
        session_fields: Callable[[Inbound], Awaitable[dict[str, Any]]] | None = None,
        acknowledge: Callable[[Inbound], Awaitable[None]] | None = None,
        settings: WorkerSettings | None = None,
    ) -> None:
        self.platform = platform
        self.adapter = adapter
        self.name = adapter.platform
        self.settings = settings or WorkerSettings()
        self.store = AdapterStore(platform, self.name)
        self.default_route = default_route
        # More fields for a session the conversation starts (`resources`, `title`, …), e.g. the
        # repository to check out, with a token minted for it. Raising retries the delivery later.
        self.session_fields = session_fields
        # Shows on the platform, at once, that a delivery was taken up (GitHub's 👀 reaction);
        # best effort, and it must be idempotent: a delivery handled again acknowledges again.
        self.acknowledge = acknowledge
        self.owner = _owner()
        self._inbox_wake = asyncio.Event()
        self.ingress = Ingress(platform, self.name, adapter.dedup_ttl_seconds, self._inbox_wake)
        self._inbox_tasks: dict[str, asyncio.Task[None]] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._inbox_loop(), name=f"{self.name}-inbox"),
            asyncio.create_task(self._pump_loop(), name=f"{self.name}-pump"),
            asyncio.create_task(self._heartbeat(), name=f"{self.name}-heartbeat"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._loops, *self._inbox_tasks.values(), *self._pumps.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            async with self.platform.db.write() as conn:
                await conn.execute(
                    update(adapter_bindings)
                    .where(adapter_bindings.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
                await conn.execute(
                    update(adapter_inbox)
                    .where(adapter_inbox.c.claimed_by == self.owner)
                    .values(claimed_by=None, claimed_until=None)
                )

    async def _heartbeat(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self._pumps and not self._inbox_tasks:
                continue
            until = now_us() + int(self.settings.lease_seconds * 1e6)
            try:
                async with self.platform.db.write() as conn:
                    await conn.execute(
                        update(adapter_bindings)
                        .where(adapter_bindings.c.lease_owner == self.owner)
                        .values(lease_expires_at=until)
                    )
                    await conn.execute(
                        update(adapter_inbox)
                        .where(adapter_inbox.c.claimed_by == self.owner)
                        .values(claimed_until=until)
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: lease heartbeat failed", self.name)

    # --- inbox ---------------------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        while not self._stopping:
            self._inbox_wake.clear()
            try:
                await self._claim_inbox()
                await self._purge_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: inbox pass failed", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox_wake.wait(), self.settings.poll_seconds)

    async def _purge_expired(self) -> None:
        async with self.platform.db.write() as conn:
            await conn.execute(
                delete(adapter_deliveries).where(
                    adapter_deliveries.c.platform == self.name, adapter_deliveries.c.expires_at < now_us()
                )
            )

    async def _claim_inbox(self) -> None:
        """Claim every waiting row of conversations nobody else works on; one task per
        conversation handles its rows in arrival order."""
        now = now_us()
        free = or_(adapter_inbox.c.claimed_by.is_(None), adapter_inbox.c.claimed_until < now)
        async with self.platform.db.read() as conn:
            rows = await conn.execute(
                select(adapter_inbox.c.binding_key, adapter_inbox.c.claimed_by, adapter_inbox.c.claimed_until)
                .where(adapter_inbox.c.platform == self.name)
                .order_by(adapter_inbox.c.created_at)
                .limit(500)
            )
            busy: set[str] = set()
            keys: list[str] = []
            for row in rows:
                held = row.claimed_by is not None and row.claimed_until >= now and row.claimed_by != self.owner
                if held:
                    busy.add(row.binding_key)
                elif row.binding_key not in keys:
                    keys.append(row.binding_key)
        keys = [k for k in keys if k not in busy and k not in self._inbox_tasks]
        room = self.settings.concurrency - len(self._inbox_tasks)
        for key in keys[: max(0, room)]:
            async with self.platform.db.write() as conn:
                claimed = await conn.execute(
                    update(adapter_inbox)
                    .where(adapter_inbox.c.platform == self.name, adapter_inbox.c.binding_key == key, free)
                    .values(claimed_by=self.owner, claimed_until=now + int(self.settings.lease_seconds * 1e6))
                )
            if claimed.rowcount:
                self._inbox_tasks[key] = asyncio.create_task(self._drain(key), name=f"{self.name}-inbox-{key}")

    async def _drain(self, key: str) -> None:
        try:
            while True:
                async with self.platform.db.read() as conn:
                    row = (
                        await conn.execute(
                            select(adapter_inbox)
                            .where(
                                adapter_inbox.c.platform == self.name,
                                adapter_inbox.c.binding_key == key,
                                adapter_inbox.c.claimed_by == self.owner,
                            )
                            .order_by(adapter_inbox.c.created_at)
                            .limit(1)
                        )
                    ).first()
                if row is None:
                    return
                try:
                    await self._handle(row.id, Inbound.from_json(row.payload))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Left claimed: retried when the claim expires (a back-off for persistent failures).
                    logger.exception("%s: inbound %s failed; retrying later", self.name, row.id)
                    return
        finally:
            self._inbox_tasks.pop(key, None)
            if not self._stopping:
                self._inbox_wake.set()

    async def route(self, workspace: str) -> Route | None:
        found = await self.store.installation(workspace)
        if found is not None or self.default_route is None:
            return found
        return await self.default_route()

    async def _handle(self, inbox_id: str, inbound: Inbound) -> None:
        binding = await self.store.binding(inbound.binding_key)
        if self.acknowledge is not None and (binding is not None or inbound.start):
            try:
                await self.acknowledge(inbound)
            except Exception as exc:
                logger.warning("%s: could not acknowledge %s: %r", self.name, inbound.binding_key, exc)
        fresh = False
        if binding is None:
            if not inbound.start:
                await self._drop(inbox_id)
                return
            binding = await self._new_binding(inbox_id, inbound)
            if binding is None:
                return
            fresh = True
        history: list[str] = []
        if fresh and inbound.context is not None:
            history = await self.adapter.history(inbound)
        events = _with_history(inbound.events, history)
        outcome = await self._append(inbox_id, binding, events)
        if outcome == "refused" and inbound.start and any(e["type"] == "user.message" for e in events):
            # The bound session ended for good (terminated, archived): the conversation gets a new one.
            route = await self.route(inbound.workspace)
            session_id = await self._create_session(route, inbound) if route is not None else None
            if session_id is None:
                await self._drop(inbox_id)
                return
            binding = await self.store.rebind(binding, session_id)
            outcome = await self._append(inbox_id, binding, events)
        if outcome != "appended":
            await self._drop(inbox_id)
            return
        self.platform.bus.notify(binding.session_id)
        self.platform.bus.notify(WORK)

    async def _new_binding(self, inbox_id: str, inbound: Inbound) -> Binding | None:
        route = await self.route(inbound.workspace)
        session_id = await self._create_session(route, inbound) if route is not None else None
        if route is None or session_id is None:
            await self.adapter.refuse(inbound, "not_configured")
            await self._drop(inbox_id)
            return None
        binding = await self.store.bind(inbound.binding_key, route.tenant_id, session_id, inbound.address)
        if binding.session_id != session_id:  # another process bound it first: ours is unused
            with contextlib.suppress(APIError):
                await self.platform.sessions.delete(route.tenant_id, session_id)
        return binding

    async def _create_session(self, route: Route, inbound: Inbound) -> str | None:
        extra = await self.session_fields(inbound) if self.session_fields is not None else {}
        try:
            created = await self.platform.sessions.create(
                route.tenant_id,
                schemas.SessionCreate.model_validate(
                    {
                        **extra,
                        "agent": route.agent_id,
                        "environment_id": route.environment_id,
                        "metadata": {"oma.platform": self.name, "oma.conversation": inbound.binding_key[:512]},
                    }
                ),
            )
        except APIError as exc:
            logger.warning("%s: cannot start a session for %s: %s", self.name, inbound.binding_key, exc.message)
            return None
        return str(created["id"])

    async def _drop(self, inbox_id: str) -> None:
        async with self.platform.db.write() as conn:
            await conn.execute(delete(adapter_inbox).where(adapter_inbox.c.id == inbox_id))

    async def _append(self, inbox_id: str, binding: Binding, events: list[dict[str, Any]]) -> str:
        """Append the events and delete the inbox row in one transaction: "appended", "refused"
        (the session no longer takes events) or "invalid" (e.g. a confirmation of an unknown tool)."""
        try:
            parsed = _USER_EVENTS.validate_python(events)
        except ValidationError:
            logger.warning("%s: dropping malformed user events for %s", self.name, binding.key)
            return "invalid"
        new = [event_to_new(e) for e in parsed]
        confirm_ids = [e.tool_use_id for e in parsed if isinstance(e, schemas.UserToolConfirmation)]
        session_id, tenant_id = binding.session_id, binding.tenant_id
        postgres = not self.platform.db.sqlite

        def transaction(conn: Connection) -> None:
            check_refs(conn, session_id, confirm_ids, ("agent.tool_use", "agent.mcp_tool_use"), "tool_use_id")
            log.append_sync(conn, session_id, new, postgres=postgres, writable_for=tenant_id)
            conn.execute(delete(adapter_inbox).where(adapter_inbox.c.id == inbox_id))

        try:
            await self.platform.db.run_write(transaction)
        except log.AppendRefused:
            return "refused"
        except APIError as exc:
            logger.warning("%s: user events for %s refused: %s", self.name, binding.key, exc.message)
            return "invalid"
        return "appended"

    # --- reply pump ----------------------------------------------------------------------------

    async def _pump_loop(self) -> None:
        while not self._stopping:
            seen = self.platform.bus.generation(WORK)
            try:
                await self._claim_bindings()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: pump claim pass failed", self.name)
            await self.platform.bus.wait(WORK, seen, self.settings.poll_seconds)

    async def _claim_bindings(self) -> None:
        room = self.settings.concurrency - len(self._pumps)
        if room <= 0:
            return
        now = now_us()
        free = or_(adapter_bindings.c.lease_owner.is_(None), adapter_bindings.c.lease_expires_at < now)
        behind = (
            select(adapter_bindings.c.key)
            .select_from(adapter_bindings.join(sessions, sessions.c.id == adapter_bindings.c.session_id))
            .where(adapter_bindings.c.platform == self.name, sessions.c.last_seq > adapter_bindings.c.delivered_seq)
            .limit(room + len(self._pumps))
        )
        async with self.platform.db.read() as conn:
            keys = [r.key for r in await conn.execute(behind.where(free)) if r.key not in self._pumps]
        if not keys:
            return
        async with self.platform.db.write() as conn:
            claimed = await conn.execute(
                update(adapter_bindings)
                .where(adapter_bindings.c.platform == self.name, adapter_bindings.c.key.in_(keys[:room]), free)
                .values(lease_owner=self.owner, lease_expires_at=now + int(self.settings.lease_seconds * 1e6))
                .returning(adapter_bindings.c.key)
            )
            won = [r.key for r in claimed]
        for key in won:
            self._pumps[key] = asyncio.create_task(self._pump(key), name=f"{self.name}-pump-{key}")

    async def _pump(self, key: str) -> None:
        bus = self.platform.bus
        try:
            idle_since: float | None = None
            while not self._stopping:
                binding = await self.store.binding(key)
                if binding is None:
                    return
                seen = bus.generation(binding.session_id)
                session_id, after = binding.session_id, binding.delivered_seq
                read = functools.partial(_read, session_id=session_id, after=after)
                events, status = await self.platform.db.run_read(read)
                delay: float | None = None
                if events:
                    idle_since = None
                    delay = await self.adapter.deliver(Delivery(self, binding, events))
                elif status in ("idle", "terminated") or status is None:
                    loop_now = asyncio.get_running_loop().time()
                    idle_since = idle_since if idle_since is not None else loop_now
                    if loop_now - idle_since >= self.settings.linger_seconds:
                        return
                if delay:
                    await asyncio.sleep(delay)
                    continue
                if events and len(events) >= 500:
                    continue
                await bus.wait(session_id, seen, self.settings.poll_seconds if events else 0.5)
        except LeaseLost:
            logger.warning("%s: lost the lease of %s; another process delivers it", self.name, key)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s: delivering %s failed; retrying when the lease expires", self.name, key)
            self._pumps.pop(key, None)
            return
        finally:
            if self._pumps.get(key) is asyncio.current_task():
                self._pumps.pop(key, None)
                if not self._stopping:
                    await self._release(key)
                    bus.notify(WORK)  # re-check: news may have come while letting go

    async def _release(self, key: str) -> None:
        with contextlib.suppress(Exception):
            async with self.platform.db.write() as conn:
                await conn.execute(
                    update(adapter_bindings)
                    .where(
                        adapter_bindings.c.platform == self.name,
                        adapter_bindings.c.key == key,
                        adapter_bindings.c.lease_owner == self.owner,
                    )
                    .values(lease_owner=None, lease_expires_at=None)
                )

    async def write_outbox(self, binding: Binding, delivered_seq: int, outbox: dict[str, Any]) -> None:
        """The fenced write: only while this process holds the binding's lease."""
        name, owner, now = self.name, self.owner, now_us()

        def write(conn: Connection) -> int:
            result = conn.execute(
                update(adapter_bindings)
                .where(
                    adapter_bindings.c.platform == name,
                    adapter_bindings.c.key == binding.key,
                    adapter_bindings.c.session_id == binding.session_id,
                    adapter_bindings.c.lease_owner == owner,
                )
                .values(delivered_seq=delivered_seq, outbox=outbox, updated_at=now)
            )
            return int(result.rowcount or 0)

        if not await self.platform.db.run_write(write):
            raise LeaseLost(binding.key)
        binding.delivered_seq = delivered_seq
        # A copy: the caller goes on changing its dict, and must see those changes as unsaved.
        binding.outbox = copy.deepcopy(outbox)


def _read(conn: Connection, session_id: str, after: int) -> tuple[list[log.StoredEvent], str | None]:
    status = conn.execute(select(sessions.c.status).where(sessions.c.id == session_id)).scalar_one_or_none()
    return log.read_after_sync(conn, session_id, after, limit=500), status


def _with_history(events: list[dict[str, Any]], history: list[str]) -> list[dict[str, Any]]:
    """The earlier conversation goes in front of the first user message's content."""
    if not history:
        return events
    out: list[dict[str, Any]] = []
    placed = False
    for event in events:
        if not placed and event["type"] == "user.message":
            event = {**event, "content": [{"type": "text", "text": text} for text in history] + event["content"]}
            placed = True
        out.append(event)
    return out


__all__ = [
    "Adapter",
    "AdapterStore",
    "AdapterWorker",
    "Binding",
    "Delivery",
    "Inbound",
    "Ingress",
    "LeaseLost",
    "Route",
    "WorkerSettings",
]
