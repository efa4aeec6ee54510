"""A scripted fake LLM server that the real `anthropic` and `openai` clients talk to unchanged.

    async with FakeModelServer() as server:
        server.reply(text="Let me look.", tool_use={"name": "bash", "input": {"command": "ls"}})
        server.error(status=529, times=2)
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="x")
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="x")

Replies are served in order to either protocol; with none queued the server echoes the last user
text ("echo: …"). Another process drives it over `/_fake/*`:

    python -m core.fakes.model_server --port 0 --script script.json   # prints "listening URL"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from core.fakes.anthropic_messages import AnthropicMessages
from core.fakes.base import (
    BlockSpec,
    ErrorReply,
    Hold,
    RecordedRequest,
    Reply,
    ScriptError,
    ScriptItem,
    StopReason,
    ToolUseSpec,
    UsageSpec,
    Wire,
    make_error,
    make_reply,
    parse_item,
)
from core.fakes.openai_chat import OpenAIChat

__all__ = [
    "ErrorReply",
    "FakeModelServer",
    "Hold",
    "RecordedRequest",
    "Reply",
    "ScriptError",
    "StopReason",
]

_SECRET_HEADERS = {"x-api-key", "authorization"}


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class FakeModelServer:
    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, chunk_delay: float = 0.0
    ) -> None:
        self.host = host
        self.port = port
        # None: any key is accepted. Otherwise a wrong or missing key gets 401.
        self.api_key = api_key
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self._queue: deque[ScriptItem] = deque()
        self._next_holds: deque[Hold] = deque()
        self._holds: list[Hold] = []
        self._request_seen = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The root URL: the anthropic SDK's `base_url`."""
        if self._url is None:
            raise RuntimeError("the fake model server is not started")
        return self._url

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def queued(self) -> int:
        return len(self._queue)

    def reply(
        self,
        text: str | None = None,
        *,
        thinking: str | None = None,
        tool_use: ToolUseSpec | list[ToolUseSpec] | None = None,
        content: list[BlockSpec] | None = None,
        stop_reason: StopReason | str | None = None,
        usage: UsageSpec | None = None,
        delay: float = 0.0,
        chunk_delay: float | None = None,
        hold: bool = False,
    ) -> Reply:
        """Queue one model turn. Blocks go out as thinking, text, tool_use(s) unless `content` orders
        them; `stop_reason` defaults to tool_use when there is a tool call, else end_turn."""
        reply = make_reply(
            text,
            thinking=thinking,
            tool_use=tool_use,
            content=content,
            stop_reason=stop_reason,
            usage=usage,
            delay=delay,
            chunk_delay=chunk_delay,
            hold=hold,
        )
        self._enqueue([reply])
        return reply

    def error(
        self,
        status: int = 529,
        type: str | None = None,
        message: str | None = None,
        *,
        times: int = 1,
        retry_after: float | None = None,
        mid_stream: bool = False,
        delay: float = 0.0,
    ) -> ErrorReply:
        """Queue `times` failed calls. `type` defaults from the status (529 overloaded_error, 429
        rate_limit_error, …); `mid_stream` fails a streaming call after the message has started."""
        if times < 1:
            raise ScriptError("`times` is a positive int")
        error = make_error(status, type, message, retry_after=retry_after, mid_stream=mid_stream, delay=delay)
        self._enqueue([error] * times)
        return error

    def script(self, items: Iterable[object]) -> None:
        """Queue JSON-shaped items (see `core.fakes.base`); all or none if one is malformed."""
        parsed = [entry for item in items for entry in parse_item(item)]
        self._enqueue(parsed)

    def hold(self) -> Hold:
        """Pause the next response after its first delta until `Hold.release()`."""
        hold = Hold()
        self._holds.append(hold)
        self._next_holds.append(hold)
        return hold

    def release_all(self) -> int:
        released = [h for h in self._holds if not h.released.is_set()]
        for hold in released:
            hold.release()
        return len(released)

    async def wait_for_requests(self, count: int) -> list[RecordedRequest]:
        """The first `count` requests, once that many have arrived (bound it with asyncio.timeout)."""
        while len(self.requests) < count:
            self._request_seen.clear()
            await self._request_seen.wait()
        return self.requests[:count]

    async def start(self) -> FakeModelServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        anthropic_wire, openai_wire = AnthropicMessages(), OpenAIChat()

        async def messages(request: web.Request) -> web.StreamResponse:
            return await self._model_call(request, anthropic_wire)

        async def chat_completions(request: web.Request) -> web.StreamResponse:
            return await self._model_call(request, openai_wire)

        app.router.add_post("/v1/messages", messages)
        app.router.add_post("/v1/chat/completions", chat_completions)
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_post("/_fake/hold", self._control_hold)
        app.router.add_post("/_fake/release", self._control_release)
        app.router.add_get("/_fake/state", self._control_state)
        # handler_cancellation: a client hanging up cancels its handler, so a held stream notices.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self._url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        self.release_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeModelServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _enqueue(self, items: list[ScriptItem]) -> None:
        for item in items:
            if item.hold is not None:
                self._holds.append(item.hold)
        self._queue.extend(items)

    async def _model_call(self, request: web.Request, wire: Wire) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        headers = {k.lower(): ("<redacted>" if k.lower() in _SECRET_HEADERS else v) for k, v in request.headers.items()}
        record = RecordedRequest(protocol=wire.protocol, path=request.path_qs, headers=headers, body=body)
        self.requests.append(record)
        self._request_seen.set()
        if self.api_key is not None and not wire.authorized(request.headers, self.api_key):
            return wire.error_response(make_error(401, "authentication_error", wire.unauthorized_message))
        problem = wire.invalid(request.headers, body)
        if problem is not None:
            return wire.error_response(make_error(400, "invalid_request_error", problem))
        item = self._queue.popleft() if self._queue else make_reply(f"echo: {wire.echo_text(body)}")
        hold = item.hold or (self._next_holds.popleft() if self._next_holds else None)
        try:
            return await self._respond(request, wire, body, item, hold)
        except (asyncio.CancelledError, ConnectionResetError):
            record.client_disconnected = True
            if hold is not None:
                hold.client_disconnected.set()
            raise

    async def _respond(
        self, request: web.Request, wire: Wire, body: dict[str, Any], item: ScriptItem, hold: Hold | None
    ) -> web.StreamResponse:
        if item.delay:
            await asyncio.sleep(item.delay)
        streaming = body.get("stream") is True
        if isinstance(item, ErrorReply):
            if not (item.mid_stream and streaming):
                await self._pause(hold)
                return wire.error_response(item)
            frames, chunk_delay = wire.error_frames(item, body), self.chunk_delay
        else:
            if not streaming:
                await self._pause(hold)
                return wire.message_response(item, body)
            frames = wire.frames(item, body)
            chunk_delay = self.chunk_delay if item.chunk_delay is None else item.chunk_delay
        hold_after = next((i for i, frame in enumerate(frames) if frame.delta), 0)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for index, frame in enumerate(frames):
            if index and chunk_delay:
                await asyncio.sleep(chunk_delay)
            await response.write(frame.data)
            if index == hold_after:
                await self._pause(hold)
        await response.write_eof()
        return response

    async def _pause(self, hold: Hold | None) -> None:
        if hold is not None:
            hold.reached.set()
            await hold.released.wait()

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
            self.script(payload if isinstance(payload, list) else [payload])
        except (orjson.JSONDecodeError, ScriptError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json({"queued": self.queued})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return _json([r.to_json() for r in self.requests])

    async def _control_hold(self, request: web.Request) -> web.Response:
        self.hold()
        return _json({"holds_pending": len(self._next_holds)})

    async def _control_release(self, request: web.Request) -> web.Response:
        return _json({"released": self.release_all()})

    async def _control_state(self, request: web.Request) -> web.Response:
        holding = sum(1 for h in self._holds if h.reached.is_set() and not h.released.is_set())
        return _json({"requests": len(self.requests), "queued": self.queued, "holding": holding})


async def _serve(server: FakeModelServer) -> None:
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
    parser = argparse.ArgumentParser(
        prog="python -m core.fakes.model_server",
        description="A scripted fake of the Anthropic Messages and OpenAI Chat Completions APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--script", type=Path, help="a JSON list of replies, served in order")
    parser.add_argument("--api-key", help="answer 401 unless requests carry this key")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed events")
    args = parser.parse_args(argv)
    server = FakeModelServer(host=args.host, port=args.port, api_key=args.api_key, chunk_delay=args.chunk_delay)
    if args.script is not None:
        try:
            items = orjson.loads(args.script.read_bytes())
            if not isinstance(items, list):
                raise ScriptError("the script is a JSON list of replies")
            server.script(items)
        except (OSError, orjson.JSONDecodeError, ScriptError) as exc:
            parser.error(f"--script {args.script}: {exc}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server))


if __name__ == "__main__":
    main(sys.argv[1:])
