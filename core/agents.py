"""Agents: every version kept whole; updates are optimistic on `version`; archive is final."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from core import schemas
from core.db import Database, agent_versions, agents
from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import new_id, now_us, us_to_rfc3339
from core.pagination import Page, keyset_page

DEFAULT_POLICY = {"type": "always_allow"}
SERVICE_ACCOUNT = {"type": "service_account"}


# --- resolution: request models -> stored/response shapes --------------------------------------


def resolve_model(model: str | schemas.ModelConfig) -> dict[str, Any]:
    if isinstance(model, str):
        return {"id": model}
    out: dict[str, Any] = {"id": model.id}
    if model.effort is not None:
        out["effort"] = {"type": model.effort} if isinstance(model.effort, str) else model.effort.model_dump()
    if model.inference_geo is not None:
        out["inference_geo"] = model.inference_geo
    if model.speed is not None:
        out["speed"] = model.speed
    return out


def _policy(policy: schemas.PermissionPolicy | None, default: dict[str, Any]) -> dict[str, Any]:
    return policy.model_dump() if policy is not None else dict(default)


def resolve_tool(tool: schemas.AgentToolset | schemas.MCPToolset | schemas.CustomTool) -> dict[str, Any]:
    if isinstance(tool, schemas.CustomTool):
        return {
            "type": "custom",
            "name": tool.name,
            "description": tool.description,
            "input_schema": tool.input_schema.model_dump(exclude_none=True),
        }
    given = tool.default_config or schemas.ToolsetDefaultConfig()
    default: dict[str, Any] = {
        "enabled": True if given.enabled is None else given.enabled,
        "permission_policy": _policy(given.permission_policy, DEFAULT_POLICY),
    }
    if isinstance(tool, schemas.MCPToolset):
        return {
            "type": "mcp_toolset",
            "mcp_server_name": tool.mcp_server_name,
            "default_config": default,
            "configs": [
                {
                    "name": c.name,
                    "enabled": default["enabled"] if c.enabled is None else c.enabled,
                    "permission_policy": _policy(c.permission_policy, default["permission_policy"]),
                }
                for c in tool.configs
            ],
        }
    configs = []
    for c in tool.configs:
        config: dict[str, Any] = {
            "name": c.name,
            "type": c.name,
            "enabled": default["enabled"] if c.enabled is None else c.enabled,
            "permission_policy": _policy(c.permission_policy, default["permission_policy"]),
        }
        for option in (
            "allowed_domains",
            "blocked_domains",
            "max_content_tokens",
            "url_sources",
            "user_location",
        ):
            value = getattr(c, option)
            if value is not None:
                config[option] = value
        configs.append(config)
    return {"type": "agent_toolset_20260401", "default_config": default, "configs": configs}


def resolve_skill(skill: schemas.Skill) -> dict[str, Any]:
    return {"type": skill.type, "skill_id": skill.skill_id, "version": skill.version or "latest"}


def check_multiagent(value: dict[str, Any] | None) -> None:
    if value is not None:
        raise InvalidRequest(
            "multiagent: multiagent orchestration is not supported by this server yet; omit the field",
            error_code="multiagent_unsupported",
        )


def body_from_create(req: schemas.AgentCreate) -> dict[str, Any]:
    check_multiagent(req.multiagent)
    return {
        "name": req.name,
        "description": req.description,
        "system": req.system,
        "model": resolve_model(req.model),
        "tools": [resolve_tool(t) for t in req.tools],
        "mcp_servers": [s.model_dump() for s in req.mcp_servers],
        "skills": [resolve_skill(s) for s in req.skills],
        "execution_identity": req.execution_identity.model_dump() if req.execution_identity else SERVICE_ACCOUNT,
        "multiagent": None,
        "metadata": dict(req.metadata),
    }


def apply_metadata_patch(current: dict[str, str], patch: dict[str, str | None] | None) -> dict[str, str]:
    out = dict(current)
    for key, value in (patch or {}).items():
        if value is None or value == "":
            out.pop(key, None)
        else:
            out[key] = value
    if len(out) > schemas.MAX_METADATA_PAIRS:
        raise InvalidRequest(f"metadata: at most {schemas.MAX_METADATA_PAIRS} pairs are allowed")
    return out


def body_from_update(current: dict[str, Any], req: schemas.AgentUpdate) -> dict[str, Any]:
    fields = req.model_fields_set
    body = dict(current)
    if "name" in fields and req.name is not None:
        body["name"] = req.name
    if "description" in fields:
        body["description"] = req.description
    if "system" in fields:
        body["system"] = req.system
    if "model" in fields and req.model is not None:
        body["model"] = resolve_model(req.model)
    if "tools" in fields:
        body["tools"] = [resolve_tool(t) for t in req.tools or []]
    if "mcp_servers" in fields:
        body["mcp_servers"] = [s.model_dump() for s in req.mcp_servers or []]
    if "skills" in fields:
        body["skills"] = [resolve_skill(s) for s in req.skills or []]
    if "execution_identity" in fields:
        body["execution_identity"] = req.execution_identity.model_dump() if req.execution_identity else SERVICE_ACCOUNT
    if "multiagent" in fields:
        check_multiagent(req.multiagent)
    if "metadata" in fields:
        body["metadata"] = apply_metadata_patch(current.get("metadata", {}), req.metadata)
    if "tools" in fields or "mcp_servers" in fields:
        # Re-check cross references on the resulting agent, not just on the request.
        check_resolved_tools(body["tools"], body["mcp_servers"])
    return body


def check_resolved_tools(tools: list[dict[str, Any]], mcp_servers: list[dict[str, Any]]) -> None:
    names = {s["name"] for s in mcp_servers}
    referenced = {t["mcp_server_name"] for t in tools if t["type"] == "mcp_toolset"}
    if referenced - names:
        raise InvalidRequest(f"tools: mcp_toolset references unknown mcp servers {sorted(referenced - names)}")
    if names - referenced:
        raise InvalidRequest(f"mcp_servers: each must be referenced by an mcp_toolset: {sorted(names - referenced)}")


def render(row: Any, body: dict[str, Any], version: int, updated_at: int) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": "agent",
        "name": body["name"],
        "description": body.get("description"),
        "system": body.get("system"),
        "model": body["model"],
        "tools": body["tools"],
        "mcp_servers": body["mcp_servers"],
        "skills": body["skills"],
        "execution_identity": body["execution_identity"],
        "multiagent": body.get("multiagent"),
        "metadata": body.get("metadata", {}),
        "version": version,
        "created_at": us_to_rfc3339(row.created_at),
        "updated_at": us_to_rfc3339(updated_at),
        "archived_at": us_to_rfc3339(row.archived_at),
    }


def snapshot(agent: dict[str, Any]) -> dict[str, Any]:
    """The agent as a session carries it: no timestamps or metadata."""
    keep = (
        "id", "type", "name", "description", "system", "model", "tools",
        "mcp_servers", "skills", "execution_identity", "multiagent", "version",
    )  # fmt: skip
    return {k: agent[k] for k in keep}


# --- store -------------------------------------------------------------------------------------

_JOINED = select(
    agents.c.id,
    agents.c.created_at,
    agents.c.archived_at,
    agent_versions.c.version,
    agent_versions.c.body,
    agent_versions.c.created_at.label("version_created_at"),
).select_from(agents.join(agent_versions, agent_versions.c.agent_id == agents.c.id))


def _render_joined(row: Any) -> dict[str, Any]:
    return render(row, row.body, row.version, row.version_created_at)


class AgentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, tenant_id: str, req: schemas.AgentCreate) -> dict[str, Any]:
        body = body_from_create(req)
        agent_id = new_id("agent")
        now = now_us()
        async with self.db.write() as conn:
            await conn.execute(
                agents.insert().values(id=agent_id, tenant_id=tenant_id, version=1, created_at=now, updated_at=now)
            )
            await conn.execute(agent_versions.insert().values(agent_id=agent_id, version=1, body=body, created_at=now))
        return await self.get(tenant_id, agent_id)

    async def _get(self, conn: AsyncConnection, tenant_id: str, agent_id: str, version: int | None) -> Any:
        return await conn.run_sync(lambda c: get_row_sync(c, tenant_id, agent_id, version))

    async def get(self, tenant_id: str, agent_id: str, version: int | None = None) -> dict[str, Any]:
        async with self.db.read() as conn:
            return _render_joined(await self._get(conn, tenant_id, agent_id, version))

    async def update(self, tenant_id: str, agent_id: str, req: schemas.AgentUpdate) -> dict[str, Any]:
        async with self.db.write() as conn:
            row = await self._get(conn, tenant_id, agent_id, None)
            if row.archived_at is not None:
                raise InvalidRequest(f"agent {agent_id} is archived and read-only", error_code="agent_archived")
            if req.version is not None and req.version != row.version:
                raise Conflict(
                    f"agent {agent_id} is at version {row.version}, not {req.version}; "
                    "retrieve it again and reapply your change",
                    error_code="agent_version_conflict",
                )
            body = body_from_update(row.body, req)
            if body == row.body:
                return _render_joined(row)  # nothing changed: no new version
            version = row.version + 1
            now = now_us()
            result = await conn.execute(
                update(agents)
                .where(agents.c.id == agent_id, agents.c.version == row.version)
                .values(version=version, updated_at=now)
            )
            if result.rowcount != 1:
                raise Conflict(f"agent {agent_id} changed concurrently; retry", error_code="agent_version_conflict")
            await conn.execute(
                agent_versions.insert().values(agent_id=agent_id, version=version, body=body, created_at=now)
            )
        return await self.get(tenant_id, agent_id)

    async def archive(self, tenant_id: str, agent_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            row = await self._get(conn, tenant_id, agent_id, None)
            if row.archived_at is None:
                await conn.execute(update(agents).where(agents.c.id == agent_id).values(archived_at=now_us()))
        return await self.get(tenant_id, agent_id)

    async def list_page(
        self,
        tenant_id: str,
        *,
        limit: int,
        page: str | None,
        include_archived: bool,
        created_gte: int | None,
        created_lte: int | None,
    ) -> tuple[list[dict[str, Any]], Page]:
        query = _JOINED.where(agents.c.tenant_id == tenant_id, agent_versions.c.version == agents.c.version)
        if not include_archived:
            query = query.where(agents.c.archived_at.is_(None))
        if created_gte is not None:
            query = query.where(agents.c.created_at >= created_gte)
        if created_lte is not None:
            query = query.where(agents.c.created_at <= created_lte)
        async with self.db.read() as conn:
            result = await keyset_page(
                conn, query, [agents.c.created_at, agents.c.id], order="desc", limit=limit, page=page
            )
        return [_render_joined(r) for r in result.rows], result

    async def versions(
        self, tenant_id: str, agent_id: str, *, limit: int, page: str | None
    ) -> tuple[list[dict[str, Any]], Page]:
        query = _JOINED.where(agents.c.id == agent_id, agents.c.tenant_id == tenant_id)
        async with self.db.read() as conn:
            await self._get(conn, tenant_id, agent_id, None)
            result = await keyset_page(conn, query, [agent_versions.c.version], order="desc", limit=limit, page=page)
        return [_render_joined(r) for r in result.rows], result


def get_row_sync(conn: Connection, tenant_id: str, agent_id: str, version: int | None = None) -> Any:
    """The agent joined with its current version (or `version`); NotFound when either is missing."""
    query = _JOINED.where(agents.c.id == agent_id, agents.c.tenant_id == tenant_id)
    if version is None:
        query = query.where(agent_versions.c.version == agents.c.version)
    else:
        query = query.where(agent_versions.c.version == version)
    row = conn.execute(query).first()
    if row is None:
        if version is not None:
            exists = conn.execute(select(agents.c.id).where(agents.c.id == agent_id, agents.c.tenant_id == tenant_id))
            if exists.first() is not None:
                raise NotFound(f"agent {agent_id} has no version {version}", error_code="agent_version_not_found")
        raise NotFound(f"agent {agent_id} not found", error_code="agent_not_found")
    return row


def render_row(row: Any) -> dict[str, Any]:
    """An agent as the API shows it, from `get_row_sync`'s row."""
    return _render_joined(row)
