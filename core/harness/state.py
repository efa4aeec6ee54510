"""What a session's log says about where its work stands: derived, never stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.harness.context import TOOL_USE_TYPES
from core.log import StoredEvent


@dataclass
class State:
    open_span: StoredEvent | None = None
    unresolved: list[StoredEvent] = field(default_factory=list)
    confirmations: dict[str, StoredEvent] = field(default_factory=dict)
    queued: list[StoredEvent] = field(default_factory=list)
    last_idle: StoredEvent | None = None
    running_since: int | None = None

    @property
    def interrupts(self) -> list[StoredEvent]:
        return [e for e in self.queued if e.type == "user.interrupt"]


def derive(events: Sequence[StoredEvent], queued_seqs: set[int]) -> State:
    state = State()
    tool_uses: dict[str, StoredEvent] = {}
    resolved: set[str] = set()
    for event in events:
        kind = event.type
        if kind == "span.model_request_start":
            state.open_span = event
        elif kind == "span.model_request_end":
            state.open_span = None
        elif kind in TOOL_USE_TYPES:
            tool_uses[event.id] = event
        elif kind == "agent.tool_result":
            resolved.add(event.payload["tool_use_id"])
        elif kind == "agent.mcp_tool_result":
            resolved.add(event.payload["mcp_tool_use_id"])
        elif kind == "user.custom_tool_result":
            resolved.add(event.payload["custom_tool_use_id"])
        elif kind == "user.tool_confirmation":
            state.confirmations[event.payload["tool_use_id"]] = event
        elif kind == "session.status_idle":
            state.last_idle = event
            state.running_since = None
        elif kind == "session.status_running" and state.running_since is None:
            state.running_since = event.created_at
        if event.seq in queued_seqs:
            state.queued.append(event)
    state.unresolved = [e for e in tool_uses.values() if e.id not in resolved]
    return state
