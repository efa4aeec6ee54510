"""Linear: delegate an issue to the agent or @-mention it, and it works and reports through
Linear's Agents API (agent sessions and their activities).

Inbound: `AgentSessionEvent` webhooks at `POST /linear/webhook`. The `Linear-Signature` header
(hex HMAC-SHA256 of the raw body with the webhook secret) is checked in constant time and the
payload's `webhookTimestamp` must be within 60 s; then the delivery becomes an `Inbound` handed to
`Ingress.accept` (dedup and inbox, one transaction) before Linear gets its 200, well inside its 5 s.
`created` starts a session bound to the Linear agent session id, with Linear's `promptContext`,
`previousComments` and `guidance` as the first message; `prompted` adds the user's follow-up
(or answers a pending approval); a prompt with the `stop` signal interrupts. Dedup keys: the
agent session id for `created`, the prompt activity id for `prompted`, and `Linear-Delivery`.

Outbound is `adapters.linear_reply` (agent activities). Credentials: a single workspace's
`LINEAR_API_KEY` or OAuth token from the settings, or per workspace an OAuth install
(`/linear/install`, `actor=app`) whose tokens are sealed in the vault (a `linear` credential) and
refreshed before they expire, the rotated refresh token stored before the new token is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import orjson
from aiohttp import web

from adapters import messages as text
from adapters.base import AdapterWorker, Binding, Delivery, Inbound, Route, WorkerSettings, remember_sync
from adapters.linear_api import (
    LINEAR_API_URL,
    LINEAR_AUTHORIZE_URL,
    OAUTH_SCOPES,
    LinearApi,
    LinearError,
    OAuthError,
    Rejected,
    Token,
    activity_id,
    oauth_token,
    token_url,
)
from adapters.linear_reply import LinearReplies
from core.credentials import CredentialCreate, CredentialKind, CredentialUpdate, VaultCreate
from core.errors import APIError
from core.platform import Platform

log = logging.getLogger("oma.adapters.linear")

# Linear retries a failed delivery for hours (after a minute, an hour, six hours): keys outlive that.
DEDUP_TTL_SECONDS = 25 * 3600
TIMESTAMP_TOLERANCE_SECONDS = 60.0
LINEAR_ENVIRONMENT_NAME = "linear"
WEBHOOK_PATH = "/linear/webhook"
INSTALL_PATH = "/linear/install"
CALLBACK_PATH = "/linear/oauth/callback"
OAUTH_STATE_SECONDS = 600
# An access token this close to expiry is refreshed before use.
REFRESH_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class LinearSettings:
    webhook_secret: str
    # A single workspace's credential: a personal API key, or an OAuth access token.
    api_key: str | None = None
    access_token: str | None = None
    api_url: str = LINEAR_API_URL
    # Who answers: an agent id, and an environment id (unset: one named "linear", created on first use).
    agent: str | None = None
    environment: str | None = None
    # The OAuth app, for installs through /linear/install (and for refreshing their tokens).
    client_id: str | None = None
    client_secret: str | None = None
    authorize_url: str = LINEAR_AUTHORIZE_URL
    # This server as the world reaches it (the OAuth callback, the link to a session).
    public_url: str | None = None
    # The link a Linear agent session shows to its session here; "{session_id}" is filled in.
    session_url: str | None = None

    @property
    def oauth(self) -> bool:
        return bool(self.client_id and self.client_secret)


def signature_ok(secret: str, body: bytes, signature: str | None) -> bool:
    if not signature:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, signature.strip().lower().encode())


def timestamp_ok(stamp_ms: Any, now: float | None = None) -> bool:
    try:
        stamp = float(stamp_ms) / 1000.0
    except (TypeError, ValueError):
        return False
    return abs((time.time() if now is None else now) - stamp) <= TIMESTAMP_TOLERANCE_SECONDS


class LinearAdapter:
    platform: ClassVar[str] = "linear"
    dedup_ttl_seconds: ClassVar[float] = DEDUP_TTL_SECONDS

    def __init__(
        self, platform: Platform, settings: LinearSettings, *, worker_settings: WorkerSettings | None = None
    ) -> None:
        self.settings = settings
        self.core = platform
        self.api = LinearApi(settings.api_url)
        self.replies = LinearReplies(self.api, self)
        self.worker = AdapterWorker(platform, self, default_route=self.default_route, settings=worker_settings)
        self._http: aiohttp.ClientSession | None = None
        self._refreshing: dict[str, asyncio.Lock] = {}

    @property
    def public_paths(self) -> frozenset[str]:
        return frozenset({WEBHOOK_PATH, INSTALL_PATH, CALLBACK_PATH})

    def routes(self) -> list[web.RouteDef]:
        found = [web.post(WEBHOOK_PATH, self.handle)]
        if self.settings.oauth:
            found += [web.get(INSTALL_PATH, self.install), web.get(CALLBACK_PATH, self.oauth_callback)]
        return found

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        await self.api.start()
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        await self.api.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def default_route(self) -> Route | None:
        if not self.settings.agent:
            return None
        route = await self.worker.store.configured_route(
            self.settings.agent, self.settings.environment, LINEAR_ENVIRONMENT_NAME
        )
        if route is None:
            log.warning("linear: OMA_LINEAR_AGENT %s does not exist", self.settings.agent)
        return route

    def session_url(self, session_id: str) -> str | None:
        if self.settings.session_url:
            return self.settings.session_url.replace("{session_id}", session_id)
        if self.settings.public_url:
            return f"{self.settings.public_url.rstrip('/')}/v1/sessions/{session_id}"
        return None

    # --- inbound -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """POST /linear/webhook: verified, recorded, answered; the work happens later."""
        raw = await request.read()
        if not signature_ok(self.settings.webhook_secret, raw, request.headers.get("Linear-Signature")):
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "invalid payload"}, status=400)
        if not timestamp_ok(body.get("webhookTimestamp") or request.headers.get("Linear-Timestamp")):
            return web.json_response({"error": "stale or missing webhookTimestamp"}, status=401)
        if body.get("type") == "AgentSessionEvent":
            session_id = str((body.get("agentSession") or {}).get("id") or "")
            binding = await self.worker.store.binding(session_id) if body.get("action") == "prompted" else None
            inbound = self.inbound(body, request.headers.get("Linear-Delivery"), binding)
            if inbound is not None:
                await self.worker.ingress.accept(inbound)
        # Everything else subscribed (issue, comment events, …) is acknowledged and ignored.
        return web.json_response({"ok": True})

    def inbound(self, body: dict[str, Any], delivery: str | None, binding: Binding | None) -> Inbound | None:
        """An AgentSessionEvent as the session's user events. `binding` (for `prompted`): the
        conversation's binding, whose outbox says whether an approval is awaited."""
        session = body.get("agentSession") or {}
        session_id = str(session.get("id") or "")
        if not session_id:
            return None
        organization = str(body.get("organizationId") or session.get("organizationId") or "")
        issue = session.get("issue") or {}
        address = {
            "session": session_id,
            "organization": organization,
            "issue": session.get("issueId") or issue.get("id"),
            "identifier": issue.get("identifier"),
            "app_user": body.get("appUserId") or session.get("appUserId"),
        }
        dedup = [f"delivery:{delivery}"] if delivery else []
        action = body.get("action")
        if action == "created":
            message = {"type": "user.message", "content": _created_content(body)}
            keys = (f"created:{session_id}", *dedup)
            return Inbound(session_id, address, [message], keys, start=True, workspace=organization)
        if action != "prompted":
            return None
        activity = body.get("agentActivity") or {}
        if activity.get("id"):
            dedup.insert(0, f"activity:{activity['id']}")
        if not dedup:
            return None  # nothing to deduplicate it by: a replay could not be told apart
        if activity.get("signal") == "stop":
            return Inbound(session_id, address, [{"type": "user.interrupt"}], tuple(dedup), start=False)
        said = str((activity.get("content") or {}).get("body") or activity.get("body") or "").strip()
        user = str((activity.get("user") or {}).get("name") or "a user")
        awaiting = list((binding.outbox.get("awaiting") if binding is not None else None) or [])
        if awaiting:
            return Inbound(session_id, address, _answers(awaiting, said, user), tuple(dedup), start=False)
        content = [{"type": "text", "text": text.LINEAR_FROM_USER.format(user=user, text=said)}]
        if binding is None:  # a session we never saw start: the issue is all the context we have
            content.insert(0, {"type": "text", "text": _issue_text(issue)})
        message = {"type": "user.message", "content": content}
        return Inbound(session_id, address, [message], tuple(dedup), start=True, workspace=organization)

    # --- OAuth install -------------------------------------------------------------------------

    def _redirect_uri(self, request: web.Request) -> str:
        base = self.settings.public_url or str(request.url.origin())
        return base.rstrip("/") + CALLBACK_PATH

    def _state(self) -> str:
        nonce, expires = secrets.token_urlsafe(16), str(int(time.time()) + OAUTH_STATE_SECONDS)
        return f"{nonce}.{expires}.{self._state_mac(nonce, expires)}"

    def _state_mac(self, nonce: str, expires: str) -> str:
        key = (self.settings.client_secret or "").encode()
        return hmac.new(key, f"{nonce}.{expires}".encode(), hashlib.sha256).hexdigest()

    async def _state_ok(self, state: str) -> bool:
        """Ours, unexpired, and never used before (each state completes one install)."""
        nonce, _, rest = state.partition(".")
        expires, _, mac = rest.partition(".")
        if not nonce or not expires.isdigit() or int(expires) < time.time():
            return False
        if not hmac.compare_digest(self._state_mac(nonce, expires).encode(), mac.encode()):
            return False
        postgres = not self.core.db.sqlite
        key = f"oauth-state:{nonce}"
        return bool(
            await self.core.db.run_write(
                lambda conn: remember_sync(conn, self.platform, [key], OAUTH_STATE_SECONDS, postgres=postgres)
            )
        )

    async def install(self, request: web.Request) -> web.StreamResponse:
        """GET /linear/install: off to Linear's consent page, installing the app as itself."""
        if await self.default_route() is None:
            return _page(text.LINEAR_INSTALL_NO_AGENT, 409)
        params = {
            "client_id": self.settings.client_id or "",
            "redirect_uri": self._redirect_uri(request),
            "response_type": "code",
            "scope": ",".join(OAUTH_SCOPES),
            "actor": "app",
            "state": self._state(),
            "prompt": "consent",
        }
        raise web.HTTPFound(self.settings.authorize_url + "?" + urllib.parse.urlencode(params))

    async def oauth_callback(self, request: web.Request) -> web.StreamResponse:
        """GET /linear/oauth/callback: the code exchanged for the app's tokens, the workspace
        installed (its agent: OMA_LINEAR_AGENT's route)."""
        query = request.query
        if query.get("error"):
            return _page(text.LINEAR_INSTALL_FAILED.format(reason=query["error"]), 400)
        if not await self._state_ok(query.get("state", "")):
            return _page(text.LINEAR_INSTALL_FAILED.format(reason="the link expired or was used already"), 400)
        route = await self.default_route()
        if route is None:
            return _page(text.LINEAR_INSTALL_NO_AGENT, 409)
        try:
            granted = await oauth_token(
                self._session(),
                token_url(self.settings.api_url),
                {
                    "grant_type": "authorization_code",
                    "code": query.get("code", ""),
                    "redirect_uri": self._redirect_uri(request),
                    "client_id": self.settings.client_id or "",
                    "client_secret": self.settings.client_secret or "",
                },
            )
            viewer = await self.api.viewer(Token(str(granted["access_token"]), oauth=True))
        except (OAuthError, LinearError) as exc:
            log.warning("linear: OAuth install failed: %r", exc)
            return _page(text.LINEAR_INSTALL_FAILED.format(reason=getattr(exc, "error", "Linear refused")), 400)
        organization = viewer.get("organization") or {}
        try:
            await self._install(organization, viewer, granted, route)
        except APIError as exc:
            log.warning("linear: could not store the install's tokens: %r", exc)
            return _page(text.LINEAR_INSTALL_FAILED.format(reason="its tokens could not be stored in the vault"), 500)
        log.info("linear: installed in %s (%s)", organization.get("name"), organization.get("id"))
        return _page(text.LINEAR_INSTALLED.format(name=organization.get("name") or organization.get("id")), 200)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the Linear adapter is not started")
        return self._http

    # --- credentials ---------------------------------------------------------------------------

    async def _install(
        self, organization: dict[str, Any], viewer: dict[str, Any], granted: dict[str, Any], route: Route
    ) -> None:
        """The install's tokens sealed in the vault (a credential in a vault of the agent's tenant,
        one per Linear workspace, reused by a new install), and the installation pointing at them."""
        workspace = str(organization.get("id") or "")
        vaults = self.core.vaults
        found = await self.worker.store.installation_record(workspace)
        config = found[1] if found is not None and found[0].tenant_id == route.tenant_id else {}
        access = str(granted["access_token"])
        tokens = {"access_token": access, "refresh_token": granted.get("refresh_token")}
        vault_id, credential_id = config.get("vault_id"), config.get("credential_id")
        if vault_id and credential_id:
            try:
                await vaults.update_credential(
                    route.tenant_id, vault_id, credential_id, _credential_update(access, tokens)
                )
            except APIError:  # archived or deleted meanwhile: a new one
                vault_id = credential_id = None
        if not (vault_id and credential_id):
            name = str(organization.get("name") or workspace)
            vault = await vaults.create(
                route.tenant_id,
                VaultCreate(
                    display_name=f"Linear: {name}"[:255],
                    metadata={"oma.platform": self.platform, "oma.linear.organization": workspace},
                ),
            )
            vault_id = str(vault["id"])
            auth = {"type": "linear", "organization_id": workspace, **{k: v for k, v in tokens.items() if v}}
            created = await vaults.create_credential(
                route.tenant_id,
                vault_id,
                CredentialCreate.model_validate({"auth": auth, "display_name": "Linear app install"}),
            )
            credential_id = str(created["id"])
        record = {
            "vault_id": vault_id,
            "credential_id": credential_id,
            "expires_at": _expires_at(granted),
            "app_user_id": viewer.get("id"),
            "organization_name": organization.get("name"),
        }
        await self.worker.store.install(workspace, route, record)

    async def _vaulted(self, organization: str) -> tuple[Route, dict[str, Any], dict[str, Any]] | None:
        """An OAuth install's route, record and tokens (opened from the vault)."""
        found = await self.worker.store.installation_record(organization) if organization else None
        if found is None or not found[1].get("credential_id"):
            return None
        route, config = found
        tokens = await self.core.vaults.workspace_credential(
            route.tenant_id, str(config["vault_id"]), CredentialKind.LINEAR
        )
        if not tokens or not tokens.get("access_token"):
            return None  # the credential was archived: the install is revoked on our side
        return route, config, tokens

    async def token(self, organization: str) -> Token:
        """The workspace's token: its OAuth install's (refreshed when about to expire), else the
        settings' API key or access token."""
        vaulted = await self._vaulted(organization)
        if vaulted is not None:
            _, config, tokens = vaulted
            current = Token(str(tokens["access_token"]), oauth=True)
            expires = config.get("expires_at")
            if expires is not None and float(expires) - time.time() < REFRESH_MARGIN_SECONDS:
                return await self.refreshed(organization, current) or current
            return current
        if self.settings.api_key:
            return Token(self.settings.api_key, oauth=False)
        if self.settings.access_token:
            return Token(self.settings.access_token, oauth=True)
        raise Rejected(f"no Linear credentials for workspace {organization}")

    async def refreshed(self, organization: str, stale: Token) -> Token | None:
        """A new access token for an OAuth install, the rotated refresh token sealed in the vault
        before the new token is used; None when it cannot be refreshed (not an install, refused)."""
        if not self.settings.oauth or not organization:
            return None
        lock = self._refreshing.setdefault(organization, asyncio.Lock())
        async with lock:
            vaulted = await self._vaulted(organization)
            if vaulted is None or not vaulted[2].get("refresh_token"):
                return None
            route, config, tokens = vaulted
            if tokens["access_token"] != stale.value:  # refreshed meanwhile (here or elsewhere)
                return Token(str(tokens["access_token"]), oauth=True)
            try:
                granted = await oauth_token(
                    self._session(),
                    token_url(self.settings.api_url),
                    {
                        "grant_type": "refresh_token",
                        "refresh_token": str(tokens["refresh_token"]),
                        "client_id": self.settings.client_id or "",
                        "client_secret": self.settings.client_secret or "",
                    },
                )
            except OAuthError as exc:
                # Another process may have rotated it first: its tokens are in the vault now.
                again = await self._vaulted(organization)
                if again is not None and again[2]["access_token"] != stale.value:
                    return Token(str(again[2]["access_token"]), oauth=True)
                log.warning("linear: refreshing the token of %s failed: %s", organization, exc.error)
                return None
            access = str(granted["access_token"])
            rotated = {"access_token": access, "refresh_token": granted.get("refresh_token")}
            await self.core.vaults.update_credential(
                route.tenant_id,
                str(config["vault_id"]),
                str(config["credential_id"]),
                _credential_update(access, rotated),
            )
            await self.worker.store.update_config(organization, {**config, "expires_at": _expires_at(granted)})
            return Token(access, oauth=True)

    # --- Adapter -------------------------------------------------------------------------------

    async def history(self, inbound: Inbound) -> list[str]:
        return []  # Linear sends the context with `created`

    async def refuse(self, inbound: Inbound, reason: str) -> None:
        session = inbound.address.get("session")
        if not session:
            return
        try:
            token = await self.token(str(inbound.address.get("organization") or ""))
            await self.api.create_activity(
                token,
                id=activity_id(session, "refused", *inbound.dedup_keys[:1]),
                session_id=session,
                content={"type": "error", "body": text.LINEAR_NOT_CONFIGURED},
            )
        except LinearError as exc:
            log.warning("linear: could not tell %s why nothing happens (%s): %r", session, reason, exc)

    async def deliver(self, delivery: Delivery) -> float | None:
        return await self.replies.deliver(delivery)


LINEAR: web.AppKey[LinearAdapter] = web.AppKey("linear", LinearAdapter)


def _created_content(body: dict[str, Any]) -> list[dict[str, str]]:
    """Linear's prompt context (the issue, the thread, the directive), then earlier comments and
    the workspace's guidance for agents."""
    session = body.get("agentSession") or {}
    blocks: list[str] = []
    context = body.get("promptContext")
    if isinstance(context, str) and context.strip():
        blocks.append(context)
    else:
        blocks.append(_issue_text(session.get("issue") or {}))
        comment = (session.get("comment") or {}).get("body")
        if comment:
            blocks.append(str(comment))
    comments = [c for c in body.get("previousComments") or [] if isinstance(c, dict) and c.get("body")]
    if comments:
        lines = [text.LINEAR_COMMENT_LINE.format(author=_author(c), text=str(c["body"]).strip()) for c in comments]
        blocks.append(text.LINEAR_PREVIOUS_COMMENTS + "\n" + "\n".join(lines))
    guidance = body.get("guidance")
    rules = [g for g in guidance if isinstance(g, dict | str)] if isinstance(guidance, list) else []
    if isinstance(guidance, str) and guidance.strip():
        rules = [guidance]
    if rules:
        lines = [
            text.LINEAR_GUIDANCE_LINE.format(
                origin=(g.get("origin") or {}).get("type", "Workspace"), text=str(g.get("body", "")).strip()
            )
            if isinstance(g, dict)
            else f"- {g.strip()}"
            for g in rules
        ]
        blocks.append(text.LINEAR_GUIDANCE + "\n" + "\n".join(lines))
    return [{"type": "text", "text": b} for b in blocks]


def _issue_text(issue: dict[str, Any]) -> str:
    return text.LINEAR_ISSUE.format(
        identifier=issue.get("identifier") or "",
        title=issue.get("title") or "",
        description=issue.get("description") or "",
    ).strip()


def _author(comment: dict[str, Any]) -> str:
    user = comment.get("user") or {}
    return str(user.get("name") or user.get("displayName") or comment.get("userId") or "someone")


def _answers(awaiting: list[str], said: str, user: str) -> list[dict[str, Any]]:
    """A prompt answering an approval request: approve words allow every awaited call; anything
    else denies them, the user's words reaching the agent as the reason."""
    if said.lower().strip(" .!") in text.LINEAR_APPROVE_WORDS:
        return [{"type": "user.tool_confirmation", "tool_use_id": i, "result": "allow"} for i in awaiting]
    reason = text.LINEAR_DENIED_BY.format(user=user, text=said or "(no reason given)")
    return [
        {"type": "user.tool_confirmation", "tool_use_id": i, "result": "deny", "deny_message": reason} for i in awaiting
    ]


def _expires_at(granted: dict[str, Any]) -> float | None:
    expires_in = granted.get("expires_in")
    return time.time() + float(expires_in) if expires_in else None


def _credential_update(access_token: str, tokens: dict[str, Any]) -> CredentialUpdate:
    # Rotation: a new refresh token replaces the old one (which Linear no longer accepts); a
    # response without one leaves the stored one as it is.
    auth = {"type": "linear", "access_token": access_token}
    if tokens.get("refresh_token"):
        auth["refresh_token"] = str(tokens["refresh_token"])
    return CredentialUpdate.model_validate({"auth": auth})


def _page(message: str, status: int) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")
