"""What every built-in tool shares: its outcome, its failure, and what it runs against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict

from core.errors import OMAError
from sandbox.base import Sandbox

# Characters of command or search output a tool hands back to the model.
MAX_TOOL_OUTPUT = 30_000


@dataclass(slots=True)
class ToolOutcome:
    """A tool result: Anthropic-style content blocks (normally one text block) and the error flag."""

    content: list[dict[str, Any]]
    is_error: bool = False

    @classmethod
    def text(cls, text: str, *, is_error: bool = False) -> ToolOutcome:
        # The Messages API rejects empty text blocks.
        return cls([{"type": "text", "text": text or "(no output)"}], is_error)


class ToolError(OMAError):
    """A tool failed in a way the model should read about and can act on."""


@dataclass(slots=True)
class ToolContext:
    # The session's sandbox; None for the tools that run on the platform (web_fetch, web_search).
    box: Sandbox | None
    config: dict[str, Any] = field(default_factory=dict)
    http: aiohttp.ClientSession | None = None
    timeout: float = 120.0
    allow_private_addresses: bool = False
    # web_search's backend (core/tools/web_search.py); None: not configured.
    search: Any = None

    @property
    def sandbox(self) -> Sandbox:
        if self.box is None:
            raise ToolError("this tool needs the session's sandbox, which was not opened for it")
        return self.box


class ToolInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


def clean_text(text: str) -> str:
    """Drop lone surrogates (undecodable file names come back as them); the API needs valid UTF-8."""
    return text.encode("utf-8", "replace").decode("utf-8")
