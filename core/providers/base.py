"""The model-provider contract. Requests and responses use Anthropic Messages shapes (content
blocks: text, image, document, thinking, tool_use, tool_result) as the neutral format; each
provider module translates to its wire protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


@dataclass(slots=True)
class ModelRequest:
    model: str
    system: str | None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int = 8192
    # Extended thinking budget in tokens; None leaves thinking off.
    thinking_budget: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "system": self.system,
            "messages": self.messages,
            "tools": self.tools,
            "max_tokens": self.max_tokens,
            "thinking_budget": self.thinking_budget,
        }


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(slots=True)
class ModelResponse:
    content: list[dict[str, Any]]
    stop_reason: str  # end_turn | tool_use | max_tokens | refusal | stop_sequence
    usage: Usage


class DeltaKind(StrEnum):
    TEXT_START = "text_start"
    TEXT = "text"
    THINKING_START = "thinking_start"


@dataclass(slots=True, frozen=True)
class Delta:
    kind: DeltaKind
    index: int
    text: str = ""


OnDelta = Callable[[Delta], Awaitable[None]]


class ErrorKind(StrEnum):
    OVERLOADED = "model_overloaded_error"
    RATE_LIMITED = "model_rate_limited_error"
    REQUEST_FAILED = "model_request_failed_error"
    BILLING = "billing_error"


class ModelError(Exception):
    """A failed model call. `retryable` errors are retried with backoff; the rest are terminal."""

    def __init__(self, kind: ErrorKind, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Provider(Protocol):
    name: str

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        """Stream one model response, calling `on_delta` as text arrives; return the whole response."""
        ...


def status_error(status: int, message: str, headers: Any, *, overloaded: tuple[int, ...]) -> ModelError:
    """A provider's HTTP error as a ModelError: 429 and `overloaded` statuses, other 5xx and 408 are
    retryable; 402 is billing; the rest (bad request, auth, not found) are terminal."""
    retry_after = retry_after_seconds(headers)
    text = f"{status}: {message}"
    if status == 429:
        return ModelError(ErrorKind.RATE_LIMITED, text, retryable=True, retry_after=retry_after)
    if status in overloaded:
        return ModelError(ErrorKind.OVERLOADED, text, retryable=True, retry_after=retry_after)
    if status >= 500 or status == 408:
        return ModelError(ErrorKind.REQUEST_FAILED, text, retryable=True, retry_after=retry_after)
    if status == 402:
        return ModelError(ErrorKind.BILLING, text, retryable=False)
    return ModelError(ErrorKind.REQUEST_FAILED, text, retryable=False)


def other_error(exc: Exception, *, connection: bool) -> ModelError:
    """A failure before any HTTP status: connection problems and the like are retried."""
    detail = f"connection error: {exc}" if connection else f"{type(exc).__name__}: {exc}"
    return ModelError(ErrorKind.REQUEST_FAILED, detail, retryable=True)


def retry_after_seconds(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                return None
    return None
