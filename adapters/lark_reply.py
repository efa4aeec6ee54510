"""Session events to Lark calls, exactly once: the Lark side of the reply outbox.

One card per turn, replied into the conversation's thread. It is a CardKit streaming card: the
card entity is created (JSON 2.0, `streaming_mode`), sent by reference, and its one markdown
element is set to the turn's whole text (steps as they happen, then the answer) with strictly
increasing `sequence` numbers; the end of the turn closes streaming. Where CardKit is not
available the card is an ordinary interactive card, replied once and then patched.

Exactly once. Card updates and settings carry the whole state, so repeating one is harmless (a
`sequence` Lark already saw is answered by moving past it). The reply that makes the card visible
carries a `uuid` derived from the binding, the session and the turn's first event, so a reply
repeated after a crash or a lost response returns the message Lark already made (Lark keeps these
for an hour). The cursor only moves past events once the card shows them. Updates are coalesced:
a card is updated at most every `min_edit_seconds` while the turn runs (CardKit allows 10
operations a second per card, a patched message 5); the last update of a turn is not delayed.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from adapters import messages as text
from adapters.base import Delivery
from adapters.lark_client import LarkApi, Rejected, Throttled, Unknown
from core.log import StoredEvent

log = logging.getLogger("oma.adapters.lark")

ELEMENT_ID = "oma_reply"
# A card may be 30 KB; its text is kept well under that (the tail is kept: it shows the latest).
MAX_TEXT_BYTES = 24_000
SUMMARY_CHARS = 60
SEQUENCE_STALE = 300317
STREAMING_CLOSED = frozenset({300309, 200850})  # closed, or closed by Lark after 10 minutes
TOOL_USES = frozenset({"agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"})
TURN_ENDS = frozenset({"session.status_idle", "session.status_terminated"})


def card_json(content: str, *, streaming: bool, summary: str) -> dict[str, Any]:
    """A card JSON 2.0 with one markdown element (`update_multi`: everyone sees the updates)."""
    return {
        "schema": "2.0",
        "config": {"update_multi": True, "streaming_mode": streaming, "summary": {"content": summary}},
        "body": {"elements": [{"tag": "markdown", "element_id": ELEMENT_ID, "content": content}]},
    }


def step_title(name: str, tool_input: Any) -> str:
    detail = ""
    if isinstance(tool_input, dict):
        keys = ("command", "path", "file_path", "pattern", "url", "query")
        values = [tool_input.get(k) for k in keys] + list(tool_input.values())
        detail = next((v for v in values if isinstance(v, str) and v), "")
    detail = _clip(" ".join(detail.replace("`", "'").split()), 80)
    return text.LARK_STEP.format(tool=name, detail=detail).rstrip() if detail else text.LARK_STEP_BARE.format(tool=name)


def render(turn: dict[str, Any], *, final: bool) -> str:
    """The card's text: runs of steps as lines, messages and errors as paragraphs, in order."""
    blocks: list[str] = []
    steps: list[str] = []
    for part in turn["parts"]:
        if part["k"] == "step":
            steps.append(f"{text.TASK_ICON.get(part['status'], '•')} {part['title']}")
            continue
        if steps:
            blocks.append("\n".join(steps))
            steps = []
        blocks.append(part["text"])
    if steps:
        blocks.append("\n".join(steps))
    if final and turn.get("interrupted"):
        blocks.append(text.STOPPED)
    body = "\n\n".join(b for b in blocks if b)
    if not body:
        body = text.LARK_NO_ANSWER if final else text.LARK_THINKING
    encoded = body.encode()
    if len(encoded) > MAX_TEXT_BYTES:
        body = text.LARK_CLIPPED + encoded[-MAX_TEXT_BYTES:].decode(errors="ignore")
    return body


def summary_of(turn: dict[str, Any], *, final: bool) -> str:
    said = [p["text"] for p in turn["parts"] if p["k"] in ("text", "error")]
    if not said:
        return text.LARK_NO_ANSWER if final else text.LARK_THINKING
    return _clip(" ".join(said[-1].split()), SUMMARY_CHARS)


def fold(turn: dict[str, Any] | None, event: StoredEvent) -> tuple[dict[str, Any] | None, bool]:
    """Apply one session event to the turn being shown: (the turn, whether the event ends it)."""
    kind, payload = event.type, event.payload
    if kind in TURN_ENDS:
        if turn is not None:
            stop = payload.get("stop_reason") or {}
            if kind == "session.status_idle" and stop.get("type") == "requires_action":
                waiting = set(stop.get("event_ids") or [])
                for part in list(turn["parts"]):
                    if part["k"] == "step" and part["id"] in waiting:
                        template = text.CUSTOM_TOOL_WAITING if part.get("custom") else text.LARK_APPROVAL_ELSEWHERE
                        turn["parts"].append({"k": "note", "text": template.format(tool=part["tool"])})
        return turn, True
    if kind == "user.interrupt":
        if turn is not None:
            turn["interrupted"] = True
        return turn, False
    if kind == "user.custom_tool_result":  # the API client answered a custom tool
        for part in turn["parts"] if turn is not None else []:
            if part["k"] == "step" and part["id"] == payload.get("custom_tool_use_id"):
                part["status"] = "error" if payload.get("is_error") else "complete"
        return turn, False
    error = payload.get("error") or {}
    retry = (error.get("retry_status") or {}).get("type")
    if kind not in ("session.status_running", "agent.message", "agent.tool_result", "session.error", *TOOL_USES):
        return turn, False
    if kind == "session.error" and retry == "retrying":
        return turn, False
    if turn is None:
        turn = {"start": event.seq, "parts": [], "interrupted": False}
    parts: list[dict[str, Any]] = turn["parts"]
    if kind == "agent.message":
        said = "\n\n".join(b.get("text", "") for b in payload.get("content") or [] if b.get("type") == "text").strip()
        if said:
            parts.append({"k": "text", "text": said})
    elif kind in TOOL_USES:
        name = str(payload.get("name") or "tool")
        status = "pending" if payload.get("evaluated_permission") == "ask" else "in_progress"
        title = step_title(name, payload.get("input"))
        step: dict[str, Any] = {"k": "step", "id": event.id, "tool": name, "title": title, "status": status}
        if kind == "agent.custom_tool_use":
            step.update(status="pending", custom=True)
        parts.append(step)
    elif kind == "agent.tool_result":
        for part in parts:
            if part["k"] == "step" and part["id"] == payload.get("tool_use_id"):
                part["status"] = "error" if payload.get("is_error") else "complete"
    elif kind == "session.error":
        if retry == "exhausted":
            line = text.RETRIES_EXHAUSTED
        else:
            template = text.ERROR_BY_TYPE.get(str(error.get("type")), text.ERROR_GENERIC)
            line = template.format(message=_clip(str(error.get("message") or ""), 300))
        parts.append({"k": "error", "text": text.ERROR.format(message=line)})
    return turn, False


class _Pass:
    """One delivery pass. `st` is the platform side (the turn's card, whether CardKit works);
    `turn` is what the events read so far make of the turn, `shown_turn` what the cursor
    (`done`) covers: only that is stored, so that events read again are not folded twice."""

    def __init__(self, d: Delivery) -> None:
        self.d = d
        self.st: dict[str, Any] = copy.deepcopy({k: v for k, v in d.outbox.items() if k != "turn"})
        self.shown_turn: dict[str, Any] | None = copy.deepcopy(d.outbox.get("turn"))
        self.turn: dict[str, Any] | None = copy.deepcopy(self.shown_turn)
        self.done = d.binding.delivered_seq
        self.root_id: str = d.binding.address["root_id"]

    def outbox(self) -> dict[str, Any]:
        return copy.deepcopy({**self.st, "turn": self.shown_turn})

    async def save(self) -> None:
        """Record the platform side (a card made, a reply about to be sent) without advancing."""
        await self.d.save(self.outbox())

    async def checkpoint(self) -> None:
        outbox = self.outbox()
        if self.done != self.d.binding.delivered_seq or outbox != self.d.outbox:
            await self.d.commit(self.done, outbox)

    def uuid(self, turn: dict[str, Any]) -> str:
        """The idempotency key of the turn's reply (Lark: at most 50 characters)."""
        seed = f"{self.d.binding.key}|{self.d.binding.session_id}|{turn['start']}"
        return "oma-" + hashlib.sha256(seed.encode()).hexdigest()[:40]


class LarkReplies:
    """`Adapter.deliver` for Lark."""

    def __init__(self, api: LarkApi, *, streaming: bool = True, min_edit_seconds: float = 0.5) -> None:
        self.api = api
        self.streaming = streaming
        self.min_edit_seconds = min_edit_seconds
        self._next_edit: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    async def deliver(self, d: Delivery) -> float | None:
        p = _Pass(d)
        key = d.binding.key
        try:
            delay = await self._run(p)
        except Throttled as exc:
            return max(exc.retry_after, 0.05)
        except Unknown as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("lark: a call for %s had an unknown outcome (%s); trying again", key, exc)
            return float(min(30, 2 ** (failures - 1)))
        except Rejected as exc:
            # Lark refuses what this turn needs (message gone, bot removed from the chat, …):
            # nothing will change that, so the turn is given up instead of retried forever.
            log.warning("lark: %s refused: %s; skipping", key, exc)
            p.turn = p.shown_turn = None
            p.st["reply"] = None
            p.done = d.events[-1].seq if d.events else p.done
            await p.checkpoint()
            return None
        self._failures.pop(key, None)
        return delay

    async def _run(self, p: _Pass) -> float | None:
        for event in p.d.events:
            p.turn, ended = fold(p.turn, event)
            if p.turn is None:
                p.done = event.seq
            elif ended:
                await self._show(p, upto=event.seq, final=True)
        if p.turn is not None and p.d.events:
            wait = await self._show(p, upto=p.d.events[-1].seq, final=False)
            if wait is not None:
                return wait
        await p.checkpoint()
        return None

    async def _show(self, p: _Pass, *, upto: int, final: bool) -> float | None:
        """Make the turn's card show everything folded so far; returns seconds to wait instead
        when an update would come too soon after the last one (the events are read again then)."""
        turn = p.turn
        if turn is None:
            return None
        content = render(turn, final=final)
        reply = p.st.get("reply")
        if reply is None or not reply.get("message_id"):
            reply = await self._post(p, turn, content, final=final)
        if _digest(content) != reply["shown"]:
            wait = self._next_edit.get(reply["message_id"], 0.0) - time.monotonic()
            if not final and wait > 0:
                return wait
            await self._update(p, content, summary_of(turn, final=final))
        if final and reply.get("streaming"):
            await self._close(p, summary_of(turn, final=True))
        if final:
            self._next_edit.pop(reply["message_id"], None)
            p.turn = None
            p.st["reply"] = None
        p.shown_turn = copy.deepcopy(p.turn)
        p.done = upto
        await p.checkpoint()
        return None

    async def _post(self, p: _Pass, turn: dict[str, Any], content: str, *, final: bool) -> dict[str, Any]:
        """Reply with the turn's card. Recorded before the reply is sent: after a crash the same
        card is sent again with the same uuid, which Lark answers with the message it made."""
        summary = summary_of(turn, final=final)
        reply: dict[str, Any] | None = p.st.get("reply")
        retried = reply is not None
        if reply is None and self.streaming and p.st.get("stream", True):
            try:
                card_id = await self.api.create_card(card_json(content, streaming=not final, summary=summary))
            except Rejected as exc:
                log.info("lark: CardKit unavailable (%s); replying with cards patched in place instead", exc)
                p.st["stream"] = False
            else:
                reply = {"mode": "card", "card_id": card_id, "seq": 0, "streaming": not final}
                reply.update(message_id=None, shown=_digest(content))
        if reply is None:
            reply = {"mode": "message", "message_id": None, "shown": _digest(content)}
        p.st["reply"] = reply
        if not retried:
            await p.save()
        if reply["mode"] == "card":
            body: dict[str, Any] = {"type": "card", "data": {"card_id": reply["card_id"]}}
        else:
            body = card_json(content, streaming=False, summary=summary)
            if retried:  # the message Lark returns shows the text of the first attempt
                reply["shown"] = ""
        reply["message_id"] = await self.api.reply(p.root_id, "interactive", body, uuid=p.uuid(turn))
        self._next_edit[reply["message_id"]] = time.monotonic() + self.min_edit_seconds
        await p.save()
        return reply

    async def _update(self, p: _Pass, content: str, summary: str) -> None:
        reply = p.st["reply"]
        if reply["mode"] == "card":
            card_id = reply["card_id"]
            await self._card_op(
                p, lambda seq: self.api.set_element_content(card_id, ELEMENT_ID, content, seq), reopen=True
            )
        else:
            await self.api.patch_card_message(reply["message_id"], card_json(content, streaming=False, summary=summary))
        reply["shown"] = _digest(content)
        self._next_edit[reply["message_id"]] = time.monotonic() + self.min_edit_seconds

    async def _close(self, p: _Pass, summary: str) -> None:
        reply = p.st["reply"]
        card_id = reply["card_id"]
        config = {"streaming_mode": False, "summary": {"content": summary}}
        try:
            await self._card_op(p, lambda seq: self.api.card_settings(card_id, config, seq), reopen=False)
        except Rejected as exc:
            if exc.code not in STREAMING_CLOSED:
                raise
        reply["streaming"] = False

    async def _card_op(self, p: _Pass, op: Callable[[int], Awaitable[None]], *, reopen: bool) -> None:
        """A CardKit operation with the card's next sequence number. A stale number (an earlier
        call landed though its answer was lost) is skipped past; a card whose streaming Lark
        closed (after 10 minutes) is reopened first when `reopen`."""
        reply = p.st["reply"]
        for attempt in range(4):
            reply["seq"] += 1
            try:
                await op(reply["seq"])
                return
            except Rejected as exc:
                if attempt == 3:
                    raise
                if exc.code == SEQUENCE_STALE:
                    reply["seq"] += 1
                elif exc.code in STREAMING_CLOSED and reopen:
                    reply["seq"] += 1
                    await self.api.card_settings(reply["card_id"], {"streaming_mode": True}, reply["seq"])
                    reply["streaming"] = True
                else:
                    raise


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def _clip(value: str, size: int) -> str:
    return value if len(value) <= size else value[: size - 1] + "…"


__all__ = ["ELEMENT_ID", "LarkReplies", "card_json", "fold", "render"]
