"""A fake of the Lark/Feishu open API (and of its long connection) that the real `lark-oapi`
client talks to unchanged, plus what a test workspace needs to push deliveries in: encryption
and signing of event callbacks.

    async with FakeLark() as lark:
        client = lark_oapi.Client.builder().app_id(lark.app_id).app_secret(lark.app_secret) \\
            .domain(lark.url).build()
        lark.fail("im.v1.message.reply", status=429, code=99991400, retry_after=1)   # rate limit
        lark.drop("cardkit.v1.card.create")          # applied, connection cut
        lark.hold("im.v1.message.reply")             # applied, answer held back
        lark.counts()["cardkit.v1.card_element.content"]
        lark.thread_replies(root_message_id)          # what the thread shows
        lark.cards[card_id].text                      # a card's streamed text

Messages live per chat with their thread root; CardKit cards keep their elements, sequence and
streaming state (a stale `sequence` is refused as Lark refuses it); a reply's `uuid` makes a
repeated request return the first message, as Lark does within an hour. Every request is
recorded. `python -m core.fakes.lark_api --port 0` serves it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import os
import secrets
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# Lark's codes, as its docs list them.
OK = 0
RATE_LIMITED = 99991400
TOKEN_INVALID = 99991663
BAD_REQUEST = 10002
MESSAGE_NOT_FOUND = 230011
CARD_NOT_FOUND = 200740
STREAMING_CLOSED = 300309
SEQUENCE_STALE = 300317
NOT_UPDATABLE = 230001


def encrypt(encrypt_key: str, plaintext: str | bytes) -> str:
    """An `encrypt` field as Lark sends it: AES-256-CBC, key = SHA-256(encrypt_key), a random IV
    before the ciphertext, PKCS#7 padding, base64."""
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(hashlib.sha256(encrypt_key.encode()).digest()), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode()


def sign(encrypt_key: str, body: bytes, *, timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """The headers Lark sends with a callback: SHA-256 hex of timestamp + nonce + encrypt_key + body."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    once = nonce or secrets.token_hex(8)
    digest = hashlib.sha256((stamp + once + encrypt_key).encode() + body).hexdigest()
    return {"X-Lark-Request-Timestamp": stamp, "X-Lark-Request-Nonce": once, "X-Lark-Signature": digest}


@dataclass(slots=True)
class Call:
    name: str
    http_method: str
    path: str
    params: dict[str, Any]
    body: dict[str, Any]
    at: float
    status: int = 200
    code: int = OK


@dataclass(slots=True)
class Failure:
    status: int
    code: int
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
    message_id: str
    chat_id: str
    msg_type: str
    content: str
    sender_type: str  # "user" or "app"
    sender_id: str
    root_id: str | None = None
    parent_id: str | None = None
    thread_id: str | None = None
    card_id: str | None = None
    uuid: str | None = None
    edits: int = 0
    created: float = field(default_factory=time.time)

    def body(self) -> dict[str, Any]:
        return orjson.loads(self.content) if self.content else {}


@dataclass(slots=True)
class Card:
    card_id: str
    data: dict[str, Any]
    sequence: int = 0
    streaming: bool = False
    summary: str = ""
    sent_as: str | None = None
    # Every content the text elements showed, in order: (element_id, content, sequence).
    history: list[tuple[str, str, int]] = field(default_factory=list)

    def elements(self) -> list[dict[str, Any]]:
        return list((self.data.get("body") or {}).get("elements") or [])

    @property
    def text(self) -> str:
        """The card's markdown, all text elements joined."""
        texts = [e for e in self.elements() if e.get("tag") in ("markdown", "plain_text")]
        return "\n".join(str(e.get("content", "")) for e in texts)


# Route names are the SDK's resource paths.
_ROUTES: list[tuple[str, str, str]] = [
    ("POST", "/open-apis/auth/v3/tenant_access_token/internal", "auth.v3.tenant_access_token.internal"),
    ("GET", "/open-apis/bot/v3/info", "bot.v3.info"),
    ("POST", "/open-apis/cardkit/v1/cards", "cardkit.v1.card.create"),
    ("PUT", "/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content", "cardkit.v1.card_element.content"),
    ("PATCH", "/open-apis/cardkit/v1/cards/{card_id}/settings", "cardkit.v1.card.settings"),
    ("POST", "/open-apis/im/v1/messages/{message_id}/reply", "im.v1.message.reply"),
    ("PATCH", "/open-apis/im/v1/messages/{message_id}", "im.v1.message.patch"),
    ("GET", "/open-apis/im/v1/messages", "im.v1.message.list"),
    ("POST", "/callback/ws/endpoint", "ws.endpoint"),
]


class FakeLark:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = "cli_fake0000000001",
        app_secret: str = "fake-app-secret",
        tenant_key: str = "2ca1d211f64f6438",
        bot_open_id: str = "ou_fakebot0000000000000000000001",
        bot_name: str = "oma",
        token_ttl: int = 7200,
    ) -> None:
        self.host, self.port = host, port
        self.app_id, self.app_secret, self.tenant_key = app_id, app_secret, tenant_key
        self.bot_open_id, self.bot_name, self.token_ttl = bot_open_id, bot_name, token_ttl
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self.cards: dict[str, Card] = {}
        self.tokens: dict[str, float] = {}
        self._failures: dict[str, deque[Failure]] = {}
        self._drops: Counter[str] = Counter()
        self._holds: dict[str, deque[Hold]] = {}
        self._ids = itertools.count(1)
        self._seen = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        # The long connection: connected clients and the acknowledgements they sent back.
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self._connected = asyncio.Event()

    # --- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The domain to give the client (`Client.builder().domain(...)`, LARK_DOMAIN)."""
        if self._url is None:
            raise RuntimeError("the fake Lark API is not started")
        return self._url

    # --- scripting -----------------------------------------------------------------------------

    def fail(
        self, name: str, *, status: int = 429, code: int = RATE_LIMITED, retry_after: float | None = 1, times: int = 1
    ) -> None:
        """The next `times` calls of `name` fail without effect: a rate limit (the default, with
        `x-ogw-ratelimit-reset`), a 5xx, or any Lark error code."""
        for _ in range(times):
            self._failures.setdefault(name, deque()).append(Failure(status, code, retry_after))

    def drop(self, name: str, times: int = 1) -> None:
        """The next calls of `name` are applied, then the connection is cut with no response."""
        self._drops[name] += times

    def hold(self, name: str) -> Hold:
        """The next call of `name` is applied, then its response waits for `Hold.release()`."""
        hold = Hold()
        self._holds.setdefault(name, deque()).append(hold)
        return hold

    def revoke_tokens(self) -> None:
        """Every tenant_access_token issued so far stops working (as after a secret reset)."""
        self.tokens.clear()

    def add_message(
        self, chat_id: str, text: str, *, sender: str = "ou_84aad35d084aa403a838cf73ee18467", root_id: str | None = None
    ) -> Message:
        """A message someone wrote in a chat (or in the thread under `root_id`)."""
        message = Message(
            self._id("om_"),
            chat_id,
            "text",
            orjson.dumps({"text": text}).decode(),
            "user",
            sender,
            root_id=root_id,
            parent_id=root_id,
            thread_id=self._thread_of(root_id),
        )
        self.messages[message.message_id] = message
        return message

    # --- reading -------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        return Counter(call.name for call in self.calls)

    def calls_of(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.name == name]

    def thread_replies(self, root_id: str) -> list[Message]:
        """The messages in the thread under `root_id`, oldest first (the root itself excluded)."""
        return [m for m in self.messages.values() if m.root_id == root_id]

    def bot_messages(self, root_id: str) -> list[Message]:
        return [m for m in self.thread_replies(root_id) if m.sender_type == "app"]

    def card_of(self, message: Message) -> Card | None:
        return self.cards.get(message.card_id) if message.card_id else None

    def shown(self, message: Message) -> str:
        """What a bot message shows: a card's text, an interactive card's markdown, or the text."""
        card = self.card_of(message)
        if card is not None:
            return card.text
        body = message.body()
        if message.msg_type == "interactive":
            return Card("", body).text
        return str(body.get("text", ""))

    async def wait_for(self, name: str, count: int = 1) -> list[Call]:
        """Once `count` calls of `name` have arrived (bound it with asyncio.timeout)."""
        async with self._seen:
            await self._seen.wait_for(lambda: len(self.calls_of(name)) >= count)
        return self.calls_of(name)

    # --- the long connection -------------------------------------------------------------------

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def push(self, event: dict[str, Any]) -> str:
        """Send an event over the long connection; returns the frame's message id."""
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        message_id = secrets.token_hex(8)
        frame = Frame()
        frame.SeqID, frame.LogID, frame.service, frame.method = next(self._ids), 0, 1, 1  # method 1: data
        headers = {"type": "event", "message_id": message_id, "trace_id": "t", "sum": "1", "seq": "0"}
        for key, value in headers.items():
            header = frame.headers.add()
            header.key, header.value = key, value
        frame.payload = orjson.dumps(event)
        socket = next(s for s in reversed(self.sockets) if not s.closed)
        await socket.send_bytes(frame.SerializeToString())
        return message_id

    async def wait_ack(self, message_id: str) -> dict[str, Any]:
        """The client's response to a pushed event: {"code": 200} once it was handled."""
        async with self._seen:
            await self._seen.wait_for(lambda: message_id in self.acks)
        return self.acks[message_id]

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeLark:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for http_method, path, name in _ROUTES:
            app.router.add_route(http_method, path, self._handler(name))
        app.router.add_get("/ws", self._socket)
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

    async def __aenter__(self) -> FakeLark:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the API -------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}{secrets.token_hex(6)}"

    def _thread_of(self, root_id: str | None) -> str | None:
        if root_id is None:
            return None
        root = self.messages.get(root_id)
        if root is not None and root.thread_id is None:
            root.thread_id = "omt_" + hashlib.sha1(root_id.encode()).hexdigest()[:12]
        return root.thread_id if root is not None else None

    async def _record(self, call: Call) -> None:
        async with self._seen:
            self.calls.append(call)
            self._seen.notify_all()

    def _handler(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._api(name, request)

        return handle

    async def _api(self, name: str, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: dict[str, Any] = orjson.loads(raw) if raw else {}
        params = {**dict(request.query), **request.match_info}
        call = Call(name, request.method, request.path, params, body, time.monotonic())
        failures = self._failures.get(name)
        if failures:
            failure = failures.popleft()
            call.status, call.code = failure.status, failure.code
            await self._record(call)
            headers = {"x-ogw-ratelimit-reset": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
            return _json({"code": failure.code, "msg": "injected by the test"}, failure.status, headers)
        if name not in ("auth.v3.tenant_access_token.internal", "ws.endpoint"):
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if self.tokens.get(token, 0) < time.time():
                call.status, call.code = 400, TOKEN_INVALID
                await self._record(call)
                return _json({"code": TOKEN_INVALID, "msg": "Invalid access token for authorization."}, 400)
        handler = getattr(self, "_m_" + name.replace(".", "_"))
        status, reply = handler(params, body)
        call.status, call.code = status, int(reply.get("code", OK))
        await self._record(call)
        if self._drops[name] > 0:
            self._drops[name] -= 1
            if request.transport is not None:
                request.transport.close()  # applied, but the client never hears back
            raise ConnectionResetError("dropped by the test")
        holds = self._holds.get(name)
        if holds:
            hold = holds.popleft()
            hold.reached.set()
            await hold.released.wait()
        return _json(reply, status)

    def _m_auth_v3_tenant_access_token_internal(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        if body.get("app_id") != self.app_id or body.get("app_secret") != self.app_secret:
            return 400, {"code": 10014, "msg": "app secret invalid"}
        token = "t-" + secrets.token_hex(16)
        self.tokens[token] = time.time() + self.token_ttl
        return 200, {"code": OK, "msg": "ok", "tenant_access_token": token, "expire": self.token_ttl}

    def _m_bot_v3_info(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        bot = {"activate_status": 2, "app_name": self.bot_name, "avatar_url": "", "ip_white_list": []}
        return 200, {"code": OK, "msg": "ok", "bot": {**bot, "open_id": self.bot_open_id}}

    def _m_cardkit_v1_card_create(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        if body.get("type") != "card_json":
            return 400, {"code": BAD_REQUEST, "msg": "type must be card_json"}
        try:
            data = orjson.loads(body.get("data") or "")
        except orjson.JSONDecodeError:
            return 400, {"code": 200220, "msg": "Failed to generate card content"}
        config = data.get("config") or {}
        card = Card(
            card_id=str(7_355_439_197_428_236_291 + next(self._ids)),
            data=data,
            streaming=bool(config.get("streaming_mode")),
            summary=str((config.get("summary") or {}).get("content", "")),
        )
        self.cards[card.card_id] = card
        for element in card.elements():
            if element.get("element_id"):
                card.history.append((element["element_id"], str(element.get("content", "")), 0))
        return 200, {"code": OK, "msg": "success", "data": {"card_id": card.card_id}}

    def _sequenced(self, card: Card | None, body: dict[str, Any]) -> Reply | None:
        if card is None:
            return 400, {"code": CARD_NOT_FOUND, "msg": "The card entity does not exist"}
        sequence = body.get("sequence")
        if not isinstance(sequence, int) or sequence <= card.sequence:
            return 400, {"code": SEQUENCE_STALE, "msg": "sequence number did not increment"}
        return None

    def _m_cardkit_v1_card_element_content(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        card = self.cards.get(params["card_id"])
        refused = self._sequenced(card, body)
        if refused is not None or card is None:
            return refused or (400, {})
        if not card.streaming:
            return 400, {"code": STREAMING_CLOSED, "msg": "Card streaming closed"}
        element = next((e for e in card.elements() if e.get("element_id") == params["element_id"]), None)
        content = body.get("content")
        if element is None or not isinstance(content, str) or not content:
            return 400, {"code": BAD_REQUEST, "msg": "no such text element, or empty content"}
        element["content"] = content
        card.sequence = body["sequence"]
        card.history.append((params["element_id"], content, card.sequence))
        return 200, {"code": OK, "msg": "success", "data": {}}

    def _m_cardkit_v1_card_settings(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        card = self.cards.get(params["card_id"])
        refused = self._sequenced(card, body)
        if refused is not None or card is None:
            return refused or (400, {})
        settings = orjson.loads(body.get("settings") or "{}")
        config = settings.get("config") or {}
        if "streaming_mode" in config:
            card.streaming = bool(config["streaming_mode"])
        if "summary" in config:
            card.summary = str((config["summary"] or {}).get("content", ""))
        card.data.setdefault("config", {}).update(config)
        card.sequence = body["sequence"]
        return 200, {"code": OK, "msg": "success", "data": {}}

    def _m_im_v1_message_reply(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        parent = self.messages.get(params["message_id"])
        if parent is None:
            return 400, {"code": MESSAGE_NOT_FOUND, "msg": "message not found"}
        uuid = body.get("uuid")
        if uuid:
            for earlier in self.messages.values():
                if earlier.uuid == uuid and earlier.created > time.time() - 3600:
                    return 200, {"code": OK, "msg": "success", "data": _message_json(earlier)}
        msg_type, content = body.get("msg_type"), body.get("content")
        if not isinstance(msg_type, str) or not isinstance(content, str):
            return 400, {"code": BAD_REQUEST, "msg": "msg_type and content are required"}
        card_id = None
        if msg_type == "interactive":
            card_body = orjson.loads(content)
            if card_body.get("type") == "card":
                card_id = str((card_body.get("data") or {}).get("card_id", ""))
                card = self.cards.get(card_id)
                if card is None:
                    return 400, {"code": CARD_NOT_FOUND, "msg": "The card entity does not exist"}
                if card.sent_as is not None:
                    return 400, {"code": 230099, "msg": "a card entity can be sent only once"}
        root_id = parent.root_id or parent.message_id
        message = Message(
            self._id("om_"),
            parent.chat_id,
            msg_type,
            content,
            "app",
            self.app_id,
            root_id=root_id,
            parent_id=parent.message_id,
            thread_id=self._thread_of(root_id) if body.get("reply_in_thread") else parent.thread_id,
            card_id=card_id,
            uuid=uuid,
        )
        if card_id is not None:
            self.cards[card_id].sent_as = message.message_id
        self.messages[message.message_id] = message
        return 200, {"code": OK, "msg": "success", "data": _message_json(message)}

    def _m_im_v1_message_patch(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        message = self.messages.get(params["message_id"])
        if message is None:
            return 400, {"code": MESSAGE_NOT_FOUND, "msg": "message not found"}
        if message.sender_type != "app" or message.msg_type != "interactive" or message.card_id:
            return 400, {"code": NOT_UPDATABLE, "msg": "only the bot's own interactive cards can be patched"}
        content = body.get("content")
        if not isinstance(content, str) or not (orjson.loads(content).get("config") or {}).get("update_multi"):
            return 400, {"code": NOT_UPDATABLE, "msg": "a shared card needs config.update_multi"}
        message.content = content
        message.edits += 1
        return 200, {"code": OK, "msg": "success", "data": {}}

    def _m_im_v1_message_list(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        if params.get("container_id_type") != "thread":
            return 400, {"code": BAD_REQUEST, "msg": "only threads are listed by this fake"}
        thread = params.get("container_id")
        found = [m for m in self.messages.values() if m.thread_id == thread and m.root_id]
        roots = {m.root_id for m in found}
        items = [m for m in self.messages.values() if m.message_id in roots] + found
        data = {"has_more": False, "items": [_message_json(m) for m in items]}
        return 200, {"code": OK, "msg": "success", "data": data}

    def _m_ws_endpoint(self, params: dict[str, Any], body: dict[str, Any]) -> Reply:
        if body.get("AppID") != self.app_id or body.get("AppSecret") != self.app_secret:
            return 200, {"code": 1000040343, "msg": "app credentials invalid"}
        url = self.url.replace("http://", "ws://") + "/ws?device_id=fake-device&service_id=1"
        config = {"ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 120}
        return 200, {"code": OK, "msg": "ok", "data": {"URL": url, "ClientConfig": config}}

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self.sockets.append(socket)
        self._connected.set()
        async for message in socket:
            if message.type != WSMsgType.BINARY:
                continue
            frame = Frame()
            frame.ParseFromString(message.data)
            headers = {h.key: h.value for h in frame.headers}
            if frame.method == 1 and "message_id" in headers:  # a data frame: the answer to a push
                async with self._seen:
                    self.acks[headers["message_id"]] = orjson.loads(frame.payload) if frame.payload else {}
                    self._seen.notify_all()
        return socket


Reply = tuple[int, dict[str, Any]]


def _message_json(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": message.message_id,
        "chat_id": message.chat_id,
        "msg_type": message.msg_type,
        "create_time": str(int(message.created * 1000)),
        "sender": {"id": message.sender_id, "id_type": "open_id" if message.sender_type == "user" else "app_id"},
        "body": {"content": message.content},
    }
    body["sender"]["sender_type"] = message.sender_type
    for key in ("root_id", "parent_id", "thread_id"):
        if getattr(message, key):
            body[key] = getattr(message, key)
    return body


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


async def _serve(server: FakeLark) -> None:
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
    parser = argparse.ArgumentParser(prog="python -m core.fakes.lark_api", description="A fake Lark/Feishu open API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--app-id", default="cli_fake0000000001")
    parser.add_argument("--app-secret", default="fake-app-secret")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(FakeLark(host=args.host, port=args.port, app_id=args.app_id, app_secret=args.app_secret)))


if __name__ == "__main__":
    main(sys.argv[1:])
