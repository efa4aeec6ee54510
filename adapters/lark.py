"""Lark/Feishu: the agent as a workspace member. @-mention the bot in a group or message it
directly, and it works in the thread and answers there with a streaming card.

Inbound comes as event callbacks at `POST /lark/events`, or over lark-oapi's long connection
(a WebSocket the app opens, for deployments without a public URL). A callback is checked before
anything else: `X-Lark-Signature` (SHA-256 of timestamp, nonce, encrypt key and body) compared
in constant time and its timestamp within our window (the SDK checks neither), the body
decrypted with the encrypt key (AES-256-CBC), the verification token compared; a
`url_verification` is answered. A delivery is then only translated into an `Inbound` and handed
to `Ingress.accept` (dedup and inbox, one transaction) before Lark gets its 200, well inside its
3 seconds. Outbound is `adapters.lark_reply`.

Triggers: `im.message.receive_v1` in a group when the bot is among the mentions (its own
`@_user_N` placeholder removed, other people's replaced by their names), and every p2p message.
Bindings are per thread: `tenant:chat:root message id`, where a message outside a thread roots
its own. Dedup keys are the `message_id` (Lark may push one message under several event ids)
and the `event_id`, kept 8 hours (Lark retries for about 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import lark_oapi as lark
from aiohttp import web
from lark_oapi.core.utils import AESCipher
from sqlalchemy import select

from adapters import messages as text
from adapters.base import AdapterWorker, Delivery, Inbound, Route, WorkerSettings
from adapters.lark_client import BotIdentity, LarkApi, resolve_domain
from adapters.lark_reply import LarkReplies
from core import schemas
from core.credentials import CredentialKind
from core.db import environments, vaults
from core.platform import Platform

log = logging.getLogger("oma.adapters.lark")

# Lark re-pushes an unacknowledged event after 15 s, 5 min, 1 h and 6 h (about 7.1 h in all).
DEDUP_TTL_SECONDS = 8 * 3600
LARK_EVENTS_PATH = "/lark/events"
LARK_ENVIRONMENT_NAME = "lark"
MESSAGE_RECEIVED = "im.message.receive_v1"
HISTORY_LIMIT = 200
# How long a delivery waits for the inbox before Lark is told to retry (it allows 3 s).
ACCEPT_TIMEOUT = 2.5


@dataclass(frozen=True)
class LarkSettings:
    app_id: str = ""
    app_secret: str = ""
    encrypt_key: str | None = None
    verification_token: str | None = None
    # "feishu", "lark", or a base URL (a proxy, a fake in tests); unset: feishu, or the vault's.
    domain: str | None = None
    # The long connection (WebSocket) instead of, or besides, POST /lark/events.
    long_connection: bool = False
    # A vault id: its `lark` credential supplies the app id and secrets, read at start-up (an
    # encrypt key or verification token set here is used when the credential has none).
    vault: str | None = None
    # Who answers: an agent id, and an environment id (unset: one named "lark", created on first use).
    agent: str | None = None
    environment: str | None = None
    streaming: bool = True
    # Coalescing: a card is updated at most this often while the agent works.
    min_edit_seconds: float = 0.5
    # Callbacks whose X-Lark-Request-Timestamp is further from our clock are refused.
    signature_window_seconds: float = 300.0


class Refused(Exception):
    """A callback that fails verification: answered with `status`, and nothing else happens."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decrypt(encrypt_key: str, encrypted: str) -> str:
    """An `encrypt` field's plaintext (lark-oapi's AES-256-CBC, key = SHA-256 of the encrypt key)."""
    return str(AESCipher(encrypt_key).decrypt_str(encrypted))


def signature_ok(encrypt_key: str, headers: Any, body: bytes, *, window: float, now: float | None = None) -> bool:
    """X-Lark-Signature = hex SHA-256 of timestamp + nonce + encrypt key + raw body, compared in
    constant time; and the timestamp within `window` seconds of our clock (against replays)."""
    stamp = headers.get("X-Lark-Request-Timestamp") or ""
    nonce = headers.get("X-Lark-Request-Nonce") or ""
    given = headers.get("X-Lark-Signature") or ""
    try:
        skew = abs((time.time() if now is None else now) - float(stamp))
    except ValueError:
        return False
    expected = hashlib.sha256((stamp + nonce + encrypt_key).encode() + body).hexdigest()
    return skew <= window and hmac.compare_digest(expected.encode(), given.encode())


def message_text(message: dict[str, Any], bot_open_id: str | None) -> str:
    """What the user said: text (or a rich-text post flattened), with mention placeholders
    resolved: the bot's own removed, everyone else's as @name."""
    try:
        content = json.loads(message.get("content") or "{}")
    except json.JSONDecodeError:
        content = {}
    kind = message.get("message_type")
    if kind == "text":
        said = str(content.get("text") or "")
    elif kind == "post":
        said = _post_text(content)
    else:
        said = f"[{kind or 'unknown'} message]"
    for mention in sorted(message.get("mentions") or [], key=lambda m: -len(str(m.get("key") or ""))):
        key = str(mention.get("key") or "")
        if not key:
            continue
        if bot_open_id is not None and (mention.get("id") or {}).get("open_id") == bot_open_id:
            said = said.replace(key + " ", "").replace(key, "")
        else:
            said = said.replace(key, f"@{mention.get('name') or 'someone'}")
    return said.replace("@_all", "@all").strip()


def _post_text(content: dict[str, Any]) -> str:
    if "content" not in content:  # {"zh_cn": {...}}: the first language
        content = next((v for v in content.values() if isinstance(v, dict)), {})
    lines: list[str] = [str(content["title"])] if content.get("title") else []
    for paragraph in content.get("content") or []:
        pieces: list[str] = []
        for item in paragraph or []:
            tag = item.get("tag")
            if tag in ("text", "md", "code_block"):
                pieces.append(str(item.get("text") or ""))
            elif tag == "a":
                pieces.append(f"[{item.get('text') or item.get('href')}]({item.get('href')})")
            elif tag == "at":
                pieces.append(str(item.get("user_id") or ""))
            elif tag == "emotion":
                pieces.append(f":{item.get('emoji_type')}:")
        lines.append("".join(pieces))
    return "\n".join(lines)


class LarkAdapter:
    platform: ClassVar[str] = "lark"
    dedup_ttl_seconds: ClassVar[float] = DEDUP_TTL_SECONDS

    def __init__(
        self, platform: Platform, settings: LarkSettings, *, worker_settings: WorkerSettings | None = None
    ) -> None:
        self.settings = settings
        self.core = platform
        self.api, self.replies = self._clients(settings)
        self.worker = AdapterWorker(platform, self, default_route=self.default_route, settings=worker_settings)
        self._connection: LongConnection | None = None
        self._warm: asyncio.Task[Any] | None = None

    @staticmethod
    def _clients(settings: LarkSettings) -> tuple[LarkApi, LarkReplies]:
        api = LarkApi(settings.app_id, settings.app_secret, settings.domain or "feishu")
        return api, LarkReplies(api, streaming=settings.streaming, min_edit_seconds=settings.min_edit_seconds)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.vault is not None:
            self.settings = await self._from_vault(self.settings.vault)
            self.api, self.replies = self._clients(self.settings)
        await self.worker.start()
        self._warm = asyncio.create_task(self._warm_up(), name="lark-identity")
        if self.settings.long_connection:
            self._connection = LongConnection(self.settings, self, asyncio.get_running_loop())
            self._connection.start()

    async def stop(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warm
        if self._connection is not None:
            await self._connection.stop()
            self._connection = None
        await self.worker.stop()

    async def _from_vault(self, vault_id: str) -> LarkSettings:
        """The app's credentials from the vault's `lark` credential (fails the start-up if absent)."""
        async with self.core.db.read() as conn:
            found = await conn.execute(select(vaults.c.tenant_id).where(vaults.c.id == vault_id))
            tenant_id = found.scalar_one_or_none()
        credential = None
        if tenant_id is not None:
            credential = await self.core.vaults.workspace_credential(tenant_id, vault_id, CredentialKind.LARK)
        if credential is None:
            raise ValueError(f"OMA_LARK_VAULT: vault {vault_id} has no active lark credential")
        return replace(
            self.settings,
            app_id=str(credential["app_id"]),
            app_secret=str(credential["app_secret"]),
            encrypt_key=credential.get("encrypt_key") or self.settings.encrypt_key,
            verification_token=credential.get("verification_token") or self.settings.verification_token,
            domain=self.settings.domain or credential.get("domain"),
        )

    async def _warm_up(self) -> None:
        try:
            await self.api.identity()
        except Exception as exc:  # tried again on the first delivery
            log.warning("lark: could not fetch the bot's identity at start-up: %r", exc)

    async def identity(self) -> BotIdentity | None:
        """The bot's identity, or None if Lark cannot tell it in time (the delivery still counts)."""
        try:
            return await asyncio.wait_for(self.api.identity(), 1.0)
        except Exception as exc:
            log.warning("lark: bot identity unavailable: %r", exc)
            return None

    async def default_route(self) -> Route | None:
        agent_id = self.settings.agent
        if not agent_id:
            return None
        tenant_id = await self.worker.store.agent_tenant(agent_id)
        if tenant_id is None:
            log.warning("lark: OMA_LARK_AGENT %s does not exist", agent_id)
            return None
        environment_id = self.settings.environment or await self._environment(tenant_id)
        return Route(tenant_id, agent_id, environment_id)

    async def _environment(self, tenant_id: str) -> str:
        async with self.core.db.read() as conn:
            found = (
                await conn.execute(
                    select(environments.c.id)
                    .where(
                        environments.c.tenant_id == tenant_id,
                        environments.c.name == LARK_ENVIRONMENT_NAME,
                        environments.c.archived_at.is_(None),
                    )
                    .order_by(environments.c.created_at)
                    .limit(1)
                )
            ).scalar_one_or_none()
        if found is not None:
            return str(found)
        created = await self.core.environments.create(tenant_id, schemas.EnvironmentCreate(name=LARK_ENVIRONMENT_NAME))
        return str(created["id"])

    # --- inbound -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """POST /lark/events: verified, decrypted, answered (url_verification) or accepted."""
        body = await request.read()
        try:
            payload = self.open_callback(request.headers, body)
        except Refused as exc:
            log.warning("lark: refused a callback: %s", exc.reason)
            return web.json_response({"msg": exc.reason}, status=exc.status)
        if payload.get("type") == "url_verification":
            return web.json_response({"challenge": payload.get("challenge", "")})
        await self.accept(payload)
        return web.json_response({"msg": "success"})

    def open_callback(self, headers: Any, body: bytes) -> dict[str, Any]:
        """The callback's event, once it proved to come from Lark; raises Refused otherwise."""
        key, token = self.settings.encrypt_key, self.settings.verification_token
        if not key and not token:  # e.g. a vault credential without either: nothing to check with
            raise Refused(503, "neither an encrypt key nor a verification token is configured")
        signed = "X-Lark-Signature" in headers
        if key and signed and not signature_ok(key, headers, body, window=self.settings.signature_window_seconds):
            raise Refused(401, "bad signature, or a timestamp outside the window")
        try:
            envelope = json.loads(body)
            if not isinstance(envelope, dict):
                raise ValueError("not an object")
            if "encrypt" in envelope:
                if not key:
                    raise Refused(400, "an encrypted callback, but LARK_ENCRYPT_KEY is not set")
                envelope = json.loads(decrypt(key, str(envelope["encrypt"])))
                if not isinstance(envelope, dict):
                    raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, f"unreadable body ({exc})") from None
        given = str(envelope.get("token") or (envelope.get("header") or {}).get("token") or "")
        if token and not hmac.compare_digest(token.encode(), given.encode()):
            raise Refused(401, "wrong verification token")
        # Lark does not sign the URL check; every event must be signed once there is a key.
        if key and not signed and envelope.get("type") != "url_verification":
            raise Refused(401, "unsigned callback")
        return envelope

    async def accept(self, payload: dict[str, Any]) -> bool:
        """Hand a verified event to the inbox; False if it is not for us or a duplicate."""
        header = payload.get("header") or {}
        if header.get("event_type") != MESSAGE_RECEIVED:
            return False
        me = await self.identity()
        inbound = self.message_inbound(payload, me.open_id if me else None)
        if inbound is None:
            return False
        return await self.worker.ingress.accept(inbound)

    def message_inbound(self, payload: dict[str, Any], bot_open_id: str | None) -> Inbound | None:
        header = payload.get("header") or {}
        event = payload.get("event") or {}
        sender = event.get("sender") or {}
        message = event.get("message") or {}
        user = str((sender.get("sender_id") or {}).get("open_id") or "")
        if sender.get("sender_type") != "user" or not user or not message.get("message_id"):
            return None  # other bots and apps (our own messages are never pushed to us)
        mentions = message.get("mentions") or []
        mentioned = any((m.get("id") or {}).get("open_id") == bot_open_id for m in mentions)
        if message.get("chat_type") != "p2p" and not (mentioned or (bot_open_id is None and mentions)):
            return None  # in groups only mentions count
        tenant = str(header.get("tenant_key") or sender.get("tenant_key") or "")
        chat, message_id = str(message.get("chat_id") or ""), str(message["message_id"])
        root = str(message.get("root_id") or message_id)
        key = f"{tenant}:{chat}:{root}"
        dedup = [f"message:{message_id}"]
        if header.get("event_id"):
            dedup.append(f"event:{header['event_id']}")
        address = {"tenant": tenant, "chat_id": chat, "root_id": root, "user": user}
        said = message_text(message, bot_open_id)
        if said.lower().strip(" .!") in text.STOP_WORDS:
            return Inbound(key, address, [{"type": "user.interrupt"}], tuple(dedup), start=False, workspace=tenant)
        event_out = {
            "type": "user.message",
            "content": [{"type": "text", "text": text.LARK_FROM_USER.format(user=user, text=said)}],
        }
        thread = message.get("thread_id")
        earlier = {"thread_id": thread, "before": message_id} if root != message_id and thread else None
        return Inbound(key, address, [event_out], tuple(dedup), start=True, workspace=tenant, context=earlier)

    # --- Adapter -------------------------------------------------------------------------------

    async def history(self, inbound: Inbound) -> list[str]:
        """The thread so far (authors and text), for a first mention inside an existing thread."""
        context = inbound.context or {}
        thread, before = context.get("thread_id"), context.get("before")
        if not thread:
            return []
        try:
            me = await self.api.identity()
            lines: list[str] = []
            for item in await self.api.thread_messages(str(thread), limit=HISTORY_LIMIT):
                if item.get("message_id") == before:
                    break
                sender = item.get("sender") or {}
                ours = sender.get("sender_type") == "app" and sender.get("id") == self.settings.app_id
                author = "you" if ours else f"<at id={sender.get('id', '')}></at>"
                message = {
                    "message_type": item.get("msg_type"),
                    "content": (item.get("body") or {}).get("content"),
                    "mentions": item.get("mentions"),
                }
                said = "[card]" if item.get("msg_type") == "interactive" else message_text(message, me.open_id)
                lines.append(text.HISTORY_LINE.format(author=author, text=said))
        except Exception as exc:  # the conversation goes on without the history
            log.warning("lark: could not read the thread history of %s: %r", inbound.binding_key, exc)
            return []
        return [text.LARK_HISTORY_HEADER + "\n" + "\n".join(lines)] if lines else []

    async def refuse(self, inbound: Inbound, reason: str) -> None:
        # Said once per delivery, even if the inbox handles it again after a crash.
        uuid = "oma-" + hashlib.sha256("|".join(inbound.dedup_keys).encode()).hexdigest()[:40]
        try:
            await self.api.reply(inbound.address["root_id"], "text", {"text": text.LARK_NOT_CONFIGURED}, uuid=uuid)
        except Exception as exc:
            log.warning("lark: could not tell %s why nothing happens (%s): %r", inbound.binding_key, reason, exc)

    async def deliver(self, delivery: Delivery) -> float | None:
        return await self.replies.deliver(delivery)


LARK: web.AppKey[LarkAdapter] = web.AppKey("lark", LarkAdapter)


class _ThreadLoop:
    """lark-oapi's long-connection client schedules its tasks on a module-global loop (the one
    current when lark_oapi was first imported: possibly our server's). Pointing that global at
    this object makes each client schedule on the loop running it: its own thread's."""

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)


class LongConnection:
    """lark-oapi's WebSocket client in a thread of its own with its own event loop (its `start()`
    blocks forever on a module-global loop, so it is driven here instead). Each event is handed to
    the server's loop and acknowledged only once it is in the inbox; a failure answers 500, and
    Lark pushes the event again."""

    def __init__(self, settings: LarkSettings, adapter: LarkAdapter, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.adapter = adapter
        self.server_loop = loop
        self._thread = threading.Thread(target=self._run, name="lark-long-connection", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        import lark_oapi.ws.client as ws_client

        ws_client.loop = _ThreadLoop()
        self._thread.start()
        self._ready.wait(timeout=10)

    async def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("lark: the long connection stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        handler = (
            lark.EventDispatcherHandler.builder("", "").register_p2_im_message_receive_v1(self._on_message).build()
        )
        client: Any = lark.ws.Client(
            self.settings.app_id,
            self.settings.app_secret,
            event_handler=handler,
            domain=resolve_domain(self.settings.domain or "feishu"),
            log_level=lark.LogLevel.WARNING,
        )
        asyncio.create_task(self._connect(client))  # noqa: RUF006 (cancelled below with the rest)
        await self._stop.wait()
        client._auto_reconnect = False
        # The client's own tasks (pings, the receive loop, handlers) first, then the socket.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if client._conn is not None:
            with contextlib.suppress(Exception):
                await client._conn.close()

    async def _connect(self, client: Any) -> None:
        from lark_oapi.ws.exception import ClientException

        while True:
            try:
                await client._connect()
                break
            except ClientException as exc:  # wrong credentials, too many connections: say so, stop
                log.error("lark: the long connection was refused: %s", exc)
                return
            except Exception as exc:
                log.warning("lark: could not open the long connection (%r); trying again", exc)
                await asyncio.sleep(5)
        log.info("lark: long connection open")
        await client._ping_loop()

    def _on_message(self, data: Any) -> None:
        """Called by the SDK on the connection's thread; blocks it until the inbox has the event."""
        payload = json.loads(lark.JSON.marshal(data) or "{}")
        future = asyncio.run_coroutine_threadsafe(self.adapter.accept(payload), self.server_loop)
        future.result(timeout=ACCEPT_TIMEOUT)


__all__ = [
    "LARK",
    "LARK_EVENTS_PATH",
    "LarkAdapter",
    "LarkSettings",
    "LongConnection",
    "Refused",
    "decrypt",
    "message_text",
    "signature_ok",
]
