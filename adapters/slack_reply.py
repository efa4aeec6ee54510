"""Session events to Slack calls, exactly once: the Slack side of the reply outbox.

One reply message per turn, streamed with `chat.startStream`/`appendStream`/`stopStream` (tool
calls as task updates), or posted and edited in place (`chat.postMessage` + `chat.update`) where
streaming is unavailable. `assistant.threads.setStatus` says what the agent is doing meanwhile.

Exactly once. Before a call that creates a message (or appends to a stream, which is not
idempotent) the outbox records it as `pending`, with the state to adopt once it succeeds. A
pending call found at the start of a delivery (a crash, or a response that never came) is
settled first: a created message is looked up in the thread (a bot message we do not know yet)
and adopted, or the call is made again; an append of unknown outcome is repaired by closing the
stream and setting the message's whole text with `chat.update`, which is idempotent. Edits,
status lines and approval updates are idempotent and simply made again.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters import messages as text
from adapters.base import Delivery
from adapters.slack_format import to_mrkdwn
from core.log import StoredEvent

log = logging.getLogger("oma.adapters.slack")

# Slack's limits: markdown_text per streaming call, a section block's text, blocks per message.
MAX_STREAM_CHUNK = 12_000
MAX_SECTION = 3_000
MAX_SECTIONS = 45
POSTED_KEPT = 200

APPROVE_ACTION = "oma_approve"
DENY_ACTION = "oma_deny"
STOP_ACTION = "oma_stop"
STREAM_UNAVAILABLE = frozenset(
    {
        "unknown_method",
        "not_allowed_token_type",
        "method_not_supported_for_channel_type",
        "feature_not_enabled",
        "not_enabled",
        "missing_scope",
        "invalid_arguments",
        "team_not_allowed",
    }
)
CONTENT = frozenset({"agent.message", "agent.tool_use", "agent.tool_result", "agent.mcp_tool_use"})


class Throttled(Exception):
    """Slack answered 429: nothing was applied; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class Unknown(Exception):
    """The call may or may not have been applied (connection lost, timeout, 5xx)."""


class Rejected(Exception):
    """Slack answered ok: false: nothing was applied, and trying again unchanged will not help."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class Identity:
    user_id: str
    bot_id: str


def _ts_key(ts: str) -> Decimal:
    return Decimal(ts)


def summarize(tool_input: Any) -> str:
    if isinstance(tool_input, dict):
        for key in ("command", "path", "file_path", "pattern", "url", "query"):
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                return _clip(value.replace("\n", " "), 80)
        for value in tool_input.values():
            if isinstance(value, str) and value:
                return _clip(value.replace("\n", " "), 80)
    return ""


def _clip(value: str, size: int) -> str:
    return value if len(value) <= size else value[: size - 1] + "…"


def _message_text(event: StoredEvent) -> str:
    return "\n\n".join(b.get("text", "") for b in event.payload.get("content", []) if b.get("type") == "text")


def _tool_output(event: StoredEvent) -> str:
    content = event.payload.get("content") or []
    return _clip(" ".join(b.get("text", "") for b in content if b.get("type") == "text").strip(), 200)


class _Pass:
    """One delivery pass: the outbox state being built and the last seq whose effects it holds."""

    def __init__(self, d: Delivery) -> None:
        self.d = d
        self.st: dict[str, Any] = copy.deepcopy(d.outbox)
        self.done = d.binding.delivered_seq
        self.address = d.binding.address
        self.channel: str = self.address["channel"]
        self.thread_ts: str = self.address["thread_ts"]

    async def checkpoint(self) -> None:
        if self.done != self.d.binding.delivered_seq or self.st != self.d.outbox:
            await self.d.commit(self.done, self.st)


class SlackReplies:
    """`Adapter.deliver` for Slack."""

    def __init__(self, client: AsyncWebClient, *, streaming: bool = True, min_edit_seconds: float = 1.0) -> None:
        self.client = client
        self.streaming = streaming
        self.min_edit_seconds = min_edit_seconds
        self._identity: Identity | None = None
        self._next_edit: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    async def identity(self) -> Identity:
        if self._identity is None:
            auth = await self._call(self.client.auth_test)
            self._identity = Identity(str(auth.get("user_id") or ""), str(auth.get("bot_id") or ""))
        return self._identity

    # --- the delivery pass ---------------------------------------------------------------------

    async def deliver(self, d: Delivery) -> float | None:
        p = _Pass(d)
        key = d.binding.key
        try:
            if p.st.get("pending"):
                await self._settle(p)
                return 0.0  # then read again from the settled cursor
            delay = await self._run(p)
        except Throttled as exc:
            return max(exc.retry_after, 0.05)
        except Unknown as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("slack: a call for %s had an unknown outcome (%s); settling it", key, exc)
            return float(min(30, 2 ** (failures - 1)))
        except Rejected as exc:
            # Slack refuses what this event needs (channel gone, bot removed, …): retrying will
            # not change that, so this one event is given up and the next ones are tried.
            failed = next((e.seq for e in d.events if e.seq > p.done), p.done)
            log.warning("slack: %s refused in %s (%s); skipping event %d", key, p.channel, exc.error, failed)
            p.st["pending"] = None
            p.done = failed
            await p.checkpoint()
            return 0.0
        self._failures.pop(key, None)
        return delay

    async def _run(self, p: _Pass) -> float | None:
        events = p.d.events
        i = 0
        while i < len(events):
            event = events[i]
            if event.type in CONTENT:
                j = i
                while j < len(events) and (events[j].type in CONTENT or _skippable(events[j])):
                    j += 1
                final = j < len(events) and _ends_turn(events[j])
                reply = p.st.get("reply") or {}
                if not final and reply.get("ts"):
                    wait = self._next_edit.get(p.channel, 0.0) - time.monotonic()
                    if wait > 0:  # coalesce: whatever else arrives meanwhile goes in the same call
                        await p.checkpoint()
                        return wait
                await self._content(p, events[i:j], final=final)
                p.done = events[j - 1].seq
                i = j
                continue
            if _ends_turn(event):
                await self._end_turn(p, event)
            elif event.type == "session.status_running":
                if not (p.st.get("reply") or {}).get("ts"):
                    await self._status(p, text.STATUS_THINKING)
            elif event.type == "session.error":
                await self._error(p, event)
            elif event.type == "user.tool_confirmation":
                await self._confirmed(p, event)
            elif event.type == "user.interrupt":
                p.st["interrupted"] = True
            elif event.type == "user.message":
                p.st["interrupted"] = False
            p.done = event.seq
            i += 1
        await p.checkpoint()
        return None

    # --- content -------------------------------------------------------------------------------

    async def _content(self, p: _Pass, run: list[StoredEvent], *, final: bool) -> None:
        """Add a run of messages and tool calls to the turn's reply in as few calls as Slack allows."""
        reply = p.st.get("reply") or {"ts": None, "mode": None, "text": "", "tasks": []}
        added: list[str] = []
        chunks: list[dict[str, Any]] = []
        tasks = [dict(t) for t in reply["tasks"]]
        for event in run:
            if event.type == "agent.message":
                said = _message_text(event)
                if said:
                    piece = ("\n\n" if (reply["text"] or added) else "") + said
                    added.append(piece)
                    chunks.append({"type": "markdown_text", "text": piece})
            elif event.type in ("agent.tool_use", "agent.mcp_tool_use"):
                name = str(event.payload.get("name", "tool"))
                summary = summarize(event.payload.get("input"))
                if event.payload.get("evaluated_permission") == "ask":
                    p.st.setdefault("asks", {})[event.id] = {"tool": name, "summary": summary}
                    continue
                title = text.TASK_TITLE.format(tool=name, summary=summary) if summary else name
                task = {"id": event.id, "title": _clip(title, 100), "status": "in_progress"}
                tasks.append(task)
                chunks.append({"type": "task_update", **task})
            elif event.type == "agent.tool_result":
                for task in tasks:
                    if task["id"] == event.payload.get("tool_use_id"):
                        task["status"] = "error" if event.payload.get("is_error") else "complete"
                        chunk = {"type": "task_update", **task}
                        output = _tool_output(event)
                        if output:
                            chunk["output"] = output
                        chunks.append(chunk)
        if not chunks:
            return
        after = {**reply, "text": reply["text"] + "".join(added), "tasks": tasks}
        upto = run[-1].seq
        if not reply.get("ts"):
            await self._create_reply(p, after, chunks, upto=upto, final=final)
        elif reply["mode"] == "stream":
            await self._append(p, after, chunks, upto=upto)
        else:
            after["closed"] = final
            await self._call(
                self.client.chat_update,
                channel=p.channel,
                ts=reply["ts"],
                text=_fallback(after["text"]),
                blocks=_blocks(after, working=not final),
            )
            p.st["reply"] = after
        self._next_edit[p.channel] = time.monotonic() + self.min_edit_seconds

    async def _create_reply(
        self, p: _Pass, after: dict[str, Any], chunks: list[dict[str, Any]], *, upto: int, final: bool
    ) -> None:
        if self.streaming and p.st.get("stream", True):
            calls = _calls(chunks)
            state = copy.deepcopy(p.st)
            state["reply"] = {**after, "mode": "stream"}
            state["status"] = ""  # a reply clears the status line
            try:
                ts = await self._create(
                    p,
                    upto=upto,
                    target=["reply"],
                    state=state,
                    exact=len(calls) == 1,
                    call=lambda: self._call(
                        self.client.chat_startStream,
                        channel=p.channel,
                        thread_ts=p.thread_ts,
                        recipient_team_id=p.address.get("team"),
                        recipient_user_id=p.address.get("user"),
                        chunks=calls[0],
                    ),
                )
            except Rejected as exc:
                if exc.error not in STREAM_UNAVAILABLE:
                    raise
                log.info("slack: streaming unavailable (%s); posting and editing messages instead", exc.error)
                p.st["stream"] = False
            else:
                p.st["reply"] = {**state["reply"], "ts": ts}
                p.st["status"] = ""
                if len(calls) > 1:
                    await self._append(p, p.st["reply"], [c for call in calls[1:] for c in call], upto=upto)
                return
        state = copy.deepcopy(p.st)
        state["reply"] = {**after, "mode": "message", "closed": final}
        state["status"] = ""
        ts = await self._create(
            p,
            upto=upto,
            target=["reply"],
            state=state,
            exact=True,
            call=lambda: self._call(
                self.client.chat_postMessage,
                channel=p.channel,
                thread_ts=p.thread_ts,
                text=_fallback(after["text"]),
                blocks=_blocks(after, working=not final),
            ),
        )
        p.st["reply"] = {**state["reply"], "ts": ts}
        p.st["status"] = ""

    async def _append(self, p: _Pass, after: dict[str, Any], chunks: list[dict[str, Any]], *, upto: int) -> None:
        """Appends are not idempotent: recorded as pending, repaired by `_settle` if in doubt."""
        ts = p.st["reply"]["ts"]
        target = {**after, "ts": ts, "mode": "stream"}
        p.st["pending"] = {"op": "edit", "upto": upto, "reply": target}
        await p.checkpoint()
        try:
            for call in _calls(chunks):
                await self._call(self.client.chat_appendStream, channel=p.channel, ts=ts, chunks=call)
        except Rejected as exc:
            # The stream is gone (stopped by the user, timed out): the message keeps the reply,
            # edited in place from here on.
            log.info("slack: chat.appendStream on %s refused (%s); editing the message instead", ts, exc.error)
            await self._repair(p, target)
            p.st["pending"] = None
            return
        p.st["pending"] = None
        p.st["reply"] = target

    # --- turn ends, errors, approvals ----------------------------------------------------------

    async def _end_turn(self, p: _Pass, event: StoredEvent) -> None:
        reply = p.st.get("reply")
        if reply and reply.get("ts"):
            stopped = text.STOPPED if p.st.get("interrupted") else ""
            if reply["mode"] == "stream":
                if stopped:
                    piece = ("\n\n" if reply["text"] else "") + stopped
                    await self._append(
                        p,
                        {**reply, "text": reply["text"] + piece},
                        [{"type": "markdown_text", "text": piece}],
                        upto=p.done,
                    )
                await self._stop_stream(p.channel, reply["ts"])
            elif stopped or not reply.get("closed"):
                final = {
                    **reply,
                    "text": reply["text"] + (("\n\n" if reply["text"] else "") + stopped if stopped else ""),
                }
                await self._call(
                    self.client.chat_update,
                    channel=p.channel,
                    ts=reply["ts"],
                    text=_fallback(final["text"]),
                    blocks=_blocks(final, working=False),
                )
        p.st["reply"] = None
        p.st["interrupted"] = False
        stop = event.payload.get("stop_reason") or {}
        if event.type == "session.status_idle" and stop.get("type") == "requires_action":
            for tool_use_id in stop.get("event_ids") or []:
                await self._approval(p, tool_use_id)
        if p.st.get("status"):
            await self._status(p, "")

    async def _approval(self, p: _Pass, tool_use_id: str) -> None:
        approvals = p.st.setdefault("approvals", {})
        if tool_use_id in approvals:
            return
        ask = (p.st.get("asks") or {}).get(tool_use_id)
        if ask is None:  # a custom tool: only the API client can answer it
            notice, blocks = text.CUSTOM_TOOL_WAITING.format(tool="custom tool"), None
        else:
            notice = text.APPROVAL_PROMPT.format(tool=ask["tool"])
            blocks = _approval_blocks(tool_use_id, notice, ask["summary"])
        entry = {"ts": None, "tool": (ask or {}).get("tool", "")}
        state = copy.deepcopy(p.st)
        state["approvals"][tool_use_id] = entry
        # The event is delivered again after a crash; approvals already posted are skipped then.
        ts = await self._create(
            p,
            upto=p.done,
            target=["approvals", tool_use_id],
            state=state,
            exact=True,
            call=lambda: self._call(
                self.client.chat_postMessage, channel=p.channel, thread_ts=p.thread_ts, text=notice, blocks=blocks
            ),
        )
        approvals[tool_use_id] = {**entry, "ts": ts}
        p.st["status"] = ""

    async def _confirmed(self, p: _Pass, event: StoredEvent) -> None:
        approval = (p.st.get("approvals") or {}).get(event.payload.get("tool_use_id"))
        if not approval or not approval.get("ts") or approval.get("answered"):
            return
        allowed = event.payload.get("result") == "allow"
        line = (text.APPROVAL_APPROVED if allowed else text.APPROVAL_DENIED).format(tool=approval["tool"])
        try:
            await self._call(
                self.client.chat_update,
                channel=p.channel,
                ts=approval["ts"],
                text=line,
                blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": line}}],
            )
        except Rejected as exc:
            log.info("slack: could not update the approval message: %s", exc.error)
        approval["answered"] = True

    async def _error(self, p: _Pass, event: StoredEvent) -> None:
        error = event.payload.get("error") or {}
        retry = (error.get("retry_status") or {}).get("type")
        if retry == "retrying":
            if not (p.st.get("reply") or {}).get("ts"):
                await self._status(p, text.STATUS_RETRYING)
            return
        if retry == "exhausted":
            line = text.RETRIES_EXHAUSTED
        else:
            template = text.ERROR_BY_TYPE.get(str(error.get("type")), text.ERROR_GENERIC)
            line = template.format(message=_clip(str(error.get("message") or ""), 300))
        line = text.ERROR.format(message=line)
        state = copy.deepcopy(p.st)
        state["status"] = ""
        await self._create(
            p,
            upto=event.seq,
            target=[],
            state=state,
            exact=True,
            call=lambda: self._call(self.client.chat_postMessage, channel=p.channel, thread_ts=p.thread_ts, text=line),
        )
        p.st["status"] = ""

    async def _status(self, p: _Pass, status: str) -> None:
        if p.st.get("status", "") == status or p.st.get("status_unavailable"):
            return
        try:
            await self._call(
                self.client.assistant_threads_setStatus,
                channel_id=p.channel,
                thread_ts=p.thread_ts,
                status=status,
                loading_messages=text.LOADING_MESSAGES if status else None,
            )
        except Rejected as exc:
            log.info("slack: assistant.threads.setStatus unavailable here (%s)", exc.error)
            p.st["status_unavailable"] = True
            return
        p.st["status"] = status

    async def _stop_stream(self, channel: str, ts: str) -> None:
        try:
            await self._call(self.client.chat_stopStream, channel=channel, ts=ts)
        except Rejected as exc:  # already stopped (by us before a crash, or by the user)
            log.info("slack: chat.stopStream on %s: %s", ts, exc.error)

    # --- exactly-once creation -----------------------------------------------------------------

    async def _create(
        self,
        p: _Pass,
        *,
        upto: int,
        target: list[str],
        state: dict[str, Any],
        exact: bool,
        call: Callable[[], Awaitable[Any]],
    ) -> str:
        """Make a call that creates a message, recorded first as pending (with `state`, the outbox
        once it succeeded) so that a crash or a lost response is settled by looking the message up
        instead of posting it again. `exact`: the call alone leaves the message as `state` says."""
        known = [p.thread_ts, *p.st.get("posted", [])]
        p.st["pending"] = {
            "op": "create",
            "upto": upto,
            "oldest": max(known, key=_ts_key),
            "target": target,
            "state": {k: v for k, v in state.items() if k != "pending"},
            "exact": exact,
        }
        await p.checkpoint()
        try:
            response = await call()
        except (Throttled, Rejected):
            p.st["pending"] = None  # Slack applied nothing
            await p.checkpoint()
            raise
        ts = str(response["ts"])
        p.st["pending"] = None
        p.st["posted"] = [*p.st.get("posted", []), ts][-POSTED_KEPT:]
        return ts

    async def _settle(self, p: _Pass) -> None:
        pending = p.st["pending"]
        if pending["op"] == "create":
            found = await self._find_unknown(p.channel, p.thread_ts, pending["oldest"], p.st.get("posted", []))
            if found is None:  # never made: forget it; the events are delivered again
                p.st["pending"] = None
                await p.checkpoint()
                return
            state = copy.deepcopy(pending["state"])
            state["pending"] = None
            state["posted"] = [*p.st.get("posted", []), found][-POSTED_KEPT:]
            target = pending["target"]
            if target == ["reply"]:
                state["reply"]["ts"] = found
            elif target and target[0] == "approvals":
                state["approvals"][target[1]]["ts"] = found
            p.st, p.done = state, pending["upto"]
            if target == ["reply"] and not pending["exact"]:
                await self._repair(p, state["reply"])
            await p.checkpoint()
            return
        await self._repair(p, pending["reply"])
        p.st["pending"] = None
        p.done = pending["upto"]
        await p.checkpoint()

    async def _repair(self, p: _Pass, reply: dict[str, Any]) -> None:
        """A streamed reply in doubt (an append that may or may not have landed): close the stream
        and set the message's whole text, which comes out the same either way."""
        await self._stop_stream(p.channel, reply["ts"])
        repaired = {**reply, "mode": "message", "closed": False}
        await self._call(
            self.client.chat_update,
            channel=p.channel,
            ts=reply["ts"],
            text=_fallback(repaired["text"]),
            blocks=_blocks(repaired, working=True),
        )
        p.st["reply"] = repaired

    async def _find_unknown(self, channel: str, thread_ts: str, oldest: str, known: list[str]) -> str | None:
        """The earliest message of ours in the thread, newer than `oldest`, that we have no record of."""
        me = await self.identity()
        seen = set(known)
        cursor: str | None = None
        while True:
            response = await self._call(
                self.client.conversations_replies,
                channel=channel,
                ts=thread_ts,
                oldest=oldest,
                inclusive=False,
                limit=200,
                cursor=cursor,
            )
            for message in response.get("messages") or []:
                ts = str(message.get("ts", ""))
                ours = (me.bot_id and message.get("bot_id") == me.bot_id) or message.get("user") == me.user_id
                if ours and ts not in seen and ts != thread_ts and _ts_key(ts) > _ts_key(oldest):
                    return ts
            cursor = ((response.get("response_metadata") or {}).get("next_cursor")) or None
            if not cursor:
                return None

    # --- calls ---------------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[Any]], **kwargs: Any) -> Any:
        """One Web API call, its failure classified: Throttled (429), Rejected (ok: false) or
        Unknown (may have been applied)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return await method(**kwargs)
        except SlackApiError as exc:
            response = exc.response
            if response.status_code == 429:
                raise Throttled(_retry_after(response.headers)) from exc
            if response.status_code >= 500:
                raise Unknown(str(exc)) from exc
            raise Rejected(str(response.get("error") or "unknown_error")) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unknown(repr(exc)) from exc


def _retry_after(headers: Any) -> float:
    for name, value in dict(headers or {}).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                break
    return 1.0


def _skippable(event: StoredEvent) -> bool:
    return event.type.startswith("span.") or event.type in ("agent.thinking", "session.status_running")


def _ends_turn(event: StoredEvent) -> bool:
    return event.type in ("session.status_idle", "session.status_terminated")


def _calls(chunks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Chunks grouped into calls: markdown at most 12,000 characters per call, in order."""
    pieces: list[dict[str, Any]] = []
    for chunk in chunks:
        body = chunk.get("text", "") if chunk["type"] == "markdown_text" else ""
        if len(body) > MAX_STREAM_CHUNK:
            pieces.extend(
                {"type": "markdown_text", "text": body[i : i + MAX_STREAM_CHUNK]}
                for i in range(0, len(body), MAX_STREAM_CHUNK)
            )
        else:
            pieces.append(chunk)
    calls: list[list[dict[str, Any]]] = []
    size = 0
    for piece in pieces:
        length = len(piece.get("text", "")) if piece["type"] == "markdown_text" else 0
        if calls and size + length <= MAX_STREAM_CHUNK:
            calls[-1].append(piece)
            size += length
        else:
            calls.append([piece])
            size = length
    return calls


def _fallback(markdown: str) -> str:
    return _clip(to_mrkdwn(markdown), MAX_SECTION) or "…"


def _blocks(reply: dict[str, Any], *, working: bool) -> list[dict[str, Any]]:
    body = to_mrkdwn(reply.get("text") or "")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": body[i : i + MAX_SECTION]}}
        for i in range(0, len(body), MAX_SECTION)
    ][:MAX_SECTIONS]
    tasks = reply.get("tasks") or []
    if tasks:
        lines = "\n".join(f"{text.TASK_ICON.get(t['status'], '•')} {t['title']}" for t in tasks[-20:])
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(lines, MAX_SECTION)}]})
    if working:
        blocks.append(
            {
                "type": "actions",
                "block_id": "oma_controls",
                "elements": [
                    {
                        "type": "button",
                        "action_id": STOP_ACTION,
                        "text": {"type": "plain_text", "text": text.STOP_BUTTON},
                        "value": "stop",
                    }
                ],
            }
        )
    return blocks or [{"type": "section", "text": {"type": "mrkdwn", "text": "…"}}]


def _approval_blocks(tool_use_id: str, prompt: str, summary: str) -> list[dict[str, Any]]:
    detail = f"\n```{summary}```" if summary else ""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": prompt + detail}},
        {
            "type": "actions",
            "block_id": "oma_approval",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": text.APPROVAL_APPROVE},
                    "value": tool_use_id,
                },
                {
                    "type": "button",
                    "action_id": DENY_ACTION,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": text.APPROVAL_DENY},
                    "value": tool_use_id,
                },
            ],
        },
    ]
