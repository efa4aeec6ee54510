"""Sessions that run: the runner, the default harness and the model providers, end to end.

A real server (runner on) talks to a fake model server that speaks the real Anthropic Messages
and OpenAI Chat Completions streaming protocols; the official SDKs drive both sides."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.beta.sessions.beta_managed_agents_stream_session_events import (
    BetaManagedAgentsStreamSessionEvents,
)

from core.fakes.model_server import FakeModelServer
from tests.servers import LoopThread, ServerThread, database_url, make_settings
from tests.strict import check

TERMINAL = ("session.status_idle", "session.status_terminated")
STALL_SECONDS = 90.0
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def fake_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def fake(fake_loop: LoopThread) -> Iterator[FakeModelServer]:
    server = FakeModelServer()
    fake_loop.call(server.start)
    yield server
    fake_loop.call(server.stop)


@pytest.fixture(scope="module")
def runner_server(
    backend: str, fake: FakeModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"runner-{backend}")
    with database_url(backend, tmp) as url:
        settings = make_settings(
            url,
            runner_enabled=True,
            anthropic_api_key="sk-ant-test",
            anthropic_base_url=fake.url,
            openai_api_key="sk-openai-test",
            openai_base_url=fake.openai_base_url,
            model_retry_base_seconds=0.01,
            model_max_retries=2,
            tool_timeout_seconds=30,
            data_dir=tmp / "data",
            lease_seconds=5,
        )
        srv = ServerThread(settings).start()
        yield srv
        srv.stop()


@pytest.fixture
def rclient(runner_server: ServerThread, fake_loop: LoopThread, fake: FakeModelServer) -> Iterator[anthropic.Anthropic]:
    from core.keys import create_key, create_tenant

    async def mint() -> str:
        tenant_id = await create_tenant(runner_server.platform.db, "runner-test")
        return (await create_key(runner_server.platform.db, "t", tenant_id)).key

    fake_loop.run(lambda: fake._queue.clear())
    with anthropic.Anthropic(
        base_url=runner_server.url, api_key=runner_server.call(mint), max_retries=0, timeout=30
    ) as c:
        yield c


class Script:
    """Queue replies on the fake from the test thread, and read what the harness sent."""

    def __init__(self, loop: LoopThread, fake: FakeModelServer) -> None:
        self.loop, self.fake = loop, fake
        self.start = len(fake.requests)

    def reply(self, *args: Any, **kwargs: Any) -> Any:
        return self.loop.run(lambda: self.fake.reply(*args, **kwargs))

    def error(self, *args: Any, **kwargs: Any) -> Any:
        return self.loop.run(lambda: self.fake.error(*args, **kwargs))

    def requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.fake.requests[self.start :]]


@pytest.fixture
def script(rclient: anthropic.Anthropic, fake_loop: LoopThread, fake: FakeModelServer) -> Script:
    return Script(fake_loop, fake)


def record_golden(name: str, server: ServerThread, session_id: str, script: Script) -> None:
    """With OMA_RECORD_GOLDEN=1, save the session's whole log (private fields included) and the
    model requests it caused, for tests/test_replay.py. Off by default: goldens are checked in."""
    import os

    import orjson

    from core import log
    from core.db import sessions

    if not os.environ.get("OMA_RECORD_GOLDEN") or server is None:
        return

    async def dump() -> dict[str, Any]:
        from sqlalchemy import select

        async with server.platform.db.read() as conn:
            events = await log.read_all(conn, session_id)
            agent = (await conn.execute(select(sessions.c.agent).where(sessions.c.id == session_id))).scalar_one()
        return {
            "agent": agent,
            "events": [
                {"seq": e.seq, "id": e.id, "type": e.type, "payload": e.payload, "created_at": e.created_at}
                for e in events
            ],
        }

    data = server.call(dump)
    data["requests"] = script.requests()
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / f"{name}.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def make_agent(client: anthropic.Anthropic, model: str = "claude-sonnet-5", **kw: Any) -> str:
    params: dict[str, Any] = {
        "name": "worker",
        "model": model,
        "system": "You are a careful agent.",
        "tools": [
            {"type": "agent_toolset_20260401"},
            {"type": "custom", "name": "lookup", "description": "Look a thing up", "input_schema": {"type": "object"}},
        ],
    }
    params.update(kw)
    return client.beta.agents.create(**params).id


def make_session(client: anthropic.Anthropic, agent_id: str) -> str:
    env = client.beta.environments.create(name="box").id
    return client.beta.sessions.create(agent=agent_id, environment_id=env).id


def msg(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def run_turn(client: anthropic.Anthropic, session_id: str, *events: dict[str, Any], deltas: bool = False) -> list[Any]:
    """Open the stream, send, and collect events until the session idles or terminates."""
    kwargs: dict[str, Any] = {"event_deltas": ["agent.message", "agent.thinking"]} if deltas else {}
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id, **kwargs) as stream:
        # A turn that never ends fails the test with what the log holds, instead of hanging it.
        watchdog = threading.Timer(STALL_SECONDS, stream.response.close)
        watchdog.start()
        try:
            if events:
                client.beta.sessions.events.send(session_id, events=list(events))  # type: ignore[arg-type]
            for event in stream:
                check(BetaManagedAgentsStreamSessionEvents, event.model_dump(mode="json", exclude_unset=True))
                seen.append(event)
                if event.type in TERMINAL:
                    break
        except Exception:
            if watchdog.is_alive():
                raise
            logged = [(e.type, getattr(e, "processed_at", None)) for e in client.beta.sessions.events.list(session_id)]
            status = client.beta.sessions.retrieve(session_id).status
            raise AssertionError(
                f"no terminal event after {STALL_SECONDS}s; status {status}; streamed {[e.type for e in seen]}; "
                f"logged {logged}"
            ) from None
        finally:
            watchdog.cancel()
    return seen


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events if e.type not in ("event_start", "event_delta")]


def test_text_reply_event_sequence_and_usage(rclient: anthropic.Anthropic, script: Script) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.reply("Hello there, how can I help?", usage={"input_tokens": 11, "output_tokens": 7})
    events = run_turn(rclient, session_id, msg("hi"), deltas=True)
    assert types(events) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    message = next(e for e in events if e.type == "agent.message")
    assert message.content[0].text == "Hello there, how can I help?"
    # Previews: event_start then deltas with the buffered event's id, before the event itself.
    starts = [e for e in events if e.type == "event_start"]
    assert starts and starts[0].event.id == message.id and starts[0].event.type == "agent.message"
    previews = "".join(e.delta.content.text for e in events if e.type == "event_delta")
    assert previews == "Hello there, how can I help?"
    assert events.index(starts[0]) < events.index(message)
    end = next(e for e in events if e.type == "span.model_request_end")
    assert end.model_usage.input_tokens == 11 and end.model_usage.output_tokens == 7
    assert events[-1].stop_reason.type == "end_turn"
    session = rclient.beta.sessions.retrieve(session_id)
    assert session.status == "idle"
    assert session.usage.input_tokens == 11 and session.usage.output_tokens == 7
    (sent,) = list(rclient.beta.sessions.events.list(session_id, types=["user.message"]))
    assert sent.processed_at is not None
    (request,) = script.requests()
    assert request["system"][0]["text"] == "You are a careful agent."
    assert request["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
    ]
    assert {t["name"] for t in request["tools"]} >= {"bash", "read", "write", "edit", "glob", "grep", "lookup"}
    assert request["tools"][-1]["cache_control"] == {"type": "ephemeral"}


def test_tool_loop_runs_bash_in_the_sandbox(
    rclient: anthropic.Anthropic, script: Script, runner_server: ServerThread, backend: str
) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.reply("Let me check.", tool_use={"name": "bash", "input": {"command": "echo made > out.txt && cat out.txt"}})
    script.reply("The file says: made.")
    events = run_turn(rclient, session_id, msg("make a file"))
    assert types(events) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "agent.tool_use",
        "span.model_request_end",
        "agent.tool_result",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    tool_use = next(e for e in events if e.type == "agent.tool_use")
    assert tool_use.evaluated_permission == "allow" and tool_use.evaluation.type == "always_allow"
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.tool_use_id == tool_use.id and not result.is_error
    assert "made" in result.content[0].text
    second = script.requests()[1]
    assert second["messages"][1]["content"][-1] == {
        "type": "tool_use",
        "id": tool_use.id,
        "name": "bash",
        "input": {"command": "echo made > out.txt && cat out.txt"},
    }
    block = second["messages"][2]["content"][0]
    assert block["type"] == "tool_result" and block["tool_use_id"] == tool_use.id
    if backend == "sqlite":
        record_golden("tool_loop", runner_server, session_id, script)


def test_custom_tool_requires_action_then_resumes(
    rclient: anthropic.Anthropic, script: Script, runner_server: ServerThread, backend: str
) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.reply(tool_use={"name": "lookup", "input": {"q": "order 7"}})
    events = run_turn(rclient, session_id, msg("where is order 7?"))
    custom = next(e for e in events if e.type == "agent.custom_tool_use")
    assert custom.name == "lookup" and custom.input == {"q": "order 7"}
    assert events[-1].stop_reason.type == "requires_action"
    assert events[-1].stop_reason.event_ids == [custom.id]
    script.reply("Order 7 shipped yesterday.")
    result = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": custom.id,
        "content": [{"type": "text", "text": "shipped 2026-11-24"}],
    }
    events = run_turn(rclient, session_id, result)
    assert events[-1].stop_reason.type == "end_turn"
    assert next(e for e in events if e.type == "agent.message").content[0].text == "Order 7 shipped yesterday."
    last = script.requests()[-1]["messages"]
    assert last[-1]["content"][0]["type"] == "tool_result" and last[-1]["content"][0]["tool_use_id"] == custom.id
    if backend == "sqlite":
        record_golden("custom_tool", runner_server, session_id, script)


@pytest.mark.parametrize("answer", ["allow", "deny"])
def test_always_ask_confirmation(
    rclient: anthropic.Anthropic, script: Script, answer: str, runner_server: ServerThread, backend: str
) -> None:
    agent_id = make_agent(
        rclient,
        tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}],
    )
    session_id = make_session(rclient, agent_id)
    script.reply(tool_use={"name": "bash", "input": {"command": "echo confirmed"}})
    events = run_turn(rclient, session_id, msg("run it"))
    tool_use = next(e for e in events if e.type == "agent.tool_use")
    assert tool_use.evaluated_permission == "ask"
    assert events[-1].stop_reason.type == "requires_action" and events[-1].stop_reason.event_ids == [tool_use.id]
    script.reply("ok")
    confirmation: dict[str, Any] = {"type": "user.tool_confirmation", "tool_use_id": tool_use.id, "result": answer}
    if answer == "deny":
        confirmation["deny_message"] = "not on prod"
    events = run_turn(rclient, session_id, confirmation)
    result = next(e for e in events if e.type == "agent.tool_result")
    if answer == "allow":
        assert not result.is_error and "confirmed" in result.content[0].text
    else:
        assert result.is_error and "not on prod" in result.content[0].text
    assert events[-1].stop_reason.type == "end_turn"
    if backend == "sqlite":
        record_golden(f"confirmation_{answer}", runner_server, session_id, script)


def test_interrupt_mid_stream(
    rclient: anthropic.Anthropic,
    script: Script,
    fake_loop: LoopThread,
    fake: FakeModelServer,
    runner_server: ServerThread,
    backend: str,
) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    reply = script.reply("This answer will never be finished because", hold=True)
    with rclient.beta.sessions.events.stream(session_id) as stream:
        rclient.beta.sessions.events.send(session_id, events=[msg("long task")])  # type: ignore[list-item]
        fake_loop.call(lambda: _wait(reply.hold.reached))
        rclient.beta.sessions.events.send(session_id, events=[{"type": "user.interrupt"}])
        events = []
        for event in stream:
            events.append(event)
            if event.type in TERMINAL:
                break
    fake_loop.run(reply.hold.release)
    assert "agent.message" not in types(events)
    end = next(e for e in events if e.type == "span.model_request_end")
    assert end.is_error is True
    assert events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn"
    queued = [e for e in rclient.beta.sessions.events.list(session_id) if e.type.startswith("user.")]
    assert all(e.processed_at is not None for e in queued)
    script.reply("Fresh answer.")
    events = run_turn(rclient, session_id, msg("try again"))
    assert next(e for e in events if e.type == "agent.message").content[0].text == "Fresh answer."
    if backend == "sqlite":
        record_golden("interrupted_turn", runner_server, session_id, script)


def test_interrupt_mid_tool(rclient: anthropic.Anthropic, script: Script) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.reply(tool_use={"name": "bash", "input": {"command": "echo started; sleep 60"}})
    with rclient.beta.sessions.events.stream(session_id) as stream:
        rclient.beta.sessions.events.send(session_id, events=[msg("slow")])  # type: ignore[list-item]
        events = []
        for event in stream:
            events.append(event)
            if event.type == "agent.tool_use":
                rclient.beta.sessions.events.send(session_id, events=[{"type": "user.interrupt"}])
            if event.type in TERMINAL:
                break
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.is_error and "interrupted" in result.content[0].text
    assert events[-1].stop_reason.type == "end_turn"
    # The interrupted turn is over: the model is not called again until the next message.
    script.reply("Understood, stopping there.")
    run_turn(rclient, session_id, msg("next"))
    _, second = script.requests()
    last = second["messages"][-1]["content"]
    assert last[0]["type"] == "tool_result" and last[0]["is_error"] is True
    assert last[-1]["text"] == "next"


def test_model_errors_are_retried_then_succeed(rclient: anthropic.Anthropic, script: Script) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.error(529, times=2)
    script.reply("Recovered.")
    events = run_turn(rclient, session_id, msg("hi"))
    errors = [e for e in events if e.type == "session.error"]
    assert [e.error.type for e in errors] == ["model_overloaded_error", "model_overloaded_error"]
    assert all(e.error.retry_status.type == "retrying" for e in errors)
    assert types(events).count("session.status_rescheduled") == 2
    assert next(e for e in events if e.type == "agent.message").content[0].text == "Recovered."
    assert events[-1].stop_reason.type == "end_turn"


def test_retries_exhausted(rclient: anthropic.Anthropic, script: Script) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.error(429, times=3)
    events = run_turn(rclient, session_id, msg("hi"))
    errors = [e for e in events if e.type == "session.error"]
    assert [e.error.retry_status.type for e in errors] == ["retrying", "retrying", "exhausted"]
    assert errors[0].error.type == "model_rate_limited_error"
    assert events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "retries_exhausted"


def test_terminal_model_error_terminates(rclient: anthropic.Anthropic, script: Script) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    script.error(400, "invalid_request_error", "prompt is too long")
    events = run_turn(rclient, session_id, msg("hi"))
    error = next(e for e in events if e.type == "session.error")
    assert error.error.retry_status.type == "terminal" and "prompt is too long" in error.error.message
    assert events[-1].type == "session.status_terminated"
    assert rclient.beta.sessions.retrieve(session_id).status == "terminated"
    with pytest.raises(anthropic.ConflictError):
        rclient.beta.sessions.events.send(session_id, events=[msg("again")])  # type: ignore[list-item]


def test_openai_provider_tool_loop(rclient: anthropic.Anthropic, script: Script) -> None:
    session_id = make_session(rclient, make_agent(rclient, model="openai/gpt-5"))
    script.reply(tool_use={"name": "bash", "input": {"command": "echo from-openai"}})
    script.reply("Done via OpenAI.")
    events = run_turn(rclient, session_id, msg("go"))
    result = next(e for e in events if e.type == "agent.tool_result")
    assert "from-openai" in result.content[0].text
    assert next(e for e in events if e.type == "agent.message").content[0].text == "Done via OpenAI."
    first, second = script.requests()
    assert first["model"] == "gpt-5" and first["messages"][0] == {
        "role": "system",
        "content": "You are a careful agent.",
    }
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    tool_use = next(e for e in events if e.type == "agent.tool_use")
    assert second["messages"][-2]["tool_calls"][0]["id"] == tool_use.id
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": tool_use.id, "content": result.content[0].text}


def test_message_sent_while_running_follows_the_answer(
    rclient: anthropic.Anthropic, script: Script, fake_loop: LoopThread, runner_server: ServerThread, backend: str
) -> None:
    session_id = make_session(rclient, make_agent(rclient))
    first = script.reply("First answer.", hold=True)
    script.reply("Second answer.")
    with rclient.beta.sessions.events.stream(session_id) as stream:
        rclient.beta.sessions.events.send(session_id, events=[msg("one")])  # type: ignore[list-item]
        fake_loop.call(lambda: _wait(first.hold.reached))
        rclient.beta.sessions.events.send(session_id, events=[msg("two")])  # type: ignore[list-item]
        fake_loop.run(first.hold.release)
        messages = []
        for event in stream:
            if event.type == "agent.message":
                messages.append(event.content[0].text)
            if event.type == "session.status_idle":
                break
    assert messages == ["First answer.", "Second answer."]
    second = script.requests()[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"][0]["text"] == "First answer."
    assert second[2]["content"][0]["text"] == "two"
    if backend == "sqlite":
        record_golden("message_while_running", runner_server, session_id, script)


def test_demo_model_needs_no_key(rclient: anthropic.Anthropic) -> None:
    session_id = make_session(rclient, make_agent(rclient, model="demo"))
    events = run_turn(rclient, session_id, msg("please run `echo hello-from-demo`"))
    result = next(e for e in events if e.type == "agent.tool_result")
    assert "hello-from-demo" in result.content[0].text
    final = [e for e in events if e.type == "agent.message"][-1]
    assert "hello-from-demo" in final.content[0].text
    assert events[-1].stop_reason.type == "end_turn"


async def _wait(event: Any) -> None:
    import asyncio

    await asyncio.wait_for(event.wait(), 20)


def test_unknown_model_provider_is_a_clear_terminal_error(rclient: anthropic.Anthropic) -> None:
    session_id = make_session(rclient, make_agent(rclient, model="mystery-model-9"))
    events = run_turn(rclient, session_id, msg("hi"))
    error = next(e for e in events if e.type == "session.error")
    assert "provider/model" in error.error.message and error.error.retry_status.type == "terminal"


@pytest.fixture(scope="module")
def compacting_server(
    backend: str, fake: FakeModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"compact-{backend}")
    with database_url(backend, tmp) as url:
        settings = make_settings(
            url,
            runner_enabled=True,
            anthropic_api_key="sk-ant-test",
            anthropic_base_url=fake.url,
            compact_at_tokens=1000,
            data_dir=tmp / "data",
        )
        srv = ServerThread(settings).start()
        yield srv
        srv.stop()


def test_compaction_summarises_older_turns(
    compacting_server: ServerThread, fake_loop: LoopThread, fake: FakeModelServer
) -> None:
    from core.keys import create_key, create_tenant

    async def mint() -> str:
        tenant_id = await create_tenant(compacting_server.platform.db, "compaction")
        return (await create_key(compacting_server.platform.db, "t", tenant_id)).key

    fake_loop.run(lambda: fake._queue.clear())
    script = Script(fake_loop, fake)
    with anthropic.Anthropic(
        base_url=compacting_server.url, api_key=compacting_server.call(mint), max_retries=0
    ) as client:
        session_id = make_session(client, make_agent(client))
        script.reply("Noted all of that.")
        run_turn(client, session_id, msg("context: " + "lorem ipsum " * 500))
        script.reply("SUMMARY: the user shared a long lorem ipsum context; the agent acknowledged it.")
        script.reply("Here is the follow-up answer.")
        events = run_turn(client, session_id, msg("second question"))
    assert "agent.thread_context_compacted" in types(events)
    assert next(e for e in events if e.type == "agent.message").content[0].text == "Here is the follow-up answer."
    _, compaction, answer = script.requests()
    assert "Summarise this conversation" in compaction["messages"][0]["content"][0]["text"]
    assert "lorem ipsum" in compaction["messages"][0]["content"][0]["text"]
    first = answer["messages"][0]["content"]
    assert first[0]["text"].endswith("SUMMARY: the user shared a long lorem ipsum context; the agent acknowledged it.")
    assert first[-1]["text"] == "second question"
    assert len(answer["messages"]) == 1


def test_extended_thinking_is_requested_and_kept_for_the_tool_loop(
    rclient: anthropic.Anthropic, script: Script
) -> None:
    agent_id = make_agent(rclient, model={"id": "claude-sonnet-5", "effort": "high"})
    session_id = make_session(rclient, agent_id)
    script.reply(thinking="I should list the files.", tool_use={"name": "bash", "input": {"command": "echo listed"}})
    script.reply("All listed.")
    events = run_turn(rclient, session_id, msg("list files"), deltas=True)
    assert types(events)[:5] == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.thinking",
        "agent.tool_use",
    ]
    thinking = next(e for e in events if e.type == "agent.thinking")
    assert any(
        e.type == "event_start" and e.event.type == "agent.thinking" and e.event.id == thinking.id for e in events
    )
    first, second = script.requests()
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert first["max_tokens"] > 16384
    # The signed thinking block goes back with the tool result, as the Messages API requires.
    assistant = second["messages"][1]["content"]
    assert assistant[0]["type"] == "thinking" and assistant[0]["thinking"] == "I should list the files."
    assert assistant[0]["signature"]


def test_custom_harness_registered_and_chosen_per_agent(
    rclient: anthropic.Anthropic, runner_server: ServerThread
) -> None:
    from core.harness.turn import TurnContext
    from core.log import NewEvent

    async def shouting(ctx: TurnContext) -> None:
        await ctx.refresh(force=True)
        queued = [e for e in ctx.events if e.seq in ctx.queued_seqs]
        said = " ".join(b["text"] for e in queued if e.type == "user.message" for b in e.payload["content"])
        await ctx.emit(
            [
                NewEvent("session.status_running"),
                NewEvent("agent.message", {"content": [{"type": "text", "text": said.upper()}]}),
                NewEvent("session.status_idle", {"stop_reason": {"type": "end_turn"}}),
            ],
            status="idle",
            processed=[e.seq for e in queued],
        )

    runner_server.platform.runner.harnesses.register("shouting", shouting)
    agent_id = make_agent(rclient, metadata={"oma.harness": "shouting"})
    session_id = make_session(rclient, agent_id)
    events = run_turn(rclient, session_id, msg("quiet please"))
    assert next(e for e in events if e.type == "agent.message").content[0].text == "QUIET PLEASE"
