"""The Anthropic Messages API on the wire: `POST /v1/messages`, as JSON or as server-sent events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from core.fakes.base import (
    Block,
    ErrorReply,
    Frame,
    RedactedThinking,
    Reply,
    Text,
    Thinking,
    ToolUse,
    Usage,
    WireProtocol,
    estimate_prompt_tokens,
    random_id,
    resolve_usage,
    split_json,
    split_text,
)


def _event(data: dict[str, Any], *, delta: bool = False) -> Frame:
    return Frame(b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n", delta=delta)


def _start_usage(usage: Usage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _block_json(block: Block) -> dict[str, Any]:
    match block:
        case Text(text):
            return {"type": "text", "text": text}
        case Thinking(thinking, signature):
            return {"type": "thinking", "thinking": thinking, "signature": signature}
        case RedactedThinking(data):
            return {"type": "redacted_thinking", "data": data}
        case ToolUse(name, tool_input, tool_id):
            return {"type": "tool_use", "id": tool_id or random_id("toolu_01"), "name": name, "input": tool_input}


def _deltas(block: Block) -> list[dict[str, Any]]:
    match block:
        case Text(text):
            return [{"type": "text_delta", "text": piece} for piece in split_text(text)]
        case Thinking(thinking, signature):
            pieces = [{"type": "thinking_delta", "thinking": piece} for piece in split_text(thinking)]
            return [*pieces, {"type": "signature_delta", "signature": signature}]
        case RedactedThinking():
            return []
        case ToolUse(_, tool_input):
            partial = orjson.dumps(tool_input).decode() if tool_input else ""
            return [{"type": "input_json_delta", "partial_json": piece} for piece in split_json(partial)]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content", "")))
    return "\n".join(parts)


class AnthropicMessages:
    protocol = WireProtocol.ANTHROPIC
    unauthorized_message = "invalid x-api-key"

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        # The SDK sends `x-api-key`, or `Authorization: Bearer` when built with `auth_token`.
        return headers.get("x-api-key") == api_key or headers.get("authorization") == f"Bearer {api_key}"

    def invalid(self, headers: Mapping[str, str], body: object) -> str | None:
        if "anthropic-version" not in headers:
            return "anthropic-version: header is required"
        if not isinstance(body, dict):
            return "The request body is not valid JSON."
        if not isinstance(body.get("model"), str):
            return "model: Field required"
        if isinstance(body.get("max_tokens"), bool) or not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        if not isinstance(body.get("messages"), list):
            return "messages: Field required"
        if not body["messages"]:
            return "messages: at least one message is required"
        return None

    def echo_text(self, body: Mapping[str, Any]) -> str:
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
        return ""

    def error_response(self, error: ErrorReply) -> web.Response:
        request_id = random_id("req_011")
        headers = {"request-id": request_id}
        if error.retry_after is not None:
            headers["retry-after"] = f"{error.retry_after:g}"
        payload = {"type": "error", "error": {"type": error.type, "message": error.message}, "request_id": request_id}
        return web.Response(
            status=error.status, body=orjson.dumps(payload), content_type="application/json", headers=headers
        )

    def error_frames(self, error: ErrorReply, body: Mapping[str, Any]) -> list[Frame]:
        return [
            self._message_start(body, Usage(estimate_prompt_tokens(body), 0, 0, 0, 0)),
            _event({"type": "ping"}),
            _event({"type": "error", "error": {"type": error.type, "message": error.message}}),
        ]

    def message_response(self, reply: Reply, body: Mapping[str, Any]) -> web.Response:
        usage = resolve_usage(reply, body)
        message = self._message(body, usage.output_tokens, usage)
        message["content"] = [_block_json(block) for block in reply.blocks]
        message["stop_reason"] = reply.stop_reason.value
        return web.Response(
            body=orjson.dumps(message), content_type="application/json", headers={"request-id": random_id("req_011")}
        )

    def frames(self, reply: Reply, body: Mapping[str, Any]) -> list[Frame]:
        usage = resolve_usage(reply, body)
        frames = [self._message_start(body, usage), _event({"type": "ping"})]
        for index, block in enumerate(reply.blocks):
            start = _block_json(block)
            # A block starts empty; its deltas carry the content.
            if isinstance(block, Text):
                start["text"] = ""
            elif isinstance(block, Thinking):
                start.update(thinking="", signature="")
            elif isinstance(block, ToolUse):
                start["input"] = {}
            frames.append(_event({"type": "content_block_start", "index": index, "content_block": start}))
            for delta in _deltas(block):
                frames.append(_event({"type": "content_block_delta", "index": index, "delta": delta}, delta=True))
            frames.append(_event({"type": "content_block_stop", "index": index}))
        frames.append(
            _event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.stop_reason.value, "stop_sequence": None},
                    # Cumulative totals: the SDK overwrites what message_start said.
                    "usage": {
                        "input_tokens": usage.input_tokens,
                        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                        "cache_read_input_tokens": usage.cache_read_input_tokens,
                        "output_tokens": usage.output_tokens,
                    },
                }
            )
        )
        frames.append(_event({"type": "message_stop"}))
        return frames

    def _message(self, body: Mapping[str, Any], output_tokens: int, usage: Usage) -> dict[str, Any]:
        return {
            "id": random_id("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _start_usage(usage, output_tokens),
        }

    def _message_start(self, body: Mapping[str, Any], usage: Usage) -> Frame:
        message = self._message(body, min(1, usage.output_tokens), usage)
        return _event({"type": "message_start", "message": message})
