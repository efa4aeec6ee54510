"""Linear end to end: a real server (runner on) gets signed AgentSessionEvent webhooks built from
the fixtures in shared/fixtures/linear, the fake model answers, and the real gql client talks to a
fake Linear GraphQL API (core/fakes/linear_api.py). Every test works in its own Linear workspace
(organization id) and agent sessions, so the tests share servers and see only their own calls."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from sqlalchemy import select

from adapters import messages as text
from adapters.base import Route
from adapters.linear import LINEAR, LinearAdapter, signature_ok, timestamp_ok
from adapters.linear_api import activity_id
from core.credentials import CredentialKind
from core.db import adapter_bindings, adapter_inbox, sessions, vault_credentials
from core.fakes.linear_api import Activity, FakeLinear, Session, sign
from core.fakes.model_server import FakeModelServer
from core.keys import create_key, create_tenant
from tests.servers import LoopThread, ServerThread, database_url, make_settings, wait_for

SECRET = "lin_wh_5f1c2e3d4b5a69788796a5b4c3d2e1f0"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "linear"  # copied from the shared fixtures
DEADLINE = 20.0
SESSION_URL = "https://oma.example.com/sessions/{session_id}"


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


# --- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear(loop: LoopThread) -> Iterator[FakeLinear]:
    server = FakeLinear()
    loop.call(server.start)
    yield server
    loop.call(server.stop)


def linear_settings(url: str, tmp: Path, model: FakeModelServer, linear: FakeLinear, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "runner_enabled": True,
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": model.url,
        "model_max_retries": 0,
        "data_dir": tmp / "data",
        "lease_seconds": 5,
        "linear_webhook_secret": SECRET,
        "linear_api_key": linear.api_key,
        "linear_api_url": linear.api_url,
        "linear_client_id": linear.client_id,
        "linear_client_secret": linear.client_secret,
        "linear_authorize_url": linear.authorize_url,
        "linear_session_url": SESSION_URL,
    }
    values.update(overrides)
    return make_settings(url, **values)


@pytest.fixture(scope="module")
def server(
    backend: str, model: FakeModelServer, linear: FakeLinear, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"linear-{backend}")
    with database_url(backend, tmp) as url:
        srv = ServerThread(linear_settings(url, tmp, model, linear)).start()
        yield srv
        srv.stop()


class Workspace:
    """One Linear workspace (organization) bound to a fresh tenant, agent and environment."""

    def __init__(self, server: ServerThread, loop: LoopThread, model: FakeModelServer, linear: FakeLinear) -> None:
        self.server, self.loop, self.model, self.linear = server, loop, model, linear
        self.org = str(uuid.uuid4())
        self.first_request = len(model.requests)

        async def mint() -> tuple[str, str]:
            tenant_id = await create_tenant(server.platform.db, "linear-test")
            return tenant_id, (await create_key(server.platform.db, "t", tenant_id)).key

        self.tenant_id, self.key = server.call(mint)
        self.client = anthropic.Anthropic(base_url=server.url, api_key=self.key, max_retries=0, timeout=30)
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.loop.run(lambda: model._queue.clear())

    def close(self) -> None:
        self.client.close()
        self.http.close()

    @property
    def adapter(self) -> LinearAdapter:
        assert self.server.app is not None
        return self.server.app[LINEAR]

    def agent(self, **agent: Any) -> tuple[str, str]:
        params: dict[str, Any] = {
            "name": "linear-helper",
            "model": "claude-sonnet-5",
            "system": "You work on Linear issues.",
            "tools": [{"type": "agent_toolset_20260401"}],
        }
        params.update(agent)
        agent_id = self.client.beta.agents.create(**params).id
        env_id = self.client.beta.environments.create(name="linear-box").id
        return agent_id, env_id

    def install(self, **agent: Any) -> str:
        agent_id, env_id = self.agent(**agent)
        route = Route(self.tenant_id, agent_id, env_id)
        self.server.call(lambda: self.adapter.worker.store.install(self.org, route))
        return agent_id

    # --- webhooks ------------------------------------------------------------------------------

    def new_session(self, title: str = "Fix login redirect loop", **issue: Any) -> Session:
        created = self.linear.add_issue(title, "Users who sign in with SSO loop back to /login.", **issue)
        return self.linear.add_session(created)

    def created(self, session: Session, **kwargs: Any) -> dict[str, Any]:
        body = self.linear.session_event("created", session, template=fixture("AgentSessionEvent.created"), **kwargs)
        body["organizationId"] = body["agentSession"]["organizationId"] = self.org
        return body

    def prompted(self, session: Session, said: str, *, signal: str | None = None) -> dict[str, Any]:
        activity = self.linear.prompt(session, said, signal=signal)
        body = self.linear.session_event(
            "prompted", session, template=fixture("AgentSessionEvent.prompted"), activity=activity
        )
        body["organizationId"] = body["agentSession"]["organizationId"] = self.org
        return body

    def post(
        self, body: dict[str, Any], *, secret: str = SECRET, delivery: str | None = None, raw: bytes | None = None
    ) -> httpx.Response:
        payload = raw if raw is not None else json.dumps(body).encode()
        return self.http.post("/linear/webhook", content=payload, headers=sign(secret, payload, delivery=delivery))

    # --- what happened -------------------------------------------------------------------------

    def activities(self, session: Session, **kwargs: Any) -> list[Activity]:
        return self.loop.run(lambda: list(self.linear.activities(session.id, **kwargs)))

    def wait_activity(self, session: Session, kind: str, count: int = 1) -> list[Activity]:
        def found() -> list[Activity]:
            mine = [a for a in self.activities(session, ephemeral=False) if a.type == kind]
            return mine if len(mine) >= count else []

        return wait_for(found, f"{count} {kind} activities")

    def requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.model.requests[self.first_request :]]

    def sessions(self) -> list[Any]:
        return list(self.client.beta.sessions.list())

    def wait_idle_delivered(self) -> None:
        """Every session of this workspace idle, and every binding's outbox caught up."""

        async def caught_up() -> bool:
            async with self.server.platform.db.read() as conn:
                inbox = (await conn.execute(select(adapter_inbox.c.id))).all()
                rows = (
                    await conn.execute(
                        select(sessions.c.status, sessions.c.last_seq, adapter_bindings.c.delivered_seq)
                        .select_from(adapter_bindings.join(sessions, sessions.c.id == adapter_bindings.c.session_id))
                        .where(adapter_bindings.c.tenant_id == self.tenant_id)
                    )
                ).all()
            return not inbox and all(r.status == "idle" and r.delivered_seq == r.last_seq for r in rows)

        wait_for(lambda: self.server.call(caught_up), "sessions idle and delivered")


@pytest.fixture
def ws(server: ServerThread, loop: LoopThread, model: FakeModelServer, linear: FakeLinear) -> Iterator[Workspace]:
    workspace = Workspace(server, loop, model, linear)
    yield workspace
    workspace.close()


def script(ws: Workspace, *args: Any, **kwargs: Any) -> Any:
    return ws.loop.run(lambda: ws.model.reply(*args, **kwargs))


def user_texts(request: dict[str, Any]) -> list[str]:
    return [
        block["text"]
        for message in request["messages"]
        if message["role"] == "user"
        for block in message["content"]
        if block.get("type") == "text"
    ]


# --- tests -------------------------------------------------------------------------------------


def test_created_thinks_at_once_acts_and_responds(ws: Workspace) -> None:
    ws.install()
    script(ws, "Let me look at the redirect.", tool_use={"name": "bash", "input": {"command": "echo sso-checked"}})
    script(ws, "The SSO callback drops the session cookie; the fix is in `auth/callback.py`.")
    session = ws.new_session()
    started = time.monotonic()
    response = ws.post(ws.created(session))
    took = time.monotonic() - started
    assert response.status_code == 200 and took < 1.0
    (answer,) = ws.wait_activity(session, "response")
    ws.wait_idle_delivered()
    shown = ws.activities(session, ephemeral=False)
    first = shown[0]
    assert first.type == "thought" and first.body == text.LINEAR_ACK
    assert first.at - started < 10.0
    assert [a.type for a in shown] == ["thought", "thought", "action", "response"]
    assert shown[1].body == "Let me look at the redirect."
    action = shown[2].content
    assert action["action"] == "bash" and action["parameter"] == "echo sso-checked"
    assert "sso-checked" in action["result"]
    assert answer.body == "The SSO callback drops the session cookie; the fix is in `auth/callback.py`."
    assert session.status == "complete"
    # Every activity carried our idempotency id, a UUIDv4.
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", a.id) for a in shown
    )
    (ours,) = ws.sessions()
    assert ours.metadata["oma.platform"] == "linear"
    assert session.external_urls == [{"label": text.LINEAR_SESSION_LINK, "url": SESSION_URL.format(session_id=ours.id)}]
    # Linear's agent guidelines: the issue moved to the team's first started state, the agent its delegate.
    issue = ws.linear.issues[session.issue_id]
    assert issue.state_id == ws.linear.state(ws.linear.team, "In Progress")["id"]
    assert issue.delegate_id == ws.linear.app_user["id"]
    (request, _) = ws.requests()
    (given,) = user_texts(request)[:1]
    assert given.startswith('<issue identifier="') and "<title>Fix login redirect loop</title>" in given
    assert any(
        t.startswith(text.LINEAR_GUIDANCE) and "Open pull requests against `main`" in t for t in user_texts(request)
    )


def test_previous_comments_reach_the_agent_and_a_started_issue_keeps_its_state(ws: Workspace) -> None:
    ws.install()
    script(ws, "Seen the thread.")
    session = ws.new_session(state="In Review", delegate_id=ws.linear.human["id"])
    earlier = [{"body": "It started after the SSO upgrade.", "user": {"name": "Ann"}}, {"body": "Only on Safari."}]
    ws.post(ws.created(session, previous_comments=earlier))
    ws.wait_activity(session, "response")
    ws.wait_idle_delivered()
    (request,) = ws.requests()
    comments = next(t for t in user_texts(request) if t.startswith(text.LINEAR_PREVIOUS_COMMENTS))
    assert "[Ann] It started after the SSO upgrade." in comments and "Only on Safari." in comments
    issue = ws.linear.issues[session.issue_id]
    assert issue.state_id == ws.linear.state(ws.linear.team, "In Review")["id"]
    assert issue.delegate_id == ws.linear.human["id"]
    assert "issueUpdate" not in [c.field for c in ws.linear.calls if c.variables.get("id") == issue.id]


def test_prompted_continues_the_same_session(ws: Workspace) -> None:
    ws.install()
    script(ws, "First answer.")
    session = ws.new_session()
    ws.post(ws.created(session))
    ws.wait_activity(session, "response")
    script(ws, "Added the regression test.")
    assert ws.post(ws.prompted(session, "Please also add a regression test.")).status_code == 200
    (_, second) = ws.wait_activity(session, "response", 2)
    ws.wait_idle_delivered()
    assert second.body == "Added the regression test."
    assert len(ws.sessions()) == 1
    follow_up = ws.requests()[1]
    assert [m["role"] for m in follow_up["messages"]] == ["user", "assistant", "user"]
    assert user_texts(follow_up)[-1] == "Jane Doe: Please also add a regression test."
    # Each prompt was acknowledged with a thought.
    assert [a.body for a in ws.activities(session) if a.type == "thought"] == [text.LINEAR_ACK, text.LINEAR_ACK]


def test_stop_signal_interrupts_and_nothing_follows(ws: Workspace) -> None:
    ws.install()
    script(ws, "Starting the long job.", tool_use={"name": "bash", "input": {"command": "sleep 60"}})
    session = ws.new_session()
    ws.post(ws.created(session))
    wait_for(lambda: any(a.type == "action" and a.ephemeral for a in ws.activities(session)), "the running action")
    assert ws.post(ws.prompted(session, "Stop", signal="stop")).status_code == 200
    (stopped,) = ws.wait_activity(session, "response")
    ws.wait_idle_delivered()
    assert stopped.body == text.LINEAR_STOPPED
    (ours,) = ws.sessions()
    result = next(e for e in ws.client.beta.sessions.events.list(ours.id) if e.type == "agent.tool_result")
    assert result.is_error
    # Whatever the agent does after the stop (until the next prompt) stays out of the Linear session.
    shown = [a.type for a in ws.activities(session, ephemeral=False)]
    assert shown[-1] == "response" and shown.count("response") == 1
    assert session.status == "complete"


def test_redelivery_stale_timestamp_and_forgery_produce_nothing(ws: Workspace) -> None:
    ws.install()
    script(ws, "Only once.")
    session = ws.new_session()
    body = ws.created(session)
    assert ws.post(body, delivery="d-1").status_code == 200
    ws.wait_activity(session, "response")
    ws.wait_idle_delivered()
    before = len(ws.linear.calls)
    # Linear's retry (same delivery), and the same event under a new delivery id.
    assert ws.post(body, delivery="d-1").status_code == 200
    assert ws.post(body, delivery="d-2").status_code == 200
    # A prompt delivered twice is one follow-up.
    script(ws, "Follow-up answered.")
    prompt = ws.prompted(session, "One more thing")
    assert ws.post(prompt).status_code == 200
    assert ws.post(prompt).status_code == 200
    ws.wait_activity(session, "response", 2)
    ws.wait_idle_delivered()
    (ours,) = ws.sessions()
    messages = list(ws.client.beta.sessions.events.list(ours.id, types=["user.message"]))
    assert len(messages) == 2 and len(ws.requests()) == 2
    assert [a.type for a in ws.activities(session, ephemeral=False)].count("response") == 2
    assert len(ws.linear.calls) > before

    fresh = ws.new_session()
    created = ws.created(fresh)
    stale = {**created, "webhookTimestamp": int((time.time() - 61) * 1000)}
    assert ws.post(stale).status_code == 401
    assert ws.post(created, secret="not-the-secret").status_code == 401
    raw = json.dumps(created).encode()
    assert ws.http.post("/linear/webhook", content=raw, headers={"Content-Type": "application/json"}).status_code == 401
    tampered = sign(SECRET, raw)
    assert ws.http.post("/linear/webhook", content=raw + b" ", headers=tampered).status_code == 401
    assert len(ws.sessions()) == 1
    assert ws.activities(fresh) == []


@pytest.mark.parametrize("answer", ["Approve", "No, read the logs first"])
def test_approval_is_an_elicitation_answered_by_the_next_prompt(ws: Workspace, answer: str) -> None:
    ws.install(
        tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]
    )
    script(ws, "I will clear the cache.", tool_use={"name": "bash", "input": {"command": "echo cache-cleared"}})
    session = ws.new_session()
    ws.post(ws.created(session))
    (ask,) = ws.wait_activity(session, "elicitation")
    assert ask.body.startswith("I will clear the cache.") and "`bash`: `echo cache-cleared`" in ask.body
    assert ask.signal == "select" and ask.signal_metadata == {
        "options": [{"value": text.LINEAR_APPROVE}, {"value": text.LINEAR_DENY}]
    }
    assert session.status == "awaitingInput"
    ws.wait_idle_delivered()
    script(ws, "Cleared." if answer == "Approve" else "Reading the logs instead.")
    ws.post(ws.prompted(session, answer))
    (done,) = ws.wait_activity(session, "response")
    ws.wait_idle_delivered()
    (ours,) = ws.sessions()
    result = next(e for e in ws.client.beta.sessions.events.list(ours.id) if e.type == "agent.tool_result")
    confirmations = list(ws.client.beta.sessions.events.list(ours.id, types=["user.tool_confirmation"]))
    assert len(confirmations) == 1
    (action,) = [a for a in ws.activities(session, ephemeral=False) if a.type == "action"]
    if answer == "Approve":
        assert not result.is_error and "cache-cleared" in action.content["result"]
        assert done.body == "Cleared."
    else:
        assert result.is_error and "Jane Doe: No, read the logs first" in json.dumps(result.model_dump(mode="json"))
        assert done.body == "Reading the logs instead."


def test_stop_while_awaiting_approval_settles_it(ws: Workspace) -> None:
    ws.install(
        tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]
    )
    script(ws, "I will clear the cache.", tool_use={"name": "bash", "input": {"command": "echo cache-cleared"}})
    session = ws.new_session()
    ws.post(ws.created(session))
    ws.wait_activity(session, "elicitation")
    ws.wait_idle_delivered()
    ws.post(ws.prompted(session, "Stop", signal="stop"))
    (stopped,) = ws.wait_activity(session, "response")
    assert stopped.body == text.LINEAR_STOPPED
    ws.wait_idle_delivered()
    # The next prompt is a message again, not an answer to the settled approval. (The harness may
    # first answer the refused call once more, out of Linear's sight: hence the reply twice.)
    script(ws, "Fresh start.")
    script(ws, "Fresh start.")
    ws.post(ws.prompted(session, "Do something else"))
    (_, fresh) = ws.wait_activity(session, "response", 2)
    assert fresh.body == "Fresh start."
    (ours,) = ws.sessions()
    assert list(ws.client.beta.sessions.events.list(ours.id, types=["user.tool_confirmation"])) == []


def test_a_question_at_the_end_is_an_elicitation(ws: Workspace) -> None:
    ws.install()
    script(ws, "Which branch should the fix go to?")
    session = ws.new_session()
    ws.post(ws.created(session))
    (question,) = ws.wait_activity(session, "elicitation")
    assert question.body == "Which branch should the fix go to?" and question.signal is None
    assert session.status == "awaitingInput"


def test_rate_limits_and_lost_answers_never_double_an_activity(ws: Workspace) -> None:
    ws.install()
    replies = ws.adapter.replies
    replies.throttle_seconds, replies.backoff_seconds = 0.05, 0.05
    ws.loop.run(lambda: ws.linear.fail("agentActivityCreate", "ratelimited"))
    ws.loop.run(lambda: ws.linear.drop("agentActivityCreate", 2))
    ws.loop.run(lambda: ws.linear.fail("agentActivityCreate", "server_error"))
    script(ws, "Exactly one copy.")
    session = ws.new_session()
    ws.post(ws.created(session))
    ws.wait_activity(session, "response")
    ws.wait_idle_delivered()
    shown = ws.activities(session)
    assert [(a.type, a.body) for a in shown] == [("thought", text.LINEAR_ACK), ("response", "Exactly one copy.")]
    # The retries asked Linear whether an activity already existed instead of making it twice.
    assert ws.linear.counts()["agentActivity"] >= 1
    replies.throttle_seconds, replies.backoff_seconds = 5.0, 1.0


def test_model_errors_become_an_error_activity(ws: Workspace) -> None:
    ws.install()
    ws.loop.run(lambda: ws.model.error(400, "invalid_request_error", "prompt is too long"))
    session = ws.new_session()
    ws.post(ws.created(session))
    (error,) = ws.wait_activity(session, "error")
    assert "prompt is too long" in error.body
    assert session.status == "error"


def test_no_agent_configured_says_so(ws: Workspace) -> None:
    session = ws.new_session()  # no installation for this organization, no OMA_LINEAR_AGENT
    ws.post(ws.created(session))
    (error,) = ws.wait_activity(session, "error")
    assert error.body == text.LINEAR_NOT_CONFIGURED
    assert ws.sessions() == []


def stored_tokens(ws: Workspace, organization: str) -> dict[str, Any]:
    """An install's tokens as the vault holds them: opened through the vault, and sealed at rest."""

    async def read() -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        found = await ws.adapter.worker.store.installation_record(organization)
        assert found is not None
        route, config = found
        tokens = await ws.server.platform.vaults.workspace_credential(
            route.tenant_id, config["vault_id"], CredentialKind.LINEAR
        )
        assert tokens is not None
        async with ws.server.platform.db.read() as conn:
            rows = await conn.execute(
                select(vault_credentials.c.secret).where(vault_credentials.c.id == config["credential_id"])
            )
            sealed = [r.secret for r in rows]
        return config, sealed, tokens

    config, sealed, tokens = ws.server.call(read)
    assert config["app_user_id"] == ws.linear.app_user["id"] and "access_token" not in config
    (envelope,) = sealed
    assert tokens["access_token"] not in envelope and tokens["refresh_token"] not in envelope
    return tokens


def test_oauth_install_as_the_app_then_refresh_rotates_the_token(ws: Workspace) -> None:
    agent_id, env_id = ws.agent()
    adapter = ws.adapter
    original = adapter.settings
    adapter.settings = dataclasses.replace(original, agent=agent_id, environment=env_id)
    linear = ws.linear
    try:
        page = ws.http.get("/linear/install", follow_redirects=True)
        assert page.status_code == 200, page.text
        assert page.text.startswith("Installed in the Linear workspace Fake Org")
        authorize = httpx.URL(str(page.history[0].headers["location"]))
        assert authorize.params["actor"] == "app"
        assert set(authorize.params["scope"].split(",")) >= {"app:assignable", "app:mentionable"}
        # The same consent link cannot install twice.
        replay = ws.http.get(str(page.history[1].headers["location"]))
        assert replay.status_code == 400
        org = linear.organization["id"]
        first = stored_tokens(ws, org)
        assert first["access_token"] == linear.grants[-1].access_token

        linear.expire_tokens()
        script(ws, "Answered as the app.")
        session = linear.add_session(linear.add_issue("Installed by OAuth"))
        body = linear.session_event("created", session, template=fixture("AgentSessionEvent.created"))
        ws.post(body)
        (answer,) = ws.wait_activity(session, "response")
        assert answer.body == "Answered as the app."
        second = stored_tokens(ws, org)
        assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
        assert [r["grant_type"] for r in linear.token_requests[-2:]] == ["authorization_code", "refresh_token"]
        created = [
            c for c in linear.calls_of("agentActivityCreate") if c.variables["input"]["agentSessionId"] == session.id
        ]
        # The expired token was refused once; everything after went with the refreshed one.
        refused = [c.authorization for c in created if c.errors]
        assert refused == [f"Bearer {first['access_token']}"]
        assert {c.authorization for c in created if not c.errors} == {f"Bearer {second['access_token']}"}
        (ours,) = [s for s in ws.client.beta.sessions.list() if s.agent.id == agent_id]
        assert ours.metadata["oma.platform"] == "linear"
    finally:
        adapter.settings = original


# --- units -------------------------------------------------------------------------------------


def test_signature_and_timestamp_checks() -> None:
    body = b'{"type":"AgentSessionEvent"}'
    good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature_ok("s3cret", body, good) and signature_ok("s3cret", body, good.upper())
    assert not signature_ok("s3cret", body, None) and not signature_ok("s3cret", body, "")
    assert not signature_ok("other", body, good) and not signature_ok("s3cret", body + b" ", good)
    assert not signature_ok("s3cret", body, "é" * 64)
    now = 1_757_931_667.0
    assert timestamp_ok(int(now * 1000), now) and timestamp_ok(int((now - 59) * 1000), now)
    assert not timestamp_ok(int((now - 61) * 1000), now) and not timestamp_ok(int((now + 61) * 1000), now)
    assert not timestamp_ok(None, now) and not timestamp_ok("soon", now)


def test_activity_ids_are_stable_uuid4s() -> None:
    a, b = activity_id("sess", "sesn_1", 7, "response"), activity_id("sess", "sesn_1", 7, "response")
    assert a == b and uuid.UUID(a).version == 4
    assert activity_id("sess", "sesn_1", 8, "response") != a


def test_fixture_payloads_translate(server: ServerThread) -> None:
    assert server.app is not None
    adapter = server.app[LINEAR]
    created = adapter.inbound(fixture("AgentSessionEvent.created"), "d-9", None)
    assert created is not None and created.start
    assert created.binding_key == "3c2b1a09-8f7e-4d6c-b5a4-93827160f5e4"
    assert created.dedup_keys == ("created:3c2b1a09-8f7e-4d6c-b5a4-93827160f5e4", "delivery:d-9")
    assert created.address["issue"] == "6e5d4c3b-2a19-4f8e-a7d6-c5b4a3928170"
    prompted = adapter.inbound(fixture("AgentSessionEvent.prompted"), None, None)
    assert prompted is not None and prompted.dedup_keys == ("activity:5d4c3b2a-1908-4f7e-8d6c-5b4a39281706",)
    (message,) = prompted.events
    assert message["content"][-1]["text"] == "Jane Doe: Yes, please also add a regression test for the SSO path."
    stop = copy.deepcopy(fixture("AgentSessionEvent.prompted"))
    stop["agentActivity"]["signal"] = "stop"
    stopped = adapter.inbound(stop, None, None)
    assert stopped is not None and stopped.events == [{"type": "user.interrupt"}] and not stopped.start
    assert adapter.inbound(fixture("Issue.update.assigned"), None, None) is None


def test_an_issue_webhook_is_acknowledged_and_ignored(ws: Workspace) -> None:
    body = fixture("Issue.update.assigned")
    body["webhookTimestamp"] = int(time.time() * 1000)
    raw = json.dumps(body).encode()
    response = ws.http.post("/linear/webhook", content=raw, headers=sign(SECRET, raw, event="Issue"))
    assert response.status_code == 200
    assert ws.sessions() == []
