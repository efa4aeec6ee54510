"""Routes for agents, environments and sessions (not their events: see core/api/events.py)."""

from __future__ import annotations

from aiohttp import web

from core import schemas
from core.api.http import (
    expect_empty_body,
    json_response,
    page_body,
    parse_body,
    q_bool,
    q_created,
    q_int,
    q_list,
    q_order,
    q_str,
    tenant,
)
from core.errors import InvalidRequest
from core.platform import PLATFORM
from core.sessions import SessionStatus

routes = web.RouteTableDef()


# --- agents ------------------------------------------------------------------------------------


@routes.post("/v1/agents")
async def create_agent(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.AgentCreate)
    return json_response(await request.app[PLATFORM].agents.create(tenant(request), req))


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    q = request.query
    created = q_created(q, ("gte", "lte"))
    data, page = await request.app[PLATFORM].agents.list_page(
        tenant(request),
        limit=q_int(q, "limit", default=20, lo=1, hi=100) or 20,
        page=q_str(q, "page"),
        include_archived=q_bool(q, "include_archived"),
        created_gte=created.get("gte"),
        created_lte=created.get("lte"),
    )
    return json_response(page_body(data, page.next_page))


@routes.get("/v1/agents/{agent_id}")
async def get_agent(request: web.Request) -> web.Response:
    version = q_int(request.query, "version", default=None, lo=1, hi=2**31 - 1)
    agent = await request.app[PLATFORM].agents.get(tenant(request), request.match_info["agent_id"], version)
    return json_response(agent)


@routes.post("/v1/agents/{agent_id}")
async def update_agent(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.AgentUpdate)
    return json_response(
        await request.app[PLATFORM].agents.update(tenant(request), request.match_info["agent_id"], req)
    )


@routes.post("/v1/agents/{agent_id}/archive")
async def archive_agent(request: web.Request) -> web.Response:
    await expect_empty_body(request)
    return json_response(await request.app[PLATFORM].agents.archive(tenant(request), request.match_info["agent_id"]))


@routes.get("/v1/agents/{agent_id}/versions")
async def list_agent_versions(request: web.Request) -> web.Response:
    q = request.query
    data, page = await request.app[PLATFORM].agents.versions(
        tenant(request),
        request.match_info["agent_id"],
        limit=q_int(q, "limit", default=20, lo=1, hi=100) or 20,
        page=q_str(q, "page"),
    )
    return json_response(page_body(data, page.next_page))


# --- environments ------------------------------------------------------------------------------


@routes.post("/v1/environments")
async def create_environment(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.EnvironmentCreate)
    return json_response(await request.app[PLATFORM].environments.create(tenant(request), req))


@routes.get("/v1/environments")
async def list_environments(request: web.Request) -> web.Response:
    q = request.query
    data, page = await request.app[PLATFORM].environments.list_page(
        tenant(request),
        limit=q_int(q, "limit", default=20, lo=1, hi=100) or 20,
        page=q_str(q, "page"),
        include_archived=q_bool(q, "include_archived"),
    )
    return json_response(page_body(data, page.next_page))


@routes.get("/v1/environments/{env_id}")
async def get_environment(request: web.Request) -> web.Response:
    return json_response(await request.app[PLATFORM].environments.get(tenant(request), request.match_info["env_id"]))


@routes.post("/v1/environments/{env_id}")
async def update_environment(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.EnvironmentUpdate)
    return json_response(
        await request.app[PLATFORM].environments.update(tenant(request), request.match_info["env_id"], req)
    )


@routes.delete("/v1/environments/{env_id}")
async def delete_environment(request: web.Request) -> web.Response:
    return json_response(await request.app[PLATFORM].environments.delete(tenant(request), request.match_info["env_id"]))


@routes.post("/v1/environments/{env_id}/archive")
async def archive_environment(request: web.Request) -> web.Response:
    await expect_empty_body(request)
    return json_response(
        await request.app[PLATFORM].environments.archive(tenant(request), request.match_info["env_id"])
    )


# --- sessions ----------------------------------------------------------------------------------

STATUSES = frozenset(s.value for s in SessionStatus)


@routes.post("/v1/sessions")
async def create_session(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.SessionCreate)
    return json_response(await request.app[PLATFORM].sessions.create(tenant(request), req))


@routes.get("/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    q = request.query
    statuses = q_list(q, "statuses")
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise InvalidRequest(f"statuses[]: unknown status {unknown[0]!r}; expected one of {sorted(STATUSES)}")
    # We have no deployments or memory stores, so filtering on one matches nothing.
    unmatched = q_str(q, "deployment_id") is not None or q_str(q, "memory_store_id") is not None
    page = await request.app[PLATFORM].sessions.list_page(
        tenant(request),
        limit=q_int(q, "limit", default=20, lo=1, hi=100) or 20,
        page=q_str(q, "page"),
        order=q_order(q, "desc"),
        include_archived=q_bool(q, "include_archived"),
        agent_id=q_str(q, "agent_id"),
        agent_version=q_int(q, "agent_version", default=None, lo=1, hi=2**31 - 1),
        statuses=statuses,
        created=q_created(q),
        unmatched=unmatched,
    )
    return json_response(page_body(page.rows, page.next_page, page.prev_page, bidi=True))


@routes.get("/v1/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    return json_response(await request.app[PLATFORM].sessions.get(tenant(request), request.match_info["session_id"]))


@routes.post("/v1/sessions/{session_id}")
async def update_session(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.SessionUpdate)
    return json_response(
        await request.app[PLATFORM].sessions.update(tenant(request), request.match_info["session_id"], req)
    )


@routes.delete("/v1/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    return json_response(await request.app[PLATFORM].sessions.delete(tenant(request), request.match_info["session_id"]))


@routes.post("/v1/sessions/{session_id}/archive")
async def archive_session(request: web.Request) -> web.Response:
    await expect_empty_body(request)
    return json_response(
        await request.app[PLATFORM].sessions.archive(tenant(request), request.match_info["session_id"])
    )
