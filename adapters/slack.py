"""Slack: the agent as a workspace member. @-mention it in a channel or DM it, and it works in the
thread and answers there.

Inbound runs on slack-bolt's `AsyncApp`, mounted at `POST /slack/events` (events and
interactivity; signatures verified with Slack's 5-minute window, `url_verification` answered) or
fed by Socket Mode. Every handler only translates the delivery into an `Inbound` and hands it to
`Ingress.accept` (dedup and inbox, one transaction) before Slack gets its 200, so the ack takes
milliseconds and nothing is lost or done twice. Outbound is `adapters.slack_reply`.

Bindings are per thread: `team:channel:thread_ts`, where a top-level message's own `ts` roots its
thread. Dedup keys are the `event_id` (Slack's retries) and `team:channel:ts` of the message (one
message delivered as both `message` and `app_mention`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from adapters import messages as text
from adapters.base import AdapterWorker, Delivery, Inbound, Route, WorkerSettings
from adapters.slack_reply import APPROVE_ACTION, DENY_ACTION, STOP_ACTION, SlackReplies, Throttled
from core import schemas
from core.db import environments
from core.platform import Platform

log = logging.getLogger("oma.adapters.slack")

# Slack retries a delivery for up to 5 minutes (24 hours with Delayed Events): keys are kept longer.
DEDUP_TTL_SECONDS = 25 * 3600
SLACK_ENVIRONMENT_NAME = "slack"
HISTORY_LIMIT = 1000
SLACK_EVENTS_PATH = "/slack/events"
_PLAIN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str
    signing_secret: str | None = None
    # Socket Mode (an `xapp-` token with connections:write): no public URL needed.
    app_token: str | None = None
    # The Web API base URL (a fake in tests, a proxy in locked-down networks).
    api_url: str | None = None
    # Who answers in the workspace this token belongs to: an agent id, and an environment id
    # (unset: an environment named "slack" in the agent's tenant, created on first use).
    agent: str | None = None
    environment: str | None = None
    streaming: bool = True
    # Coalescing: a streamed reply is appended to (or an edited one updated) at most this often.
    min_edit_seconds: float = 1.0


def mention_pattern(bot_user_id: str | None) -> re.Pattern[str] | None:
    return re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>\s*") if bot_user_id else None


class SlackAdapter:
    platform: ClassVar[str] = "slack"
    dedup_ttl_seconds: ClassVar[float] = DEDUP_TTL_SECONDS

    def __init__(
        self, platform: Platform, settings: SlackSettings, *, worker_settings: WorkerSettings | None = None
    ) -> None:
        self.settings = settings
        self.core = platform
        kwargs: dict[str, Any] = {"base_url": settings.api_url} if settings.api_url else {}
        # No automatic retries: a retried post whose first response was lost would post twice.
        # Calls are retried by the outbox, which knows what is safe to repeat.
        self.client = AsyncWebClient(token=settings.bot_token, retry_handlers=[], **kwargs)
        self.replies = SlackReplies(
            self.client, streaming=settings.streaming, min_edit_seconds=settings.min_edit_seconds
        )
        self.worker = AdapterWorker(platform, self, default_route=self.default_route, settings=worker_settings)
        self.app = AsyncApp(
            # Bolt's own client carries no token: `authorize` hands it the bot token per request,
            # from the identity fetched once (no auth.test inside a request after the first).
            client=AsyncWebClient(retry_handlers=[], **kwargs),
            authorize=self._authorizer(),
            signing_secret=settings.signing_secret or "unused-in-socket-mode",
            request_verification_enabled=settings.signing_secret is not None,
            # The handlers only write the inbox (milliseconds): they finish before Slack's ack, so
            # an acknowledged delivery is always on disk.
            process_before_response=True,
            logger=log,
        )
        self._socket: AsyncSocketModeHandler | None = None
        self._warm: asyncio.Task[Any] | None = None
        self._register()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.worker.start()
        self._warm = asyncio.create_task(self._warm_up(), name="slack-auth")
        if self.settings.app_token:
            self._socket = AsyncSocketModeHandler(self.app, self.settings.app_token, web_client=self.client)
            await self._socket.connect_async()

    async def stop(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warm
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        await self.worker.stop()

    async def _warm_up(self) -> None:
        try:
            await self.replies.identity()
        except Exception as exc:  # tried again on the first delivery
            log.warning("slack: auth.test failed at start-up: %r", exc)

    def _authorizer(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        # A plain function: Bolt passes arguments by parameter name, and `self` confuses it.
        async def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
            me = await self.replies.identity()
            return AuthorizeResult(
                enterprise_id=enterprise_id,
                team_id=team_id,
                user_id=user_id,
                bot_token=self.settings.bot_token,
                bot_id=me.bot_id,
                bot_user_id=me.user_id,
            )

        return authorize

    async def handle(self, request: web.Request) -> web.Response:
        """POST /slack/events: events, interactivity and url_verification, verified by Bolt."""
        return await to_aiohttp_response(await self.app.async_dispatch(await to_bolt_request(request)))

    async def default_route(self) -> Route | None:
        agent_id = self.settings.agent
        if not agent_id:
            return None
        tenant_id = await self.worker.store.agent_tenant(agent_id)
        if tenant_id is None:
            log.warning("slack: OMA_SLACK_AGENT %s does not exist", agent_id)
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
                        environments.c.name == SLACK_ENVIRONMENT_NAME,
                        environments.c.archived_at.is_(None),
                    )
                    .order_by(environments.c.created_at)
                    .limit(1)
                )
            ).scalar_one_or_none()
        if found is not None:
            return str(found)
        created = await self.core.environments.create(tenant_id, schemas.EnvironmentCreate(name=SLACK_ENVIRONMENT_NAME))
        return str(created["id"])

    # --- inbound -------------------------------------------------------------------------------

    def _register(self) -> None:
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.event("agent_session_stopped")(self._on_session_stopped)
        self.app.action(APPROVE_ACTION)(self._on_confirmation)
        self.app.action(DENY_ACTION)(self._on_confirmation)
        self.app.action(STOP_ACTION)(self._on_stop)
        # Everything else subscribed (assistant_thread_started, …) is acknowledged and ignored.
        self.app.event(re.compile(".*"))(self._ignore)

    async def _ignore(self) -> None:
        return None

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
        inbound = self.message_inbound(body, event, context.bot_user_id)
        if inbound is not None:
            await self.worker.ingress.accept(inbound)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
        # In channels only mentions count (they come as app_mention); in DMs every message does.
        if event.get("channel_type") != "im":
            return
        inbound = self.message_inbound(body, event, context.bot_user_id)
        if inbound is not None:
            await self.worker.ingress.accept(inbound)

    def message_inbound(self, body: dict[str, Any], event: dict[str, Any], bot_user_id: str | None) -> Inbound | None:
        user = event.get("user")
        if event.get("bot_id") or event.get("subtype") not in _PLAIN_SUBTYPES or not user or user == bot_user_id:
            return None  # the bot's own messages, edits, deletions, other bots
        team = str(body.get("team_id") or event.get("team") or "")
        channel, ts = str(event["channel"]), str(event["ts"])
        thread_ts = str(event.get("thread_ts") or ts)
        said = str(event.get("text") or "")
        pattern = mention_pattern(bot_user_id)
        if pattern is not None:
            said = pattern.sub("", said)
        said = said.strip()
        key = f"{team}:{channel}:{thread_ts}"
        dedup = [f"message:{team}:{channel}:{ts}"]
        if body.get("event_id"):
            dedup.insert(0, f"event:{body['event_id']}")
        address = {"team": team, "channel": channel, "thread_ts": thread_ts, "user": user}
        if said.lower().strip(" .!") in text.STOP_WORDS:
            return Inbound(key, address, [{"type": "user.interrupt"}], tuple(dedup), start=False, workspace=team)
        message = {
            "type": "user.message",
            "content": [{"type": "text", "text": text.FROM_USER.format(user=user, text=said)}],
        }
        earlier = {"channel": channel, "thread_ts": thread_ts, "before": ts} if thread_ts != ts else None
        return Inbound(key, address, [message], tuple(dedup), start=True, workspace=team, context=earlier)

    async def _on_session_stopped(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        channel = event.get("channel") or event.get("channel_id")
        thread_ts = event.get("thread_ts")
        team = str(body.get("team_id") or "")
        if not channel or not thread_ts:
            return
        key = f"{team}:{channel}:{thread_ts}"
        address = {"team": team, "channel": channel, "thread_ts": thread_ts}
        dedup = (f"event:{body.get('event_id')}",) if body.get("event_id") else ()
        await self.worker.ingress.accept(Inbound(key, address, [{"type": "user.interrupt"}], dedup, start=False))

    def _action_address(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        container = body.get("container") or {}
        message = body.get("message") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
        thread_ts = message.get("thread_ts") or container.get("thread_ts") or message.get("ts")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        if not channel or not thread_ts:
            return None
        return f"{team}:{channel}:{thread_ts}", {"team": team, "channel": channel, "thread_ts": thread_ts}

    async def _on_confirmation(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        found = self._action_address(body)
        tool_use_id = str(action.get("value") or "")
        if found is None or not tool_use_id:
            return
        key, address = found
        user = (body.get("user") or {}).get("id", "")
        event: dict[str, Any] = {"type": "user.tool_confirmation", "tool_use_id": tool_use_id, "result": "allow"}
        if action.get("action_id") == DENY_ACTION:
            event.update(result="deny", deny_message=text.DENIED_BY.format(user=user))
        # The first click decides; later clicks on the same request are duplicates.
        dedup = (f"confirm:{key}:{tool_use_id}",)
        await self.worker.ingress.accept(Inbound(key, address, [event], dedup, start=False))

    async def _on_stop(self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        found = self._action_address(body)
        if found is None:
            return
        key, address = found
        message_ts = (body.get("container") or {}).get("message_ts", "")
        dedup = (f"stop:{key}:{message_ts}:{action.get('action_ts', '')}",)
        await self.worker.ingress.accept(Inbound(key, address, [{"type": "user.interrupt"}], dedup, start=False))

    # --- Adapter -------------------------------------------------------------------------------

    async def history(self, inbound: Inbound) -> list[str]:
        """The thread so far (authors and text), for a first mention inside an existing thread."""
        context = inbound.context or {}
        channel, thread_ts, before = context.get("channel"), context.get("thread_ts"), context.get("before")
        if not channel or not thread_ts:
            return []
        try:
            me = await self.replies.identity()
            lines: list[str] = []
            cursor: str | None = None
            while len(lines) < HISTORY_LIMIT:
                response = await self._patiently(
                    lambda c=cursor: self.client.conversations_replies(
                        channel=channel, ts=thread_ts, limit=200, **({"cursor": c} if c else {})
                    )
                )
                for message in response.get("messages") or []:
                    if before and float(message.get("ts", 0)) >= float(before):
                        continue
                    lines.append(
                        text.HISTORY_LINE.format(
                            author=_author(message, me.user_id, me.bot_id), text=message.get("text", "")
                        )
                    )
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        except Exception as exc:  # the conversation goes on without the history
            log.warning("slack: could not read the thread history of %s: %r", inbound.binding_key, exc)
            return []
        return [text.HISTORY_HEADER + "\n" + "\n".join(lines[:HISTORY_LIMIT])] if lines else []

    async def _patiently(self, call: Any, attempts: int = 3) -> Any:
        for attempt in range(attempts):
            try:
                return await self.replies._call(call)
            except Throttled as exc:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(exc.retry_after)
        raise RuntimeError("unreachable")

    async def refuse(self, inbound: Inbound, reason: str) -> None:
        address = inbound.address
        try:
            await self.client.chat_postMessage(
                channel=address["channel"], thread_ts=address["thread_ts"], text=text.NOT_CONFIGURED
            )
        except Exception as exc:
            log.warning("slack: could not tell %s why nothing happens (%s): %r", inbound.binding_key, reason, exc)

    async def deliver(self, delivery: Delivery) -> float | None:
        return await self.replies.deliver(delivery)


SLACK: web.AppKey[SlackAdapter] = web.AppKey("slack", SlackAdapter)


def _author(message: dict[str, Any], bot_user_id: str, bot_id: str) -> str:
    if message.get("user") == bot_user_id or (bot_id and message.get("bot_id") == bot_id):
        return "you"
    if message.get("user"):
        return f"<@{message['user']}>"
    profile = message.get("bot_profile") or {}
    return str(profile.get("name") or message.get("username") or "a bot")
