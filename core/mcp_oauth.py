"""MCP credentials in use: the bearer token for an MCP server, refreshed when an `mcp_oauth`
credential's access token has expired or the server refuses it, and the live validation behind
`POST /v1/vaults/{vid}/credentials/{cid}/mcp_oauth_validate`.

A refresh is OAuth's `refresh_token` grant at the credential's `token_endpoint`, with the client
authentication it names (`none`, `client_secret_basic`, `client_secret_post`) and its `resource`
and `scope`; the new access token (and refresh token, when the server rotates it) and expiry are
sealed back into the vault, so every process uses them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from core.credentials import CredentialKind, CredentialUpdate, MCPOAuthRefreshUpdate, MCPOAuthUpdate
from core.ids import now_us, us_to_rfc3339
from core.vaults import McpCredential, VaultStore

log = logging.getLogger("oma.mcp")

SKEW = timedelta(seconds=60)  # refresh a token this long before it expires
TOKEN_TIMEOUT = 30.0
_BODY_LIMIT = 2048
_SECRET_FIELDS = re.compile(r'("(?:access_token|refresh_token|id_token|client_secret)"\s*:\s*")[^"]*(")')


@dataclass(frozen=True, slots=True)
class Refresh:
    """How a refresh went: `succeeded`, `failed` (the token endpoint said no: `http_response`),
    `connect_error` or `no_refresh_token`, as the validation object reports it."""

    status: str
    access_token: str | None = None
    http_response: dict[str, Any] | None = None


def expired(expires_at: str | None) -> bool:
    if not expires_at:
        return False
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when - SKEW <= datetime.now(UTC)


def captured(status: int, content_type: str, body: str) -> dict[str, Any]:
    """An HTTP error response as the validation object shows it: secrets scrubbed, truncated."""
    body = _SECRET_FIELDS.sub(r"\1[redacted]\2", body)
    return {
        "status_code": status,
        "content_type": content_type,
        "body": body[:_BODY_LIMIT],
        "body_truncated": len(body) > _BODY_LIMIT,
    }


_locks: dict[str, asyncio.Lock] = {}


async def refresh(vaults: VaultStore, tenant_id: str, vault_id: str, credential_id: str) -> Refresh:
    """Exchange the credential's refresh token for a new access token and store it."""
    lock = _locks.setdefault(credential_id, asyncio.Lock())
    async with lock:
        kind, public, secret = await vaults.credential_fields(tenant_id, vault_id, credential_id)
        settings = public.get("refresh") or {}
        if kind != CredentialKind.MCP_OAUTH or not settings or not secret.get("refresh_token"):
            return Refresh("no_refresh_token")
        form = {"grant_type": "refresh_token", "refresh_token": secret["refresh_token"]}
        headers = {"Accept": "application/json"}
        method = (settings.get("token_endpoint_auth") or {}).get("type", "none")
        client_id = str(settings.get("client_id") or "")
        if method == "client_secret_basic":
            quoted = [urllib.parse.quote(v, safe="") for v in (client_id, secret.get("client_secret", ""))]
            pair = ":".join(quoted)
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = client_id
            if method == "client_secret_post":
                form["client_secret"] = secret.get("client_secret", "")
        for option in ("resource", "scope"):
            if settings.get(option):
                form[option] = str(settings[option])
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TOKEN_TIMEOUT)) as http,
                http.post(settings["token_endpoint"], data=form, headers=headers) as response,
            ):
                body = await response.text()
                if response.status >= 300:
                    return Refresh("failed", http_response=captured(response.status, response.content_type, body))
                granted = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("mcp_oauth %s: the token endpoint cannot be reached: %s", credential_id, e)
            return Refresh("connect_error")
        except ValueError:
            return Refresh("failed", http_response=captured(200, "application/json", "not JSON"))
        access = granted.get("access_token") if isinstance(granted, dict) else None
        if not isinstance(access, str) or not access:
            return Refresh("failed", http_response=captured(200, "application/json", "no access_token in the answer"))
        expires_in = granted.get("expires_in")
        expires_at = (
            datetime.now(UTC) + timedelta(seconds=float(expires_in)) if isinstance(expires_in, int | float) else None
        )
        rotated = granted.get("refresh_token")
        update = MCPOAuthUpdate(
            type="mcp_oauth",
            access_token=access,
            expires_at=expires_at,  # None (set explicitly): no expiry known for the new token
            refresh=MCPOAuthRefreshUpdate(refresh_token=rotated) if isinstance(rotated, str) and rotated else None,
        )
        await vaults.update_credential(tenant_id, vault_id, credential_id, CredentialUpdate(auth=update))
        return Refresh("succeeded", access_token=access)


class VaultTokens:
    """A session's MCP tokens (core.mcp's TokenSource): from its vaults, refreshed as needed."""

    def __init__(self, vaults: VaultStore, tenant_id: str, vault_ids: Sequence[str]) -> None:
        self.vaults = vaults
        self.tenant_id = tenant_id
        self.vault_ids = list(vault_ids)

    async def _credential(self, url: str) -> McpCredential | None:
        return await self.vaults.mcp_credential(self.tenant_id, self.vault_ids, url)

    async def token(self, url: str) -> str | None:
        found = await self._credential(url)
        if found is None:
            return None
        if found.oauth and found.refreshable and expired(found.expires_at):
            outcome = await refresh(self.vaults, self.tenant_id, found.vault_id, found.credential_id)
            if outcome.access_token:
                return outcome.access_token
        return found.token

    async def refreshed(self, url: str, stale: str) -> str | None:
        """After the server refused `stale`: a new token, or None when there is none to try."""
        found = await self._credential(url)
        if found is None:
            return None
        if found.token != stale:  # another run refreshed it meanwhile
            return found.token
        if not (found.oauth and found.refreshable):
            return None
        outcome = await refresh(self.vaults, self.tenant_id, found.vault_id, found.credential_id)
        return outcome.access_token


async def validate(vaults: VaultStore, tenant_id: str, vault_id: str, credential_id: str) -> dict[str, Any]:
    """Probe the credential's MCP server (initialize, tools/list) with its access token; on a 401
    try the refresh token, then probe again. The API's `vault_credential_validation` object."""
    from core.mcp import probe

    _, public, secret = await vaults.credential_fields(tenant_id, vault_id, credential_id)
    url = str(public.get("mcp_server_url") or "")
    has_refresh = bool(public.get("refresh")) and bool(secret.get("refresh_token"))
    token = secret.get("access_token")
    refreshed: Refresh | None = None
    failure = await probe(url, token) if token else None
    if failure is not None and (failure.get("http_response") or {}).get("status_code") in (401, 403):
        refreshed = Refresh("no_refresh_token")
        if has_refresh:
            refreshed = await refresh(vaults, tenant_id, vault_id, credential_id)
        if refreshed.access_token:
            failure = await probe(url, refreshed.access_token)
    if token is None:
        status = "unknown"
    elif failure is None:
        status = "valid"
    elif (failure.get("http_response") or {}).get("status_code") in (401, 403):
        status = "invalid"
    else:
        status = "unknown"  # the server could not be reached or failed otherwise: no verdict on the token
    result: dict[str, Any] = {
        "type": "vault_credential_validation",
        "credential_id": credential_id,
        "vault_id": vault_id,
        "status": status,
        "has_refresh_token": has_refresh,
        "mcp_probe": failure,
        "refresh": None,
        "validated_at": us_to_rfc3339(now_us()),
    }
    if refreshed is not None:
        result["refresh"] = {"status": refreshed.status, "http_response": refreshed.http_response}
    return result
