"""Rebuild the model's view of a session from its event log: a pure function of the events.

Ordering rule: user-side input (messages, system messages, custom tool results) enters the
conversation at the model request that consumed it — the `_consumed_upto` seq recorded on each
`span.model_request_start` — not where it was appended. A message sent while the model was
answering therefore follows that answer, exactly as the model saw it. Input no request has
consumed yet is pending: it goes at the end, for the next request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.log import StoredEvent
from core.mcp import model_name as mcp_model_name

USER_INPUT_TYPES = frozenset({"user.message", "system.message", "user.custom_tool_result"})
TOOL_USE_TYPES = frozenset({"agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use"})
COMPACTION_PREFIX = "Summary of the conversation so far (older turns were compacted):\n\n"


@dataclass
class Conversation:
    messages: list[dict[str, Any]] = field(default_factory=list)
    # Highest seq of user input included; the next span start records it as `_consumed_upto`.
    consumed_upto: int = 0
    # Whether the conversation ends with input the model has not answered yet.
    awaiting_model: bool = False

    def add(self, role: str, block: dict[str, Any]) -> None:
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].append(block)
        else:
            self.messages.append({"role": role, "content": [block]})


def _user_blocks(event: StoredEvent) -> list[dict[str, Any]]:
    payload = event.payload
    if event.type == "user.message":
        return [b for b in payload["content"] if b.get("type") != "redacted"]
    if event.type == "system.message":
        text = "\n".join(b["text"] for b in payload["content"])
        return [{"type": "text", "text": f"<system-message>\n{text}\n</system-message>"}]
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": payload["custom_tool_use_id"]}
    if payload.get("content"):
        block["content"] = payload["content"]
    if payload.get("is_error"):
        block["is_error"] = True
    return [block]


def _tool_result_first(messages: list[dict[str, Any]]) -> None:
    # Anthropic requires a user turn's tool_result blocks to precede its other content.
    for message in messages:
        if message["role"] == "user":
            message["content"].sort(key=lambda b: b.get("type") != "tool_result")


def build(events: Iterable[StoredEvent], *, include_pending: bool = True) -> Conversation:
    conv = Conversation()
    pending: list[StoredEvent] = []

    def flush(upto: int) -> None:
        nonlocal pending
        keep = []
        for event in pending:
            if event.seq <= upto:
                for block in _user_blocks(event):
                    conv.add("user", block)
                conv.awaiting_model = True
                conv.consumed_upto = max(conv.consumed_upto, event.seq)
            else:
                keep.append(event)
        pending = keep

    for event in events:
        kind = event.type
        payload = event.payload
        if kind in USER_INPUT_TYPES:
            pending.append(event)
        elif kind == "span.model_request_start":
            flush(int(payload.get("_consumed_upto", event.seq)))
            conv.awaiting_model = False
        elif kind == "agent.thinking" and "_block" in payload:
            conv.add("assistant", payload["_block"])
        elif kind == "agent.message":
            for block in payload["content"]:
                conv.add("assistant", block)
        elif kind in TOOL_USE_TYPES:
            name = payload["name"]
            if kind == "agent.mcp_tool_use":  # the model knows it by its server-qualified name
                name = mcp_model_name(payload["mcp_server_name"], name)
            conv.add("assistant", {"type": "tool_use", "id": event.id, "name": name, "input": payload["input"]})
        elif kind in ("agent.tool_result", "agent.mcp_tool_result"):
            tool_use_id = payload["tool_use_id"] if kind == "agent.tool_result" else payload["mcp_tool_use_id"]
            block = {"type": "tool_result", "tool_use_id": tool_use_id}
            if payload.get("content"):
                block["content"] = payload["content"]
            if payload.get("is_error"):
                block["is_error"] = True
            conv.add("user", block)
            conv.awaiting_model = True
        elif kind == "session.status_idle":
            # A turn that ended (answered, interrupted, out of retries) awaits nothing more until
            # new input arrives; tool results settled before the idle don't reopen it.
            conv.awaiting_model = False
        elif kind == "agent.thread_context_compacted" and "_summary" in payload:
            conv.messages = [
                {"role": "user", "content": [{"type": "text", "text": COMPACTION_PREFIX + payload["_summary"]}]}
            ]
            conv.awaiting_model = True
    if include_pending:
        flush(2**62)
    _orphan_results_to_text(conv.messages)
    _tool_result_first(conv.messages)
    return conv


def _orphan_results_to_text(messages: list[dict[str, Any]]) -> None:
    # A result whose call was compacted away would be rejected by the model API; keep its
    # content as plain text instead.
    called: set[str] = set()
    for message in messages:
        for i, block in enumerate(message["content"]):
            if block.get("type") == "tool_use":
                called.add(block["id"])
            elif block.get("type") == "tool_result" and block["tool_use_id"] not in called:
                body = " ".join(c.get("text", "") for c in block.get("content") or [] if isinstance(c, dict))
                message["content"][i] = {"type": "text", "text": f"(result of an earlier tool call) {body}"}


def estimate_tokens(messages: Sequence[dict[str, Any]], system: str | None = None) -> int:
    """A cheap, provider-neutral size estimate (about 4 characters a token) for compaction."""
    import orjson

    return (len(orjson.dumps(list(messages))) + len(system or "")) // 4


def transcript(messages: Sequence[dict[str, Any]]) -> str:
    """A plain-text rendering of a conversation, for the compaction prompt."""
    lines = []
    for message in messages:
        for block in message["content"]:
            kind = block.get("type")
            if kind == "text":
                lines.append(f"{message['role']}: {block['text']}")
            elif kind == "tool_use":
                lines.append(f"{message['role']} called {block['name']}({block.get('input')})")
            elif kind == "tool_result":
                content = block.get("content") or []
                body = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
                lines.append(f"tool result{' (error)' if block.get('is_error') else ''}: {body[:2000]}")
    return "\n".join(lines)
