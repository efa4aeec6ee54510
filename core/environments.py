"""Environments: where a session's tools run (sandbox config: networking, packages)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from core import schemas
from core.agents import apply_metadata_patch
from core.db import Database, environments, sessions
from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import new_id, now_us, us_to_rfc3339
from core.pagination import Page, keyset_page

PACKAGE_MANAGERS = ("apt", "cargo", "gem", "go", "npm", "pip")


def _packages(given: schemas.Packages | None, current: dict[str, Any] | None) -> dict[str, Any]:
    base = current or {"type": "packages", **{m: [] for m in PACKAGE_MANAGERS}}
    if given is None:
        return base
    out = dict(base)
    out["type"] = "packages"
    for manager in PACKAGE_MANAGERS:
        value = getattr(given, manager)
        if value is not None:
            out[manager] = list(value)
    return out


def _networking(given: schemas.UnrestrictedNetwork | schemas.LimitedNetwork | None, current: Any) -> Any:
    if given is None:
        return current or {"type": "unrestricted"}
    if isinstance(given, schemas.UnrestrictedNetwork):
        return {"type": "unrestricted"}
    prev = current if current and current.get("type") == "limited" else {}
    return {
        "type": "limited",
        "allowed_hosts": list(given.allowed_hosts)
        if given.allowed_hosts is not None
        else prev.get("allowed_hosts", []),
        "allow_mcp_servers": given.allow_mcp_servers
        if given.allow_mcp_servers is not None
        else prev.get("allow_mcp_servers", False),
        "allow_package_managers": given.allow_package_managers
        if given.allow_package_managers is not None
        else prev.get("allow_package_managers", False),
    }


def resolve_config(
    given: schemas.CloudConfig | schemas.SelfHostedConfig | None, current: dict[str, Any] | None
) -> dict[str, Any]:
    if isinstance(given, schemas.SelfHostedConfig):
        return {"type": "self_hosted"}
    same_kind = current if current and current.get("type") == "cloud" else None
    networking = _networking(given.networking if given else None, same_kind and same_kind["networking"])
    packages = _packages(given.packages if given else None, same_kind and same_kind["packages"])
    if (
        networking["type"] == "limited"
        and any(packages[m] for m in PACKAGE_MANAGERS)
        and not networking["allow_package_managers"]
    ):
        raise InvalidRequest(
            "config.packages: under limited networking, packages require networking.allow_package_managers: true"
        )
    return {"type": "cloud", "networking": networking, "packages": packages}


def render(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": "environment",
        "name": row.name,
        "description": row.description,
        "config": row.config,
        "metadata": row.metadata,
        "scope": row.scope,
        "created_at": us_to_rfc3339(row.created_at),
        "updated_at": us_to_rfc3339(row.updated_at),
        "archived_at": us_to_rfc3339(row.archived_at),
    }


class EnvironmentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _get(self, conn: AsyncConnection, tenant_id: str, env_id: str) -> Any:
        return await conn.run_sync(lambda c: get_row_sync(c, tenant_id, env_id))

    async def get(self, tenant_id: str, env_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            return render(await self._get(conn, tenant_id, env_id))

    async def get_row(self, conn: AsyncConnection, tenant_id: str, env_id: str) -> Any:
        return await self._get(conn, tenant_id, env_id)

    async def create(self, tenant_id: str, req: schemas.EnvironmentCreate) -> dict[str, Any]:
        env_id = new_id("env")
        now = now_us()
        values = {
            "id": env_id,
            "tenant_id": tenant_id,
            "name": req.name,
            "description": req.description,
            "config": resolve_config(req.config, None),
            "metadata": dict(req.metadata),
            "scope": req.scope or "organization",
            "created_at": now,
            "updated_at": now,
        }
        async with self.db.write() as conn:
            await conn.execute(environments.insert().values(**values))
            return render(await self._get(conn, tenant_id, env_id))

    async def update(self, tenant_id: str, env_id: str, req: schemas.EnvironmentUpdate) -> dict[str, Any]:
        fields = req.model_fields_set
        async with self.db.write() as conn:
            row = await self._get(conn, tenant_id, env_id)
            if row.archived_at is not None:
                raise InvalidRequest(
                    f"environment {env_id} is archived, so it cannot be updated",
                    error_code="environment_archived",
                )
            values: dict[str, Any] = {}
            if "name" in fields and req.name is not None:
                values["name"] = req.name
            if "description" in fields:
                values["description"] = req.description
            if "scope" in fields and req.scope is not None:
                values["scope"] = req.scope
            if "config" in fields and req.config is not None:
                values["config"] = resolve_config(req.config, row.config)
            if "metadata" in fields:
                values["metadata"] = apply_metadata_patch(row.metadata, req.metadata)
            if values:
                values["updated_at"] = now_us()
                await conn.execute(update(environments).where(environments.c.id == env_id).values(**values))
            return render(await self._get(conn, tenant_id, env_id))

    async def archive(self, tenant_id: str, env_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            row = await self._get(conn, tenant_id, env_id)
            if row.archived_at is None:
                now = now_us()
                await conn.execute(
                    update(environments).where(environments.c.id == env_id).values(archived_at=now, updated_at=now)
                )
            return render(await self._get(conn, tenant_id, env_id))

    async def delete(self, tenant_id: str, env_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            await self._get(conn, tenant_id, env_id)
            in_use = await conn.execute(
                select(sessions.c.id)
                .where(
                    sessions.c.environment_id == env_id,
                    sessions.c.status.in_(["running", "rescheduling"]),
                )
                .limit(1)
            )
            if in_use.first() is not None:
                raise Conflict(
                    f"environment {env_id} has running sessions; interrupt them or archive the environment instead",
                    error_code="environment_in_use",
                )
            await conn.execute(delete(environments).where(environments.c.id == env_id))
        return {"id": env_id, "type": "environment_deleted"}

    async def list_page(
        self, tenant_id: str, *, limit: int, page: str | None, include_archived: bool
    ) -> tuple[list[dict[str, Any]], Page]:
        query = select(environments).where(environments.c.tenant_id == tenant_id)
        if not include_archived:
            query = query.where(environments.c.archived_at.is_(None))
        async with self.db.read() as conn:
            result = await keyset_page(
                conn,
                query,
                [environments.c.created_at, environments.c.id],
                order="desc",
                limit=limit,
                page=page,
            )
        return [render(r) for r in result.rows], result


def get_row_sync(conn: Connection, tenant_id: str, env_id: str) -> Any:
    row = conn.execute(
        select(environments).where(environments.c.id == env_id, environments.c.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise NotFound(f"environment {env_id} not found", error_code="environment_not_found")
    return row
