"""OpenAI Chat Completions on the wire: `POST /v1/chat/completions`, as JSON or as `data:` chunks.

Thinking blocks go out as `reasoning_content`, the field OpenAI-compatible servers (vLLM, DeepSeek)
stream reasoning in; OpenAI's own API never sends it, and its SDK keeps it as an extra field.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from core.fakes.base import (
    ErrorReply,
    Frame,
    Reply,
    StopReason,
    Text,
    Thinking,
    ToolUse,
    Usage,
    WireProtocol,
    random_id,
    resolve_usage,
    split_json,
    split_text,
)

FINISH_REASONS = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.PAUSE_TURN: "stop",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.MAX_TOKENS: "length",
    StopReason.MODEL_CONTEXT_WINDOW_EXCEEDED: "length",
    StopReason.REFUSAL: "content_filter",
}

# Anthropic error type -> OpenAI's (type, code) for the same failure.
ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "model_not_found"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
    "timeout_error": ("server_error", "timeout"),
}


def _data(payload: object, *, delta: bool = False) -> Frame:
    return Frame(b"data: " + orjson.dumps(payload) + b"\n\n", delta=delta)


def _error_json(error: ErrorReply) -> dict[str, Any]:
    error_type, code = ERROR_TYPES.get(error.type, (error.type, None))
    return {"error": {"message": error.message, "type": error_type, "param": None, "code": code}}


def _usage_json(usage: Usage) -> dict[str, Any]:
    # OpenAI counts cached prompt tokens inside prompt_tokens.
    prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.thinking_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [
        part["text"]
        for part in (content if isinstance(content, list) else [])
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
    ]
    return "\n".join(parts)


class _Completion:
    """The fields every chunk (or the one response) of one completion shares."""

    def __init__(self, body: Mapping[str, Any], *, chunk: bool) -> None:
        self.head: dict[str, Any] = {
            "id": random_id("chatcmpl-", 29),
            "object": "chat.completion.chunk" if chunk else "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, *, is_delta: bool = False) -> Frame:
        payload = {
            **self.head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            payload["usage"] = None
        return _data(payload, delta=is_delta)


class OpenAIChat:
    protocol = WireProtocol.OPENAI
    unauthorized_message = "Incorrect API key provided."

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("authorization") == f"Bearer {api_key}"

    def invalid(self, headers: Mapping[str, str], body: object) -> str | None:
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request."
        if not isinstance(body.get("model"), str):
            return "you must provide a model parameter"
        if not isinstance(body.get("messages"), list):
            return "Missing required parameter: 'messages'."
        if not body["messages"]:
            return "Invalid 'messages': empty array. Expected an array with minimum length 1."
        return None

    def echo_text(self, body: Mapping[str, Any]) -> str:
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") in ("user", "tool"):
                return _text_of(message.get("content"))
        return ""

    def error_response(self, error: ErrorReply) -> web.Response:
        headers = {"x-request-id": random_id("req_", 32)}
        if error.retry_after is not None:
            headers["retry-after"] = f"{error.retry_after:g}"
        return web.Response(
            status=error.status, body=orjson.dumps(_error_json(error)), content_type="application/json", headers=headers
        )

    def error_frames(self, error: ErrorReply, body: Mapping[str, Any]) -> list[Frame]:
        completion = _Completion(body, chunk=True)
        return [completion.chunk({"role": "assistant", "content": "", "refusal": None}), _data(_error_json(error))]

    def message_response(self, reply: Reply, body: Mapping[str, Any]) -> web.Response:
        usage = resolve_usage(reply, body)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(b.text for b in reply.blocks if isinstance(b, Text)) or None,
            "refusal": None,
            "annotations": [],
        }
        calls = [
            {
                "id": block.id or random_id("call_"),
                "type": "function",
                "function": {"name": block.name, "arguments": orjson.dumps(block.input).decode()},
            }
            for block in reply.blocks
            if isinstance(block, ToolUse)
        ]
        if calls:
            message["tool_calls"] = calls
        reasoning = "".join(b.thinking for b in reply.blocks if isinstance(b, Thinking))
        if reasoning:
            message["reasoning_content"] = reasoning
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_REASONS[reply.stop_reason]}
        payload = {**_Completion(body, chunk=False).head, "choices": [choice], "usage": _usage_json(usage)}
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers={"x-request-id": random_id("req_", 32)}
        )

    def frames(self, reply: Reply, body: Mapping[str, Any]) -> list[Frame]:
        completion = _Completion(body, chunk=True)
        frames = [completion.chunk({"role": "assistant", "content": "", "refusal": None})]
        call_index = 0
        for block in reply.blocks:
            if isinstance(block, Thinking):
                frames += [
                    completion.chunk({"reasoning_content": p}, is_delta=True) for p in split_text(block.thinking)
                ]
            elif isinstance(block, Text):
                frames += [completion.chunk({"content": p}, is_delta=True) for p in split_text(block.text)]
            elif isinstance(block, ToolUse):
                call = {
                    "index": call_index,
                    "id": block.id or random_id("call_"),
                    "type": "function",
                    "function": {"name": block.name, "arguments": ""},
                }
                frames.append(completion.chunk({"tool_calls": [call]}, is_delta=True))
                for piece in split_json(orjson.dumps(block.input).decode()):
                    args = {"index": call_index, "function": {"arguments": piece}}
                    frames.append(completion.chunk({"tool_calls": [args]}, is_delta=True))
                call_index += 1
        frames.append(completion.chunk({}, FINISH_REASONS[reply.stop_reason]))
        if completion.include_usage:
            usage = _usage_json(resolve_usage(reply, body))
            frames.append(_data({**completion.head, "choices": [], "usage": usage}))
        frames.append(Frame(b"data: [DONE]\n\n"))
        return frames
