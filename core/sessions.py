"""Sessions: creation from an agent version (with overrides), updates, and sending user events.

Session status is cached on the session row and only ever written in the transaction that appends
the event which changes it (see core.log.append).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from core import log, schemas
from core.agents import (
    AgentStore,
    apply_metadata_patch,
    check_resolved_tools,
    resolve_model,
    resolve_skill,
    resolve_tool,
    snapshot,
)
from core.agents import get_row_sync as agents_get_row_sync
from core.agents import render_row as agents_render_row
from core.bus import Bus
from core.db import Database, session_secrets, sessions
from core.environments import EnvironmentStore
from core.environments import get_row_sync as environments_get_row_sync
from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import new_id, now_us, us_to_rfc3339
from core.pagination import Page, keyset_page
from core.vaults import VaultStore, check_session_vaults_sync


class SessionStatus(StrEnum):
    RESCHEDULING = "rescheduling"
    RUNNING = "running"
    IDLE = "idle"
    TERMINATED = "terminated"


# User events the runner consumes: stored with processed_at = null until it does.
QUEUED_TYPES = frozenset(
    {
        "user.message",
        "user.interrupt",
        "user.tool_confirmation",
        "user.custom_tool_result",
        "user.tool_result",
        "system.message",
    }
)
EMPTY_USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
}


def render(row: Any) -> dict[str, Any]:
    end = row.updated_at if row.status == SessionStatus.TERMINATED else time.time_ns() // 1000
    stats = dict(row.stats)
    stats["duration_seconds"] = round(max(0, end - row.created_at) / 1_000_000, 3)
    return {
        "id": row.id,
        "type": "session",
        "title": row.title,
        "status": row.status,
        "agent": row.agent,
        "environment_id": row.environment_id,
        "metadata": row.metadata,
        "resources": row.resources,
        "vault_ids": row.vault_ids,
        "budget": row.budget,
        "usage": row.usage,
        "stats": stats,
        "outcome_evaluations": [],
        "deployment_id": None,
        "created_at": us_to_rfc3339(row.created_at),
        "updated_at": us_to_rfc3339(row.updated_at),
        "archived_at": us_to_rfc3339(row.archived_at),
    }


def event_to_new(event: Any) -> log.NewEvent:
    """A validated user event (core.schemas) as it is written to the log."""
    payload = event.model_dump(exclude_none=True, exclude={"type"})
    if event.type == "user.define_outcome":
        payload["outcome_id"] = new_id("outc")
        payload.setdefault("max_iterations", 3)
    return log.NewEvent(type=event.type, payload=payload, queued=event.type in QUEUED_TYPES)


def _resolve_resources(resources: Sequence[Any], now: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    out: list[dict[str, Any]] = []
    secrets: list[tuple[str, str]] = []
    for res in resources:
        if isinstance(res, schemas.GitHubRepositoryResource):
            rid = new_id("sres")
            repo = res.url.rstrip("/").removesuffix(".git").rsplit("/", 1)[-1] or "repo"
            out.append(
                {
                    "type": "github_repository",
                    "id": rid,
                    "url": res.url,
                    "mount_path": res.mount_path or f"/workspace/{repo}",
                    "checkout": res.checkout.model_dump() if res.checkout else None,
                    "created_at": us_to_rfc3339(now),
                    "updated_at": us_to_rfc3339(now),
                }
            )
            if res.authorization_token:
                secrets.append((rid, res.authorization_token))
        elif isinstance(res, schemas.FileResource):
            raise InvalidRequest(
                f"resources: file {res.file_id} not found (this server has no Files API yet)",
                error_code="file_not_found",
            )
        else:
            raise InvalidRequest(
                f"resources: memory store {res.memory_store_id} not found (this server has no memory stores yet)",
                error_code="memory_store_not_found",
            )
    mounts = [r["mount_path"] for r in out]
    if len(mounts) != len(set(mounts)):
        raise InvalidRequest("resources: mount_path values must be unique")
    return out, secrets


def _apply_overrides(agent: dict[str, Any], ov: schemas.AgentWithOverrides) -> dict[str, Any]:
    fields = ov.model_fields_set
    out = dict(agent)
    if "model" in fields and ov.model is not None:
        out["model"] = resolve_model(ov.model)
    if "system" in fields:
        out["system"] = ov.system
    if "tools" in fields:
        out["tools"] = [resolve_tool(t) for t in ov.tools or []]
    if "mcp_servers" in fields:
        out["mcp_servers"] = [s.model_dump() for s in ov.mcp_servers or []]
    if "skills" in fields:
        out["skills"] = [resolve_skill(s) for s in ov.skills or []]
    if "tools" in fields or "mcp_servers" in fields:
        check_resolved_tools(out["tools"], out["mcp_servers"])
    return out


def check_refs(conn: Connection, session_id: str, ids: list[str], types: tuple[str, ...], field: str) -> None:
    """Every id must be an event of one of `types` in this session."""
    if not ids:
        return
    found = log.find_ids_sync(conn, session_id, ids, types)
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidRequest(
            f"{field}: no {' or '.join(types)} event {missing[0]} in session {session_id}",
            error_code="tool_use_not_found",
        )


class SessionStore:
    def __init__(
        self, db: Database, bus: Bus, agents: AgentStore, environments: EnvironmentStore, vaults: VaultStore
    ) -> None:
        self.db = db
        self.bus = bus
        self.agents = agents
        self.environments = environments
        self.vaults = vaults

    async def _row(self, conn: AsyncConnection, tenant_id: str, session_id: str, *, lock: bool = False) -> Any:
        """The session row; with `lock`, held until the transaction ends (on PostgreSQL) so that
        a status change committing meanwhile cannot slip past the caller's checks."""
        query = select(sessions).where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"session {session_id} not found", error_code="session_not_found")
        return row

    async def get(self, tenant_id: str, session_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            return render(await self._row(conn, tenant_id, session_id))

    async def create(self, tenant_id: str, req: schemas.SessionCreate) -> dict[str, Any]:
        ref = req.agent
        agent_id = ref if isinstance(ref, str) else ref.id
        version = None if isinstance(ref, str) else ref.version
        now = now_us()
        resources, secrets = _resolve_resources(req.resources, now)
        session_id = new_id("sesn")
        # Repository tokens are stored sealed, bound to this tenant, session and resource.
        sealed = [(rid, self.vaults.seal_session_secret(tenant_id, session_id, rid, s)) for rid, s in secrets]
        initial = [event_to_new(e) for e in req.initial_events]
        postgres = not self.db.sqlite

        def transaction(conn: Connection) -> Any:
            # One transaction, one trip to the database's worker: every check, then the rows.
            agent = agents_render_row(agents_get_row_sync(conn, tenant_id, agent_id, version))
            if agent["archived_at"] is not None:
                raise InvalidRequest(
                    f"agent {agent_id} is archived; new sessions cannot use it", error_code="agent_archived"
                )
            snap = snapshot(agent)
            if isinstance(ref, schemas.AgentWithOverrides):
                snap = _apply_overrides(snap, ref)
            env = environments_get_row_sync(conn, tenant_id, req.environment_id)
            if env.archived_at is not None:
                raise InvalidRequest(
                    f"environment {req.environment_id} is archived; new sessions cannot use it",
                    error_code="environment_archived",
                )
            check_session_vaults_sync(conn, tenant_id, req.vault_ids)
            values = {
                "id": session_id,
                "tenant_id": tenant_id,
                "agent_id": agent_id,
                "agent_version": agent["version"],
                "agent": snap,
                "environment_id": req.environment_id,
                "title": req.title,
                "metadata": dict(req.metadata),
                "resources": resources,
                "vault_ids": list(req.vault_ids),
                "budget": req.budget.model_dump() if req.budget else None,
                "status": SessionStatus.IDLE,
                "usage": EMPTY_USAGE,
                "stats": {"active_seconds": 0.0},
                "last_seq": 0,
                "created_at": now,
                "updated_at": now,
            }
            conn.execute(sessions.insert().values(**values))
            if sealed:
                conn.execute(
                    session_secrets.insert(),
                    [
                        {"session_id": session_id, "resource_id": rid, "secret": s.envelope, "key_id": s.key_id}
                        for rid, s in sealed
                    ],
                )
            if initial:
                log.append_sync(conn, session_id, initial, postgres=postgres)
            return conn.execute(
                select(sessions).where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id)
            ).one()

        row = await self.db.run_write(transaction)
        if initial:
            self.bus.notify(session_id)
            self.bus.notify("*")
        return render(row)

    async def update(self, tenant_id: str, session_id: str, req: schemas.SessionUpdate) -> dict[str, Any]:
        fields = req.model_fields_set
        if "vault_ids" in fields:
            raise InvalidRequest("vault_ids: changing a session's vaults is not supported; create a new session")
        async with self.db.write() as conn:
            row = await self._row(conn, tenant_id, session_id, lock=True)
            self._check_writable(row)
            values: dict[str, Any] = {}
            changed: dict[str, Any] = {}
            if "title" in fields:
                values["title"] = changed["title"] = req.title
            if "metadata" in fields:
                values["metadata"] = changed["metadata"] = apply_metadata_patch(row.metadata, req.metadata)
            if "budget" in fields:
                if row.budget is None:
                    raise InvalidRequest(
                        "budget: a session created without a budget cannot get one",
                        error_code="budget_create_only",
                    )
                values["budget"] = changed["budget"] = req.budget.model_dump() if req.budget else None
            if "agent" in fields and req.agent is not None:
                if row.status in (SessionStatus.RUNNING, SessionStatus.RESCHEDULING):
                    raise Conflict(
                        f"session {session_id} is {row.status}; its agent can change only while it is idle",
                        error_code="session_running",
                    )
                agent = dict(row.agent)
                agent_fields = req.agent.model_fields_set
                if "tools" in agent_fields:
                    agent["tools"] = [resolve_tool(t) for t in req.agent.tools or []]
                if "mcp_servers" in agent_fields:
                    agent["mcp_servers"] = [s.model_dump() for s in req.agent.mcp_servers or []]
                check_resolved_tools(agent["tools"], agent["mcp_servers"])
                values["agent"] = changed["agent"] = agent
            if values:
                await conn.execute(update(sessions).where(sessions.c.id == session_id).values(**values))
                await log.append(
                    conn,
                    session_id,
                    [log.NewEvent(type="session.updated", payload=changed)],
                    postgres=not self.db.sqlite,
                )
            row = await self._row(conn, tenant_id, session_id)
        if values:
            self.bus.notify(session_id)
        return render(row)

    @staticmethod
    def _check_writable(row: Any) -> None:
        if row.archived_at is not None:
            raise Conflict(f"session {row.id} is archived and read-only", error_code="session_archived")
        if row.status == SessionStatus.TERMINATED:
            raise Conflict(f"session {row.id} is terminated", error_code="session_terminated")

    async def archive(self, tenant_id: str, session_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            row = await self._row(conn, tenant_id, session_id, lock=True)
            if row.archived_at is None:
                if row.status in (SessionStatus.RUNNING, SessionStatus.RESCHEDULING):
                    raise Conflict(
                        f"session {session_id} is {row.status}; interrupt it before archiving",
                        error_code="session_running",
                    )
                await conn.execute(update(sessions).where(sessions.c.id == session_id).values(archived_at=now_us()))
            row = await self._row(conn, tenant_id, session_id)
        return render(row)

    async def delete(self, tenant_id: str, session_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            await self._row(conn, tenant_id, session_id, lock=True)
            await log.delete_all(conn, session_id)
            await conn.execute(sessions.delete().where(sessions.c.id == session_id))
            if not self.db.sqlite:
                from sqlalchemy import text

                from core.bus import CHANNEL, notify_payload

                await conn.execute(
                    text("SELECT pg_notify(:c, :p)"),
                    {"c": CHANNEL, "p": notify_payload(session_id, deleted=True)},
                )
        self.bus.notify(session_id, deleted=True)
        return {"id": session_id, "type": "session_deleted"}

    async def list_page(
        self,
        tenant_id: str,
        *,
        limit: int,
        page: str | None,
        order: str,
        include_archived: bool,
        agent_id: str | None,
        agent_version: int | None,
        statuses: list[str],
        created: dict[str, int],
        unmatched: bool,
    ) -> Page:
        query = select(sessions).where(sessions.c.tenant_id == tenant_id)
        if unmatched:
            query = query.where(sessions.c.id.is_(None))
        if not include_archived:
            query = query.where(sessions.c.archived_at.is_(None))
        if agent_id is not None:
            query = query.where(sessions.c.agent_id == agent_id)
        if agent_version is not None:
            query = query.where(sessions.c.agent_version == agent_version)
        if statuses:
            query = query.where(sessions.c.status.in_(statuses))
        col = sessions.c.created_at
        ops = {"gt": col.__gt__, "gte": col.__ge__, "lt": col.__lt__, "lte": col.__le__}
        for op, value in created.items():
            query = query.where(ops[op](value))
        async with self.db.read() as conn:
            result = await keyset_page(
                conn,
                query,
                [sessions.c.created_at, sessions.c.id],
                order="asc" if order == "asc" else "desc",
                limit=limit,
                page=page,
            )
        return Page([render(r) for r in result.rows], result.next_page, result.prev_page)

    # --- events --------------------------------------------------------------------------------

    async def send_events(self, tenant_id: str, session_id: str, events: Sequence[Any]) -> list[dict[str, Any]]:
        new = [event_to_new(e) for e in events]
        confirm_ids = [e.tool_use_id for e in events if isinstance(e, schemas.UserToolConfirmation)]
        result_ids = [e.tool_use_id for e in events if isinstance(e, schemas.UserToolResult)]
        custom_ids = [e.custom_tool_use_id for e in events if isinstance(e, schemas.UserCustomToolResult)]
        postgres = not self.db.sqlite

        def owned_and_writable(conn: Connection) -> None:
            row = conn.execute(
                select(sessions.c.id, sessions.c.status, sessions.c.archived_at).where(
                    sessions.c.id == session_id, sessions.c.tenant_id == tenant_id
                )
            ).first()
            if row is None:
                raise NotFound(f"session {session_id} not found", error_code="session_not_found")
            self._check_writable(row)

        def transaction(conn: Connection) -> list[log.StoredEvent]:
            if confirm_ids or result_ids or custom_ids:
                owned_and_writable(conn)  # before looking for the referenced events
            check_refs(conn, session_id, confirm_ids, ("agent.tool_use", "agent.mcp_tool_use"), "tool_use_id")
            check_refs(conn, session_id, result_ids, ("agent.tool_use",), "tool_use_id")
            check_refs(conn, session_id, custom_ids, ("agent.custom_tool_use",), "custom_tool_use_id")
            try:
                # The guarded UPDATE takes the row lock and checks the session in one statement.
                return log.append_sync(conn, session_id, new, postgres=postgres, writable_for=tenant_id)
            except log.AppendRefused:
                owned_and_writable(conn)  # raises the error that explains the refusal
                raise

        stored = await self.db.run_write(transaction)
        self.bus.notify(session_id)
        self.bus.notify("*")
        return [e.render() for e in stored]

    async def list_events(
        self,
        tenant_id: str,
        session_id: str,
        *,
        limit: int,
        page: str | None,
        order: str,
        types: list[str],
        created: dict[str, int],
    ) -> Page:
        from core.db import session_events

        query = select(*log.EVENT_COLUMNS).where(session_events.c.session_id == session_id)
        if types:
            query = query.where(session_events.c.type.in_(types))
        col = session_events.c.processed_at
        ops = {"gt": col.__gt__, "gte": col.__ge__, "lt": col.__lt__, "lte": col.__le__}
        for op, value in created.items():
            query = query.where(ops[op](value))
        async with self.db.read() as conn:
            await self._row(conn, tenant_id, session_id)
            result = await keyset_page(
                conn,
                query,
                [session_events.c.seq],
                order="desc" if order == "desc" else "asc",
                limit=limit,
                page=page,
            )
        return Page([log.StoredEvent(**r._mapping).render() for r in result.rows], result.next_page, result.prev_page)

    async def stream_start(self, tenant_id: str, session_id: str) -> int:
        """The seq a new stream starts after: only events appended from now on are delivered."""
        async with self.db.read() as conn:
            return int((await self._row(conn, tenant_id, session_id)).last_seq)
