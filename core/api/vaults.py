"""Routes for vaults and their credentials (`client.beta.vaults`, `client.beta.vaults.credentials`)."""

from __future__ import annotations

from aiohttp import web

from core.api.http import expect_empty_body, json_response, page_body, parse_body, q_bool, q_int, q_str, tenant
from core.credentials import CredentialCreate, CredentialUpdate, VaultCreate, VaultUpdate
from core.platform import PLATFORM

routes = web.RouteTableDef()


def _limit(request: web.Request) -> int:
    return q_int(request.query, "limit", default=20, lo=1, hi=100) or 20


# --- vaults ------------------------------------------------------------------------------------


@routes.post("/v1/vaults")
async def create_vault(request: web.Request) -> web.Response:
    req = await parse_body(request, VaultCreate)
    return json_response(await request.app[PLATFORM].vaults.create(tenant(request), req))


@routes.get("/v1/vaults")
async def list_vaults(request: web.Request) -> web.Response:
    data, page = await request.app[PLATFORM].vaults.list_page(
        tenant(request),
        limit=_limit(request),
        page=q_str(request.query, "page"),
        include_archived=q_bool(request.query, "include_archived"),
    )
    return json_response(page_body(data, page.next_page))


@routes.get("/v1/vaults/{vault_id}")
async def get_vault(request: web.Request) -> web.Response:
    return json_response(await request.app[PLATFORM].vaults.get(tenant(request), request.match_info["vault_id"]))


@routes.post("/v1/vaults/{vault_id}")
async def update_vault(request: web.Request) -> web.Response:
    req = await parse_body(request, VaultUpdate)
    return json_response(
        await request.app[PLATFORM].vaults.update(tenant(request), request.match_info["vault_id"], req)
    )


@routes.delete("/v1/vaults/{vault_id}")
async def delete_vault(request: web.Request) -> web.Response:
    return json_response(await request.app[PLATFORM].vaults.delete(tenant(request), request.match_info["vault_id"]))


@routes.post("/v1/vaults/{vault_id}/archive")
async def archive_vault(request: web.Request) -> web.Response:
    await expect_empty_body(request)
    return json_response(await request.app[PLATFORM].vaults.archive(tenant(request), request.match_info["vault_id"]))


# --- credentials -------------------------------------------------------------------------------


@routes.post("/v1/vaults/{vault_id}/credentials")
async def create_credential(request: web.Request) -> web.Response:
    req = await parse_body(request, CredentialCreate)
    return json_response(
        await request.app[PLATFORM].vaults.create_credential(tenant(request), request.match_info["vault_id"], req)
    )


@routes.get("/v1/vaults/{vault_id}/credentials")
async def list_credentials(request: web.Request) -> web.Response:
    data, page = await request.app[PLATFORM].vaults.list_credentials(
        tenant(request),
        request.match_info["vault_id"],
        limit=_limit(request),
        page=q_str(request.query, "page"),
        include_archived=q_bool(request.query, "include_archived"),
    )
    return json_response(page_body(data, page.next_page))


@routes.get("/v1/vaults/{vault_id}/credentials/{credential_id}")
async def get_credential(request: web.Request) -> web.Response:
    m = request.match_info
    return json_response(
        await request.app[PLATFORM].vaults.get_credential(tenant(request), m["vault_id"], m["credential_id"])
    )


@routes.post("/v1/vaults/{vault_id}/credentials/{credential_id}")
async def update_credential(request: web.Request) -> web.Response:
    req = await parse_body(request, CredentialUpdate)
    m = request.match_info
    return json_response(
        await request.app[PLATFORM].vaults.update_credential(tenant(request), m["vault_id"], m["credential_id"], req)
    )


@routes.delete("/v1/vaults/{vault_id}/credentials/{credential_id}")
async def delete_credential(request: web.Request) -> web.Response:
    m = request.match_info
    return json_response(
        await request.app[PLATFORM].vaults.delete_credential(tenant(request), m["vault_id"], m["credential_id"])
    )


@routes.post("/v1/vaults/{vault_id}/credentials/{credential_id}/archive")
async def archive_credential(request: web.Request) -> web.Response:
    await expect_empty_body(request)
    m = request.match_info
    return json_response(
        await request.app[PLATFORM].vaults.archive_credential(tenant(request), m["vault_id"], m["credential_id"])
    )


@routes.post("/v1/vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate")
async def validate_credential(request: web.Request) -> web.Response:
    await expect_empty_body(request)
    m = request.match_info
    return json_response(
        await request.app[PLATFORM].vaults.validate_mcp_oauth(tenant(request), m["vault_id"], m["credential_id"])
    )
