"""The default harness: a stateless agent loop driven entirely by the session's event log.

Each pass derives where the session stands from the log and takes the next step: answer an
interrupt, run or settle pending tool calls, call the model, or go idle. Everything it does is an
event, so another process can pick the session up after a crash and continue from the log.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from core.errors import ConfigError
from core.harness import context
from core.harness.state import State, derive
from core.harness.turn import Interrupted, TurnContext
from core.ids import new_id, now_us
from core.log import NewEvent, StoredEvent
from core.mcp import MODEL_PREFIX, McpServers, McpTool, NoTokens, TokenSource
from core.mcp_oauth import VaultTokens
from core.providers.base import Delta, DeltaKind, ErrorKind, ModelError, ModelRequest, ModelResponse
from core.tools import READ_ONLY_TOOLS, enabled_tools, run_tool
from core.tools.base import ToolOutcome
from core.tools.specs import PLATFORM_TOOLS
from sandbox.base import SandboxError

log = logging.getLogger("oma.harness")

INTERRUPTED_BY_USER = "The user interrupted this tool call before it finished."
INTERRUPTED_BY_CRASH = (
    "The run was interrupted (the agent platform restarted) while this tool was running; it was not "
    "re-run because it may have side effects. Check its effects before retrying."
)
EFFORT_BUDGET = {"low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 63999}
NO_THINKING = ("claude-2", "claude-instant", "claude-3-haiku", "claude-3-opus", "claude-3-sonnet", "claude-3-5")


def error_event(kind: str, message: str, retry: str) -> NewEvent:
    return NewEvent("session.error", {"error": {"type": kind, "message": message, "retry_status": {"type": retry}}})


def idle(stop_reason: dict[str, Any]) -> NewEvent:
    return NewEvent("session.status_idle", {"stop_reason": stop_reason})


def tool_result(tool_use_id: str, content: list[dict[str, Any]], is_error: bool, *, mcp: bool = False) -> NewEvent:
    """The result of a tool call: `agent.tool_result`, or `agent.mcp_tool_result` for an MCP tool."""
    payload: dict[str, Any] = {"mcp_tool_use_id" if mcp else "tool_use_id": tool_use_id, "content": content}
    if is_error:
        payload["is_error"] = True
    return NewEvent("agent.mcp_tool_result" if mcp else "agent.tool_result", payload)


def result_for(tool_use: StoredEvent, content: list[dict[str, Any]], is_error: bool) -> NewEvent:
    return tool_result(tool_use.id, content, is_error, mcp=tool_use.type == "agent.mcp_tool_use")


TOOL_CALLS = ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use")


def text(message: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": message}]


def model_tools(agent: dict[str, Any], available: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The tools offered to the model: enabled built-in tools, then the agent's custom tools."""
    tools = [
        {"name": spec.name, "description": spec.description, "input_schema": spec.input_schema}
        for spec in enabled_tools(agent["tools"], available=available)
    ]
    for tool in agent["tools"]:
        if tool["type"] == "custom":
            tools.append(
                {"name": tool["name"], "description": tool["description"], "input_schema": tool["input_schema"]}
            )
    return tools


class DefaultHarness:
    """One instance per run of a session; `fresh` remembers the tool calls this run emitted."""

    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx
        self.fresh: set[str] = set()
        # Set by recovery: the previous owner's model call never completed and must be made again.
        self.redo_call = False
        self._mcp: McpServers | None = None
        self._mcp_tools: list[McpTool] = []
        self._mcp_reported: set[str] = set()

    @property
    def mcp(self) -> McpServers:
        """The agent's MCP servers (after the first refresh: the session's agent is known), with
        the session's tokens from its vaults."""
        if self._mcp is None:
            ctx = self.ctx
            tokens: TokenSource = NoTokens()
            if ctx.vaults is not None:
                tokens = VaultTokens(ctx.vaults, ctx.tenant_id, list(ctx.session.vault_ids or []))
            self._mcp = McpServers(ctx.session.agent, tokens)
        return self._mcp

    async def list_mcp_tools(self) -> None:
        """The MCP tools for the next model call; a server that fails is reported once per run."""
        if not self.mcp:
            return
        self._mcp_tools, failures = await self.mcp.tools()
        fresh = [f for f in failures if f.server not in self._mcp_reported]
        if fresh:
            self._mcp_reported.update(f.server for f in fresh)
            await self.ctx.emit(
                [
                    NewEvent(
                        "session.error",
                        {
                            "error": {
                                "type": f.error_type,
                                "message": f.message,
                                "mcp_server_name": f.server,
                                "retry_status": {"type": "retrying"},
                            }
                        },
                    )
                    for f in fresh
                ]
            )

    async def run(self) -> None:
        ctx = self.ctx
        await ctx.refresh()
        if ctx.recovering:
            await self.recover()
        while True:
            await ctx.refresh()
            state = derive(ctx.events, ctx.queued_seqs)
            if ctx.status == "terminated":
                await self.settle_queue(state)
                return
            if state.interrupts:
                await self.interrupt(state)
                continue
            if state.unresolved:
                waiting = await self.settle_tools(state)
                if waiting is None:
                    continue  # interrupted while running a tool
                if waiting:
                    await self.require_action(state, waiting)
                    return
            conv = context.build(ctx.events)
            if conv.awaiting_model or state.open_span is not None or self.redo_call:
                self.redo_call = False
                if not await self.call_model(state, conv):
                    return
                continue
            if ctx.status != "idle":
                await ctx.emit([idle({"type": "end_turn"})], status="idle", active_seconds=self.active(state))
            await self.settle_queue(derive(ctx.events, ctx.queued_seqs))
            return

    # --- steps ---------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Called when this runner took the session over: close what the previous owner left open."""
        ctx = self.ctx
        if ctx.status not in ("running", "rescheduling"):
            return
        state = derive(ctx.events, ctx.queued_seqs)
        events: list[NewEvent] = []
        last_end = next((e for e in reversed(ctx.events) if e.type == "span.model_request_end"), None)
        self.redo_call = state.open_span is not None or bool(last_end and last_end.payload.get("is_error"))
        if state.open_span is not None:
            events.append(self.span_end(state.open_span.id, None, is_error=True))
        events.append(NewEvent("session.status_rescheduled"))
        await ctx.emit(events, status="rescheduling")

    async def interrupt(self, state: State) -> None:
        ctx = self.ctx
        events: list[NewEvent] = []
        if state.open_span is not None:
            events.append(self.span_end(state.open_span.id, None, is_error=True))
        for tool_use in state.unresolved:
            events.append(result_for(tool_use, text(INTERRUPTED_BY_USER), True))
        if ctx.status != "idle" or state.unresolved:
            events.append(idle({"type": "end_turn"}))
        await ctx.emit(
            events,
            status="idle",
            processed=[e.seq for e in state.interrupts],
            active_seconds=self.active(state) if ctx.status != "idle" else None,
        )

    async def settle_tools(self, state: State) -> list[str] | None:
        """Run or settle every pending tool call that can be; return the ids still waiting on the
        client (custom tools, unanswered confirmations), or None if an interrupt arrived."""
        ctx = self.ctx
        waiting: list[str] = []
        queued = {e.seq for e in state.queued}
        for tool_use in state.unresolved:
            if tool_use.type == "agent.custom_tool_use":
                waiting.append(tool_use.id)
                continue
            permission = tool_use.payload.get("evaluated_permission", "allow")
            confirmation = state.confirmations.get(tool_use.id)
            started_before = tool_use.id not in self.fresh
            if permission == "ask":
                if confirmation is None:
                    waiting.append(tool_use.id)
                    continue
                if confirmation.payload["result"] == "deny":
                    reason = confirmation.payload.get("deny_message") or "The user denied this tool call."
                    await ctx.emit(
                        [result_for(tool_use, text(f"Permission denied: {reason}"), True)],
                        processed=[confirmation.seq],
                    )
                    continue
                # A confirmation already consumed means the tool had started before a crash.
                started_before = confirmation.seq not in queued and tool_use.id not in self.fresh
                if not started_before:
                    await ctx.emit([], processed=[confirmation.seq])
            elif permission == "deny":
                await ctx.emit([result_for(tool_use, text("This tool call is not permitted."), True)])
                continue
            if started_before and not await self.read_only(tool_use):
                await ctx.emit([result_for(tool_use, text(INTERRUPTED_BY_CRASH), True)])
                continue
            if ctx.status != "running":
                await ctx.emit([NewEvent("session.status_running")], status="running")
            try:
                outcome = await ctx.interruptible(self.execute(tool_use))
            except Interrupted:
                return None
            await ctx.emit([result_for(tool_use, outcome.content, outcome.is_error)])
        return waiting

    async def read_only(self, tool_use: StoredEvent) -> bool:
        """Whether the call may run again after a crash: built-in read-only tools, and MCP tools
        their server marks read-only."""
        if tool_use.type != "agent.mcp_tool_use":
            return tool_use.payload["name"] in READ_ONLY_TOOLS
        await self.mcp.tools()
        tool = self.mcp.find(tool_use.payload["mcp_server_name"], tool_use.payload["name"])
        return tool is not None and tool.read_only

    async def execute(self, tool_use: StoredEvent) -> Any:
        ctx = self.ctx
        if tool_use.type == "agent.mcp_tool_use":
            payload = tool_use.payload
            return await self.mcp.call(payload["mcp_server_name"], payload["name"], payload.get("input") or {})
        name = tool_use.payload["name"]
        config = next(
            (
                c
                for t in ctx.session.agent["tools"]
                if t["type"] == "agent_toolset_20260401"
                for c in t["configs"]
                if c["name"] == name
            ),
            None,
        )
        try:
            # Tools that run on the platform (web_fetch, web_search) do not start the sandbox.
            sandbox = None if name in PLATFORM_TOOLS else await ctx.sandbox()
        except SandboxError as e:
            # No sandbox (the runtime is missing, its service refused us...): the model sees why.
            log.warning("session %s: no sandbox for %s: %s", ctx.session_id, name, e)
            return ToolOutcome.text(f"{name}: the sandbox could not be started: {e}", is_error=True)
        return await run_tool(
            name,
            tool_use.payload["input"],
            sandbox=sandbox,
            config=config,
            http=ctx.http,
            timeout=ctx.settings.tool_timeout_seconds,
            allow_private_addresses=ctx.settings.web_fetch_allow_private,
            search=ctx.settings.web_search,
        )

    async def require_action(self, state: State, waiting: list[str]) -> None:
        ctx = self.ctx
        last = state.last_idle
        already = (
            last is not None
            and ctx.status == "idle"
            and last.payload.get("stop_reason", {}).get("event_ids") == waiting
            and last.seq > max((e.seq for e in state.unresolved), default=0)
        )
        events = [] if already else [idle({"type": "requires_action", "event_ids": waiting})]
        await ctx.emit(
            events,
            status="idle",
            processed=[e.seq for e in state.queued],
            active_seconds=self.active(state) if ctx.status != "idle" else None,
        )

    async def settle_queue(self, state: State) -> None:
        if state.queued:
            await self.ctx.emit([], processed=[e.seq for e in state.queued])

    # --- the model -----------------------------------------------------------------------------

    def tools_for_model(self) -> list[dict[str, Any]]:
        mcp = [
            {"name": t.model_name, "description": t.description, "input_schema": t.input_schema}
            for t in self._mcp_tools
        ]
        return model_tools(self.ctx.session.agent, self.ctx.settings.available_tools) + mcp

    def policies(self) -> dict[str, str]:
        agent_tools = self.ctx.session.agent["tools"]
        specs = enabled_tools(agent_tools, available=self.ctx.settings.available_tools)
        return {spec.name: spec.permission_policy for spec in specs}

    def request(self, conv: context.Conversation, model: str) -> ModelRequest:
        agent = self.ctx.session.agent
        effort = (agent["model"].get("effort") or {}).get("type")
        thinks = model.startswith("claude-") and not model.startswith(NO_THINKING)
        budget = EFFORT_BUDGET.get(effort) if effort and thinks else None
        return ModelRequest(
            model=model,
            system=agent.get("system"),
            messages=conv.messages,
            tools=self.tools_for_model(),
            max_tokens=self.ctx.settings.max_tokens,
            thinking_budget=budget,
        )

    async def call_model(self, state: State, conv: context.Conversation) -> bool:
        """One model request with retries. True when the loop should go on, False to stop."""
        ctx = self.ctx
        try:
            resolved = await ctx.resolve_model(ctx.session.agent["model"]["id"])
        except ConfigError as exc:
            await self.fail_terminal(ErrorKind.REQUEST_FAILED, str(exc), state)
            return False
        provider, model = resolved.provider, resolved.model
        # Opening events go out with the first span start, in one write, unless compaction
        # (itself a model call) must come first.
        opening: list[NewEvent] = []
        if ctx.status != "running":
            opening.append(NewEvent("session.status_running"))
        if state.open_span is not None:  # a call the previous owner never finished
            opening.append(self.span_end(state.open_span.id, None, is_error=True))
        if opening and self.needs_compaction(conv):
            await ctx.emit(opening, status="running")
            opening = []
        conv = await self.maybe_compact(conv, provider, model)
        await self.list_mcp_tools()
        attempt = 0
        while True:
            queued_input = [
                e.seq for e in ctx.events if e.seq in ctx.queued_seqs and e.type in context.USER_INPUT_TYPES
            ]
            consumed = [s for s in queued_input if s <= conv.consumed_upto]
            *_, start = await ctx.emit(
                [
                    *opening,
                    NewEvent(
                        "span.model_request_start",
                        # Where the key came from (vault credential or settings): usage attribution.
                        {"_consumed_upto": conv.consumed_upto, "_model_key": resolved.key_source},
                    ),
                ],
                status="running" if opening else None,
                processed=consumed,
            )
            opening = []
            previews: dict[int, str] = {}

            async def on_delta(delta: Delta, previews: dict[int, str] = previews) -> None:
                if delta.kind == DeltaKind.TEXT_START:
                    previews[delta.index] = new_id("sevt")
                    ctx.publish_delta(
                        {"type": "event_start", "event": {"type": "agent.message", "id": previews[delta.index]}}
                    )
                elif delta.kind == DeltaKind.THINKING_START:
                    previews[delta.index] = new_id("sevt")
                    ctx.publish_delta(
                        {"type": "event_start", "event": {"type": "agent.thinking", "id": previews[delta.index]}}
                    )
                elif delta.kind == DeltaKind.TEXT and delta.index in previews:
                    ctx.publish_delta(
                        {
                            "type": "event_delta",
                            "event_id": previews[delta.index],
                            "delta": {
                                "type": "content_delta",
                                "index": 0,
                                "content": {"type": "text", "text": delta.text},
                            },
                        }
                    )

            request = self.request(conv, model)
            try:
                response = await ctx.interruptible(provider.complete(request, on_delta))
            except Interrupted:
                return True  # the loop answers the interrupt
            except ModelError as err:
                await ctx.emit([self.span_end(start.id, None, is_error=True)])
                if err.retryable and attempt < ctx.settings.max_retries:
                    attempt += 1
                    await ctx.emit(
                        [error_event(err.kind, err.message, "retrying"), NewEvent("session.status_rescheduled")],
                        status="rescheduling",
                    )
                    delay = err.retry_after
                    if delay is None:
                        delay = ctx.settings.retry_base_seconds * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
                    try:
                        await ctx.interruptible(asyncio.sleep(min(delay, ctx.settings.retry_max_seconds)))
                    except Interrupted:
                        return True
                    await ctx.emit([NewEvent("session.status_running")], status="running")
                    conv = context.build(ctx.events)
                    continue
                if err.retryable:
                    await ctx.emit([error_event(err.kind, err.message, "exhausted")])
                    now_state = derive(ctx.events, ctx.queued_seqs)
                    await ctx.emit(
                        [idle({"type": "retries_exhausted"})],
                        status="idle",
                        processed=[e.seq for e in now_state.queued],
                        active_seconds=self.active(now_state),
                    )
                    return False
                await self.fail_terminal(err.kind, err.message, state)
                return False
            await self.record(start, response, previews)
            if response.stop_reason == "refusal":
                now_state = derive(ctx.events, ctx.queued_seqs)
                await ctx.emit([idle({"type": "refusal"})], status="idle", active_seconds=self.active(now_state))
                return False
            return True

    async def record(self, start: StoredEvent, response: ModelResponse, previews: dict[int, str]) -> None:
        policies = self.policies()
        custom = {t["name"] for t in self.ctx.session.agent["tools"] if t["type"] == "custom"}
        events: list[NewEvent] = []
        for index, block in enumerate(response.content):
            kind = block.get("type")
            if kind in ("thinking", "redacted_thinking"):
                events.append(NewEvent("agent.thinking", {"_block": block}, id=previews.get(index)))
            elif kind == "text":
                if block.get("text"):
                    content = {"type": "text", "text": block["text"]}
                    if events and events[-1].type == "agent.message":
                        events[-1].payload["content"].append(content)
                    else:
                        events.append(NewEvent("agent.message", {"content": [content]}, id=previews.get(index)))
            elif kind == "tool_use":
                name, tool_input = block["name"], block.get("input") or {}
                if name in custom:
                    events.append(NewEvent("agent.custom_tool_use", {"name": name, "input": tool_input}))
                    continue
                mcp_tool = self.mcp.lookup(name) if name.startswith(MODEL_PREFIX) and self.mcp else None
                policy = mcp_tool.policy if mcp_tool is not None else policies.get(name)
                read_only = mcp_tool.read_only if mcp_tool is not None else name in READ_ONLY_TOOLS
                evaluation: dict[str, Any] | None
                if policy is None:
                    permission, evaluation = "deny", None
                elif policy == "always_ask":
                    permission, evaluation = "ask", {"type": "always_ask"}
                elif policy == "auto":
                    permission = "allow" if read_only else "ask"
                    evaluation = {"type": "auto", "evaluated_permission": {"type": permission}}
                else:
                    permission, evaluation = "allow", {"type": "always_allow"}
                payload: dict[str, Any] = {"name": name, "input": tool_input, "evaluated_permission": permission}
                if evaluation is not None:
                    payload["evaluation"] = evaluation
                if mcp_tool is not None:
                    payload["name"], payload["mcp_server_name"] = mcp_tool.name, mcp_tool.server
                    events.append(NewEvent("agent.mcp_tool_use", payload))
                    continue
                events.append(NewEvent("agent.tool_use", payload))
        for event in events:
            if event.id is None:
                event.id = new_id("sevt")
            if event.type in TOOL_CALLS:
                self.fresh.add(event.id)
        events.append(self.span_end(start.id, response))
        final = not any(e.type in TOOL_CALLS for e in events)
        if final and response.stop_reason != "refusal":
            # The usual last step of a turn: idle in the same write unless input is waiting.
            state = derive(self.ctx.events, self.ctx.queued_seqs)
            await self.ctx.emit(
                events,
                usage=response.usage,
                finish=idle({"type": "end_turn"}),
                active_seconds=self.active(state),
            )
            return
        await self.ctx.emit(events, usage=response.usage)

    @staticmethod
    def span_end(start_id: str, response: ModelResponse | None, *, is_error: bool = False) -> NewEvent:
        usage = response.usage if response is not None else None
        payload: dict[str, Any] = {
            "model_request_start_id": start_id,
            "model_usage": {
                "input_tokens": usage.input_tokens if usage else 0,
                "output_tokens": usage.output_tokens if usage else 0,
                "cache_read_input_tokens": usage.cache_read_input_tokens if usage else 0,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens if usage else 0,
            },
        }
        if is_error:
            payload["is_error"] = True
        return NewEvent("span.model_request_end", payload)

    async def fail_terminal(self, kind: str, message: str, state: State) -> None:
        now_state = derive(self.ctx.events, self.ctx.queued_seqs)
        await self.ctx.emit(
            [error_event(kind, message, "terminal"), NewEvent("session.status_terminated")],
            status="terminated",
            processed=[e.seq for e in now_state.queued],
            active_seconds=self.active(now_state),
        )

    def active(self, state: State) -> float | None:
        if state.running_since is None:
            return None
        return max(0.0, (now_us() - state.running_since) / 1_000_000)

    # --- compaction ----------------------------------------------------------------------------

    def needs_compaction(self, conv: context.Conversation) -> bool:
        system = self.ctx.session.agent.get("system")
        return (
            len(conv.messages) >= 3
            and context.estimate_tokens(conv.messages, system) >= self.ctx.settings.compact_at_tokens
        )

    async def maybe_compact(self, conv: context.Conversation, provider: Any, model: str) -> context.Conversation:
        """Summarise older turns when the prompt nears the window; the summary is an event, so a
        rebuild from the log produces the same compacted context."""
        ctx = self.ctx
        if not self.needs_compaction(conv):
            return conv
        transcript = context.transcript(context.build(ctx.events, include_pending=False).messages)
        request = ModelRequest(
            model=model,
            system="You compact agent conversations. Summarise faithfully and concisely.",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Summarise this conversation between a user and an AI agent so that the agent can "
                            "continue the work from the summary alone: goals, decisions, files and commands, "
                            "results, open questions, and what it was doing last.\n\n" + transcript,
                        }
                    ],
                }
            ],
            max_tokens=4096,
        )
        try:
            response = await ctx.interruptible(provider.complete(request))
        except (ModelError, Interrupted) as exc:
            log.warning("compaction of %s skipped: %s", ctx.session_id, exc)
            return conv
        summary = "\n".join(b["text"] for b in response.content if b.get("type") == "text").strip()
        if not summary:
            return conv
        upto = ctx.events[-1].seq if ctx.events else 0
        await ctx.emit(
            [NewEvent("agent.thread_context_compacted", {"_summary": summary, "_upto_seq": upto})],
            usage=response.usage,
        )
        return context.build(ctx.events)
