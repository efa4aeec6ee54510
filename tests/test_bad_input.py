"""Bad input against the running server: every rejection must be the API's error envelope with the
right status, a `request-id` header, a message that names the problem, and no side effect.

The anthropic SDK sends most bad input as given (it validates nothing client-side), so it is used
where it can express the input; raw httpx covers what it cannot (broken JSON, odd auth, routes)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import anthropic
import httpx
import orjson
import pytest

from core import log
from core.keys import create_key, create_tenant
from tests.servers import ServerThread

BETA = {"anthropic-beta": "managed-agents-2026-04-01"}
MISSING_AGENT = "agent_011CZzzzzzzzzzzzzzzzzzzz"
MISSING_ENV = "env_011CZzzzzzzzzzzzzzzzzzzz"
MISSING_SESSION = "sesn_011CZzzzzzzzzzzzzzzzzzzz"
CUSTOM_TOOL = {
    "type": "custom",
    "name": "lookup_order",
    "description": "Look up an order",
    "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}},
}


# --- helpers -----------------------------------------------------------------------------------


def assert_error(
    resp: Any,
    status: int,
    error_type: str,
    *needles: str,
    error_code: str | None = None,
) -> str:
    """`resp` (an httpx or the SDK's httpx2 response) is the error envelope; returns the message."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error"
    error = body["error"]
    assert error["type"] == error_type, error
    message = error["message"]
    assert isinstance(message, str) and message.strip(), error
    assert "Traceback" not in message and "sqlalchemy" not in message.lower(), message
    # Validation messages speak the API's terms, not pydantic's (union member and class names).
    for internal in ("constrained-", "instance of", "function-", "pydantic", "AgentRef", "ModelConfig"):
        assert internal not in message, f"internal detail {internal!r} in message {message!r}"
    for needle in needles:
        assert needle in message, f"{needle!r} not in message {message!r}"
    if error_code is not None:
        assert error.get("details", {}).get("error_code") == error_code, error
    request_id = body["request_id"]
    assert isinstance(request_id, str) and request_id.startswith("req_"), body
    assert resp.headers.get("request-id") == request_id, resp.headers
    return message


def sdk_error(
    exc_type: type[anthropic.APIStatusError],
    call: Callable[[], object],
    status: int,
    error_type: str,
    *needles: str,
    error_code: str | None = None,
) -> anthropic.APIStatusError:
    with pytest.raises(exc_type) as exc_info:
        call()
    err = exc_info.value
    assert_error(err.response, status, error_type, *needles, error_code=error_code)
    assert err.request_id == err.response.headers["request-id"]
    if error_code is not None:
        assert err.error_code == error_code
    return err


def bad_request(call: Callable[[], object], *needles: str, error_code: str | None = None) -> anthropic.APIStatusError:
    return sdk_error(anthropic.BadRequestError, call, 400, "invalid_request_error", *needles, error_code=error_code)


def not_found(call: Callable[[], object], *needles: str, error_code: str | None = None) -> anthropic.APIStatusError:
    return sdk_error(anthropic.NotFoundError, call, 404, "not_found_error", *needles, error_code=error_code)


def mint_key(server: ServerThread) -> str:
    """A key for a brand-new tenant, exactly as the `api_key` fixture makes one."""

    async def mint() -> str:
        db = server.platform.db
        tenant_id = await create_tenant(db, "test")
        return (await create_key(db, "test", tenant_id)).key

    return server.call(mint)


def new_agent(client: anthropic.Anthropic, **overrides: Any) -> Any:
    params: dict[str, Any] = {"model": "claude-sonnet-5", "name": "helper", "tools": [CUSTOM_TOOL]}
    params.update(overrides)
    return client.beta.agents.create(**params)


def new_session(client: anthropic.Anthropic) -> Any:
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")
    return client.beta.sessions.create(agent=agent.id, environment_id=env.id)


def agent_ids(client: anthropic.Anthropic) -> list[str]:
    return [a.id for a in client.beta.agents.list(include_archived=True)]


def env_ids(client: anthropic.Anthropic) -> list[str]:
    return [e.id for e in client.beta.environments.list(include_archived=True)]


def session_ids(client: anthropic.Anthropic) -> list[str]:
    return [s.id for s in client.beta.sessions.list(include_archived=True)]


def event_ids(client: anthropic.Anthropic, session_id: str) -> list[str]:
    return [e.id for e in client.beta.sessions.events.list(session_id)]


def version_numbers(client: anthropic.Anthropic, agent_id: str) -> list[int]:
    return [a.version for a in client.beta.agents.versions.list(agent_id)]


def append_event(server: ServerThread, session_id: str, event_type: str, payload: dict[str, Any]) -> str:
    """Write an event straight into a session's log, as the runner would (no runner is needed, and
    none is woken: nothing is notified)."""

    async def append() -> str:
        db = server.platform.db
        async with db.write() as conn:
            stored = await log.append(
                conn, session_id, [log.NewEvent(type=event_type, payload=payload)], postgres=not db.sqlite
            )
        return stored[0].id

    return server.call(append)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def user_message(text: str = "hi") -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


@pytest.fixture
def http(server: ServerThread, api_key: str) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {api_key}", **BETA}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
def session(client: anthropic.Anthropic) -> Any:
    return new_session(client)


# --- request bodies ----------------------------------------------------------------------------

CREATE_PATHS = ["/v1/agents", "/v1/environments", "/v1/sessions"]


@pytest.mark.parametrize("path", CREATE_PATHS)
@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "x", "model": ',
        b"{'name': 'x'}",
        b'{"name": "x",}',
        b"\xff\xfe{}",
        b"[" * 5000,
        b'{"name": "\\ud800"}',
    ],
    ids=["truncated", "single-quotes", "trailing-comma", "not-utf8", "deep-nesting", "lone-surrogate"],
)
def test_malformed_json_body(
    http: httpx.Client, client: anthropic.Anthropic, session: Any, path: str, raw: bytes
) -> None:
    before = (agent_ids(client), env_ids(client), session_ids(client))
    resp = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 400, "invalid_request_error", "not valid JSON")
    assert (agent_ids(client), env_ids(client), session_ids(client)) == before


@pytest.mark.parametrize("path", CREATE_PATHS)
@pytest.mark.parametrize(
    "raw",
    [b'[{"name": "x", "model": "m"}]', b'"agent"', b"42", b"null", b"true"],
    ids=["array", "string", "number", "null", "bool"],
)
def test_body_that_is_not_an_object(http: httpx.Client, client: anthropic.Anthropic, path: str, raw: bytes) -> None:
    resp = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 400, "invalid_request_error", "JSON object")
    assert agent_ids(client) == [] and env_ids(client) == [] and session_ids(client) == []


@pytest.mark.parametrize("path", CREATE_PATHS)
@pytest.mark.parametrize("raw", [b"", b"  \n "], ids=["no-bytes", "whitespace"])
def test_empty_body_on_create(http: httpx.Client, client: anthropic.Anthropic, path: str, raw: bytes) -> None:
    resp = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 400, "invalid_request_error", "empty")
    assert agent_ids(client) == [] and env_ids(client) == [] and session_ids(client) == []


@pytest.mark.parametrize(
    ("path", "fields"),
    [("/v1/agents", ["model", "name"]), ("/v1/environments", ["name"]), ("/v1/sessions", ["agent", "environment_id"])],
    ids=["agents", "environments", "sessions"],
)
def test_empty_object_names_the_required_fields(
    http: httpx.Client, client: anthropic.Anthropic, path: str, fields: list[str]
) -> None:
    resp = http.post(path, json={})
    message = assert_error(resp, 400, "invalid_request_error", *fields)
    assert "required" in message.lower()
    assert agent_ids(client) == [] and env_ids(client) == [] and session_ids(client) == []


def test_empty_body_on_update_is_rejected(http: httpx.Client, client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    resp = http.post(f"/v1/agents/{agent.id}", content=b"", headers={"content-type": "application/json"})
    assert_error(resp, 400, "invalid_request_error", "empty")
    assert version_numbers(client, agent.id) == [1]


def test_archive_with_a_body_is_rejected(http: httpx.Client, client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    resp = http.post(f"/v1/agents/{agent.id}/archive", json={"reason": "old"})
    assert_error(resp, 400, "invalid_request_error", "no request body")
    assert client.beta.agents.retrieve(agent.id).archived_at is None


def test_unknown_top_level_field(client: anthropic.Anthropic) -> None:
    bad_request(
        lambda: new_agent(client, extra_body={"colour": "red"}),
        "colour",
        "unknown field",
    )
    bad_request(lambda: client.beta.environments.create(name="e", extra_body={"nmae": "typo"}), "nmae")
    assert agent_ids(client) == [] and env_ids(client) == []


def test_unknown_field_on_update_writes_no_version(client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    bad_request(
        lambda: client.beta.agents.update(agent.id, system="new", extra_body={"sytem": "typo"}),
        "sytem",
        "unknown field",
    )
    assert version_numbers(client, agent.id) == [1]
    assert client.beta.agents.retrieve(agent.id).system is None


def test_unknown_nested_field(client: anthropic.Anthropic) -> None:
    bad_request(
        lambda: new_agent(client, tools=[{**CUSTOM_TOOL, "strict": True}]),
        "tools",
        "strict",
    )
    assert agent_ids(client) == []


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": 123}, "name"),
        ({"name": None}, "name"),
        ({"name": ["helper"]}, "name"),
        ({"model": 4}, "model"),
        ({"metadata": {"team": 1}}, "metadata"),
        ({"metadata": {"team": None}}, "metadata"),
        ({"metadata": ["team"]}, "metadata"),
        ({"system": {"text": "x"}}, "system"),
        ({"tools": {"type": "custom"}}, "tools"),
        ({"tools": [{"type": "calculator"}]}, "calculator"),
    ],
    ids=[
        "name-int",
        "name-null",
        "name-list",
        "model-int",
        "metadata-value-int",
        "metadata-value-null",
        "metadata-list",
        "system-object",
        "tools-object",
        "tool-unknown-type",
    ],
)
def test_wrong_types_on_agent_create(client: anthropic.Anthropic, overrides: dict[str, Any], needle: str) -> None:
    bad_request(lambda: new_agent(client, **overrides), needle)
    assert agent_ids(client) == []


@pytest.mark.parametrize(
    ("params", "needles"),
    [
        ({"name": 7}, ["name"]),
        ({"name": "e", "metadata": {"k": 1}}, ["metadata"]),
        ({"name": "e", "config": {"type": "vm"}}, ["config", "vm"]),
        ({"name": "e", "config": {"type": "cloud", "networking": "open"}}, ["networking"]),
    ],
    ids=["name-int", "metadata-value-int", "config-unknown-type", "networking-string"],
)
def test_wrong_types_on_environment_create(
    client: anthropic.Anthropic, params: dict[str, Any], needles: list[str]
) -> None:
    bad_request(lambda: client.beta.environments.create(**params), *needles)
    assert env_ids(client) == []


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"agent": 42}, "agent"),
        ({"agent": {"type": "agent"}}, "agent"),
        ({"environment_id": ["x"]}, "environment_id"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"initial_events": {"type": "user.message"}}, "initial_events"),
    ],
    ids=["agent-int", "agent-ref-without-id", "environment-id-list", "metadata-value-int", "initial-events-object"],
)
def test_wrong_types_on_session_create(client: anthropic.Anthropic, params: dict[str, Any], needle: str) -> None:
    agent = new_agent(client)
    env = client.beta.environments.create(name="e")
    body: dict[str, Any] = {"agent": agent.id, "environment_id": env.id, **params}
    bad_request(lambda: client.beta.sessions.create(**body), needle)
    assert session_ids(client) == []


def test_wrong_type_on_update_writes_no_version(client: anthropic.Anthropic) -> None:
    agent = new_agent(client, metadata={"team": "core"})
    bad_request(lambda: client.beta.agents.update(agent.id, metadata={"team": 5}), "metadata")
    bad_request(lambda: client.beta.agents.update(agent.id, name=None), "name")
    bad_request(lambda: client.beta.agents.update(agent.id, version="one"), "version")
    assert version_numbers(client, agent.id) == [1]
    assert client.beta.agents.retrieve(agent.id).metadata == {"team": "core"}


# --- size limits -------------------------------------------------------------------------------

TOO_MANY_PAIRS = {f"k{i}": "v" for i in range(17)}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": "n" * 257}, "name"),
        ({"name": ""}, "name"),
        ({"system": "s" * 100_001}, "system"),
        ({"metadata": TOO_MANY_PAIRS}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"": "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"tools": [{**CUSTOM_TOOL, "name": "look up"}]}, "tools"),
        ({"tools": [{**CUSTOM_TOOL, "name": ""}]}, "tools"),
        ({"tools": [{**CUSTOM_TOOL, "name": "t" * 129}]}, "tools"),
        ({"tools": [CUSTOM_TOOL, CUSTOM_TOOL]}, "lookup_order"),
        (
            {"mcp_servers": [{"type": "url", "name": f"s{i}", "url": "https://x"} for i in range(21)]},
            "mcp_servers",
        ),
    ],
    ids=[
        "name-257",
        "name-empty",
        "system-100001",
        "metadata-17-pairs",
        "metadata-key-65",
        "metadata-key-empty",
        "metadata-value-513",
        "tool-name-space",
        "tool-name-empty",
        "tool-name-129",
        "tool-name-duplicate",
        "mcp-servers-21",
    ],
)
def test_oversize_fields_on_agent_create(client: anthropic.Anthropic, overrides: dict[str, Any], needle: str) -> None:
    bad_request(lambda: new_agent(client, **overrides), needle)
    assert agent_ids(client) == []


def test_limits_themselves_are_accepted(client: anthropic.Anthropic) -> None:
    agent = new_agent(
        client,
        name="n" * 256,
        system="s" * 100_000,
        metadata={**{f"k{i}": "v" for i in range(14)}, "k" * 64: "v", "long": "v" * 512},
        tools=[{**CUSTOM_TOOL, "name": "t" * 128}],
    )
    assert len(agent.name) == 256 and len(agent.system or "") == 100_000 and len(agent.metadata) == 16


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": "n" * 257}, "name"),
        ({"system": "s" * 100_001}, "system"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {f"new{i}": "v" for i in range(16)}}, "metadata"),
        ({"tools": [{**CUSTOM_TOOL, "name": "look up"}]}, "tools"),
    ],
    ids=["name-257", "system-100001", "metadata-key-65", "metadata-value-513", "metadata-patch-to-17", "tool-space"],
)
def test_oversize_fields_on_agent_update_write_no_version(
    client: anthropic.Anthropic, overrides: dict[str, Any], needle: str
) -> None:
    agent = new_agent(client, metadata={"team": "core"})
    bad_request(lambda: client.beta.agents.update(agent.id, **overrides), needle)
    assert version_numbers(client, agent.id) == [1]
    latest = client.beta.agents.retrieve(agent.id)
    assert latest.version == 1 and latest.metadata == {"team": "core"} and latest.name == "helper"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": "n" * 257}, "name"),
        ({"metadata": TOO_MANY_PAIRS}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
    ],
    ids=["name-257", "metadata-17-pairs", "metadata-key-65", "metadata-value-513"],
)
def test_oversize_fields_on_environment_create(
    client: anthropic.Anthropic, overrides: dict[str, Any], needle: str
) -> None:
    params: dict[str, Any] = {"name": "box", **overrides}
    bad_request(lambda: client.beta.environments.create(**params), needle)
    assert env_ids(client) == []


def test_oversize_fields_on_session_create(client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")

    def create(**kwargs: Any) -> object:
        return client.beta.sessions.create(agent=agent.id, environment_id=env.id, **kwargs)

    bad_request(lambda: create(initial_events=[user_message(str(i)) for i in range(51)]), "initial_events")
    bad_request(lambda: create(metadata=TOO_MANY_PAIRS), "metadata")
    bad_request(lambda: create(metadata={"k" * 65: "v"}), "metadata")
    bad_request(lambda: create(metadata={"k": "v" * 513}), "metadata")
    bad_request(lambda: create(title="t" * 1025), "title")
    bad_request(lambda: create(initial_events=[{"type": "user.interrupt"}]), "initial_events")
    bad_request(
        lambda: create(initial_events=[user_message(), {"type": "user.message", "content": []}]),
        "initial_events",
        "content",
    )
    assert session_ids(client) == []
    # Exactly 50 is fine.
    ok = create(initial_events=[user_message(str(i)) for i in range(50)])
    assert len(list(client.beta.sessions.events.list(ok.id, types=["user.message"]))) == 50


def test_oversize_session_update_writes_nothing(client: anthropic.Anthropic, session: Any) -> None:
    before = event_ids(client, session.id)
    bad_request(lambda: client.beta.sessions.update(session.id, metadata=TOO_MANY_PAIRS), "metadata")
    bad_request(lambda: client.beta.sessions.update(session.id, title="t" * 1025), "title")
    after = client.beta.sessions.retrieve(session.id)
    assert after.metadata == {} and after.title is None
    assert event_ids(client, session.id) == before  # no session.updated event


def test_body_over_the_size_limit(http: httpx.Client, client: anthropic.Anthropic, server: ServerThread) -> None:
    limit = server.settings.max_body_bytes
    body = orjson.dumps({"model": "m", "name": "x", "system": "s" * (limit + 1)})
    resp = http.post("/v1/agents", content=body, headers={"content-type": "application/json"})
    assert_error(resp, 413, "request_too_large", "too large")
    assert agent_ids(client) == []


@pytest.mark.parametrize(
    "target",
    ["agent-name", "agent-metadata", "environment-name", "session-title", "event-text"],
)
def test_nul_character_is_stored_or_rejected_never_a_500(
    http: httpx.Client, client: anthropic.Anthropic, session: Any, target: str
) -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb. Either the value round-trips or the request
    is a 400 that names the field; a 500 (or a half-written object) is a bug."""
    nul = "a\u0000b"
    before = (agent_ids(client), env_ids(client), session_ids(client), event_ids(client, session.id))
    path, body, field = {
        "agent-name": ("/v1/agents", {"model": "claude-sonnet-5", "name": nul}, "name"),
        "agent-metadata": (
            "/v1/agents",
            {"model": "claude-sonnet-5", "name": "x", "metadata": {"k": nul}},
            "metadata",
        ),
        "environment-name": ("/v1/environments", {"name": nul}, "name"),
        "session-title": (
            "/v1/sessions",
            {"agent": session.agent.id, "environment_id": session.environment_id, "title": nul},
            "title",
        ),
        "event-text": (f"/v1/sessions/{session.id}/events", {"events": [user_message(nul)]}, "text"),
    }[target]
    resp = http.post(path, json=body)
    if resp.status_code == 200:
        data = resp.json()
        stored = http.get(f"{path}/{data['id']}" if "id" in data else path).json()  # read it back
        assert nul in strings_in(stored), stored
        return
    assert_error(resp, 400, "invalid_request_error", field)
    assert (agent_ids(client), env_ids(client), session_ids(client), event_ids(client, session.id)) == before


def test_integer_beyond_64_bits_is_rejected_or_round_trips(http: httpx.Client, client: anthropic.Anthropic) -> None:
    """JSON has no integer limit; a number the server cannot store or render must be a 400 naming
    the field, not a 500 after the agent was written."""
    raw = (
        b'{"model": "claude-sonnet-5", "name": "x", "tools": [{"type": "agent_toolset_20260401",'
        b' "configs": [{"name": "web_fetch", "max_content_tokens": 1180591620717411303424}]}]}'
    )
    resp = http.post("/v1/agents", content=raw, headers={"content-type": "application/json"})
    if resp.status_code == 200:
        again = http.get(f"/v1/agents/{resp.json()['id']}")
        assert again.status_code == 200, again.text
        return
    assert_error(resp, 400, "invalid_request_error", "max_content_tokens")
    assert agent_ids(client) == []


# --- session events ----------------------------------------------------------------------------


def test_unknown_event_type(client: anthropic.Anthropic, session: Any) -> None:
    bad_request(
        lambda: client.beta.sessions.events.send(session.id, events=[{"type": "user.shout", "text": "HI"}]),
        "user.shout",
    )
    # Server-side event types cannot be sent either.
    bad_request(
        lambda: client.beta.sessions.events.send(
            session.id,
            events=[{"type": "agent.message", "content": [{"type": "text", "text": "forged"}]}],
        ),
        "agent.message",
    )
    assert event_ids(client, session.id) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "events"),
        ({"events": []}, "events"),
        ({"events": {"type": "user.message"}}, "events"),
        ({"events": [user_message()] * 1001}, "events"),
        ({"events": [{"content": [{"type": "text", "text": "x"}]}]}, "type"),
    ],
    ids=["missing", "empty", "object", "1001", "no-type"],
)
def test_bad_events_envelope(
    http: httpx.Client, client: anthropic.Anthropic, session: Any, body: Any, needle: str
) -> None:
    resp = http.post(f"/v1/sessions/{session.id}/events", json=body)
    assert_error(resp, 400, "invalid_request_error", needle)
    assert event_ids(client, session.id) == []


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ({"type": "user.message", "content": []}, "content"),
        ({"type": "user.message"}, "content"),
        ({"type": "user.message", "content": "hello"}, "content"),
        ({"type": "user.message", "content": [{"type": "audio", "data": "x"}]}, "audio"),
        (
            {"type": "user.tool_confirmation", "tool_use_id": "sevt_x", "result": "allow", "deny_message": "no"},
            "deny_message",
        ),
        ({"type": "user.tool_confirmation", "tool_use_id": "sevt_x", "result": "maybe"}, "result"),
        ({"type": "user.tool_confirmation", "result": "allow"}, "tool_use_id"),
        ({"type": "user.custom_tool_result"}, "custom_tool_use_id"),
        (
            {
                "type": "user.define_outcome",
                "description": "d",
                "rubric": {"type": "text", "content": "r"},
                "max_iterations": 21,
            },
            "max_iterations",
        ),
        ({"type": "system.message", "content": []}, "content"),
    ],
    ids=[
        "message-empty-content",
        "message-no-content",
        "message-string-content",
        "message-unknown-block",
        "deny-message-with-allow",
        "confirmation-bad-result",
        "confirmation-no-id",
        "custom-result-no-id",
        "outcome-21-iterations",
        "system-empty",
    ],
)
def test_invalid_event(client: anthropic.Anthropic, session: Any, event: dict[str, Any], needle: str) -> None:
    bad_request(lambda: client.beta.sessions.events.send(session.id, events=[event]), needle)
    assert event_ids(client, session.id) == []
    assert client.beta.sessions.retrieve(session.id).status == "idle"


def test_one_bad_event_rejects_the_whole_batch(client: anthropic.Anthropic, session: Any) -> None:
    bad_request(
        lambda: client.beta.sessions.events.send(
            session.id, events=[user_message("first"), {"type": "user.message", "content": []}]
        ),
        "events.1",
    )
    assert event_ids(client, session.id) == []


def test_tool_confirmation_for_unknown_tool_use(
    client: anthropic.Anthropic, server: ServerThread, session: Any
) -> None:
    # An event that exists but is no tool use is as unknown as an id that does not exist.
    message_id = append_event(server, session.id, "agent.message", {"content": [{"type": "text", "text": "hi"}]})
    before = event_ids(client, session.id)
    for tool_use_id in ("sevt_doesnotexist", message_id):
        bad_request(
            lambda tid=tool_use_id: client.beta.sessions.events.send(
                session.id,
                events=[
                    user_message("also this"),
                    {"type": "user.tool_confirmation", "tool_use_id": tid, "result": "allow"},
                ],
            ),
            tool_use_id,
            error_code="tool_use_not_found",
        )
    bad_request(
        lambda: client.beta.sessions.events.send(
            session.id, events=[{"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_nope", "content": []}]
        ),
        "sevt_nope",
        error_code="tool_use_not_found",
    )
    bad_request(
        lambda: client.beta.sessions.events.send(
            session.id, events=[{"type": "user.tool_result", "tool_use_id": "sevt_nope2"}]
        ),
        "sevt_nope2",
        error_code="tool_use_not_found",
    )
    assert event_ids(client, session.id) == before


def test_tool_confirmation_for_another_sessions_tool_use(
    client: anthropic.Anthropic, server: ServerThread, session: Any
) -> None:
    other = new_session(client)
    tool_use_id = append_event(server, other.id, "agent.tool_use", {"name": "bash", "input": {"command": "ls"}})
    bad_request(
        lambda: client.beta.sessions.events.send(
            session.id, events=[{"type": "user.tool_confirmation", "tool_use_id": tool_use_id, "result": "allow"}]
        ),
        tool_use_id,
        error_code="tool_use_not_found",
    )
    assert event_ids(client, session.id) == []


def test_send_events_to_archived_session(client: anthropic.Anthropic, server: ServerThread, session: Any) -> None:
    append_event(server, session.id, "agent.message", {"content": [{"type": "text", "text": "done"}]})
    client.beta.sessions.archive(session.id)
    before = event_ids(client, session.id)
    for events in ([user_message("again")], [{"type": "user.interrupt"}]):
        err = sdk_error(
            anthropic.ConflictError,
            lambda events=events: client.beta.sessions.events.send(session.id, events=events),
            409,
            "invalid_request_error",
            "archived",
            error_code="session_archived",
        )
        assert err.response.headers.get("x-should-retry") == "false"
    sdk_error(
        anthropic.ConflictError,
        lambda: client.beta.sessions.update(session.id, title="renamed"),
        409,
        "invalid_request_error",
        "archived",
        error_code="session_archived",
    )
    assert event_ids(client, session.id) == before
    assert client.beta.sessions.retrieve(session.id).title is None


def test_deleted_session_is_gone(client: anthropic.Anthropic, http: httpx.Client, session: Any) -> None:
    client.beta.sessions.delete(session.id)
    not_found(
        lambda: client.beta.sessions.events.send(session.id, events=[user_message("again")]),
        session.id,
        error_code="session_not_found",
    )
    not_found(lambda: client.beta.sessions.events.list(session.id), session.id)
    not_found(lambda: client.beta.sessions.delete(session.id), session.id)
    request_expecting_404(http, "GET", f"/v1/sessions/{session.id}/events/stream", None, session.id)
    assert session_ids(client) == []


def test_session_update_rejects_vault_ids(client: anthropic.Anthropic, session: Any) -> None:
    bad_request(lambda: client.beta.sessions.update(session.id, vault_ids=["vlt_x"], title="t"), "vault_ids")
    again = client.beta.sessions.retrieve(session.id)
    assert again.title is None and again.vault_ids == []
    assert event_ids(client, session.id) == []


# --- unknown ids and other tenants ---------------------------------------------------------------


def id_routes(agent_id: str, env_id: str, session_id: str) -> list[tuple[str, str, Any]]:
    """Every route that names an object, with a body the route would otherwise accept."""
    return [
        ("GET", f"/v1/agents/{agent_id}", None),
        ("GET", f"/v1/agents/{agent_id}?version=1", None),
        ("POST", f"/v1/agents/{agent_id}", {"system": "changed"}),
        ("POST", f"/v1/agents/{agent_id}/archive", None),
        ("GET", f"/v1/agents/{agent_id}/versions", None),
        ("GET", f"/v1/environments/{env_id}", None),
        ("POST", f"/v1/environments/{env_id}", {"description": "changed"}),
        ("POST", f"/v1/environments/{env_id}/archive", None),
        ("DELETE", f"/v1/environments/{env_id}", None),
        ("GET", f"/v1/sessions/{session_id}", None),
        ("POST", f"/v1/sessions/{session_id}", {"title": "changed"}),
        ("POST", f"/v1/sessions/{session_id}/archive", None),
        ("GET", f"/v1/sessions/{session_id}/events", None),
        ("POST", f"/v1/sessions/{session_id}/events", {"events": [user_message()]}),
        ("GET", f"/v1/sessions/{session_id}/events/stream", None),
        ("DELETE", f"/v1/sessions/{session_id}", None),
    ]


def request_expecting_404(http: httpx.Client, method: str, path: str, body: Any, needle: str) -> None:
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    # stream() so that a wrongly opened SSE stream fails the test instead of hanging it.
    with http.stream(method, path, **kwargs) as resp:
        if resp.status_code == 200:
            pytest.fail(f"{method} {path} answered 200")
        resp.read()
        assert_error(resp, 404, "not_found_error", needle)


def test_unknown_ids_are_404(http: httpx.Client) -> None:
    for method, path, body in id_routes(MISSING_AGENT, MISSING_ENV, MISSING_SESSION):
        needle = next(i for i in (MISSING_AGENT, MISSING_ENV, MISSING_SESSION) if i in path)
        request_expecting_404(http, method, path, body, needle)


def test_unknown_ids_via_sdk_carry_error_codes(client: anthropic.Anthropic) -> None:
    not_found(lambda: client.beta.agents.retrieve(MISSING_AGENT), MISSING_AGENT, error_code="agent_not_found")
    not_found(lambda: client.beta.environments.retrieve(MISSING_ENV), MISSING_ENV, error_code="environment_not_found")
    not_found(lambda: client.beta.sessions.retrieve(MISSING_SESSION), MISSING_SESSION, error_code="session_not_found")
    agent = new_agent(client)
    not_found(
        lambda: client.beta.agents.retrieve(agent.id, version=7), "version 7", error_code="agent_version_not_found"
    )


def test_session_create_with_unknown_references(client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")
    not_found(
        lambda: client.beta.sessions.create(agent=MISSING_AGENT, environment_id=env.id),
        MISSING_AGENT,
        error_code="agent_not_found",
    )
    not_found(
        lambda: client.beta.sessions.create(agent=agent.id, environment_id=MISSING_ENV),
        MISSING_ENV,
        error_code="environment_not_found",
    )
    not_found(
        lambda: client.beta.sessions.create(
            agent={"type": "agent", "id": agent.id, "version": 2}, environment_id=env.id
        ),
        "version 2",
        error_code="agent_version_not_found",
    )
    assert session_ids(client) == []


def test_session_create_with_out_of_range_agent_version(client: anthropic.Anthropic) -> None:
    """A version beyond any integer column must be a clean 4xx, not a database overflow."""
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")
    with pytest.raises(anthropic.APIStatusError) as exc_info:
        client.beta.sessions.create(agent={"type": "agent", "id": agent.id, "version": 2**40}, environment_id=env.id)
    status = exc_info.value.status_code
    assert status in (400, 404), status
    assert_error(
        exc_info.value.response, status, "invalid_request_error" if status == 400 else "not_found_error", "version"
    )
    assert session_ids(client) == []


def test_other_tenants_objects_are_invisible(
    client: anthropic.Anthropic, http: httpx.Client, server: ServerThread
) -> None:
    mine = new_session(client)
    my_agent, my_env = mine.agent.id, mine.environment_id
    append_event(server, mine.id, "agent.message", {"content": [{"type": "text", "text": "private"}]})
    my_events = event_ids(client, mine.id)

    other_key = mint_key(server)
    other_headers = {"authorization": f"Bearer {other_key}", **BETA}
    with (
        httpx.Client(base_url=server.url, headers=other_headers, timeout=30) as other_http,
        anthropic.Anthropic(base_url=server.url, api_key=other_key, max_retries=0, timeout=30) as other,
    ):
        for method, path, body in id_routes(my_agent, my_env, mine.id):
            needle = next(i for i in (my_agent, my_env, mine.id) if i in path)
            request_expecting_404(other_http, method, path, body, needle)
        # Nor can the other tenant build on them.
        other_env = other.beta.environments.create(name="theirs")
        other_agent = new_agent(other)
        not_found(lambda: other.beta.sessions.create(agent=my_agent, environment_id=other_env.id), my_agent)
        not_found(lambda: other.beta.sessions.create(agent=other_agent.id, environment_id=my_env), my_env)
        # And their lists show none of it, whatever the filters.
        assert agent_ids(other) == [other_agent.id]
        assert env_ids(other) == [other_env.id]
        assert session_ids(other) == []
        assert [s.id for s in other.beta.sessions.list(agent_id=my_agent, include_archived=True)] == []

    # Nothing the other tenant tried changed anything here.
    assert agent_ids(client) == [my_agent] and version_numbers(client, my_agent) == [1]
    assert client.beta.agents.retrieve(my_agent).archived_at is None
    assert env_ids(client) == [my_env]
    env = client.beta.environments.retrieve(my_env)
    assert env.archived_at is None and env.description is None
    again = client.beta.sessions.retrieve(mine.id)
    assert again.archived_at is None and again.title is None
    assert event_ids(client, mine.id) == my_events


# --- authentication ----------------------------------------------------------------------------

AUTH_CASES = [
    pytest.param({}, "missing", id="no-key"),
    pytest.param({"authorization": "Bearer oma_wrongwrongwrong"}, "invalid", id="wrong-bearer"),
    pytest.param({"x-api-key": "oma_wrongwrongwrong"}, "invalid", id="wrong-x-api-key"),
    pytest.param({"authorization": "Bearer"}, "missing", id="bearer-without-key"),
    pytest.param({"x-api-key": ""}, "missing", id="empty-x-api-key"),
    pytest.param({"authorization": "Basic dXNlcjpwYXNz"}, "missing", id="basic-scheme"),
]


@pytest.mark.parametrize("headers", [c.values[0] for c in AUTH_CASES], ids=[c.id for c in AUTH_CASES])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/agents", None),
        ("POST", "/v1/agents", {"model": "claude-sonnet-5", "name": "x"}),
        ("POST", "/v1/environments", {"name": "x"}),
        ("GET", f"/v1/sessions/{MISSING_SESSION}/events/stream", None),
        ("GET", "/v1/no/such/route", None),
    ],
    ids=["list", "create-agent", "create-env", "stream", "unknown-route"],
)
def test_missing_or_wrong_key_is_401(
    server: ServerThread,
    client: anthropic.Anthropic,
    headers: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    with httpx.Client(base_url=server.url, headers=BETA, timeout=30) as anon:
        resp = anon.request(method, path, json=body, headers=headers)
    message = assert_error(resp, 401, "authentication_error")
    assert "api key" in message.lower()
    assert agent_ids(client) == [] and env_ids(client) == []


def test_wrong_key_via_sdk(server: ServerThread, api_key: str) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key="oma_not_a_key", max_retries=0, timeout=30) as bad:
        sdk_error(
            anthropic.AuthenticationError,
            lambda: bad.beta.agents.create(model="claude-sonnet-5", name="x"),
            401,
            "authentication_error",
            "invalid API key",
        )
    # A right key in x-api-key works, so the 401 above was about the key, not the header.
    with httpx.Client(base_url=server.url, headers={"x-api-key": api_key, **BETA}, timeout=30) as good:
        assert good.get("/v1/agents").json() == {"data": [], "next_page": None}


def test_the_right_key_in_one_header_and_a_wrong_one_in_the_other(server: ServerThread, api_key: str) -> None:
    """Bearer is read first; a correct Bearer with a stale x-api-key still authenticates, and a wrong
    Bearer is not rescued by a correct x-api-key (a present-but-wrong credential is never ignored)."""
    with httpx.Client(base_url=server.url, headers=BETA, timeout=30) as c:
        ok = c.get("/v1/agents", headers={"authorization": f"Bearer {api_key}", "x-api-key": "oma_stale"})
        assert ok.status_code == 200
        resp = c.get("/v1/agents", headers={"authorization": "Bearer oma_wrong", "x-api-key": api_key})
        assert_error(resp, 401, "authentication_error", "invalid API key")


# --- query parameters --------------------------------------------------------------------------


def forged_token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


QUERY_CASES = [
    ("/v1/agents", {"limit": "0"}, "limit"),
    ("/v1/agents", {"limit": "101"}, "limit"),
    ("/v1/agents", {"limit": "ten"}, "limit"),
    ("/v1/agents", {"limit": "-5"}, "limit"),
    ("/v1/agents", {"include_archived": "maybe"}, "include_archived"),
    ("/v1/agents", {"created_at[gte]": "not-a-date"}, "created_at[gte]"),
    ("/v1/agents", {"page": "garbage"}, "page"),
    ("/v1/environments", {"limit": "101"}, "limit"),
    ("/v1/environments", {"page": "garbage"}, "page"),
    ("/v1/sessions", {"limit": "0"}, "limit"),
    ("/v1/sessions", {"limit": "101"}, "limit"),
    ("/v1/sessions", {"order": "sideways"}, "order"),
    ("/v1/sessions", {"statuses[]": "bogus"}, "bogus"),
    ("/v1/sessions", {"created_at[gte]": "not-a-date"}, "created_at[gte]"),
    ("/v1/sessions", {"created_at[lt]": "2026-13-45T99:00:00Z"}, "created_at[lt]"),
    ("/v1/sessions", {"agent_version": "latest"}, "agent_version"),
    ("/v1/sessions", {"page": "garbage"}, "page"),
    ("{events}", {"limit": "0"}, "limit"),
    ("{events}", {"limit": "1001"}, "limit"),
    ("{events}", {"order": "sideways"}, "order"),
    ("{events}", {"types[]": "bogus"}, "bogus"),
    ("{events}", {"created_at[gte]": "not-a-date"}, "created_at[gte]"),
    ("{events}", {"page": "garbage"}, "page"),
    ("{versions}", {"limit": "0"}, "limit"),
    ("{versions}", {"page": "garbage"}, "page"),
    ("{agent}", {"version": "0"}, "version"),
    ("{agent}", {"version": "two"}, "version"),
    ("{stream}", {"event_deltas[]": "agent.tool_use"}, "event_deltas"),
    ("{stream}", {"event_deltas[]": ["agent.message", "bogus"]}, "event_deltas"),
    ("{stream}", {"after": "-1"}, "after"),
    ("{stream}", {"after": "soon"}, "after"),
]


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    QUERY_CASES,
    ids=[f"{p.strip('{}/').removeprefix('v1/')}-{unquote(str(httpx.QueryParams(q)))}" for p, q, _ in QUERY_CASES],
)
def test_bad_query_params(
    http: httpx.Client, client: anthropic.Anthropic, session: Any, path: str, params: dict[str, Any], needle: str
) -> None:
    path = path.format(
        events=f"/v1/sessions/{session.id}/events",
        stream=f"/v1/sessions/{session.id}/events/stream",
        versions=f"/v1/agents/{session.agent.id}/versions",
        agent=f"/v1/agents/{session.agent.id}",
    )
    with http.stream("GET", path, params=params) as resp:
        if resp.status_code == 200:
            pytest.fail(f"GET {path} {params} answered 200")
        resp.read()
        assert_error(resp, 400, "invalid_request_error", needle)


def test_bad_query_params_via_sdk(client: anthropic.Anthropic, session: Any) -> None:
    bad_request(lambda: client.beta.agents.list(limit=0), "limit")
    bad_request(lambda: client.beta.agents.list(limit=101), "limit")
    bad_request(lambda: client.beta.sessions.list(order="sideways"), "order")
    bad_request(lambda: client.beta.sessions.list(statuses=["bogus"]), "bogus")
    bad_request(lambda: client.beta.sessions.list(created_at_gte="not-a-date"), "created_at[gte]")
    bad_request(lambda: client.beta.sessions.list(page="garbage"), "page")
    bad_request(lambda: client.beta.sessions.events.list(session.id, types=["bogus"]), "bogus")
    bad_request(
        lambda: client.beta.sessions.events.stream(session.id, event_deltas=["agent.tool_use"]),
        "event_deltas",
    )


FORGED_TOKENS = [
    pytest.param("/v1/agents", {"d": "next", "o": "desc", "k": ["x", "y"]}, id="agents-key-strings"),
    pytest.param("/v1/agents", {"d": "next", "o": "desc", "k": [2**63, "agent_x"]}, id="agents-key-int64-overflow"),
    pytest.param("/v1/agents", {"d": "sideways", "o": "desc", "k": [1, "a"]}, id="agents-bad-direction"),
    pytest.param("/v1/environments", {"d": "next", "o": "desc", "k": [{"a": 1}, 2]}, id="environments-key-object"),
    pytest.param("/v1/sessions", {"d": "prev", "o": "asc", "k": ["x", "y"]}, id="sessions-key-strings"),
    pytest.param("/v1/sessions", [1, 2, 3], id="sessions-not-an-object"),
    pytest.param("{events}", {"d": "next", "o": "asc", "k": ["seven"]}, id="events-key-string"),
    pytest.param("{events}", {"d": "next", "o": "asc", "k": [2**63]}, id="events-key-int64-overflow"),
    pytest.param("{versions}", {"d": "next", "o": "desc", "k": ["two"]}, id="versions-key-string"),
]


@pytest.mark.parametrize(("path", "payload"), FORGED_TOKENS)
def test_forged_page_token(http: httpx.Client, server: ServerThread, session: Any, path: str, payload: Any) -> None:
    """A well-formed token with the wrong contents is as invalid as garbage: 400, never a 500 or a
    silently meaningless page."""
    append_event(server, session.id, "agent.message", {"content": [{"type": "text", "text": "hi"}]})
    path = path.format(events=f"/v1/sessions/{session.id}/events", versions=f"/v1/agents/{session.agent.id}/versions")
    resp = http.get(path, params={"page": forged_token(payload)})
    assert_error(resp, 400, "invalid_request_error", "page")


def test_stream_with_too_many_deltas(http: httpx.Client, session: Any) -> None:
    params = {"event_deltas[]": ["agent.message"] * 101}
    with http.stream("GET", f"/v1/sessions/{session.id}/events/stream", params=params) as resp:
        if resp.status_code == 200:
            pytest.fail("stream opened with 101 event_deltas")
        resp.read()
        assert_error(resp, 400, "invalid_request_error", "event_deltas")


# --- routes and methods ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("POST", "/v1/nope"),
        ("GET", f"/v1/agents/{MISSING_AGENT}/nope"),
        ("GET", "/v1/sessions/x/events/stream/extra"),
        ("GET", "/v2/agents"),
        ("GET", "/nope"),
    ],
)
def test_unknown_route_is_404_envelope(http: httpx.Client, method: str, path: str) -> None:
    resp = http.request(method, path)
    assert_error(resp, 404, "not_found_error", path)


WRONG_METHODS = [
    ("PUT", "/v1/agents"),
    ("DELETE", "/v1/agents"),
    ("PATCH", "/v1/agents/{agent}"),
    ("DELETE", "/v1/agents/{agent}"),
    ("GET", "/v1/agents/{agent}/archive"),
    ("PATCH", "/v1/sessions/{session}"),
    ("PUT", "/v1/sessions/{session}/events"),
    ("POST", "/v1/sessions/{session}/events/stream"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS, ids=[f"{m}-{p}" for m, p in WRONG_METHODS])
def test_wrong_method_is_405_envelope(
    http: httpx.Client, client: anthropic.Anthropic, session: Any, method: str, path: str
) -> None:
    path = path.format(agent=session.agent.id, session=session.id)
    resp = http.request(method, path, json={"name": "x", "events": [user_message()]})
    assert_error(resp, 405, "invalid_request_error", method, path)
    # Nothing happened: the API offers no agent DELETE and no PATCH anywhere.
    assert client.beta.agents.retrieve(session.agent.id).archived_at is None
    assert version_numbers(client, session.agent.id) == [1]
    assert client.beta.sessions.retrieve(session.id).archived_at is None
    assert event_ids(client, session.id) == []


def test_405_names_the_allowed_methods(http: httpx.Client, session: Any) -> None:
    """RFC 9110 §15.5.6: a 405 response MUST carry an Allow header."""
    resp = http.delete(f"/v1/agents/{session.agent.id}")
    assert_error(resp, 405, "invalid_request_error")
    allow = {m.strip() for m in resp.headers.get("allow", "").split(",") if m.strip()}
    assert {"GET", "POST"} <= allow, resp.headers


# --- archived references -----------------------------------------------------------------------


def test_session_with_archived_agent(client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")
    client.beta.agents.archive(agent.id)
    for ref in (agent.id, {"type": "agent", "id": agent.id}, {"type": "agent", "id": agent.id, "version": 1}):
        bad_request(
            lambda ref=ref: client.beta.sessions.create(agent=ref, environment_id=env.id),
            agent.id,
            "archived",
            error_code="agent_archived",
        )
    assert session_ids(client) == []


def test_session_with_archived_environment(client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")
    client.beta.environments.archive(env.id)
    bad_request(
        lambda: client.beta.sessions.create(agent=agent.id, environment_id=env.id, initial_events=[user_message()]),
        env.id,
        "archived",
        error_code="environment_archived",
    )
    assert session_ids(client) == []


def test_archived_agent_and_environment_stay_read_only(client: anthropic.Anthropic) -> None:
    agent = new_agent(client)
    env = client.beta.environments.create(name="box")
    client.beta.agents.archive(agent.id)
    client.beta.environments.archive(env.id)
    bad_request(lambda: client.beta.agents.update(agent.id, system="x"), agent.id, error_code="agent_archived")
    bad_request(lambda: client.beta.environments.update(env.id, name="y"), env.id, error_code="environment_archived")
    assert version_numbers(client, agent.id) == [1]
    assert client.beta.environments.retrieve(env.id).name == "box"
