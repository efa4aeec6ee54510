"""A fake of the Slack Web API (and of Socket Mode) that the real `slack_sdk` client talks to
unchanged, plus what a test workspace needs to push deliveries in: request signing.

    async with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        slack.fail("chat.startStream", status=429, retry_after=1)     # Slack's rate limit
        slack.hold("chat.postMessage")                                # applied, answer held back
        slack.drop("chat.startStream")                                # applied, connection cut
        slack.counts()["chat.postMessage"]                            # requests per method
        slack.thread("C1", "1515449522.000016")                       # what the thread shows

Messages live per channel, as Slack would show them (`conversations.replies` serves them back,
streams assemble their text); every request is recorded with its parameters. `python -m
core.fakes.slack_api --port 0` serves it on its own (it prints "listening URL").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import itertools
import secrets
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import WSMsgType, web


def sign(signing_secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with a delivery: `v0=` HMAC-SHA256 of `v0:{timestamp}:{body}`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(signing_secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


@dataclass(slots=True)
class Call:
    method: str
    params: dict[str, Any]
    # When it arrived: monotonic (for intervals) and wall-clock seconds (to compare with the log).
    at: float
    wall: float = 0.0
    status: int = 200
    error: str | None = None


@dataclass(slots=True)
class Failure:
    status: int
    error: str
    retry_after: float | None


class Hold:
    """Holds one call's response (the call is already applied) until `release()`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()


@dataclass(slots=True)
class Message:
    channel: str
    ts: str
    text: str = ""
    user: str | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    blocks: list[Any] | None = None
    metadata: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    streaming: bool = False
    edits: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user:
            body["user"] = self.user
        if self.bot_id:
            body["bot_id"] = self.bot_id
        if self.thread_ts:
            body["thread_ts"] = self.thread_ts
        if self.blocks:
            body["blocks"] = self.blocks
        if self.metadata:
            body["metadata"] = self.metadata
        return body


_STREAM_METHODS = ("chat.appendStream", "chat.stopStream")


class FakeSlack:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bot_token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        team_id: str = "T123ABC456",
        bot_user_id: str = "U0LAN0Z89",
        bot_id: str = "B0BOT0001",
    ) -> None:
        self.host, self.port = host, port
        self.bot_token, self.app_token = bot_token, app_token
        self.team_id, self.bot_user_id, self.bot_id = team_id, bot_user_id, bot_id
        self.calls: list[Call] = []
        self.messages: dict[str, list[Message]] = {}
        self._failures: dict[str, deque[Failure]] = {}
        self._holds: dict[str, deque[Hold]] = {}
        self._drops: Counter[str] = Counter()
        self._ts = itertools.count(1)
        self._seen = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        # Socket Mode: connected clients, and the acknowledgements they sent back.
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: list[dict[str, Any]] = []
        self._connected = asyncio.Event()

    # --- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake Slack API is not started")
        return self._url

    @property
    def api_url(self) -> str:
        """The Web API base URL: `AsyncWebClient(base_url=...)`, SLACK_API_URL."""
        return f"{self.url}/api/"

    # --- scripting -----------------------------------------------------------------------------

    def fail(
        self, method: str, *, status: int = 429, error: str | None = None, retry_after: float | None = 1, times: int = 1
    ) -> None:
        """The next `times` calls of `method` fail without effect: 429 with Retry-After (the
        default), a 5xx, or (status 200) `{"ok": false, "error": error}`."""
        reason = error or ("ratelimited" if status == 429 else "fatal_error" if status >= 500 else "invalid_arguments")
        for _ in range(times):
            self._failures.setdefault(method, deque()).append(
                Failure(status, reason, retry_after if status == 429 else None)
            )

    def hold(self, method: str) -> Hold:
        """The next call of `method` is applied, then its response waits for `Hold.release()`."""
        hold = Hold()
        self._holds.setdefault(method, deque()).append(hold)
        return hold

    def drop(self, method: str, times: int = 1) -> None:
        """The next calls of `method` are applied, then the connection is cut with no response."""
        self._drops[method] += times

    def add_message(self, channel: str, text: str, *, user: str, thread_ts: str | None = None) -> str:
        """A message someone else wrote (thread history); returns its ts."""
        ts = self._next_ts()
        self.messages.setdefault(channel, []).append(Message(channel, ts, text, user=user, thread_ts=thread_ts))
        return ts

    # --- reading -------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        return Counter(call.method for call in self.calls)

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The thread's messages (its root, if we have it, then the replies) in order."""
        return [m for m in self.messages.get(channel, []) if m.ts == thread_ts or m.thread_ts == thread_ts]

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages.get(channel, [])
            if m.bot_id == self.bot_id and (thread_ts is None or m.thread_ts == thread_ts)
        ]

    async def wait_for(self, method: str, count: int = 1) -> list[Call]:
        """Once `count` calls of `method` have arrived (bound it with asyncio.timeout)."""
        async with self._seen:
            await self._seen.wait_for(lambda: len(self.calls_of(method)) >= count)
        return self.calls_of(method)

    # --- Socket Mode ---------------------------------------------------------------------------

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def push(self, payload: dict[str, Any], *, kind: str = "events_api", retry_attempt: int = 0) -> str:
        """Send a Socket Mode envelope to the connected client; returns its envelope id."""
        envelope_id = secrets.token_hex(8)
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        socket = next(s for s in reversed(self.sockets) if not s.closed)
        await socket.send_str(orjson.dumps(envelope).decode())
        return envelope_id

    async def wait_ack(self, envelope_id: str) -> dict[str, Any]:
        async with self._seen:
            await self._seen.wait_for(lambda: any(a.get("envelope_id") == envelope_id for a in self.acks))
        return next(a for a in self.acks if a.get("envelope_id") == envelope_id)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeSlack:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self._url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        for holds in self._holds.values():
            for hold in holds:
                hold.release()
        for socket in self.sockets:
            with contextlib.suppress(Exception):
                await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeSlack:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the Web API ---------------------------------------------------------------------------

    def _next_ts(self) -> str:
        # Strictly increasing, shaped like Slack's: seconds, then six digits.
        return f"{int(time.time())}.{next(self._ts):06d}"

    async def _record(self, call: Call) -> None:
        async with self._seen:
            self.calls.append(call)
            self._seen.notify_all()

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        raw = await request.read()
        if raw:
            if request.content_type == "application/json":
                params.update(orjson.loads(raw))
            else:
                params.update((await request.post()).items())
        for key in ("blocks", "chunks", "metadata", "loading_messages"):
            if isinstance(params.get(key), str):
                with contextlib.suppress(orjson.JSONDecodeError):
                    params[key] = orjson.loads(params[key])
        call = Call(method, params, time.monotonic(), time.time())
        failures = self._failures.get(method)
        if failures:
            failure = failures.popleft()
            call.status, call.error = failure.status, failure.error
            await self._record(call)
            headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            return _json({"ok": False, "error": failure.error}, status=failure.status, headers=headers)
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if request.headers.get("Authorization") != f"Bearer {expected}":
            call.error = "invalid_auth"
            await self._record(call)
            return _json({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            call.error = "unknown_method"
            await self._record(call)
            return _json({"ok": False, "error": "unknown_method"})
        body: dict[str, Any] = handler(params)
        call.error = None if body.get("ok") else body.get("error")
        await self._record(call)
        if self._drops[method] > 0:
            self._drops[method] -= 1
            if request.transport is not None:
                request.transport.close()  # applied, but the client never hears back
            raise ConnectionResetError("dropped by the test")
        holds = self._holds.get(method)
        if holds:
            hold = holds.popleft()
            hold.reached.set()
            await hold.released.wait()
        return _json(body)

    def _find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.messages.get(channel, []) if m.ts == ts), None)

    def _post(self, channel: str, thread_ts: str | None, **fields: Any) -> Message:
        message = Message(channel, self._next_ts(), user=self.bot_user_id, bot_id=self.bot_id, thread_ts=thread_ts)
        for key, value in fields.items():
            setattr(message, key, value)
        self.messages.setdefault(channel, []).append(message)
        return message

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake Workspace",
            "user": "oma",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        message = self._post(
            channel,
            params.get("thread_ts"),
            text=params.get("text") or "",
            blocks=params.get("blocks"),
            metadata=params.get("metadata"),
        )
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.to_json()}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._find(params.get("channel", ""), params.get("ts", ""))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.bot_id != self.bot_id:
            return {"ok": False, "error": "cant_update_message"}
        if "text" in params:
            message.text = params["text"]
        if "blocks" in params:
            message.blocks = params["blocks"]
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _m_chat_startStream(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts = params.get("channel"), params.get("thread_ts")
        if not channel or not thread_ts:
            return {"ok": False, "error": "invalid_arguments"}
        if not str(channel).startswith("D") and not (
            params.get("recipient_team_id") and params.get("recipient_user_id")
        ):
            # Streaming into a channel needs the recipient.
            return {"ok": False, "error": "invalid_arguments"}
        message = self._post(channel, thread_ts, streaming=True)
        self._stream(message, params)
        return {"ok": True, "channel": channel, "ts": message.ts}

    def _m_chat_appendStream(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._streaming_call(params, stop=False)

    def _m_chat_stopStream(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._streaming_call(params, stop=True)

    def _streaming_call(self, params: dict[str, Any], *, stop: bool) -> dict[str, Any]:
        message = self._find(params.get("channel", ""), params.get("ts", ""))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if not message.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        self._stream(message, params)
        if stop:
            message.streaming = False
            if params.get("blocks"):
                message.blocks = params["blocks"]
        return {"ok": True, "channel": message.channel, "ts": message.ts, "message": message.to_json()}

    def _stream(self, message: Message, params: dict[str, Any]) -> None:
        if params.get("markdown_text"):
            message.text += params["markdown_text"]
        for chunk in params.get("chunks") or []:
            message.chunks.append(chunk)
            if chunk.get("type") == "markdown_text":
                message.text += chunk.get("text", "")

    def _m_assistant_threads_setStatus(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel_id") or not params.get("thread_ts") or "status" not in params:
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True}

    def _m_conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params.get("channel", ""), params.get("ts", "")
        if not channel or not ts:
            return {"ok": False, "error": "invalid_arguments"}
        thread = self.thread(channel, ts)
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        oldest = params.get("oldest")
        if oldest:
            inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
            thread = [m for m in thread if float(m.ts) > float(oldest) or (inclusive and m.ts == oldest)]
        limit = int(params.get("limit") or 1000)
        start = int(params.get("cursor") or 0)
        page = thread[start : start + limit]
        more = start + limit < len(thread)
        return {
            "ok": True,
            "messages": [m.to_json() for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.url.replace("http://", "ws://") + "/socket"}

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.sockets.append(socket)
        await socket.send_str(orjson.dumps({"type": "hello", "num_connections": 1}).decode())
        self._connected.set()
        async for message in socket:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data = orjson.loads(message.data)
                async with self._seen:
                    self.acks.append(data)
                    self._seen.notify_all()
        return socket


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


async def _serve(server: FakeSlack) -> None:
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
    parser = argparse.ArgumentParser(prog="python -m core.fakes.slack_api", description="A fake Slack Web API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--bot-token", default="xoxb-fake-bot-token")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(FakeSlack(host=args.host, port=args.port, bot_token=args.bot_token)))


if __name__ == "__main__":
    main(sys.argv[1:])
