"""Linear's GraphQL API as the adapter uses it, on `gql` (aiohttp transport): the exact documents,
one client for every workspace (each request carries its workspace's token), failures classified
the way the outbox needs them, and Linear's OAuth token endpoint (code exchange, refresh).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import (
    TransportError,
    TransportQueryError,
    TransportServerError,
)

LINEAR_API_URL = "https://api.linear.app/graphql"
LINEAR_AUTHORIZE_URL = "https://linear.app/oauth/authorize"
# Agents install as the app (actor=app): delegation and @-mentions need these two scopes.
OAUTH_SCOPES = ("read", "write", "app:assignable", "app:mentionable")

# --- the documents (Linear's schema.graphql names, verbatim) ---------------------------------------

ACTIVITY_CREATE = GraphQLRequest(
    """
    mutation AgentActivityCreate($input: AgentActivityCreateInput!) {
      agentActivityCreate(input: $input) {
        success
        agentActivity { id }
      }
    }
    """
)
ACTIVITY = GraphQLRequest(
    """
    query AgentActivity($id: String!) {
      agentActivity(id: $id) { id }
    }
    """
)
SESSION_UPDATE = GraphQLRequest(
    """
    mutation AgentSessionUpdate($id: String!, $input: AgentSessionUpdateInput!) {
      agentSessionUpdate(id: $id, input: $input) { success }
    }
    """
)
ISSUE_PROGRESS = GraphQLRequest(
    """
    query IssueProgress($id: String!) {
      issue(id: $id) {
        id
        state { id type }
        delegate { id }
        team { states(first: 100) { nodes { id type position } } }
      }
    }
    """
)
ISSUE_UPDATE = GraphQLRequest(
    """
    mutation IssueUpdate($id: String!, $input: IssueUpdateInput!) {
      issueUpdate(id: $id, input: $input) { success }
    }
    """
)
VIEWER = GraphQLRequest(
    """
    query Viewer {
      viewer { id name organization { id name urlKey } }
    }
    """
)


# --- failures ------------------------------------------------------------------------------------


class LinearError(Exception):
    pass


class Throttled(LinearError):
    """Linear's rate limit: nothing was applied; try again later."""


class Unknown(LinearError):
    """The call may or may not have been applied (connection lost, timeout, 5xx)."""


class Unauthorized(LinearError):
    """The token was refused (expired, revoked): refresh it, or give up."""


class Rejected(LinearError):
    """Linear refused the request; the same request will not succeed later either."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Token:
    """How a request authenticates: a personal API key goes as is, an OAuth token as Bearer."""

    value: str
    oauth: bool

    @property
    def header(self) -> str:
        return f"Bearer {self.value}" if self.oauth else self.value


def activity_id(*parts: object) -> str:
    """A UUIDv4-shaped id derived from what the activity stands for (session, event, kind), so that
    a retried create carries the same id and Linear keeps one activity."""
    digest = bytearray(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(digest)))


# --- the client ----------------------------------------------------------------------------------


class LinearApi:
    """One gql client (aiohttp transport, connected once) for all workspaces."""

    def __init__(self, url: str = LINEAR_API_URL, *, timeout: float = 15.0) -> None:
        self.url = url
        self._timeout = timeout
        self._client = Client(transport=AIOHTTPTransport(url=url, timeout=int(timeout)), execute_timeout=timeout)
        self._session: AsyncClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = await self._client.connect_async()

    async def close(self) -> None:
        if self._session is not None:
            self._session = None
            await self._client.close_async()

    async def execute(self, request: GraphQLRequest, variables: dict[str, Any], token: Token) -> dict[str, Any]:
        """Run one document; failures raise Throttled, Unknown, Unauthorized or Rejected."""
        await self.start()
        assert self._session is not None
        bound = GraphQLRequest(request, variable_values=variables)
        try:
            return await self._session.execute(bound, extra_args={"headers": {"Authorization": token.header}})
        except TransportQueryError as exc:
            raise _classify(exc.errors or [], str(exc)) from exc
        except TransportServerError as exc:
            if exc.code == 429:
                raise Throttled(str(exc)) from exc
            if exc.code == 401:
                raise Unauthorized(str(exc)) from exc
            if exc.code is not None and 400 <= exc.code < 500:
                raise Rejected(str(exc)) from exc
            raise Unknown(str(exc)) from exc
        except (TransportError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unknown(repr(exc)) from exc

    # --- the calls the adapter makes -----------------------------------------------------------

    async def create_activity(
        self,
        token: Token,
        *,
        id: str,
        session_id: str,
        content: dict[str, Any],
        ephemeral: bool = False,
        signal: str | None = None,
        signal_metadata: dict[str, Any] | None = None,
    ) -> None:
        """agentActivityCreate with our id: one made again (a retry whose first answer was lost)
        is refused by Linear as a duplicate, which is success once the activity is found."""
        data: dict[str, Any] = {"id": id, "agentSessionId": session_id, "content": content}
        if ephemeral:
            data["ephemeral"] = True
        if signal is not None:
            data["signal"] = signal
        if signal_metadata is not None:
            data["signalMetadata"] = signal_metadata
        try:
            await self.execute(ACTIVITY_CREATE, {"input": data}, token)
        except Rejected:
            if await self.activity_exists(token, id):
                return
            raise

    async def activity_exists(self, token: Token, id: str) -> bool:
        try:
            found = await self.execute(ACTIVITY, {"id": id}, token)
        except Rejected:
            return False
        return bool((found.get("agentActivity") or {}).get("id"))

    async def link_session(self, token: Token, session_id: str, label: str, url: str) -> None:
        await self.execute(
            SESSION_UPDATE, {"id": session_id, "input": {"externalUrls": [{"label": label, "url": url}]}}, token
        )

    async def take_issue(self, token: Token, issue_id: str, app_user_id: str | None) -> dict[str, str]:
        """As Linear's agent guidelines ask: an issue not started yet moves to its team's first
        started state, and the agent becomes its delegate when it has none. Returns what changed."""
        found = (await self.execute(ISSUE_PROGRESS, {"id": issue_id}, token)).get("issue") or {}
        change: dict[str, str] = {}
        state_type = (found.get("state") or {}).get("type")
        if state_type in ("triage", "backlog", "unstarted"):
            started = [
                s
                for s in ((found.get("team") or {}).get("states") or {}).get("nodes") or []
                if s.get("type") == "started"
            ]
            if started:
                change["stateId"] = min(started, key=lambda s: float(s.get("position") or 0))["id"]
        if found.get("delegate") is None and app_user_id:
            change["delegateId"] = app_user_id
        if change:
            await self.execute(ISSUE_UPDATE, {"id": issue_id, "input": change}, token)
        return change

    async def viewer(self, token: Token) -> dict[str, Any]:
        return dict((await self.execute(VIEWER, {}, token)).get("viewer") or {})


def _classify(errors: list[Any], message: str) -> LinearError:
    codes = {
        str(((e.get("extensions") or {}) if isinstance(e, dict) else {}).get("code") or "").upper() for e in errors
    }
    first = next((str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")), message)
    if "RATELIMITED" in codes:
        return Throttled(first)
    if "AUTHENTICATION_ERROR" in codes:
        return Unauthorized(first)
    if "INTERNAL_SERVER_ERROR" in codes:
        return Unknown(first)
    return Rejected(first, next(iter(codes - {""}), None))


# --- OAuth ---------------------------------------------------------------------------------------


class OAuthError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def token_url(api_url: str) -> str:
    """Linear's token endpoint sits beside its GraphQL endpoint (api.linear.app/oauth/token)."""
    base = api_url.rstrip("/")
    return (base[: -len("/graphql")] if base.endswith("/graphql") else base) + "/oauth/token"


async def oauth_token(http: aiohttp.ClientSession, url: str, form: dict[str, str]) -> dict[str, Any]:
    """POST to the token endpoint (grant_type authorization_code or refresh_token)."""
    try:
        async with http.post(url, data=form, headers={"Accept": "application/json"}) as response:
            body = await response.json(content_type=None)
            if response.status >= 500:
                raise Unknown(f"token endpoint answered {response.status}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unknown(repr(exc)) from exc
    if response.status != 200 or not isinstance(body, dict) or "access_token" not in body:
        error = body.get("error") if isinstance(body, dict) else None
        raise OAuthError(str(error or f"http_{response.status}"))
    return body
