"""MCP toolsets end to end: a real MCP server (the `mcp` SDK's own server, over streamable HTTP,
behind a bearer-token check) and a real platform server whose agent lists it; the fake model calls
the server's tools; the token comes from the session's vault (a `static_bearer` credential)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import pytest

from core.fakes.model_server import FakeModelServer
from tests.scan import database_bytes, leaks
from tests.servers import LoopThread, ServerThread, converse, database_url, make_settings, wait_for


class McpServerThread:
    """The SDK's MCPServer with two tools, served by uvicorn on an ephemeral port; requests without
    `Authorization: Bearer <token>` get a 401, as a protected MCP server answers."""

    def __init__(self) -> None:
        from mcp.server.mcpserver import MCPServer
        from mcp_types import ToolAnnotations

        self.token = "mcp-" + secrets.token_hex(16)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        server = MCPServer("notes")

        @server.tool(description="Add two numbers.", annotations=ToolAnnotations(read_only_hint=True))
        def add(a: int, b: int) -> str:
            self.calls.append(("add", {"a": a, "b": b}))
            return str(a + b)

        @server.tool(description="Store a note.")
        def remember(note: str) -> str:
            self.calls.append(("remember", {"note": note}))
            return f"stored: {note}"

        app = server.streamable_http_app(streamable_http_path="/mcp")
        # Tokens the server takes; an OAuth token endpoint at /token rotates them (client "oma-app",
        # secret "app-secret", HTTP Basic), as an OAuth-protected MCP server's authorization server would.
        self.accepted = {self.token}
        self.refresh_tokens = {"refresh-1"}
        self.token_requests: list[dict[str, Any]] = []

        async def token_endpoint(scope: Any, receive: Any, send: Any) -> None:
            import base64
            import json
            import urllib.parse

            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            form = dict(urllib.parse.parse_qsl(body.decode()))
            headers = dict(scope.get("headers") or [])
            basic = headers.get(b"authorization", b"").decode()
            self.token_requests.append({"form": form, "authorization": basic})
            expected = "Basic " + base64.b64encode(b"oma-app:app-secret").decode()
            ok = (
                basic == expected
                and form.get("grant_type") == "refresh_token"
                and form.get("refresh_token") in self.refresh_tokens
            )
            if ok:
                self.refresh_tokens.discard(form["refresh_token"])
                access, rotated = "mcp-" + secrets.token_hex(16), "refresh-" + secrets.token_hex(4)
                self.accepted = {access}
                self.refresh_tokens.add(rotated)
                status, answer = 200, {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
                answer["refresh_token"] = rotated
            else:
                status, answer = 400, {"error": "invalid_grant", "refresh_token": form.get("refresh_token")}
            data = json.dumps(answer).encode()
            await send(
                {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": data})

        async def guarded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/token":
                await token_endpoint(scope, receive, send)
                return
            if scope["type"] == "http":
                headers = dict(scope.get("headers") or [])
                given = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
                if given not in self.accepted:
                    await send({"type": "http.response.start", "status": 401, "headers": []})
                    await send({"type": "http.response.body", "body": b"unauthorized"})
                    return
            await app(scope, receive, send)

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(guarded, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="mcp-server", daemon=True)

    def start(self) -> McpServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, "the MCP server to start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.token_url = f"http://127.0.0.1:{port}/token"
        return self

    def rotate(self) -> str:
        """The server stops taking the current token (as when it expires); the new one is unknown
        to the client until it refreshes."""
        self.accepted = {"mcp-" + secrets.token_hex(16)}
        self.refresh_tokens = {"refresh-1"}
        return next(iter(self.accepted))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def mcp_server() -> Iterator[McpServerThread]:
    srv = McpServerThread().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def model(loop: LoopThread) -> Iterator[FakeModelServer]:
    server = FakeModelServer()
    loop.call(server.start)
    yield server
    loop.call(server.stop)


@pytest.fixture(scope="module")
def server(backend: str, model: FakeModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"mcp-{backend}")
    with database_url(backend, tmp) as url:
        settings = make_settings(
            url,
            runner_enabled=True,
            anthropic_api_key="sk-ant-test",
            anthropic_base_url=model.url,
            model_max_retries=0,
            data_dir=tmp / "data",
            lease_seconds=5,
            sandbox_runtime="local-subprocess",
        )
        srv = ServerThread(settings).start()
        yield srv
        srv.stop()


@pytest.fixture(autouse=True)
def fresh_model(model: FakeModelServer, loop: LoopThread) -> None:
    """Each test scripts the model from an empty queue (the server and its `client` are conftest's)."""
    loop.run(lambda: model._queue.clear())


def agent_with(client: anthropic.Anthropic, url: str, toolset: dict[str, Any] | None = None) -> str:
    tools: Any = [{"type": "mcp_toolset", "mcp_server_name": "notes", **(toolset or {})}]
    servers: Any = [{"type": "url", "name": "notes", "url": url}]
    return client.beta.agents.create(name="mcp", model="claude-sonnet-5", tools=tools, mcp_servers=servers).id


def vault_with_token(client: anthropic.Anthropic, url: str, token: str) -> str:
    vault = client.beta.vaults.create(display_name="mcp")
    auth: Any = {"type": "static_bearer", "mcp_server_url": url, "token": token}
    client.beta.vaults.credentials.create(vault.id, auth=auth)
    return vault.id


def start(client: anthropic.Anthropic, agent_id: str, text: str, **session: Any) -> tuple[str, list[Any]]:
    env_id = client.beta.environments.create(name="mcp-env").id
    session_id = client.beta.sessions.create(agent=agent_id, environment_id=env_id, **session).id
    message = {"type": "user.message", "content": [{"type": "text", "text": text}]}
    return session_id, converse(client, session_id, [message])


def test_the_model_calls_an_mcp_tool_with_the_vault_token(
    client: anthropic.Anthropic,
    server: ServerThread,
    mcp_server: McpServerThread,
    model: FakeModelServer,
    loop: LoopThread,
) -> None:
    loop.run(lambda: model.reply("Adding.", tool_use={"name": "mcp__notes__add", "input": {"a": 2, "b": 3}}))
    loop.run(lambda: model.reply("It is 5."))
    vault_id = vault_with_token(client, mcp_server.url, mcp_server.token)

    session_id, events = start(client, agent_with(client, mcp_server.url), "add 2 and 3", vault_ids=[vault_id])

    assert events[-1].type == "session.status_idle", [e.type for e in events]
    use = next(e for e in events if e.type == "agent.mcp_tool_use")
    assert (use.name, use.mcp_server_name, use.input) == ("add", "notes", {"a": 2, "b": 3})
    assert use.evaluated_permission == "allow"
    result = next(e for e in events if e.type == "agent.mcp_tool_result")
    assert result.mcp_tool_use_id == use.id and not result.is_error
    assert result.content[0].text == "5"
    assert ("add", {"a": 2, "b": 3}) in mcp_server.calls
    # The model was offered the server's tools by their qualified names, and saw the result.
    first, second = model.requests[-2:]
    offered = {t["name"]: t for t in first.body["tools"]}
    assert {"mcp__notes__add", "mcp__notes__remember"} <= set(offered)
    assert offered["mcp__notes__add"]["input_schema"]["properties"].keys() == {"a", "b"}
    (block,) = [b for b in second.body["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert (block["tool_use_id"], block["content"]) == (use.id, [{"type": "text", "text": "5"}])
    called = second.body["messages"][-2]["content"]
    assert {"type": "tool_use", "id": use.id, "name": "mcp__notes__add", "input": {"a": 2, "b": 3}} in called
    # The token went to the MCP server only: not to the model, the events or the database in clear.
    assert leaks(repr([r.body for r in model.requests]), [mcp_server.token]) == []
    assert leaks(repr(list(client.beta.sessions.events.list(session_id))), [mcp_server.token]) == []
    assert leaks(database_bytes(server.settings.database_url), [mcp_server.token]) == []


def test_always_ask_waits_for_confirmation_and_auto_allows_read_only_tools(
    client: anthropic.Anthropic, mcp_server: McpServerThread, model: FakeModelServer, loop: LoopThread
) -> None:
    toolset = {"default_config": {"permission_policy": {"type": "auto"}}}
    loop.run(
        lambda: model.reply(
            "Both.",
            tool_use=[
                {"name": "mcp__notes__add", "input": {"a": 1, "b": 1}},
                {"name": "mcp__notes__remember", "input": {"note": "milk"}},
            ],
        )
    )
    loop.run(lambda: model.reply("Done."))
    vault_id = vault_with_token(client, mcp_server.url, mcp_server.token)

    session_id, events = start(client, agent_with(client, mcp_server.url, toolset), "go", vault_ids=[vault_id])

    uses = {e.name: e for e in events if e.type == "agent.mcp_tool_use"}
    assert uses["add"].evaluated_permission == "allow"  # read-only (the server says so)
    assert uses["remember"].evaluated_permission == "ask"
    assert events[-1].type == "session.status_idle"
    assert events[-1].stop_reason.type == "requires_action"
    assert events[-1].stop_reason.event_ids == [uses["remember"].id]
    assert ("remember", {"note": "milk"}) not in mcp_server.calls

    confirm = {"type": "user.tool_confirmation", "tool_use_id": uses["remember"].id, "result": "allow"}
    more = converse(client, session_id, [confirm])

    assert more[-1].type == "session.status_idle" and more[-1].stop_reason.type == "end_turn"
    results = [e for e in client.beta.sessions.events.list(session_id) if e.type == "agent.mcp_tool_result"]
    assert sorted(r.content[0].text for r in results) == ["2", "stored: milk"]
    assert ("remember", {"note": "milk"}) in mcp_server.calls


def test_a_refused_token_is_a_session_error_and_the_tools_are_left_out(
    client: anthropic.Anthropic, mcp_server: McpServerThread, model: FakeModelServer, loop: LoopThread
) -> None:
    loop.run(lambda: model.reply("I cannot reach the notes."))
    vault_id = vault_with_token(client, mcp_server.url, "wrong-token")

    _, events = start(client, agent_with(client, mcp_server.url), "add", vault_ids=[vault_id])

    error = next(e for e in events if e.type == "session.error")
    assert error.error.type == "mcp_authentication_failed_error"
    assert error.error.mcp_server_name == "notes"  # type: ignore[union-attr]
    assert events[-1].type == "session.status_idle"
    assert not any(t["name"].startswith("mcp__") for t in model.requests[-1].body.get("tools") or [])


def test_an_unreachable_server_is_a_connection_error(
    client: anthropic.Anthropic, model: FakeModelServer, loop: LoopThread, tmp_path: Path
) -> None:
    loop.run(lambda: model.reply("No notes today."))
    _, events = start(client, agent_with(client, "http://127.0.0.1:9/mcp"), "add")

    error = next(e for e in events if e.type == "session.error")
    assert error.error.type == "mcp_connection_failed_error"
    assert events[-1].type == "session.status_idle"


def test_model_names_fit_the_model_apis() -> None:
    from core.mcp import model_name

    assert model_name("notes", "add") == "mcp__notes__add"
    assert model_name("my server.v2", "get/thing") == "mcp__my_server_v2__get_thing"
    long = model_name("s" * 40, "t" * 40)
    assert len(long) == 64 and long.startswith("mcp__sss")
    assert long != model_name("s" * 40, "t" * 41)


def oauth_vault(
    client: anthropic.Anthropic, mcp: McpServerThread, access: str, expires_at: str | None
) -> tuple[str, str]:
    vault = client.beta.vaults.create(display_name="mcp oauth")
    auth: Any = {
        "type": "mcp_oauth",
        "mcp_server_url": mcp.url,
        "access_token": access,
        "expires_at": expires_at,
        "refresh": {
            "client_id": "oma-app",
            "refresh_token": "refresh-1",
            "token_endpoint": mcp.token_url,
            "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": "app-secret"},
            "scope": "notes:read notes:write",
        },
    }
    credential = client.beta.vaults.credentials.create(vault.id, auth=auth)
    return vault.id, credential.id


@pytest.mark.parametrize("how", ["expired", "refused"])
def test_an_oauth_token_is_refreshed_and_the_rotated_tokens_sealed_back(
    how: str,
    client: anthropic.Anthropic,
    server: ServerThread,
    mcp_server: McpServerThread,
    model: FakeModelServer,
    loop: LoopThread,
) -> None:
    old = mcp_server.token
    mcp_server.rotate()  # the server no longer takes `old`
    # "expired": the vault says the token expires within the refresh margin (a minute); "refused":
    # it thinks the token is good, the server says no.
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    expires_at = soon if how == "expired" else None
    vault_id, credential_id = oauth_vault(client, mcp_server, old, expires_at)
    loop.run(lambda: model.reply("Adding.", tool_use={"name": "mcp__notes__add", "input": {"a": 4, "b": 4}}))
    loop.run(lambda: model.reply("8."))

    _, events = start(client, agent_with(client, mcp_server.url), "add", vault_ids=[vault_id])

    assert not [e for e in events if e.type == "session.error"], [e.error for e in events if e.type == "session.error"]
    result = next(e for e in events if e.type == "agent.mcp_tool_result")
    assert result.content[0].text == "8" and not result.is_error
    (request,) = mcp_server.token_requests
    assert request["form"]["refresh_token"] == "refresh-1" and request["form"]["scope"] == "notes:read notes:write"
    assert request["authorization"].startswith("Basic ")
    # The new access token and the rotated refresh token are in the vault (sealed): a second
    # session uses them without another refresh.
    credential = client.beta.vaults.credentials.retrieve(credential_id, vault_id=vault_id)
    assert credential.auth.expires_at is not None  # type: ignore[union-attr]
    loop.run(lambda: model.reply("Again.", tool_use={"name": "mcp__notes__add", "input": {"a": 1, "b": 2}}))
    loop.run(lambda: model.reply("3."))
    _, again = start(client, agent_with(client, mcp_server.url), "add", vault_ids=[vault_id])
    assert next(e for e in again if e.type == "agent.mcp_tool_result").content[0].text == "3"
    assert len(mcp_server.token_requests) == 1
    (access,) = mcp_server.accepted
    assert leaks(database_bytes(server.settings.database_url), [access, *mcp_server.refresh_tokens]) == []


def test_mcp_oauth_validate_probes_the_server_and_refreshes(
    client: anthropic.Anthropic, mcp_server: McpServerThread
) -> None:
    creds = client.beta.vaults.credentials
    vault_id, good = oauth_vault(client, mcp_server, mcp_server.token, None)
    valid = creds.mcp_oauth_validate(good, vault_id=vault_id)
    assert (valid.status, valid.mcp_probe, valid.refresh, valid.has_refresh_token) == ("valid", None, None, True)

    mcp_server.rotate()
    other = client.beta.vaults.create(display_name="stale")
    auth: Any = {"type": "mcp_oauth", "mcp_server_url": mcp_server.url, "access_token": "stale-token"}
    stale = creds.create(other.id, auth=auth).id
    invalid = creds.mcp_oauth_validate(stale, vault_id=other.id)
    assert invalid.status == "invalid" and invalid.refresh is not None and invalid.refresh.status == "no_refresh_token"
    assert invalid.mcp_probe is not None and invalid.mcp_probe.method == "initialize"
    assert invalid.mcp_probe.http_response is not None and invalid.mcp_probe.http_response.status_code == 401

    # The first credential's token is refused now too, but it can refresh: valid again.
    refreshed = creds.mcp_oauth_validate(good, vault_id=vault_id)
    assert refreshed.status == "valid" and refreshed.refresh is not None and refreshed.refresh.status == "succeeded"
