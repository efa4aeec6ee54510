"""What a fake model server plays and records: scripted replies and errors, holds, requests.

One script item has the same shape in the Python API (`FakeModelServer.reply(**item)`), in the
`--script` file and in `POST /_fake/script`:

    {"text": "Hello"}
    {"tool_use": {"name": "bash", "input": {"command": "ls"}}}       # or a list of them
    {"thinking": "Let me see.", "text": "Done."}                      # thinking, then text, then tools
    {"content": [{"type": "thinking", "thinking": "…"}, "some text", {"type": "tool_use", …}]}
    … plus any of "stop_reason", "usage", "delay", "chunk_delay", "hold"
    {"error": {"status": 529, "type": "overloaded_error", "times": 2, "retry_after": 1}}

Each wire module (`anthropic_messages`, `openai_chat`) renders a `Reply` in its protocol.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast

import orjson
from aiohttp import web


class WireProtocol(StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"


class StopReason(StrEnum):
    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"
    REFUSAL = "refusal"
    STOP_SEQUENCE = "stop_sequence"
    PAUSE_TURN = "pause_turn"
    MODEL_CONTEXT_WINDOW_EXCEEDED = "model_context_window_exceeded"


class ScriptError(ValueError):
    """A script item that is not shaped like a reply or an error."""


class TextSpec(TypedDict):
    type: Literal["text"]
    text: str


class ThinkingSpec(TypedDict):
    type: Literal["thinking"]
    thinking: str
    signature: NotRequired[str]


class RedactedThinkingSpec(TypedDict):
    type: Literal["redacted_thinking"]
    data: str


class ToolUseSpec(TypedDict):
    name: str
    input: NotRequired[dict[str, Any]]
    id: NotRequired[str]
    type: NotRequired[Literal["tool_use"]]


BlockSpec = str | TextSpec | ThinkingSpec | RedactedThinkingSpec | ToolUseSpec


class UsageSpec(TypedDict, total=False):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Thinking:
    thinking: str
    signature: str


@dataclass(frozen=True, slots=True)
class RedactedThinking:
    data: str


@dataclass(frozen=True, slots=True)
class ToolUse:
    name: str
    input: dict[str, Any]
    # None: each protocol makes one up in its own style (toolu_…, call_…) when serving.
    id: str | None = None


Block = Text | Thinking | RedactedThinking | ToolUse


class Hold:
    """Pauses one response right after its first delta (before the body when there is none)
    until `release()`; `reached` is set once the response is paused there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.released = asyncio.Event()
        self.client_disconnected = asyncio.Event()

    def release(self) -> None:
        self.released.set()


@dataclass(slots=True)
class Reply:
    blocks: list[Block]
    stop_reason: StopReason
    usage: UsageSpec = field(default_factory=UsageSpec)
    delay: float = 0.0
    chunk_delay: float | None = None
    hold: Hold | None = None


@dataclass(slots=True)
class ErrorReply:
    status: int
    type: str
    message: str
    retry_after: float | None = None
    # On a streaming request: answer 200, start the message, then send the error as an event.
    mid_stream: bool = False
    delay: float = 0.0
    hold: Hold | None = None


ScriptItem = Reply | ErrorReply

_DEFAULT_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_DEFAULT_ERROR_MESSAGES = {
    "overloaded_error": "Overloaded",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "authentication_error": "invalid x-api-key",
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ScriptError(message)


def _block(spec: object) -> Block:
    if isinstance(spec, str):
        return Text(spec)
    if not isinstance(spec, Mapping):
        raise ScriptError(f"a content block is a string or an object, not {spec!r}")
    kind = spec.get("type", "tool_use" if "name" in spec else None)
    if kind == "text":
        _require(isinstance(spec.get("text"), str), "a text block needs a string `text`")
        return Text(spec["text"])
    if kind == "thinking":
        _require(isinstance(spec.get("thinking"), str), "a thinking block needs a string `thinking`")
        signature = spec.get("signature")
        if signature is None:
            signature = base64.b64encode(secrets.token_bytes(48)).decode()
        _require(isinstance(signature, str), "a thinking block's `signature` is a string")
        return Thinking(spec["thinking"], signature)
    if kind == "redacted_thinking":
        _require(isinstance(spec.get("data"), str), "a redacted_thinking block needs a string `data`")
        return RedactedThinking(spec["data"])
    if kind == "tool_use":
        _require(isinstance(spec.get("name"), str), "a tool_use block needs a string `name`")
        tool_input = spec.get("input", {})
        _require(isinstance(tool_input, dict), "a tool_use block's `input` is an object")
        tool_id = spec.get("id")
        _require(tool_id is None or isinstance(tool_id, str), "a tool_use block's `id` is a string")
        return ToolUse(spec["name"], dict(tool_input), tool_id)
    raise ScriptError(f"unknown content block type {kind!r} (text, thinking, redacted_thinking, tool_use)")


def _usage(spec: object) -> UsageSpec:
    if not isinstance(spec, Mapping):
        raise ScriptError("`usage` is an object")
    unknown = set(spec) - UsageSpec.__optional_keys__
    _require(not unknown, f"unknown usage fields: {sorted(unknown)}")
    for key, value in spec.items():
        _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"usage.{key} is a count")
    return cast(UsageSpec, dict(spec))


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScriptError(f"`{name}` is a number of seconds")
    return float(value)


def make_reply(
    text: str | None = None,
    *,
    thinking: str | None = None,
    tool_use: ToolUseSpec | list[ToolUseSpec] | None = None,
    content: list[BlockSpec] | None = None,
    stop_reason: StopReason | str | None = None,
    usage: UsageSpec | None = None,
    delay: float = 0.0,
    chunk_delay: float | None = None,
    hold: bool = False,
) -> Reply:
    specs: list[object]
    if content is not None:
        _require(
            text is None and thinking is None and tool_use is None,
            "give either `content` or `text`/`thinking`/`tool_use`, not both",
        )
        _require(isinstance(content, list), "`content` is a list of blocks")
        specs = list(content)
    else:
        specs = []
        if thinking is not None:
            specs.append({"type": "thinking", "thinking": thinking})
        if text is not None:
            specs.append({"type": "text", "text": text})
        if tool_use is not None:
            specs.extend(tool_use if isinstance(tool_use, list) else [tool_use])
    blocks = [_block(spec) for spec in specs]
    if stop_reason is None:
        stop = StopReason.TOOL_USE if any(isinstance(b, ToolUse) for b in blocks) else StopReason.END_TURN
    else:
        try:
            stop = StopReason(stop_reason)
        except ValueError:
            raise ScriptError(f"unknown stop_reason {stop_reason!r}") from None
    return Reply(
        blocks=blocks,
        stop_reason=stop,
        usage=_usage(usage) if usage is not None else UsageSpec(),
        delay=_seconds(delay, "delay"),
        chunk_delay=None if chunk_delay is None else _seconds(chunk_delay, "chunk_delay"),
        hold=Hold() if hold else None,
    )


def make_error(
    status: int = 529,
    type: str | None = None,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    mid_stream: bool = False,
    delay: float = 0.0,
    hold: bool = False,
) -> ErrorReply:
    _require(isinstance(status, int) and 400 <= status <= 599, "an error's `status` is an HTTP error status")
    error_type = type or _DEFAULT_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    _require(isinstance(error_type, str), "an error's `type` is a string")
    _require(message is None or isinstance(message, str), "an error's `message` is a string")
    if retry_after is None and status == 429:
        retry_after = 0  # a real 429 always says when to come back
    return ErrorReply(
        status=status,
        type=error_type,
        message=message or _DEFAULT_ERROR_MESSAGES.get(error_type, f"fake {error_type}"),
        retry_after=None if retry_after is None else _seconds(retry_after, "retry_after"),
        mid_stream=bool(mid_stream),
        delay=_seconds(delay, "delay"),
        hold=Hold() if hold else None,
    )


def parse_item(item: object) -> list[ScriptItem]:
    """One JSON script item as queue entries (an error with `times: n` is n entries)."""
    if not isinstance(item, dict):
        raise ScriptError(f"a script item is an object, not {item!r}")
    try:
        if "error" in item:
            _require(set(item) == {"error"}, "an error item has only the `error` key")
            if not isinstance(item["error"], dict):
                raise ScriptError("`error` is an object")
            spec = dict(item["error"])
            times = spec.pop("times", 1)
            _require(isinstance(times, int) and times >= 1, "`times` is a positive int")
            error = make_error(**spec)
            return [error] * times
        return [make_reply(**item)]
    except TypeError as exc:  # an unknown key
        raise ScriptError(str(exc)) from None


@dataclass(slots=True)
class RecordedRequest:
    protocol: WireProtocol
    path: str
    headers: dict[str, str]
    body: Any
    client_disconnected: bool = False

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.value,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "client_disconnected": self.client_disconnected,
        }


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    thinking_tokens: int


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    return estimate_tokens(orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")]).decode())


def resolve_usage(reply: Reply, body: Mapping[str, Any]) -> Usage:
    """The scripted counts, with the unscripted ones estimated from the request and reply sizes."""
    thinking = "".join(b.thinking for b in reply.blocks if isinstance(b, Thinking))
    said = "".join(b.text for b in reply.blocks if isinstance(b, Text))
    said += "".join(orjson.dumps(b.input).decode() for b in reply.blocks if isinstance(b, ToolUse))
    return Usage(
        input_tokens=reply.usage.get("input_tokens", estimate_prompt_tokens(body)),
        output_tokens=reply.usage.get("output_tokens", estimate_tokens(thinking + said)),
        cache_creation_input_tokens=reply.usage.get("cache_creation_input_tokens", 0),
        cache_read_input_tokens=reply.usage.get("cache_read_input_tokens", 0),
        thinking_tokens=estimate_tokens(thinking) if thinking else 0,
    )


_WORD = re.compile(r"\s*\S+\s*|\s+")
_MAX_CHUNK = 12
_ID_ALPHABET = string.ascii_letters + string.digits


def split_text(text: str) -> list[str]:
    """Word-sized pieces, as a model streams tokens; long words are cut."""
    pieces: list[str] = []
    for word in _WORD.findall(text):
        pieces.extend(word[i : i + _MAX_CHUNK] for i in range(0, len(word), _MAX_CHUNK))
    return pieces


def split_json(text: str) -> list[str]:
    return [text[i : i + _MAX_CHUNK] for i in range(0, len(text), _MAX_CHUNK)] or [""]


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    # A content delta: a hold pauses the stream after the first one.
    delta: bool = False


class Wire(Protocol):
    """One model API's wire protocol: a translator between script items and HTTP."""

    protocol: WireProtocol
    unauthorized_message: str

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool: ...

    def invalid(self, headers: Mapping[str, str], body: object) -> str | None:
        """Why the real API would answer 400, or None."""
        ...

    def echo_text(self, body: Mapping[str, Any]) -> str:
        """The text of the last user turn (or tool result), for the default reply."""
        ...

    def error_response(self, error: ErrorReply) -> web.Response: ...

    def error_frames(self, error: ErrorReply, body: Mapping[str, Any]) -> list[Frame]: ...

    def message_response(self, reply: Reply, body: Mapping[str, Any]) -> web.Response: ...

    def frames(self, reply: Reply, body: Mapping[str, Any]) -> list[Frame]: ...
