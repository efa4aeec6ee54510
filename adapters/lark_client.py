"""The Lark/Feishu open API as the adapter uses it: lark-oapi's client with our own
tenant_access_token cache, and every failure classified (Throttled, Rejected, Unknown).

The SDK fetches tokens with a blocking `requests` call from inside its async methods and keeps
them in a process-wide cache keyed by app id; so the client is built with `enable_set_token` and
every call carries a token from `TenantToken`, fetched asynchronously, cached, refreshed ten
minutes before it expires (Lark hands out a new one during the last 30 minutes) and dropped at
once when Lark says it is invalid.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import lark_oapi as lark
from lark_oapi.api.cardkit.v1 import (
    ContentCardElementRequest,
    ContentCardElementRequestBody,
    CreateCardRequest,
    CreateCardRequestBody,
    SettingsCardRequest,
    SettingsCardRequestBody,
)
from lark_oapi.api.im.v1 import (
    ListMessageRequest,
    PatchMessageRequest,
    PatchMessageRequestBody,
    ReplyMessageRequest,
    ReplyMessageRequestBody,
)

log = logging.getLogger("oma.adapters.lark")

T = TypeVar("T")

DOMAINS = {"feishu": lark.FEISHU_DOMAIN, "lark": lark.LARK_DOMAIN}
# Lark's frequency-limit codes (the gateway's, and IM's own) and its invalid-token codes.
RATE_LIMITED = frozenset({99991400, 230020})
TOKEN_INVALID = frozenset({99991661, 99991663, 99991668})
TOKEN_REFRESH_MARGIN = 600.0


def resolve_domain(domain: str) -> str:
    """LARK_DOMAIN: "feishu", "lark", or a base URL (a proxy, a fake)."""
    return DOMAINS.get(domain.strip().lower(), domain.strip().rstrip("/"))


class Throttled(Exception):
    """Lark's frequency limit: nothing was applied; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class Unknown(Exception):
    """The call may or may not have been applied (connection lost, timeout, 5xx)."""


class Rejected(Exception):
    """Lark answered with an error code: nothing was applied."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


class _TokenInvalid(Exception):
    pass


@dataclass(frozen=True)
class BotIdentity:
    open_id: str
    name: str


class LarkApi:
    """The calls the adapter makes, each with a fresh tenant token and classified failures."""

    def __init__(self, app_id: str, app_secret: str, domain: str, *, timeout: float = 20.0) -> None:
        self.app_id = app_id
        self.client: Any = (
            lark.Client.builder()
            .app_id(app_id)
            .app_secret(app_secret)
            .domain(resolve_domain(domain))
            .enable_set_token(True)
            .timeout(timeout)
            .log_level(lark.LogLevel.WARNING)
            .build()
        )
        self._app_secret = app_secret
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._identity: BotIdentity | None = None

    # --- the token -----------------------------------------------------------------------------

    async def token(self) -> str:
        if self._token is not None and time.monotonic() < self._expires:
            return self._token
        async with self._lock:
            if self._token is not None and time.monotonic() < self._expires:
                return self._token
            request = (
                lark.BaseRequest.builder()
                .http_method(lark.HttpMethod.POST)
                .uri("/open-apis/auth/v3/tenant_access_token/internal")
                .body({"app_id": self.app_id, "app_secret": self._app_secret})
                .build()
            )
            body = _body(await self._send(lambda: self.client.arequest(request)))
            token, expire = body.get("tenant_access_token"), body.get("expire")
            if not isinstance(token, str) or not token:
                raise Rejected(int(body.get("code") or -1), str(body.get("msg") or "no tenant_access_token"))
            ttl = float(expire) if isinstance(expire, int | float) else 7200.0
            self._token = token
            self._expires = time.monotonic() + max(ttl - TOKEN_REFRESH_MARGIN, ttl / 2)
            return token

    def _invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def call(self, method: Callable[[Any], Awaitable[T]]) -> T:
        """`method(option)` with a valid token: once more with a new token if Lark says the
        cached one is invalid (revoked, secret reset)."""
        for attempt in (1, 2):
            token = await self.token()
            option = lark.RequestOption.builder().tenant_access_token(token).build()
            try:
                return await self._send(functools.partial(method, option))
            except _TokenInvalid:
                self._invalidate(token)
                if attempt == 2:
                    raise Rejected(99991663, "tenant_access_token refused twice") from None
        raise RuntimeError("unreachable")

    async def _send(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            response = await call()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise Unknown(repr(exc)) from exc
        except (ValueError, json.JSONDecodeError) as exc:  # not JSON: a proxy's error page
            raise Unknown(repr(exc)) from exc
        raw = response.raw
        status = int(getattr(raw, "status_code", 200) or 200)
        code = int(response.code or 0)
        if status == 429 or code in RATE_LIMITED:
            raise Throttled(_retry_after(getattr(raw, "headers", None) or {}))
        if code in TOKEN_INVALID:
            raise _TokenInvalid
        if code != 0 and status >= 500:
            raise Unknown(f"HTTP {status}, code {code}: {response.msg}")
        if code != 0:
            raise Rejected(code, str(response.msg or ""))
        return response

    # --- calls ---------------------------------------------------------------------------------

    async def identity(self) -> BotIdentity:
        """The bot's open_id (to find its own @mention) and name, fetched once."""
        if self._identity is None:
            request = (
                lark.BaseRequest.builder()
                .http_method(lark.HttpMethod.GET)
                .uri("/open-apis/bot/v3/info")
                .token_types({lark.AccessTokenType.TENANT})
                .build()
            )
            body = _body(await self.call(lambda option: self.client.arequest(request, option)))
            bot = body.get("bot") or (body.get("data") or {}).get("bot") or {}
            open_id = str(bot.get("open_id") or "")
            if not open_id:
                raise Rejected(-1, "bot/v3/info returned no open_id: is the bot capability enabled?")
            self._identity = BotIdentity(open_id, str(bot.get("app_name") or ""))
        return self._identity

    async def reply(self, message_id: str, msg_type: str, content: dict[str, Any], *, uuid: str | None = None) -> str:
        """Reply in the message's thread; returns the new message's id. With the same `uuid`
        Lark sends at most one message per hour, so a retried reply is not posted twice."""
        body = ReplyMessageRequestBody.builder().msg_type(msg_type).content(_dumps(content)).reply_in_thread(True)
        if uuid:
            body = body.uuid(uuid)
        request = ReplyMessageRequest.builder().message_id(message_id).request_body(body.build()).build()
        response = await self.call(lambda option: self.client.im.v1.message.areply(request, option))
        return str(response.data.message_id)

    async def patch_card_message(self, message_id: str, card: dict[str, Any]) -> None:
        body = PatchMessageRequestBody.builder().content(_dumps(card)).build()
        request = PatchMessageRequest.builder().message_id(message_id).request_body(body).build()
        await self.call(lambda option: self.client.im.v1.message.apatch(request, option))

    async def create_card(self, card: dict[str, Any]) -> str:
        body = CreateCardRequestBody.builder().type("card_json").data(_dumps(card)).build()
        request = CreateCardRequest.builder().request_body(body).build()
        response = await self.call(lambda option: self.client.cardkit.v1.card.acreate(request, option))
        return str(response.data.card_id)

    async def set_element_content(self, card_id: str, element_id: str, content: str, sequence: int) -> None:
        body = ContentCardElementRequestBody.builder().content(content).sequence(sequence).build()
        request = ContentCardElementRequest.builder().card_id(card_id).element_id(element_id).request_body(body).build()
        await self.call(lambda option: self.client.cardkit.v1.card_element.acontent(request, option))

    async def card_settings(self, card_id: str, config: dict[str, Any], sequence: int) -> None:
        body = SettingsCardRequestBody.builder().settings(_dumps({"config": config})).sequence(sequence).build()
        request = SettingsCardRequest.builder().card_id(card_id).request_body(body).build()
        await self.call(lambda option: self.client.cardkit.v1.card.asettings(request, option))

    async def thread_messages(self, thread_id: str, *, limit: int = 200) -> list[dict[str, Any]]:
        """A thread's messages, oldest first (at most `limit`)."""
        items: list[dict[str, Any]] = []
        page_token: str | None = None
        while len(items) < limit:
            builder = (
                ListMessageRequest.builder()
                .container_id_type("thread")
                .container_id(thread_id)
                .sort_type("ByCreateTimeAsc")
                .page_size(50)
            )
            if page_token:
                builder = builder.page_token(page_token)
            response = await self.call(functools.partial(self._list, builder.build()))
            data = _body(response).get("data") or {}
            items.extend(data.get("items") or [])
            page_token = data.get("page_token") or None
            if not data.get("has_more") or not page_token:
                break
        return items[:limit]

    async def _list(self, request: Any, option: Any) -> Any:
        return await self.client.im.v1.message.alist(request, option)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _body(response: Any) -> dict[str, Any]:
    content = getattr(response.raw, "content", None) or b"{}"
    body = json.loads(content)
    return body if isinstance(body, dict) else {}


def _retry_after(headers: Mapping[str, Any]) -> float:
    for name, value in headers.items():
        if name.lower() in ("x-ogw-ratelimit-reset", "retry-after"):
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                break
    return 1.0


__all__ = ["BotIdentity", "LarkApi", "Rejected", "Throttled", "Unknown", "resolve_domain"]
