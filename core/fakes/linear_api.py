"""A fake of Linear: its GraphQL API (the part agents use, checked against a schema taken from
Linear's own `schema.graphql`, executed by graphql-core) and its OAuth endpoints, which the real
`gql` client and an OAuth install talk to unchanged; plus what a test workspace needs to push
webhooks in: signing.

    async with FakeLinear() as linear:
        session = linear.add_session(issue=linear.add_issue("Fix the login loop"))
        body = linear.session_event("created", session)        # an AgentSessionEvent payload
        headers = sign(webhook_secret, raw_body)                # Linear-Signature, Linear-Delivery
        linear.fail("agentActivityCreate", "ratelimited")       # RATELIMITED, nothing applied
        linear.drop("agentActivityCreate")                      # applied, connection cut
        linear.activities(session.id)                           # what the session shows
        linear.counts()["agentActivityCreate"]                  # operations per root field

`python -m core.fakes.linear_api --port 0` serves it on its own (it prints "listening URL"; the
GraphQL endpoint is URL/graphql, the API key `lin_api_fake`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import secrets
import signal
import sys
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from graphql import GraphQLError, build_schema, graphql, parse
from graphql.language import FieldNode, OperationDefinitionNode

# The types and fields agents use, as Linear's schema.graphql declares them (fields trimmed).
SCHEMA_SDL = """
scalar DateTime
scalar JSONObject

enum AgentActivitySignal { auth continue select stop }
enum AgentActivityType { action elicitation error prompt response thought }
enum AgentSessionStatus { active awaitingInput complete error pending stale }

type Query {
  viewer: User!
  issue(id: String!): Issue!
  agentSession(id: String!): AgentSession!
  agentActivity(id: String!): AgentActivity!
}

type Mutation {
  agentActivityCreate(input: AgentActivityCreateInput!): AgentActivityPayload!
  agentSessionUpdate(id: String!, input: AgentSessionUpdateInput!): AgentSessionPayload!
  issueUpdate(id: String!, input: IssueUpdateInput!): IssuePayload!
}

type Organization { id: ID! name: String! urlKey: String! }
type User { id: ID! name: String! displayName: String! email: String! app: Boolean! organization: Organization! }
type Team {
  id: ID!
  key: String!
  name: String!
  states(first: Int, includeArchived: Boolean): WorkflowStateConnection!
}
type WorkflowState { id: ID! name: String! type: String! position: Float! color: String! }
type WorkflowStateConnection { nodes: [WorkflowState!]! }
type Issue {
  id: ID!
  identifier: String!
  title: String!
  description: String
  url: String!
  state: WorkflowState!
  team: Team!
  delegate: User
  assignee: User
}
type IssuePayload { success: Boolean! lastSyncId: Float! issue: Issue }
input IssueUpdateInput { stateId: String delegateId: String assigneeId: String title: String description: String }

type AgentSessionExternalLink { label: String! url: String! }
type AgentSession {
  id: ID!
  status: AgentSessionStatus!
  externalLinks: [AgentSessionExternalLink!]!
  issue: Issue
  activities(first: Int): AgentActivityConnection!
}
type AgentSessionPayload { success: Boolean! lastSyncId: Float! agentSession: AgentSession! }
input AgentSessionExternalUrlInput { label: String! url: String! }
input AgentSessionUpdateInput {
  addedExternalUrls: [AgentSessionExternalUrlInput!]
  externalLink: String
  externalUrls: [AgentSessionExternalUrlInput!]
  plan: JSONObject
  removedExternalUrls: [String!]
}

type AgentActivityThoughtContent { body: String! type: AgentActivityType! }
type AgentActivityActionContent { action: String! parameter: String! result: String type: AgentActivityType! }
type AgentActivityElicitationContent { body: String! type: AgentActivityType! }
type AgentActivityResponseContent { body: String! type: AgentActivityType! }
type AgentActivityErrorContent { body: String! type: AgentActivityType! }
type AgentActivityPromptContent { body: String! type: AgentActivityType! }
union AgentActivityContent = AgentActivityActionContent | AgentActivityElicitationContent | AgentActivityErrorContent
  | AgentActivityPromptContent | AgentActivityResponseContent | AgentActivityThoughtContent
type AgentActivity {
  id: ID!
  content: AgentActivityContent!
  ephemeral: Boolean!
  signal: AgentActivitySignal
  signalMetadata: JSONObject
  createdAt: DateTime!
}
type AgentActivityConnection { nodes: [AgentActivity!]! }
type AgentActivityPayload { success: Boolean! lastSyncId: Float! agentActivity: AgentActivity! }
input AgentActivityCreateInput {
  agentSessionId: String!
  content: JSONObject!
  contextualMetadata: JSONObject
  ephemeral: Boolean
  id: String
  signal: AgentActivitySignal
  signalMetadata: JSONObject
}
"""
SCHEMA = build_schema(SCHEMA_SDL)

_CONTENT_TYPES = {
    "thought": ("AgentActivityThoughtContent", ("body",)),
    "action": ("AgentActivityActionContent", ("action", "parameter")),
    "elicitation": ("AgentActivityElicitationContent", ("body",)),
    "response": ("AgentActivityResponseContent", ("body",)),
    "error": ("AgentActivityErrorContent", ("body",)),
}
# An agent session's status follows its last (non-ephemeral) activity.
_STATUS_AFTER = {"thought": "active", "action": "active", "elicitation": "awaitingInput", "response": "complete"}
_STATUS_AFTER["error"] = "error"

API_KEY = "lin_api_fake"
CLIENT_ID = "fake-linear-client-id"
CLIENT_SECRET = "fake-linear-client-secret"


def sign(
    webhook_secret: str, body: bytes, *, delivery: str | None = None, event: str = "AgentSessionEvent"
) -> dict[str, str]:
    """The headers Linear sends with a webhook: the hex HMAC-SHA256 of the raw body."""
    digest = hmac.new(webhook_secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Linear-Signature": digest,
        "Linear-Delivery": delivery or str(uuid.uuid4()),
        "Linear-Event": event,
        "Content-Type": "application/json; charset=utf-8",
    }


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(slots=True)
class Call:
    """One GraphQL request: its operation's root field, variables and Authorization header."""

    field: str
    variables: dict[str, Any]
    authorization: str
    at: float
    wall: float
    errors: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class Activity:
    id: str
    session_id: str
    content: dict[str, Any]
    ephemeral: bool
    signal: str | None
    signal_metadata: dict[str, Any] | None
    created_at: str
    at: float

    @property
    def type(self) -> str:
        return str(self.content.get("type"))

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))


@dataclass(slots=True)
class Session:
    id: str
    issue_id: str
    comment_id: str | None
    status: str = "pending"
    external_urls: list[dict[str, str]] = field(default_factory=list)
    activities: list[Activity] = field(default_factory=list)


@dataclass(slots=True)
class Issue:
    id: str
    identifier: str
    title: str
    description: str
    team_id: str
    state_id: str
    delegate_id: str | None = None
    assignee_id: str | None = None


@dataclass(slots=True)
class Grant:
    """An OAuth install: the app user's tokens. Refresh tokens rotate (the old one dies)."""

    organization_id: str
    access_token: str
    refresh_token: str
    expires_at: float
    scope: str


class FakeLinear:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = API_KEY,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        access_token_seconds: float = 86_400,
    ) -> None:
        self.host, self.port = host, port
        self.api_key = api_key
        self.client_id, self.client_secret = client_id, client_secret
        self.access_token_seconds = access_token_seconds
        self.organization = {"id": str(uuid.uuid4()), "name": "Fake Org", "urlKey": "fake-org"}
        self.app_user = {
            "id": str(uuid.uuid4()),
            "name": "agent",
            "displayName": "agent",
            "email": "agent@oauthapp.linear.app",
            "app": True,
        }
        self.human = {"id": str(uuid.uuid4()), "name": "Jane Doe", "displayName": "jane", "email": "jane@example.com"}
        self.calls: list[Call] = []
        self.sessions: dict[str, Session] = {}
        self.issues: dict[str, Issue] = {}
        self.teams: dict[str, dict[str, Any]] = {}
        self.grants: list[Grant] = []
        self.token_requests: list[dict[str, str]] = []
        self._codes: dict[str, tuple[str, str]] = {}  # code -> (redirect_uri, scope)
        self._failures: dict[str, deque[str]] = {}
        self._drops: Counter[str] = Counter()
        self._seen = asyncio.Condition()
        self._sync_id = 1000.0
        self._numbers = Counter[str]()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.team = self.add_team("ENG", "Engineering")

    # --- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake Linear is not started")
        return self._url

    @property
    def api_url(self) -> str:
        """The GraphQL endpoint: LINEAR_API_URL."""
        return f"{self.url}/graphql"

    @property
    def authorize_url(self) -> str:
        """The OAuth consent page (it consents at once and redirects back with a code)."""
        return f"{self.url}/oauth/authorize"

    # --- the workspace -------------------------------------------------------------------------

    def add_team(self, key: str, name: str) -> dict[str, Any]:
        team_id = str(uuid.uuid4())
        states = [
            {"id": str(uuid.uuid4()), "name": n, "type": t, "position": p, "color": "#e2e2e2"}
            for n, t, p in (
                ("Backlog", "backlog", 0.0),
                ("Todo", "unstarted", 1.0),
                ("In Review", "started", 3.0),
                ("In Progress", "started", 2.0),
                ("Done", "completed", 4.0),
                ("Canceled", "canceled", 5.0),
            )
        ]
        team = {"id": team_id, "key": key, "name": name, "states": states}
        self.teams[team_id] = team
        return team

    def state(self, team: dict[str, Any], name: str) -> dict[str, Any]:
        return next(s for s in team["states"] if s["name"] == name)

    def add_issue(
        self, title: str, description: str = "", *, state: str = "Todo", delegate_id: str | None = None
    ) -> Issue:
        team = self.team
        self._numbers[team["key"]] += 1
        issue = Issue(
            id=str(uuid.uuid4()),
            identifier=f"{team['key']}-{self._numbers[team['key']]}",
            title=title,
            description=description,
            team_id=team["id"],
            state_id=self.state(team, state)["id"],
            delegate_id=delegate_id,
        )
        self.issues[issue.id] = issue
        return issue

    def add_session(self, issue: Issue, *, comment_id: str | None = None) -> Session:
        session = Session(id=str(uuid.uuid4()), issue_id=issue.id, comment_id=comment_id)
        self.sessions[session.id] = session
        return session

    def prompt(self, session: Session, body: str, *, signal: str | None = None) -> Activity:
        """A user's prompt in the session (what a `prompted` webhook carries)."""
        activity = Activity(
            id=str(uuid.uuid4()),
            session_id=session.id,
            content={"type": "prompt", "body": body},
            ephemeral=False,
            signal=signal,
            signal_metadata=None,
            created_at=_now_iso(),
            at=time.monotonic(),
        )
        session.activities.append(activity)
        return activity

    # --- scripting -----------------------------------------------------------------------------

    def fail(self, field_name: str, kind: str = "ratelimited", times: int = 1) -> None:
        """The next `times` requests to `field_name` fail without effect: "ratelimited" (GraphQL
        error RATELIMITED), "server_error" (HTTP 500), "unauthenticated" or "invalid_input"."""
        for _ in range(times):
            self._failures.setdefault(field_name, deque()).append(kind)

    def drop(self, field_name: str, times: int = 1) -> None:
        """The next requests to `field_name` are applied, then the connection is cut unanswered."""
        self._drops[field_name] += times

    def expire_tokens(self) -> None:
        """Every OAuth access token expires now (refresh tokens stay valid)."""
        for grant in self.grants:
            grant.expires_at = 0.0

    # --- reading -------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        return Counter(call.field for call in self.calls if not call.errors)

    def calls_of(self, field_name: str) -> list[Call]:
        return [call for call in self.calls if call.field == field_name]

    def activities(self, session_id: str, *, ephemeral: bool | None = None) -> list[Activity]:
        """The session's activities the agent created, in order (prompts excluded)."""
        return [
            a
            for a in self.sessions[session_id].activities
            if a.type != "prompt" and (ephemeral is None or a.ephemeral == ephemeral)
        ]

    async def wait_for(self, predicate: Any) -> None:
        """Until `predicate()` holds after some request (bound it with asyncio.timeout)."""
        async with self._seen:
            await self._seen.wait_for(predicate)

    # --- webhooks ------------------------------------------------------------------------------

    def session_event(
        self,
        action: str,
        session: Session,
        *,
        template: dict[str, Any],
        activity: Activity | None = None,
        previous_comments: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An AgentSessionEvent payload as Linear sends it, shaped on `template` (a real one)."""
        issue = self.issues[session.issue_id]
        team = self.teams[issue.team_id]
        body = orjson.loads(orjson.dumps(template))
        body.update(
            action=action,
            organizationId=self.organization["id"],
            appUserId=self.app_user["id"],
            createdAt=_now_iso(),
            webhookTimestamp=int(time.time() * 1000),
        )
        agent_session = body["agentSession"]
        agent_session.update(
            id=session.id,
            appUserId=self.app_user["id"],
            organizationId=self.organization["id"],
            issueId=issue.id,
            url=f"https://linear.app/{self.organization['urlKey']}/issue/{issue.identifier}#agent-session-{session.id}",
        )
        agent_session["issue"].update(
            id=issue.id,
            identifier=issue.identifier,
            title=issue.title,
            description=issue.description,
            teamId=team["id"],
            team={"id": team["id"], "key": team["key"], "name": team["name"]},
        )
        if "promptContext" in body:
            body["promptContext"] = (
                f'<issue identifier="{issue.identifier}">\n<title>{issue.title}</title>\n'
                f"<description>{issue.description}</description>\n"
                f'<team name="{team["name"]}"/>\n</issue>'
            )
        if previous_comments is not None:
            body["previousComments"] = previous_comments
        if activity is not None:
            body["agentActivity"] = {
                **body.get("agentActivity", {}),
                "id": activity.id,
                "agentSessionId": session.id,
                "content": activity.content,
                "signal": activity.signal,
                "signalMetadata": activity.signal_metadata,
            }
        return dict(body)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeLinear:
        app = web.Application()
        app.router.add_post("/graphql", self._graphql)
        app.router.add_get("/oauth/authorize", self._authorize)
        app.router.add_post("/oauth/token", self._token)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self._url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLinear:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- GraphQL -------------------------------------------------------------------------------

    def _authenticated(self, authorization: str) -> bool:
        if authorization == self.api_key:
            return True
        token = authorization.removeprefix("Bearer ")
        now = time.time()
        return any(g.access_token == token and g.expires_at > now for g in self.grants)

    async def _record(self, call: Call) -> None:
        async with self._seen:
            self.calls.append(call)
            self._seen.notify_all()

    async def _graphql(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
            query, variables = str(body["query"]), body.get("variables") or {}
            field_name = _root_field(query, body.get("operationName"))
        except (orjson.JSONDecodeError, KeyError, TypeError, GraphQLError):
            return _errors("Invalid GraphQL request", "GRAPHQL_VALIDATION_FAILED", status=400)
        call = Call(field_name, variables, request.headers.get("Authorization", ""), time.monotonic(), time.time())
        failures = self._failures.get(field_name)
        failure = failures.popleft() if failures else None
        if failure == "server_error":
            await self._record(call)
            return web.Response(status=500, text="Internal Server Error")
        if failure is not None or not self._authenticated(call.authorization):
            code = {"ratelimited": "RATELIMITED", "invalid_input": "INVALID_INPUT"}.get(
                failure or "", "AUTHENTICATION_ERROR"
            )
            message = {
                "RATELIMITED": "Rate limit exceeded",
                "INVALID_INPUT": "Argument Validation Error",
                "AUTHENTICATION_ERROR": "Authentication required, not authenticated",
            }[code]
            call.errors = [{"message": message, "extensions": {"code": code}}]
            await self._record(call)
            return _errors(message, code, status=400)
        result = await graphql(
            SCHEMA,
            query,
            root_value=_Root(self, call.authorization),
            variable_values=variables,
            operation_name=body.get("operationName"),
        )
        response: dict[str, Any] = {"data": result.data}
        if result.errors:
            call.errors = [dict(e.formatted) for e in result.errors]
            response["errors"] = call.errors
        await self._record(call)
        if self._drops[field_name] > 0 and not result.errors:
            self._drops[field_name] -= 1
            if request.transport is not None:
                request.transport.close()  # applied, but the client never hears back
            raise ConnectionResetError("dropped by the test")
        return web.Response(
            status=400 if result.errors and result.data is None else 200,
            body=orjson.dumps(response),
            content_type="application/json",
        )

    def _next_sync(self) -> float:
        self._sync_id += 1
        return self._sync_id

    def viewer(self, authorization: str) -> dict[str, Any]:
        user = self.app_user if authorization.startswith("Bearer ") else self.human
        return {**user, "organization": self.organization}

    def user(self, user_id: str | None) -> dict[str, Any] | None:
        if user_id is None:
            return None
        for user in (self.app_user, self.human):
            if user["id"] == user_id:
                return {**user, "organization": self.organization}
        return {"id": user_id, "name": "someone", "displayName": "someone", "email": "", "app": False}

    def render_issue(self, issue: Issue) -> dict[str, Any]:
        team = self.teams[issue.team_id]
        return {
            "id": issue.id,
            "identifier": issue.identifier,
            "title": issue.title,
            "description": issue.description,
            "url": f"https://linear.app/{self.organization['urlKey']}/issue/{issue.identifier}",
            "state": next(s for s in team["states"] if s["id"] == issue.state_id),
            "team": {
                "id": team["id"],
                "key": team["key"],
                "name": team["name"],
                "states": lambda _info, **_: {"nodes": team["states"]},
            },
            "delegate": self.user(issue.delegate_id),
            "assignee": self.user(issue.assignee_id),
        }

    def render_activity(self, activity: Activity) -> dict[str, Any]:
        kind = activity.content.get("type", "thought")
        typename = _CONTENT_TYPES.get(kind, ("AgentActivityPromptContent", ()))[0]
        return {
            "id": activity.id,
            "content": {"__typename": typename, **activity.content},
            "ephemeral": activity.ephemeral,
            "signal": activity.signal,
            "signalMetadata": activity.signal_metadata,
            "createdAt": activity.created_at,
        }

    def render_session(self, session: Session) -> dict[str, Any]:
        return {
            "id": session.id,
            "status": session.status,
            "externalLinks": list(session.external_urls),
            "issue": self.render_issue(self.issues[session.issue_id]),
            "activities": lambda _info, **_: {"nodes": [self.render_activity(a) for a in session.activities]},
        }

    def create_activity(self, data: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions.get(str(data["agentSessionId"]))
        if session is None:
            raise GraphQLError("Entity not found: AgentSession", extensions={"code": "INVALID_INPUT"})
        activity_id = str(data.get("id") or uuid.uuid4())
        if any(a.id == activity_id for s in self.sessions.values() for a in s.activities):
            raise GraphQLError("Entity already exists: AgentActivity", extensions={"code": "INVALID_INPUT"})
        content = data["content"]
        if not isinstance(content, dict) or content.get("type") not in _CONTENT_TYPES:
            raise GraphQLError("Invalid agent activity content", extensions={"code": "INVALID_INPUT"})
        required = _CONTENT_TYPES[content["type"]][1]
        if any(not isinstance(content.get(name), str) for name in required):
            raise GraphQLError(f"content.{required[0]} is required", extensions={"code": "INVALID_INPUT"})
        if data.get("ephemeral") and content["type"] not in ("thought", "action"):
            raise GraphQLError("Only thoughts and actions can be ephemeral", extensions={"code": "INVALID_INPUT"})
        activity = Activity(
            id=activity_id,
            session_id=session.id,
            content=dict(content),
            ephemeral=bool(data.get("ephemeral")),
            signal=data.get("signal"),
            signal_metadata=data.get("signalMetadata"),
            created_at=_now_iso(),
            at=time.monotonic(),
        )
        session.activities.append(activity)
        if not activity.ephemeral:
            session.status = _STATUS_AFTER[activity.type]
        return {"success": True, "lastSyncId": self._next_sync(), "agentActivity": self.render_activity(activity)}

    # --- OAuth ---------------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        """The consent page, consenting at once: back to redirect_uri with a code and the state."""
        q = request.query
        scopes = set(q.get("scope", "").split(","))
        if q.get("client_id") != self.client_id or q.get("response_type") != "code" or not q.get("redirect_uri"):
            return web.Response(status=400, text="invalid authorization request")
        if q.get("actor") != "app" or not {"app:assignable", "app:mentionable"} <= scopes:
            return web.Response(status=400, text="agents install with actor=app and app:assignable, app:mentionable")
        code = secrets.token_urlsafe(16)
        self._codes[code] = (q["redirect_uri"], q.get("scope", ""))
        target = q["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": q.get("state", "")})
        raise web.HTTPFound(target)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = dict((await request.post()).items())
        params = {k: str(v) for k, v in form.items()}
        self.token_requests.append(params)
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            return _oauth_error("invalid_client")
        grant_type = params.get("grant_type")
        if grant_type == "authorization_code":
            found = self._codes.pop(params.get("code", ""), None)
            if found is None or found[0] != params.get("redirect_uri"):
                return _oauth_error("invalid_grant")
            grant = Grant(self.organization["id"], "", "", 0.0, found[1])
            self.grants.append(grant)
        elif grant_type == "refresh_token":
            old = next((g for g in self.grants if g.refresh_token == params.get("refresh_token")), None)
            if old is None:
                return _oauth_error("invalid_grant")
            grant = old
        else:
            return _oauth_error("unsupported_grant_type")
        grant.access_token = "lin_oauth_" + secrets.token_hex(16)
        grant.refresh_token = "lin_refresh_" + secrets.token_hex(16)  # rotated: the old one is dead
        grant.expires_at = time.time() + self.access_token_seconds
        return web.json_response(
            {
                "access_token": grant.access_token,
                "token_type": "Bearer",
                "expires_in": int(self.access_token_seconds),
                "scope": grant.scope.replace(",", " "),
                "refresh_token": grant.refresh_token,
            }
        )


class _Root:
    """Resolvers of the root fields (graphql-core calls a callable attribute with the arguments)."""

    def __init__(self, linear: FakeLinear, authorization: str) -> None:
        self.linear = linear
        self.authorization = authorization

    def viewer(self, _info: Any) -> dict[str, Any]:
        return self.linear.viewer(self.authorization)

    def issue(self, _info: Any, id: str) -> dict[str, Any]:
        issue = self.linear.issues.get(id) or next((i for i in self.linear.issues.values() if i.identifier == id), None)
        if issue is None:
            raise GraphQLError("Entity not found: Issue", extensions={"code": "INVALID_INPUT"})
        return self.linear.render_issue(issue)

    def agentSession(self, _info: Any, id: str) -> dict[str, Any]:
        session = self.linear.sessions.get(id)
        if session is None:
            raise GraphQLError("Entity not found: AgentSession", extensions={"code": "INVALID_INPUT"})
        return self.linear.render_session(session)

    def agentActivity(self, _info: Any, id: str) -> dict[str, Any]:
        for session in self.linear.sessions.values():
            for activity in session.activities:
                if activity.id == id:
                    return self.linear.render_activity(activity)
        raise GraphQLError("Entity not found: AgentActivity", extensions={"code": "INVALID_INPUT"})

    def agentActivityCreate(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        return self.linear.create_activity(input)

    def agentSessionUpdate(self, _info: Any, id: str, input: dict[str, Any]) -> dict[str, Any]:
        session = self.linear.sessions.get(id)
        if session is None:
            raise GraphQLError("Entity not found: AgentSession", extensions={"code": "INVALID_INPUT"})
        if input.get("externalUrls") is not None:
            session.external_urls = [dict(u) for u in input["externalUrls"]]
        else:
            removed = set(input.get("removedExternalUrls") or [])
            kept = [u for u in session.external_urls if u["url"] not in removed]
            session.external_urls = kept + [dict(u) for u in input.get("addedExternalUrls") or []]
        return {
            "success": True,
            "lastSyncId": self.linear._next_sync(),
            "agentSession": self.linear.render_session(session),
        }

    def issueUpdate(self, _info: Any, id: str, input: dict[str, Any]) -> dict[str, Any]:
        issue = self.linear.issues.get(id)
        if issue is None:
            raise GraphQLError("Entity not found: Issue", extensions={"code": "INVALID_INPUT"})
        team = self.linear.teams[issue.team_id]
        if "stateId" in input:
            if not any(s["id"] == input["stateId"] for s in team["states"]):
                raise GraphQLError("Invalid state for the issue's team", extensions={"code": "INVALID_INPUT"})
            issue.state_id = input["stateId"]
        if "delegateId" in input:
            issue.delegate_id = input["delegateId"]
        if "assigneeId" in input:
            issue.assignee_id = input["assigneeId"]
        for name in ("title", "description"):
            if name in input:
                setattr(issue, name, input[name])
        return {"success": True, "lastSyncId": self.linear._next_sync(), "issue": self.linear.render_issue(issue)}


def _root_field(query: str, operation_name: str | None) -> str:
    document = parse(query)
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
            operation_name is None or (definition.name and definition.name.value == operation_name)
        ):
            selection = definition.selection_set.selections[0]
            if isinstance(selection, FieldNode):
                return selection.name.value
    raise GraphQLError("no operation")


def _errors(message: str, code: str, *, status: int) -> web.Response:
    body = {"errors": [{"message": message, "extensions": {"code": code}}], "data": None}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _oauth_error(error: str) -> web.Response:
    return web.json_response({"error": error}, status=400)


async def _serve(server: FakeLinear) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"listening {server.url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.fakes.linear_api", description="A fake Linear API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(FakeLinear(host=args.host, port=args.port, api_key=args.api_key)))


if __name__ == "__main__":
    main(sys.argv[1:])
