"""Session events to Linear agent activities, exactly once: the Linear side of the reply outbox.

A prompt is acknowledged at once with a `thought` (Linear wants one within 10 s of `created`); the
agent's words before a tool call are `thought`s; a tool call shows as an ephemeral `action` while
it runs and as an `action` with its result when done; a confirmation it needs is an `elicitation`
(answered by the user's next prompt); the end of a turn is a `response` (an `elicitation` when the
answer ends in a question), or an `error`. A stop is acknowledged with a `response` and what the
agent does after it stays out of the session until the next prompt.

Exactly once without a pending record: every activity's id is derived from the session and the
event it stands for (`activity_id`), so a create repeated after a crash or a lost answer is the
same activity, and Linear keeps one. The cursor advances after each accepted create.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from adapters import messages as text
from adapters.base import Delivery
from adapters.linear_api import LinearApi, Rejected, Throttled, Token, Unauthorized, Unknown, activity_id
from core.log import StoredEvent

log = logging.getLogger("oma.adapters.linear")

MAX_BODY = 20_000
MAX_PARAMETER = 300
MAX_RESULT = 2_000
TOOL_USES = ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use")


def parameter(tool_input: Any) -> str:
    """What an action acts on: the command, path, pattern, URL or query, else the first string."""
    if isinstance(tool_input, dict):
        for key in ("command", "path", "file_path", "pattern", "url", "query"):
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                return clip(value, MAX_PARAMETER)
        for value in tool_input.values():
            if isinstance(value, str) and value:
                return clip(value, MAX_PARAMETER)
    return ""


def clip(value: str, size: int) -> str:
    return value if len(value) <= size else value[: size - 1] + "…"


def message_text(event: StoredEvent) -> str:
    return "\n\n".join(b.get("text", "") for b in event.payload.get("content", []) if b.get("type") == "text")


def tool_output(event: StoredEvent) -> str:
    content = event.payload.get("content") or []
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text").strip()


class _Pass:
    """One delivery pass: the outbox being built, and the last seq whose effects it holds."""

    def __init__(self, d: Delivery) -> None:
        self.d = d
        self.st: dict[str, Any] = copy.deepcopy(d.outbox)
        self.done = d.binding.delivered_seq
        self.address = d.binding.address
        self.session: str = self.address["session"]
        self.posted = False

    async def checkpoint(self) -> None:
        if self.done != self.d.binding.delivered_seq or self.st != self.d.outbox:
            await self.d.commit(self.done, self.st)


class LinearReplies:
    """`Adapter.deliver` for Linear. `token` finds the workspace's token (refreshing OAuth
    tokens); `refresh` is called when Linear refused one."""

    def __init__(
        self, api: LinearApi, adapter: Any, *, throttle_seconds: float = 5.0, backoff_seconds: float = 1.0
    ) -> None:
        self.api = api
        self.adapter = adapter
        # Linear's rate limit says when it resets only in headers gql keeps per transport (shared by
        # concurrent requests), so a rate-limited binding waits this long instead.
        self.throttle_seconds = throttle_seconds
        # After a call of unknown outcome: this, doubling per failure, at most 30 s.
        self.backoff_seconds = backoff_seconds
        self._failures: dict[str, int] = {}

    async def deliver(self, d: Delivery) -> float | None:
        p = _Pass(d)
        key = d.binding.key
        try:
            await self._run(p)
        except Throttled:
            await p.checkpoint()
            return self.throttle_seconds
        except Unknown as exc:
            await p.checkpoint()
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("linear: a call for %s had an unknown outcome (%s); trying again", key, exc)
            return float(min(30.0, self.backoff_seconds * 2 ** (failures - 1)))
        self._failures.pop(key, None)
        return None

    async def _run(self, p: _Pass) -> None:
        """Each event's effects are all made, or none are recorded: an event interrupted halfway
        (rate limit, lost answer) is handled again from the state before it, making the same
        activities with the same ids. The cursor moves after each event that posted something."""
        events = p.d.events
        for i, event in enumerate(events):
            before = copy.deepcopy(p.st)
            p.posted = False
            try:
                await self._event(p, event, events[i + 1 :])
            except Rejected as exc:
                # Linear refuses what this event needs (session gone, app removed, …): waiting will
                # not change that, so the event is given up instead of retried forever.
                log.warning("linear: %s refused for %s (seq %s): %s; skipping", event.type, p.session, event.seq, exc)
            except BaseException:
                p.st = before
                raise
            p.done = event.seq
            if p.posted:
                await p.checkpoint()
        await p.checkpoint()

    async def _event(self, p: _Pass, event: StoredEvent, later: list[StoredEvent]) -> None:
        st = p.st
        kind = event.type
        if kind == "user.message":
            st.update(said=[], stop=None, failed=False, busy=True)
            await self._post(p, event, "ack", {"type": "thought", "body": text.LINEAR_ACK})
            if not st.get("setup"):
                await self._setup(p)
            return
        if kind == "user.interrupt":
            st["awaiting"] = []  # a stop also settles a pending approval
            if st.get("busy"):
                st["stop"] = "asked"  # acknowledged when the turn ends
            elif st.get("stop") is None:
                await self._post(p, event, "stopped", {"type": "response", "body": text.LINEAR_STOPPED})
                st["stop"] = "done"
            return
        if kind == "user.tool_confirmation":
            st["awaiting"] = [i for i in st.get("awaiting") or [] if i != event.payload.get("tool_use_id")]
            st["busy"] = True
            return
        if st.get("stop") == "done":
            return  # stopped: nothing more until the next prompt
        if kind == "agent.message":
            said = message_text(event)
            if said and st.get("stop") is None:
                st["said"] = [*(st.get("said") or []), said]
        elif kind in TOOL_USES:
            await self._tool_use(p, event, later)
        elif kind == "agent.tool_result":
            await self._tool_result(p, event)
        elif kind == "session.error":
            await self._error(p, event)
        elif kind == "session.status_idle":
            await self._idle(p, event)
        elif kind == "session.status_terminated":
            if not st.get("failed"):
                await self._post(p, event, "error", {"type": "error", "body": text.LINEAR_TERMINATED})
            st["failed"] = True

    # --- steps ---------------------------------------------------------------------------------

    async def _setup(self, p: _Pass) -> None:
        """Once per conversation: a link to our session, and the issue taken as Linear asks."""
        url = self.adapter.session_url(p.d.binding.session_id)
        token = await self._token(p)
        issue = p.address.get("issue")
        try:
            if url:
                await self._call(p, lambda t: self.api.link_session(t, p.session, text.LINEAR_SESSION_LINK, url), token)
            if issue:
                await self._call(p, lambda t: self.api.take_issue(t, issue, p.address.get("app_user")), token)
        except Rejected as exc:  # e.g. no permission to edit the issue: the work goes on
            log.info("linear: could not link session %s or update issue %s: %s", p.session, issue, exc)
        p.st["setup"] = True

    async def _tool_use(self, p: _Pass, event: StoredEvent, later: list[StoredEvent]) -> None:
        st = p.st
        if st.get("stop") is not None:
            return
        name, param = str(event.payload.get("name", "tool")), parameter(event.payload.get("input"))
        how = "custom" if event.type == "agent.custom_tool_use" else "run"
        if event.payload.get("evaluated_permission") == "ask":
            how = "ask"
        st.setdefault("tools", {})[event.id] = [name, param, how]
        if how != "run":
            return  # an elicitation (or a wait for the API client) when the turn pauses
        await self._thoughts(p, event)
        if any(e.type == "agent.tool_result" and e.payload.get("tool_use_id") == event.id for e in later):
            return  # already done: only the action with its result is shown
        content = {"type": "action", "action": name, "parameter": param}
        await self._post(p, event, "running", content, ephemeral=True)

    async def _tool_result(self, p: _Pass, event: StoredEvent) -> None:
        tool = (p.st.get("tools") or {}).pop(str(event.payload.get("tool_use_id")), None)
        if tool is None:
            return  # a call made after a stop, never shown
        output = tool_output(event) or (
            text.LINEAR_TOOL_FAILED if event.payload.get("is_error") else text.LINEAR_TOOL_DONE
        )
        result = clip(output, MAX_RESULT)
        content = {"type": "action", "action": tool[0], "parameter": tool[1], "result": f"```\n{result}\n```"}
        await self._post(p, event, "result", content)

    async def _idle(self, p: _Pass, event: StoredEvent) -> None:
        st = p.st
        stop = event.payload.get("stop_reason") or {}
        reason = stop.get("type")
        st["busy"] = False
        if st.get("stop") == "asked":
            st["said"] = []
            await self._post(p, event, "stopped", {"type": "response", "body": text.LINEAR_STOPPED})
            st["stop"] = "done"
            return
        if reason == "requires_action":
            await self._requires_action(p, event, [str(i) for i in stop.get("event_ids") or []])
            return
        st["awaiting"] = []
        if st.get("failed"):
            st["said"] = []
            return
        said = "\n\n".join(st.get("said") or []).strip()
        st["said"] = []
        if reason == "refusal" and not said:
            await self._post(p, event, "error", {"type": "error", "body": text.LINEAR_REFUSED})
            return
        if reason == "retries_exhausted":
            return  # the session.error before it said so
        body = clip(said, MAX_BODY) or text.LINEAR_DONE
        # An answer that ends in a question waits for the user: Linear shows it as awaiting input.
        kind = "elicitation" if said.rstrip().endswith("?") else "response"
        await self._post(p, event, kind, {"type": kind, "body": body})

    async def _requires_action(self, p: _Pass, event: StoredEvent, ids: list[str]) -> None:
        st = p.st
        tools = st.get("tools") or {}
        asked = [i for i in ids if (tools.get(i) or [None, None, None])[2] == "ask"]
        lines = [text.LINEAR_APPROVAL_LINE.format(tool=tools[i][0], parameter=tools[i][1]) for i in asked]
        custom = len(ids) - len(asked)
        said = "\n\n".join(st.get("said") or []).strip()
        st["said"] = []
        if asked:
            body = (said + "\n\n" if said else "") + text.LINEAR_APPROVAL.format(
                calls="\n".join(lines), approve=text.LINEAR_APPROVE
            )
            await self._post(
                p,
                event,
                "elicitation",
                {"type": "elicitation", "body": clip(body, MAX_BODY)},
                signal="select",
                signal_metadata={"options": [{"value": text.LINEAR_APPROVE}, {"value": text.LINEAR_DENY}]},
            )
            st["awaiting"] = asked
        if custom:
            await self._post(p, event, "waiting", {"type": "thought", "body": text.LINEAR_CUSTOM_TOOL_WAITING})

    async def _thoughts(self, p: _Pass, event: StoredEvent) -> None:
        said = "\n\n".join(p.st.get("said") or []).strip()
        if said:
            await self._post(p, event, "thought", {"type": "thought", "body": clip(said, MAX_BODY)})
        p.st["said"] = []

    async def _error(self, p: _Pass, event: StoredEvent) -> None:
        error = event.payload.get("error") or {}
        retry = (error.get("retry_status") or {}).get("type")
        if retry == "retrying":
            await self._post(p, event, "retrying", {"type": "thought", "body": text.LINEAR_RETRYING}, ephemeral=True)
            return
        if retry == "exhausted":
            line = text.RETRIES_EXHAUSTED_LINEAR
        else:
            template = text.ERROR_BY_TYPE.get(str(error.get("type")), text.ERROR_GENERIC)
            line = template.format(message=clip(str(error.get("message") or ""), 500))
        await self._post(p, event, "error", {"type": "error", "body": line})
        p.st["failed"] = True
        p.st["said"] = []

    # --- calls ---------------------------------------------------------------------------------

    async def _post(
        self,
        p: _Pass,
        event: StoredEvent,
        role: str,
        content: dict[str, Any],
        *,
        ephemeral: bool = False,
        signal: str | None = None,
        signal_metadata: dict[str, Any] | None = None,
    ) -> None:
        ident = activity_id(p.session, p.d.binding.session_id, event.seq, role)
        p.posted = True
        await self._call(
            p,
            lambda t: self.api.create_activity(
                t,
                id=ident,
                session_id=p.session,
                content=content,
                ephemeral=ephemeral,
                signal=signal,
                signal_metadata=signal_metadata,
            ),
        )

    async def _token(self, p: _Pass) -> Token:
        return await self.adapter.token(str(p.address.get("organization") or ""))

    async def _call(self, p: _Pass, call: Any, token: Token | None = None) -> Any:
        """One call with the workspace's token; a refused token is refreshed once."""
        token = token or await self._token(p)
        try:
            return await call(token)
        except Unauthorized:
            fresh = await self.adapter.refreshed(str(p.address.get("organization") or ""), token)
            if fresh is None:
                raise Rejected(text.LINEAR_UNAUTHORIZED) from None
            try:
                return await call(fresh)
            except Unauthorized as exc:
                raise Rejected(text.LINEAR_UNAUTHORIZED) from exc
