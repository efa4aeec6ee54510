"""Sessions and session events driven by the official anthropic SDK, responses checked strictly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.pagination import SyncBidirectionalPageCursor, SyncPageCursor
from anthropic.types.beta.beta_managed_agents_deleted_session import BetaManagedAgentsDeletedSession
from anthropic.types.beta.beta_managed_agents_session import BetaManagedAgentsSession
from anthropic.types.beta.sessions.beta_managed_agents_send_session_events import BetaManagedAgentsSendSessionEvents
from anthropic.types.beta.sessions.beta_managed_agents_session_event import BetaManagedAgentsSessionEvent
from anthropic.types.beta.sessions.beta_managed_agents_stream_session_events import (
    BetaManagedAgentsStreamSessionEvents,
)

from tests.servers import ServerThread
from tests.strict import check

BETA = {"anthropic-beta": "managed-agents-2026-04-01"}


@pytest.fixture
def agent_id(client: anthropic.Anthropic) -> str:
    return client.beta.agents.create(
        model="claude-sonnet-5",
        name="helper",
        system="You help.",
        tools=[
            {"type": "agent_toolset_20260401"},
            {"type": "custom", "name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}},
        ],
    ).id


@pytest.fixture
def env_id(client: anthropic.Anthropic) -> str:
    return client.beta.environments.create(name="box").id


def new_session(client: anthropic.Anthropic, agent_id: str, env_id: str, **kw: Any) -> BetaManagedAgentsSession:
    raw = client.beta.sessions.with_raw_response.create(agent=agent_id, environment_id=env_id, **kw)
    return check(BetaManagedAgentsSession, raw.http_response.json())


def msg(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def test_session_create_snapshots_agent(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id, title="first", metadata={"ticket": "T-1"})
    assert session.id.startswith("sesn_")
    assert session.status == "idle"
    assert session.agent.id == agent_id and session.agent.version == 1
    assert session.agent.system == "You help."
    assert session.environment_id == env_id
    assert session.title == "first" and session.metadata == {"ticket": "T-1"}
    assert session.usage.input_tokens == 0
    # The snapshot is pinned: a later agent update doesn't change this session.
    client.beta.agents.update(agent_id, system="Changed.")
    again = client.beta.sessions.retrieve(session.id)
    assert again.agent.system == "You help." and again.agent.version == 1
    newer = new_session(client, agent_id, env_id)
    assert newer.agent.version == 2 and newer.agent.system == "Changed."


def test_session_with_pinned_version_and_overrides(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    client.beta.agents.update(agent_id, system="v2")
    pinned = new_session(client, {"type": "agent", "id": agent_id, "version": 1}, env_id)
    assert pinned.agent.version == 1 and pinned.agent.system == "You help."
    overridden = new_session(
        client,
        {"type": "agent_with_overrides", "id": agent_id, "model": "gpt-5", "system": None, "tools": []},
        env_id,
    )
    assert overridden.agent.model.id == "gpt-5"
    assert overridden.agent.system is None
    assert overridden.agent.tools == []


def test_session_resources_hide_tokens(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    raw = client.beta.sessions.with_raw_response.create(
        agent=agent_id,
        environment_id=env_id,
        resources=[
            {
                "type": "github_repository",
                "url": "https://github.com/acme/widgets",
                "authorization_token": "ghp_supersecret",
                "checkout": {"type": "branch", "name": "main"},
            }
        ],
    )
    assert "ghp_supersecret" not in raw.http_response.text
    session = check(BetaManagedAgentsSession, raw.http_response.json())
    (repo,) = session.resources
    assert repo.type == "github_repository" and repo.mount_path == "/workspace/widgets"
    assert "ghp_supersecret" not in client.beta.sessions.with_raw_response.retrieve(session.id).http_response.text


def test_initial_events_are_queued(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id, initial_events=[msg("hello")])
    raw = client.beta.sessions.events.with_raw_response.list(session.id)
    page = check(SyncPageCursor[BetaManagedAgentsSessionEvent], raw.http_response.json())
    (event,) = page.data
    assert event.type == "user.message" and event.processed_at is None
    assert event.content[0].text == "hello"  # type: ignore[union-attr]


def test_send_every_user_event_type(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id)
    events = [
        msg("hi"),
        {
            "type": "user.message",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
                    "title": "t",
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
        },
        {
            "type": "user.define_outcome",
            "description": "tests pass",
            "rubric": {"type": "text", "content": "all green"},
        },
        {"type": "system.message", "content": [{"type": "text", "text": "note"}]},
        {"type": "user.interrupt"},
    ]
    raw = client.beta.sessions.events.with_raw_response.send(session.id, events=events)  # type: ignore[arg-type]
    echoed = check(BetaManagedAgentsSendSessionEvents, raw.http_response.json())
    assert echoed.data is not None
    assert [e.type for e in echoed.data] == [
        "user.message",
        "user.message",
        "user.define_outcome",
        "system.message",
        "user.interrupt",
    ]
    outcome = echoed.data[2]
    assert outcome.type == "user.define_outcome"
    assert outcome.outcome_id.startswith("outc_") and outcome.processed_at is not None
    assert outcome.max_iterations == 3
    assert echoed.data[0].processed_at is None  # queued until the runner consumes it
    listed = [e.id for e in client.beta.sessions.events.list(session.id)]
    assert listed == [e.id for e in echoed.data]


def test_tool_results_reference_existing_tool_uses(
    server: ServerThread, client: anthropic.Anthropic, agent_id: str, env_id: str
) -> None:
    session = new_session(client, agent_id, env_id)
    from core import log

    async def agent_events() -> list[str]:
        async with server.platform.db.write() as conn:
            stored = await log.append(
                conn,
                session.id,
                [
                    log.NewEvent(
                        "agent.tool_use", {"name": "bash", "input": {"command": "ls"}, "evaluated_permission": "ask"}
                    ),
                    log.NewEvent("agent.custom_tool_use", {"name": "get_weather", "input": {"city": "Oslo"}}),
                ],
            )
        return [e.id for e in stored]

    tool_use_id, custom_id = server.call(agent_events)
    raw = client.beta.sessions.events.with_raw_response.send(
        session.id,
        events=[
            {"type": "user.tool_confirmation", "tool_use_id": tool_use_id, "result": "deny", "deny_message": "no"},
            {
                "type": "user.custom_tool_result",
                "custom_tool_use_id": custom_id,
                "content": [{"type": "text", "text": "sunny"}],
            },
        ],
    )
    echoed = check(BetaManagedAgentsSendSessionEvents, raw.http_response.json())
    assert echoed.data is not None and [e.type for e in echoed.data] == [
        "user.tool_confirmation",
        "user.custom_tool_result",
    ]
    with pytest.raises(anthropic.BadRequestError) as exc_info:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.tool_confirmation", "tool_use_id": custom_id, "result": "allow"}]
        )
    assert exc_info.value.error_code == "tool_use_not_found"


def test_events_list_filters_order_and_pages(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id)
    for i in range(5):
        client.beta.sessions.events.send(session.id, events=[msg(f"m{i}"), {"type": "user.interrupt"}])
    everything = list(client.beta.sessions.events.list(session.id, limit=3))
    assert len(everything) == 10 and len({e.id for e in everything}) == 10
    only_messages = list(client.beta.sessions.events.list(session.id, types=["user.message"], limit=2))
    assert [e.content[0].text for e in only_messages] == [f"m{i}" for i in range(5)]  # type: ignore[union-attr]
    newest_first = list(client.beta.sessions.events.list(session.id, order="desc", types=["user.message"]))
    assert [e.content[0].text for e in newest_first] == [f"m{i}" for i in reversed(range(5))]  # type: ignore[union-attr]


def test_session_update_metadata_title_and_agent_tools(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id, metadata={"a": "1", "b": "2"})
    raw = client.beta.sessions.with_raw_response.update(
        session.id, title="renamed", metadata={"a": None, "c": "3"}, agent={"tools": []}
    )
    updated = check(BetaManagedAgentsSession, raw.http_response.json())
    assert updated.title == "renamed" and updated.metadata == {"b": "2", "c": "3"} and updated.agent.tools == []
    (event,) = list(client.beta.sessions.events.list(session.id, types=["session.updated"]))
    assert event.type == "session.updated" and event.title == "renamed"
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.update(session.id, vault_ids=["vlt_x"])


def test_session_list_filters_and_bidirectional_pages(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    ids = [new_session(client, agent_id, env_id).id for _ in range(5)]
    raw = client.beta.sessions.with_raw_response.list(limit=2)
    first = check(SyncBidirectionalPageCursor[BetaManagedAgentsSession], raw.http_response.json())
    assert first.prev_page is None and first.next_page
    assert [s.id for s in first.data] == [ids[4], ids[3]]
    second_raw = client.beta.sessions.with_raw_response.list(limit=2, page=first.next_page)
    second = check(SyncBidirectionalPageCursor[BetaManagedAgentsSession], second_raw.http_response.json())
    assert [s.id for s in second.data] == [ids[2], ids[1]]
    assert second.prev_page
    back = client.beta.sessions.list(limit=2, page=second.prev_page)
    assert [s.id for s in back.data] == [ids[4], ids[3]]
    assert [s.id for s in client.beta.sessions.list(order="asc")] == ids
    assert [s.id for s in client.beta.sessions.list(statuses=["idle"], agent_id=agent_id)] == list(reversed(ids))
    assert list(client.beta.sessions.list(statuses=["running"])) == []
    assert list(client.beta.sessions.list(agent_id=agent_id, agent_version=2)) == []
    cutoff = client.beta.sessions.retrieve(ids[3]).created_at
    assert [s.id for s in client.beta.sessions.list(created_at_gte=cutoff)] == [ids[4], ids[3]]
    assert [s.id for s in client.beta.sessions.list(created_at_lt=cutoff, order="asc")] == ids[:3]


def test_archive_and_delete_session(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id, initial_events=[msg("x")])
    raw = client.beta.sessions.with_raw_response.archive(session.id)
    archived = check(BetaManagedAgentsSession, raw.http_response.json())
    assert archived.archived_at is not None
    with pytest.raises(anthropic.ConflictError) as exc_info:
        client.beta.sessions.events.send(session.id, events=[msg("late")])
    assert exc_info.value.error_code == "session_archived"
    assert session.id not in [s.id for s in client.beta.sessions.list()]
    assert session.id in [s.id for s in client.beta.sessions.list(include_archived=True)]
    raw_del = client.beta.sessions.with_raw_response.delete(session.id)
    deleted = check(BetaManagedAgentsDeletedSession, raw_del.http_response.json())
    assert deleted.id == session.id and deleted.type == "session_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(session.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.events.list(session.id)


def test_archived_agent_and_environment_refuse_new_sessions(
    client: anthropic.Anthropic, agent_id: str, env_id: str
) -> None:
    client.beta.agents.archive(agent_id)
    with pytest.raises(anthropic.BadRequestError) as exc_info:
        client.beta.sessions.create(agent=agent_id, environment_id=env_id)
    assert exc_info.value.error_code == "agent_archived"


# --- streaming ---------------------------------------------------------------------------------


def collect(stream: Any, count: int) -> list[Any]:
    out = []
    for event in stream:
        out.append(event)
        if len(out) == count:
            break
    return out


def test_stream_delivers_sent_events_live(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id, initial_events=[msg("before the stream")])
    with client.beta.sessions.events.stream(session.id) as stream:
        # No replay: only events appended after the stream opened are delivered.
        client.beta.sessions.events.send(session.id, events=[msg("one"), msg("two")])
        got = collect(stream, 2)
    assert [e.content[0].text for e in got] == ["one", "two"]
    for event in got:
        check(BetaManagedAgentsStreamSessionEvents, event.model_dump(mode="json", exclude_unset=True))


def test_stream_wire_format_ping_and_resume(
    server: ServerThread, api_key: str, client: anthropic.Anthropic, agent_id: str, env_id: str
) -> None:
    session = new_session(client, agent_id, env_id)
    sent = client.beta.sessions.events.send(session.id, events=[msg("a"), msg("b"), msg("c")])
    assert sent.data is not None
    headers = {"authorization": f"Bearer {api_key}", "accept": "application/json", **BETA}
    url = f"{server.url}/v1/sessions/{session.id}/events/stream"
    frames: list[dict[str, str]] = []
    with httpx.Client(timeout=10) as http, http.stream("GET", url, headers={**headers, "Last-Event-ID": "1"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, str] = {}
        deadline = time.monotonic() + 10
        for line in resp.iter_lines():
            if line == "":
                frames.append(frame)
                frame = {}
                if any(f.get("event") == "ping" for f in frames) or time.monotonic() > deadline:
                    break
                continue
            field, _, value = line.partition(": ")
            frame[field] = value
    # Replay after seq 1 (an extension): b and c, with their seqs as SSE ids, then a heartbeat.
    events = [f for f in frames if f.get("event") == "user.message"]
    assert [f["id"] for f in events] == ["2", "3"]
    import json

    assert [json.loads(f["data"])["id"] for f in events] == [e.id for e in sent.data[1:]]
    assert any(f.get("event") == "ping" for f in frames)


def test_stream_many_readers_no_gap_no_duplicate(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id)
    results: dict[int, list[str]] = {}
    streams = [client.beta.sessions.events.stream(session.id) for _ in range(5)]

    def read(i: int, stream: Any) -> None:
        results[i] = [e.id for e in collect(stream, 30)]
        stream.close()

    threads = [threading.Thread(target=read, args=(i, s)) for i, s in enumerate(streams)]
    for t in threads:
        t.start()
    sent: list[str] = []
    for i in range(10):
        data = client.beta.sessions.events.send(session.id, events=[msg(f"{i}a"), msg(f"{i}b"), msg(f"{i}c")]).data
        assert data is not None
        sent.extend(e.id for e in data)
    for t in threads:
        t.join(timeout=30)
    assert all(results[i] == sent for i in range(5))


def test_stream_ends_when_session_deleted(client: anthropic.Anthropic, agent_id: str, env_id: str) -> None:
    session = new_session(client, agent_id, env_id)
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.delete(session.id)
        got = list(stream)  # the server closes the stream after session.deleted
    assert [e.type for e in got] == ["session.deleted"]


@pytest.fixture
def second_client(server: ServerThread) -> Iterator[anthropic.Anthropic]:
    from core.keys import create_key, create_tenant

    async def mint() -> str:
        tenant_id = await create_tenant(server.platform.db, "other")
        return (await create_key(server.platform.db, "other", tenant_id)).key

    with anthropic.Anthropic(base_url=server.url, api_key=server.call(mint), max_retries=0) as c:
        yield c


def test_other_tenant_cannot_stream_or_send(
    client: anthropic.Anthropic, second_client: anthropic.Anthropic, agent_id: str, env_id: str
) -> None:
    session = new_session(client, agent_id, env_id)
    with pytest.raises(anthropic.NotFoundError):
        second_client.beta.sessions.events.stream(session.id)
    with pytest.raises(anthropic.NotFoundError):
        second_client.beta.sessions.events.send(session.id, events=[msg("x")])  # type: ignore[list-item]
    assert list(second_client.beta.sessions.list()) == []
