"""Session events: list, send, and the SSE stream (live, with resume by seq as an extension)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import web

from core import schemas
from core.api.http import (
    REQUEST_ID,
    json_response,
    page_body,
    parse_body,
    q_created,
    q_int,
    q_list,
    q_order,
    q_str,
    tenant,
)
from core.errors import InvalidRequest
from core.ids import new_id, now_us, us_to_rfc3339
from core.log import StoredEvent
from core.platform import PLATFORM

log = logging.getLogger("oma.stream")
routes = web.RouteTableDef()

DELTA_TYPES = frozenset({"agent.message", "agent.thinking"})
# After these the session produces nothing more: the stream ends.
FINAL_TYPES = frozenset({"session.status_terminated", "session.deleted"})
# `types[]` accepts what the SDK's BetaManagedAgentsSessionEventType enumerates.
EVENT_TYPES = frozenset(
    {
        "user.message", "user.interrupt", "user.tool_confirmation", "user.custom_tool_result",
        "user.tool_result", "user.define_outcome", "system.message",
        "agent.custom_tool_use", "agent.message", "agent.thinking", "agent.mcp_tool_use",
        "agent.mcp_tool_result", "agent.tool_use", "agent.tool_result",
        "agent.thread_message_received", "agent.thread_message_sent", "agent.thread_context_compacted",
        "session.error", "session.status_rescheduled", "session.status_running", "session.status_idle",
        "session.status_terminated", "session.thread_created", "session.thread_status_running",
        "session.thread_status_idle", "session.thread_status_terminated", "session.thread_status_rescheduled",
        "session.updated", "session.usage",
        "span.outcome_evaluation_start", "span.outcome_evaluation_end", "span.outcome_evaluation_ongoing",
        "span.model_request_start", "span.model_request_end",
        "workflow_run.created", "workflow_run.status_running", "workflow_run.status_idle",
        "workflow_run.status_ended", "workflow_run.error", "workflow_run.phase_started",
        "workflow_run.phase_ended",
    }
)  # fmt: skip


@routes.get("/v1/sessions/{session_id}/events")
async def list_events(request: web.Request) -> web.Response:
    q = request.query
    types = q_list(q, "types")
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(f"types[]: unknown event type {unknown[0]!r}")
    page = await request.app[PLATFORM].sessions.list_events(
        tenant(request),
        request.match_info["session_id"],
        limit=q_int(q, "limit", default=1000, lo=1, hi=1000) or 1000,
        page=q_str(q, "page"),
        order=q_order(q, "asc"),
        types=types,
        created=q_created(q),
    )
    return json_response(page_body(page.rows, page.next_page))


@routes.post("/v1/sessions/{session_id}/events")
async def send_events(request: web.Request) -> web.Response:
    req = await parse_body(request, schemas.SendEvents)
    data = await request.app[PLATFORM].sessions.send_events(
        tenant(request), request.match_info["session_id"], req.events
    )
    return json_response({"data": data})


def sse_frame(event_type: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    frame = b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n"
    if seq is not None:
        frame += b"id: " + str(seq).encode() + b"\n"
    return frame + b"\n"


def event_frame(event: StoredEvent) -> bytes:
    return sse_frame(event.type, event.render(), event.seq)


PING = sse_frame("ping", {"type": "ping"})


async def _wait_either(
    woken: Coroutine[Any, Any, bool], previews: asyncio.Queue[dict[str, Any]]
) -> tuple[bool, list[dict[str, Any]]]:
    """Wait for a log wake-up (or its timeout) or a preview frame; return (woken, previews)."""
    got: list[dict[str, Any]] = []
    waiter = asyncio.ensure_future(woken)
    if previews.empty():
        getter = asyncio.ensure_future(previews.get())
        await asyncio.wait({waiter, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            got.append(getter.result())
        else:
            getter.cancel()
    woke = waiter.done() and waiter.result()
    if not waiter.done():
        waiter.cancel()
        woke = False
        await asyncio.gather(waiter, return_exceptions=True)
    while not previews.empty():
        got.append(previews.get_nowait())
    return woke or bool(got), got


def _preview_frames(frames: list[dict[str, Any]], wanted: set[str], ids: set[str]) -> list[bytes]:
    out = []
    for frame in frames:
        if frame["type"] == "event_start":
            event = frame["event"]
            if event["type"] in wanted:
                ids.add(event["id"])
                out.append(sse_frame("event_start", frame))
        elif frame["type"] == "event_delta" and frame["event_id"] in ids:
            out.append(sse_frame("event_delta", frame))
    return out


def _resume_point(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Last-Event-ID/after: expected an event seq (integer), got {raw!r}") from None
    if value < 0:
        raise InvalidRequest("Last-Event-ID/after: must be >= 0")
    return value


@routes.get("/v1/sessions/{session_id}/events/stream")
async def stream_events(request: web.Request) -> web.StreamResponse:
    platform = request.app[PLATFORM]
    session_id = request.match_info["session_id"]
    deltas = q_list(request.query, "event_deltas")
    if len(deltas) > 100 or any(d not in DELTA_TYPES for d in deltas):
        raise InvalidRequest("event_deltas[]: at most 100 values, each 'agent.message' or 'agent.thinking'")
    resume = _resume_point(request)
    start = await platform.sessions.stream_start(tenant(request), session_id)
    position = start if resume is None else resume

    response = web.StreamResponse(
        headers={
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "request-id": request[REQUEST_ID],
        }
    )
    await response.prepare(request)
    bus, feeds = platform.bus, platform.feeds
    feeds.follow(session_id, start)
    previews = bus.subscribe_deltas(session_id) if deltas else None
    wanted = set(deltas)
    preview_ids: set[str] = set()
    refresh = False
    try:
        while not platform.closing:
            seen = bus.generation(session_id)
            events = await feeds.after(session_id, position, refresh=refresh)
            refresh = False
            if events:
                await response.write(b"".join(event_frame(e) for e in events))
                position = events[-1].seq
                if events[-1].type in FINAL_TYPES:
                    break
                continue
            if bus.is_deleted(session_id):
                deleted = {"id": new_id("sevt"), "type": "session.deleted", "processed_at": us_to_rfc3339(now_us())}
                await response.write(sse_frame("session.deleted", deleted))
                break
            if previews is None:
                if not await bus.wait(session_id, seen, platform.stream_ping_seconds):
                    await response.write(PING)
                    refresh = True  # also catch appends made by another process without a notify
                continue
            woke, got = await _wait_either(bus.wait(session_id, seen, platform.stream_ping_seconds), previews)
            if got:
                # Log events first (e.g. the span start that precedes a preview), then previews.
                events = await feeds.after(session_id, position)
                if events:
                    await response.write(b"".join(event_frame(e) for e in events))
                    position = events[-1].seq
                frames = _preview_frames(got, wanted, preview_ids)
                if frames:
                    await response.write(b"".join(frames))
            elif not woke:
                await response.write(PING)
                refresh = True
    except (ConnectionResetError, ConnectionError):
        log.debug("stream client for %s went away", session_id)
    finally:
        feeds.unfollow(session_id)
        if previews is not None:
            bus.unsubscribe_deltas(session_id, previews)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
