"""The fake model server, driven by the real anthropic and openai SDKs and checked on the wire."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.fakes.base import ScriptError, ToolUseSpec, UsageSpec
from core.fakes.model_server import FakeModelServer
from tests.strict import check

REPO = Path(__file__).resolve().parent.parent
USER_HI: Any = [{"role": "user", "content": "hi"}]
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelServer]:
    async with FakeModelServer() as server:
        yield server


@pytest.fixture
async def claude(fake: FakeModelServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture
async def gpt(fake: FakeModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0, timeout=30) as client:
        yield client


def text_at(message: Message, index: int = 0) -> str:
    block = message.content[index]
    assert block.type == "text"
    return block.text


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    events = []
    for chunk in raw.split("\n\n"):
        if not chunk.strip():
            continue
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields.get("event"), fields["data"]))
    return events


async def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as response:
        return response.status, await response.text()


# --- Anthropic Messages ---------------------------------------------------------------------------


async def test_anthropic_stream_text_in_chunks_with_usage(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    usage: UsageSpec = {
        "input_tokens": 120,
        "output_tokens": 9,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 500,
    }
    fake.reply(text="The quick brown fox jumps over the lazy dog.", usage=usage)
    deltas = []
    async with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=USER_HI) as stream:
        async for event in stream:
            if event.type == "text":
                deltas.append(event.text)
        message = await stream.get_final_message()
    assert len(deltas) > 3
    assert "".join(deltas) == text_at(message) == "The quick brown fox jumps over the lazy dog."
    assert message.stop_reason == "end_turn" and message.model == "claude-sonnet-4-6"
    assert message.usage.input_tokens == 120 and message.usage.output_tokens == 9
    assert message.usage.cache_creation_input_tokens == 30 and message.usage.cache_read_input_tokens == 500


async def test_anthropic_tool_use_input_assembled_from_json_chunks(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    tool_input = {"command": "grep -rn 'needle' /srv/app | head -50", "timeout": 30, "env": {"LANG": "C.UTF-8"}}
    fake.reply(text="Searching.", tool_use={"name": "bash", "input": tool_input, "id": "toolu_fixed"})
    partials = []
    async with claude.messages.stream(model="m", max_tokens=100, messages=USER_HI) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partials.append(event.delta.partial_json)
        message = await stream.get_final_message()
    assert len(partials) > 3 and json.loads("".join(partials)) == tool_input
    text, tool = message.content
    assert text.type == "text" and text.text == "Searching."
    assert tool.type == "tool_use" and (tool.id, tool.name, tool.input) == ("toolu_fixed", "bash", tool_input)
    assert message.stop_reason == "tool_use"


async def test_anthropic_thinking_streams_deltas_and_signature(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.reply(
        content=[
            {"type": "thinking", "thinking": "The user greets me; greet back.", "signature": "sig-123"},
            {"type": "redacted_thinking", "data": "opaque"},
            "Hello!",
        ]
    )
    kinds = []
    async with claude.messages.stream(
        model="m", max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}, messages=USER_HI
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        message = await stream.get_final_message()
    assert kinds.count("thinking_delta") > 1 and kinds.count("signature_delta") == 1
    assert kinds.index("signature_delta") > kinds.index("thinking_delta")
    thinking, redacted, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "The user greets me; greet back."
    assert thinking.signature == "sig-123"
    assert redacted.type == "redacted_thinking" and redacted.data == "opaque"
    assert text.type == "text" and text.text == "Hello!"


async def test_anthropic_create_returns_the_message(fake: FakeModelServer, claude: anthropic.AsyncAnthropic) -> None:
    fake.reply(thinking="hmm", text="Cut short", stop_reason="max_tokens", usage={"output_tokens": 64})
    message = await claude.messages.create(model="m", max_tokens=64, messages=USER_HI)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert text_at(message, 1) == "Cut short"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 64
    assert message.id.startswith("msg_")


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_wire_format_matches_sdk_types_strictly(fake: FakeModelServer, stream: bool) -> None:
    fake.reply(thinking="a b c", text="x y z", tool_use={"name": "t", "input": {"q": 1}}, stop_reason="refusal")
    body = {"model": "m", "max_tokens": 10, "messages": USER_HI, "stream": stream}
    status, raw = await post(f"{fake.url}/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 200
    if not stream:
        assert check(Message, json.loads(raw)).stop_reason == "refusal"
        return
    events = sse_events(raw)
    assert [name for name, _ in events[:2]] == ["message_start", "ping"]
    assert [name for name, _ in events[-2:]] == ["message_delta", "message_stop"]
    for name, data in events:
        if name != "ping":
            parsed = check(RawMessageStreamEvent, json.loads(data))
            assert parsed.type == name
    assert json.loads(events[-2][1])["delta"]["stop_reason"] == "refusal"


@pytest.mark.parametrize(
    ("status", "error_type", "exc_class"),
    [
        (529, "overloaded_error", anthropic.OverloadedError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
    ],
)
async def test_anthropic_errors_raise_the_sdk_classes(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic, status: int, error_type: str, exc_class: type[Exception]
) -> None:
    fake.error(status=status, message="scripted failure", times=2, retry_after=3 if status == 429 else None)
    fake.reply(text="recovered")
    for _ in range(2):
        with pytest.raises(exc_class) as info:
            async with claude.messages.stream(model="m", max_tokens=10, messages=USER_HI) as stream:
                await stream.get_final_message()
        assert isinstance(info.value, anthropic.APIStatusError) and info.value.status_code == status
        body: Any = info.value.body
        assert body["type"] == "error" and body["error"] == {"type": error_type, "message": "scripted failure"}
        assert info.value.response.headers.get("retry-after") == ("3" if status == 429 else None)
    message = await claude.messages.create(model="m", max_tokens=10, messages=USER_HI)
    assert text_at(message) == "recovered"
    assert len(fake.requests) == 3


async def test_anthropic_error_mid_stream_arrives_after_the_message_started(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.error(529, mid_stream=True)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with claude.messages.stream(model="m", max_tokens=10, messages=USER_HI) as stream:
            async for event in stream:
                seen.append(event.type)
    assert seen == ["message_start"]
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def test_api_key_is_checked_when_configured() -> None:
    async with FakeModelServer(api_key="right") as server:
        for key, ok in (("wrong", False), ("right", True)):
            async with anthropic.AsyncAnthropic(base_url=server.url, api_key=key, max_retries=0) as client:
                if ok:
                    await client.messages.create(model="m", max_tokens=5, messages=USER_HI)
                else:
                    with pytest.raises(anthropic.AuthenticationError):
                        await client.messages.create(model="m", max_tokens=5, messages=USER_HI)
            async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0) as oai:
                if ok:
                    await oai.chat.completions.create(model="m", messages=USER_HI)
                else:
                    with pytest.raises(openai.AuthenticationError) as info:
                        await oai.chat.completions.create(model="m", messages=USER_HI)
                    assert info.value.code == "invalid_api_key"
        status, raw = await post(f"{server.url}/v1/messages", {"model": "m", "max_tokens": 5, "messages": USER_HI})
        assert status == 401 and json.loads(raw)["error"]["type"] == "authentication_error"


async def test_requests_the_real_api_rejects_get_400_and_keep_the_script(fake: FakeModelServer) -> None:
    fake.reply(text="kept")
    good = {"model": "m", "max_tokens": 5, "messages": USER_HI}
    status, raw = await post(f"{fake.url}/v1/messages", good)  # no anthropic-version header
    assert status == 400 and json.loads(raw)["error"]["message"] == "anthropic-version: header is required"
    status, raw = await post(f"{fake.url}/v1/messages", {"model": "m", "messages": USER_HI}, ANTHROPIC_HEADERS)
    assert status == 400 and json.loads(raw)["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }
    status, raw = await post(f"{fake.openai_base_url}/chat/completions", {"model": "m", "messages": []})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    assert fake.queued == 1
    status, raw = await post(f"{fake.url}/v1/messages", good, ANTHROPIC_HEADERS)
    assert json.loads(raw)["content"] == [{"type": "text", "text": "kept"}]


async def test_default_reply_echoes_the_last_user_text(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    message = await claude.messages.create(
        model="m",
        max_tokens=5,
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "file.txt"}]},
        ],
    )
    assert text_at(message) == "echo: file.txt" and message.stop_reason == "end_turn"
    completion = await gpt.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "ping"}]}]
    )
    assert completion.choices[0].message.content == "echo: ping"


async def test_every_request_is_recorded_with_its_protocol(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic, gpt: openai.AsyncOpenAI
) -> None:
    system: Any = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    tools: Any = [{"name": "bash", "description": "Run", "input_schema": {"type": "object"}}]
    waiter = asyncio.create_task(fake.wait_for_requests(2))
    await claude.messages.create(
        model="m",
        max_tokens=2000,
        system=system,
        tools=tools,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=USER_HI,
    )
    await gpt.chat.completions.create(model="gpt", messages=USER_HI)
    async with asyncio.timeout(5):
        first, second = await waiter
    assert first.protocol == "anthropic" and first.path == "/v1/messages" and not first.stream
    assert first.body["system"] == system and first.body["tools"] == tools
    assert first.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "k" not in first.headers.values()  # the key is redacted
    assert second.protocol == "openai" and second.path == "/v1/chat/completions"
    assert second.body["messages"] == USER_HI


# --- holds ----------------------------------------------------------------------------------------


async def test_hold_pauses_after_the_first_delta_until_released(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    hold = fake.hold()
    fake.reply(text="one two three four")
    received: list[str] = []
    first_delta = asyncio.Event()

    async def consume() -> str:
        async with claude.messages.stream(model="m", max_tokens=10, messages=USER_HI) as stream:
            async for text in stream.text_stream:
                received.append(text)
                first_delta.set()
            return text_at(await stream.get_final_message())

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await hold.reached.wait()
        await first_delta.wait()
    assert received == ["one "] and not task.done()
    hold.release()
    async with asyncio.timeout(5):
        assert await task == "one two three four"


async def test_hold_sees_the_client_hang_up(fake: FakeModelServer, claude: anthropic.AsyncAnthropic) -> None:
    held = fake.reply(text="never finished", hold=True).hold
    assert held is not None
    async with claude.messages.stream(model="m", max_tokens=10, messages=USER_HI) as stream:
        async for _ in stream.text_stream:
            break  # interrupt mid-stream: leaving the block closes the connection
    async with asyncio.timeout(5):
        await held.client_disconnected.wait()
    assert fake.requests[0].client_disconnected


async def test_hold_applies_to_non_streaming_and_openai_calls(fake: FakeModelServer, gpt: openai.AsyncOpenAI) -> None:
    hold = fake.hold()
    task = asyncio.create_task(gpt.chat.completions.create(model="m", messages=USER_HI))
    async with asyncio.timeout(5):
        await hold.reached.wait()
    assert not task.done()
    hold.release()
    async with asyncio.timeout(5):
        completion = await task
    assert completion.choices[0].message.content == "echo: hi"


# --- OpenAI Chat Completions ----------------------------------------------------------------------


async def test_openai_stream_assembles_tool_calls_and_usage(fake: FakeModelServer, gpt: openai.AsyncOpenAI) -> None:
    calls: list[ToolUseSpec] = [
        {"name": "bash", "input": {"command": "ls -la /var/log && tail -n 20 syslog"}},
        {"name": "read_file", "input": {"path": "/etc/hosts"}, "id": "call_fixed"},
    ]
    fake.reply(
        text="Running two tools now.", tool_use=calls, usage={"input_tokens": 100, "cache_read_input_tokens": 40}
    )
    stream = await gpt.chat.completions.create(
        model="gpt-x", messages=USER_HI, stream=True, stream_options={"include_usage": True}
    )
    text: list[str] = []
    assembled: dict[int, dict[str, str]] = {}
    finish = None
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or []:
                slot = assembled.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.id or ""
                slot["name"] += (call.function and call.function.name) or ""
                slot["arguments"] += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert "".join(text) == "Running two tools now." and sum(1 for t in text if t) > 2
    assert [(s["name"], json.loads(s["arguments"])) for s in assembled.values()] == [
        (c["name"], c["input"]) for c in calls
    ]
    assert assembled[0]["id"].startswith("call_") and assembled[1]["id"] == "call_fixed"
    assert finish == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens == 140 and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_wire_format_matches_sdk_types_strictly(fake: FakeModelServer, include_usage: bool) -> None:
    fake.reply(text="a b c", tool_use={"name": "t", "input": {}}, stop_reason="max_tokens")
    body: dict[str, Any] = {"model": "m", "messages": USER_HI, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, raw = await post(f"{fake.openai_base_url}/chat/completions", body)
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [check(ChatCompletionChunk, json.loads(data)) for _, data in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert (chunks[-1].usage is not None) == include_usage


async def test_openai_create_returns_the_completion(fake: FakeModelServer) -> None:
    fake.reply(thinking="considering", text="Sure.", tool_use={"name": "bash", "input": {"command": "pwd"}})
    status, raw = await post(f"{fake.openai_base_url}/chat/completions", {"model": "m", "messages": USER_HI})
    payload = json.loads(raw)
    assert status == 200 and payload["choices"][0]["message"].pop("reasoning_content") == "considering"
    completion = check(ChatCompletion, payload)
    message = completion.choices[0].message
    assert message.content == "Sure." and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and message.tool_calls[0].function.name == "bash"
    assert json.loads(message.tool_calls[0].function.arguments) == {"command": "pwd"}
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 2


async def test_openai_stream_carries_thinking_as_reasoning_content(
    fake: FakeModelServer, gpt: openai.AsyncOpenAI
) -> None:
    fake.reply(thinking="step one, step two", text="done")
    stream = await gpt.chat.completions.create(model="m", messages=USER_HI, stream=True)
    reasoning = []
    async for chunk in stream:
        for choice in chunk.choices:
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
    assert "".join(reasoning) == "step one, step two"


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type", "code"),
    [
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
        (529, openai.InternalServerError, "server_error", "overloaded"),
        (400, openai.BadRequestError, "invalid_request_error", None),
    ],
)
async def test_openai_errors_raise_the_sdk_classes(
    fake: FakeModelServer,
    gpt: openai.AsyncOpenAI,
    status: int,
    exc_class: type[Exception],
    error_type: str,
    code: str | None,
) -> None:
    fake.error(status=status, message="nope")
    with pytest.raises(exc_class) as info:
        await gpt.chat.completions.create(model="m", messages=USER_HI, stream=True)
    assert isinstance(info.value, openai.APIStatusError) and info.value.status_code == status
    assert info.value.body == {"message": "nope", "type": error_type, "param": None, "code": code}


async def test_openai_error_mid_stream(fake: FakeModelServer, gpt: openai.AsyncOpenAI) -> None:
    fake.error(529, mid_stream=True)
    stream = await gpt.chat.completions.create(model="m", messages=USER_HI, stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        async for _ in stream:
            pass


# --- the script -----------------------------------------------------------------------------------


async def test_script_items_and_reply_calls_share_one_shape(
    fake: FakeModelServer, claude: anthropic.AsyncAnthropic
) -> None:
    fake.script(
        [
            {"error": {"status": 529, "times": 2}},
            {"content": [{"type": "thinking", "thinking": "t"}, "x", {"name": "bash", "input": {"a": 1}}]},
            {"text": "bye", "usage": {"output_tokens": 3}, "chunk_delay": 0},
        ]
    )
    assert fake.queued == 4
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            await claude.messages.create(model="m", max_tokens=5, messages=USER_HI)
    message = await claude.messages.create(model="m", max_tokens=5, messages=USER_HI)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.stop_reason == "tool_use"
    message = await claude.messages.create(model="m", max_tokens=5, messages=USER_HI)
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize(
    "item",
    [
        "text",
        {"text": 3},
        {"txt": "typo"},
        {"tool_use": {"input": {}}},
        {"content": [{"type": "image"}]},
        {"text": "x", "content": ["y"]},
        {"text": "x", "stop_reason": "done"},
        {"text": "x", "usage": {"tokens": 1}},
        {"error": {"status": 200}},
        {"error": {"status": 529, "times": 0}},
        {"error": 529},
    ],
)
def test_malformed_script_items_are_rejected(item: object) -> None:
    server = FakeModelServer()
    with pytest.raises(ScriptError):
        server.script([{"text": "fine"}, item])
    assert server.queued == 0


# --- standalone process ---------------------------------------------------------------------------


async def _poll_state(http: aiohttp.ClientSession, url: str, key: str, want: int) -> None:
    async with asyncio.timeout(10):
        while True:
            async with http.get(f"{url}/_fake/state") as response:
                if (await response.json())[key] >= want:
                    return
            await asyncio.sleep(0.02)


async def test_standalone_process_is_driven_over_http(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "from the file"}, {"error": {"status": 429, "retry_after": 2}}]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core.fakes.model_server",
        "--port",
        "0",
        "--script",
        str(script),
        "--api-key",
        "k",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode().strip()
        assert line.startswith("listening http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        async with (
            anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as claude,
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as gpt,
            aiohttp.ClientSession() as http,
        ):
            message = await claude.messages.create(model="m", max_tokens=5, messages=USER_HI)
            assert text_at(message) == "from the file"
            with pytest.raises(openai.RateLimitError) as info:
                await gpt.chat.completions.create(model="m", messages=USER_HI)
            assert info.value.response.headers["retry-after"] == "2"

            async with http.post(f"{url}/_fake/script", json=[{"text": "held up here", "hold": True}]) as response:
                assert await response.json() == {"queued": 1}
            async with http.post(f"{url}/_fake/script", json={"txt": "typo"}) as response:
                assert response.status == 400
            task = asyncio.create_task(claude.messages.create(model="m", max_tokens=5, messages=USER_HI, stream=False))
            await _poll_state(http, url, "holding", 1)
            assert not task.done()
            async with http.post(f"{url}/_fake/release") as response:
                assert await response.json() == {"released": 1}
            async with asyncio.timeout(10):
                assert text_at(await task) == "held up here"

            async with http.get(f"{url}/_fake/requests") as response:
                recorded = await response.json()
            assert [r["protocol"] for r in recorded] == ["anthropic", "openai", "anthropic"]
            assert recorded[1]["body"]["messages"] == USER_HI
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            code = await proc.wait()
    assert code == 0


async def test_standalone_process_rejects_a_bad_script(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "ok"}, {"stop_reason": "nope"}]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core.fakes.model_server",
        "--script",
        str(script),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 2 and out == b""
    assert b"unknown stop_reason 'nope'" in err
