"""Anthropic Messages through the official `anthropic` SDK: streaming, tools, prompt caching,
extended thinking."""

from __future__ import annotations

import copy
from typing import Any

import anthropic

from core.providers.base import (
    Delta,
    DeltaKind,
    ModelError,
    ModelRequest,
    ModelResponse,
    OnDelta,
    Usage,
    other_error,
    status_error,
)

EPHEMERAL = {"type": "ephemeral"}


def with_cache_breakpoints(request: ModelRequest) -> dict[str, Any]:
    """Breakpoints on the system prompt, the last tool and the latest turn: the stable prefix is
    cached and each turn reuses everything before it."""
    kwargs: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens}
    if request.system:
        kwargs["system"] = [{"type": "text", "text": request.system, "cache_control": EPHEMERAL}]
    if request.tools:
        tools = [dict(t) for t in request.tools]
        tools[-1]["cache_control"] = EPHEMERAL
        kwargs["tools"] = tools
    messages = copy.deepcopy(request.messages)
    if messages and isinstance(messages[-1].get("content"), list) and messages[-1]["content"]:
        last_block = messages[-1]["content"][-1]
        if last_block.get("type") not in ("thinking", "redacted_thinking"):
            last_block["cache_control"] = EPHEMERAL
    kwargs["messages"] = messages
    if request.thinking_budget:
        kwargs["thinking"] = {"type": "enabled", "budget_tokens": request.thinking_budget}
        kwargs["max_tokens"] = max(request.max_tokens, request.thinking_budget + 4096)
    return kwargs


def classify(exc: Exception) -> ModelError:
    if isinstance(exc, anthropic.APIStatusError):
        return status_error(exc.status_code, exc.message, exc.response.headers, overloaded=(529,))
    return other_error(exc, connection=isinstance(exc, anthropic.APIConnectionError))


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, *, api_key: str, base_url: str | None = None, timeout: float = 600) -> None:
        # We retry ourselves so that every attempt is visible in the session's log.
        self._client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        kwargs = with_cache_breakpoints(request)
        try:
            async with self._client.messages.stream(**kwargs) as stream:
                async for event in stream:
                    if on_delta is None:
                        continue
                    if event.type == "content_block_start":
                        block_type = event.content_block.type
                        if block_type == "text":
                            await on_delta(Delta(DeltaKind.TEXT_START, event.index))
                        elif block_type == "thinking":
                            await on_delta(Delta(DeltaKind.THINKING_START, event.index))
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        await on_delta(Delta(DeltaKind.TEXT, event.index, event.delta.text))
                message = await stream.get_final_message()
        except anthropic.AnthropicError as exc:
            raise classify(exc) from exc
        usage = message.usage
        return ModelResponse(
            content=[block.model_dump(mode="json", exclude_none=True) for block in message.content],
            stop_reason=message.stop_reason or "end_turn",
            usage=Usage(
                input_tokens=usage.input_tokens or 0,
                output_tokens=usage.output_tokens or 0,
                cache_read_input_tokens=usage.cache_read_input_tokens or 0,
                cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
            ),
        )
