"""Golden event logs (recorded from real runs, checked in) rebuild exactly the model requests
that were sent: the harness is a pure function of the log.

Re-record with `OMA_RECORD_GOLDEN=1 pytest tests/test_runner.py` after an intended change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from core.harness import context
from core.harness.default import model_tools
from core.harness.turn import HarnessSettings
from core.log import StoredEvent
from core.providers.anthropic import with_cache_breakpoints
from core.providers.base import ModelRequest

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    data["events"] = [StoredEvent(session_id="sesn_golden", processed_at=None, **event) for event in data["events"]]
    return data


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_log_rebuilds_every_request(path: Path) -> None:
    data = load(path)
    events: list[StoredEvent] = data["events"]
    starts = [i for i, e in enumerate(events) if e.type == "span.model_request_start"]
    assert len(starts) == len(data["requests"]) > 0
    agent = data["agent"]
    for index, sent in zip(starts, data["requests"], strict=True):
        # Everything the log held when that request started; the span start says what it consumed.
        conv = context.build(events[: index + 1], include_pending=False)
        request = ModelRequest(
            model=sent["model"],
            system=agent.get("system"),
            messages=conv.messages,
            tools=model_tools(agent),
            max_tokens=HarnessSettings().max_tokens,
        )
        rebuilt = with_cache_breakpoints(request)
        expected = {k: v for k, v in sent.items() if k != "stream"}
        assert rebuilt == expected


def test_private_bookkeeping_never_renders() -> None:
    """The harness's private fields (consumed seqs, thinking blocks, summaries) stay in the log."""
    seen_private = False
    for path in GOLDEN:
        for event in load(path)["events"]:
            seen_private |= any(k.startswith("_") for k in event.payload)
            assert not any(k.startswith("_") for k in event.render())
    assert seen_private


def test_goldens_exist() -> None:
    assert {p.stem for p in GOLDEN} >= {"tool_loop", "custom_tool", "message_while_running", "interrupted_turn"}
