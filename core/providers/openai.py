"""OpenAI Chat Completions and any OpenAI-compatible gateway (OpenRouter, vLLM, Ollama, …)
through the official `openai` SDK."""

from __future__ import annotations

import json
from typing import Any

import openai

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

FINISH_TO_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens", "content_filter": "refusal"}


def _text_of(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    parts = []
    for block in blocks or []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "document" and block.get("source", {}).get("type") == "text":
            parts.append(block["source"]["data"])
        elif block.get("type") == "search_result":
            parts.append("\n".join(c.get("text", "") for c in block.get("content", [])))
    return "\n".join(parts)


def _user_part(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        source = block["source"]
        if source["type"] == "base64":
            return {"type": "image_url", "image_url": {"url": f"data:{source['media_type']};base64,{source['data']}"}}
        if source["type"] == "url":
            return {"type": "image_url", "image_url": {"url": source["url"]}}
        return None
    if kind == "document":
        text = _text_of([block])
        title = block.get("title")
        return {"type": "text", "text": f"{title}\n\n{text}" if title else text} if text else None
    return None


def to_chat_messages(request: ModelRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if message["role"] == "assistant":
            text = "".join(b["text"] for b in content if b.get("type") == "text")
            calls = [
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))},
                }
                for b in content
                if b.get("type") == "tool_use"
            ]
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
            continue
        # Tool results must directly follow the assistant message that called the tools.
        parts = []
        for block in content:
            if block.get("type") == "tool_result":
                text = _text_of(block.get("content"))
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            else:
                part = _user_part(block)
                if part is not None:
                    parts.append(part)
        if parts:
            out.append({"role": "user", "content": parts})
    return out


def to_chat_tools(request: ModelRequest) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {"name": t["name"], "description": t.get("description", ""), "parameters": t["input_schema"]},
        }
        for t in request.tools
    ]


def classify(exc: Exception) -> ModelError:
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.message, exc.response.headers, overloaded=(503, 529))
    return other_error(exc, connection=isinstance(exc, openai.APIConnectionError))


class OpenAIProvider:
    def __init__(
        self, *, api_key: str, base_url: str | None = None, name: str = "openai", timeout: float = 600
    ) -> None:
        self.name = name
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": to_chat_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        tools = to_chat_tools(request)
        if tools:
            kwargs["tools"] = tools
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage = Usage()
        started = False
        try:
            stream = await self._client.chat.completions.create(**kwargs)
            async for chunk in stream:
                if chunk.usage is not None:
                    cached = 0
                    details = getattr(chunk.usage, "prompt_tokens_details", None)
                    if details is not None and getattr(details, "cached_tokens", None):
                        cached = int(details.cached_tokens)
                    usage = Usage(
                        input_tokens=max(0, (chunk.usage.prompt_tokens or 0) - cached),
                        output_tokens=chunk.usage.completion_tokens or 0,
                        cache_read_input_tokens=cached,
                    )
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        if on_delta is not None:
                            if not started:
                                await on_delta(Delta(DeltaKind.TEXT_START, 0))
                            await on_delta(Delta(DeltaKind.TEXT, 0, delta.content))
                        started = True
                        text.append(delta.content)
                    for call in (delta.tool_calls if delta is not None else None) or []:
                        slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                        if call.id:
                            slot["id"] = call.id
                        if call.function is not None:
                            slot["name"] += call.function.name or ""
                            slot["arguments"] += call.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except openai.OpenAIError as exc:
            raise classify(exc) from exc
        content: list[dict[str, Any]] = []
        if text:
            content.append({"type": "text", "text": "".join(text)})
        for index in sorted(calls):
            slot = calls[index]
            try:
                arguments = json.loads(slot["arguments"]) if slot["arguments"].strip() else {}
            except json.JSONDecodeError:
                arguments = {"_unparsed_arguments": slot["arguments"]}
            content.append(
                {"type": "tool_use", "id": slot["id"] or f"call_{index}", "name": slot["name"], "input": arguments}
            )
        stop = FINISH_TO_STOP.get(finish or "stop", "end_turn")
        if calls and stop == "end_turn":
            stop = "tool_use"  # some gateways say "stop" after tool calls
        return ModelResponse(content=content, stop_reason=stop, usage=usage)
