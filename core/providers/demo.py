"""An offline demo model: no key, no network. It answers in plain words and, when asked to run a
command in backticks, calls the `bash` tool and reports the result, so a newcomer sees a whole
session (streaming, tool use, tool result, reply) on a machine without any key."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from core.providers.base import Delta, DeltaKind, ModelRequest, ModelResponse, OnDelta, Usage

COMMAND = re.compile(r"`([^`\n]+)`")


def _last_user_blocks(request: ModelRequest) -> list[dict[str, Any]]:
    for message in reversed(request.messages):
        if message["role"] == "user":
            content = message["content"]
            return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    return []


def _text(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(b["text"] for b in blocks if b.get("type") == "text").strip()


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class DemoProvider:
    name = "demo"

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        blocks = _last_user_blocks(request)
        results = [b for b in blocks if b.get("type") == "tool_result"]
        has_bash = any(t["name"] == "bash" for t in request.tools)
        content: list[dict[str, Any]]
        if results:
            output = _text(results[-1].get("content") or []) or "(no output)"
            verdict = "failed" if results[-1].get("is_error") else "finished"
            reply = f"The command {verdict}. Here is what it printed:\n\n```\n{output[:4000]}\n```"
            content = [{"type": "text", "text": reply}]
            stop = "end_turn"
        else:
            said = _text(blocks)
            match = COMMAND.search(said)
            if match and has_bash:
                command = match.group(1)
                digest = hashlib.sha256(f"{len(request.messages)}:{command}".encode()).hexdigest()[:20]
                content = [
                    {"type": "text", "text": f"I'll run `{command}` in the sandbox."},
                    {"type": "tool_use", "id": f"toolu_demo_{digest}", "name": "bash", "input": {"command": command}},
                ]
                stop = "tool_use"
            else:
                hint = " Ask me to run a command in backticks, like `ls -la`." if has_bash else ""
                reply = (
                    "Hello! I'm the offline demo model of Open Managed Agents: I need no API key, "
                    f"so I can't really think, but the whole session machinery is real.{hint}"
                )
                if said:
                    reply += f"\n\nYou said: {said[:500]}"
                content = [{"type": "text", "text": reply}]
                stop = "end_turn"
        if on_delta is not None:
            for index, block in enumerate(content):
                if block["type"] != "text":
                    continue
                await on_delta(Delta(DeltaKind.TEXT_START, index))
                words = block["text"].split(" ")
                for i in range(0, len(words), 4):
                    chunk = " ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "")
                    await on_delta(Delta(DeltaKind.TEXT, index, chunk))
        prompt = sum(_tokens(str(m["content"])) for m in request.messages) + _tokens(request.system or "")
        out = sum(_tokens(str(b)) for b in content)
        return ModelResponse(content=content, stop_reason=stop, usage=Usage(input_tokens=prompt, output_tokens=out))
