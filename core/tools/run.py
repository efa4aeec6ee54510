"""run_tool: validate a tool call's input, run the tool, and turn every failure into an error result."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from pydantic import ValidationError

from core.tools import files, search, shell, web, web_search
from core.tools.base import ToolContext, ToolError, ToolInput, ToolOutcome
from sandbox.base import Sandbox, SandboxError

log = logging.getLogger("oma.tools")

Handler = Callable[[Any, ToolContext], Awaitable[ToolOutcome]]
_HANDLERS: dict[str, tuple[type[ToolInput], Handler]] = {
    "bash": (shell.BashInput, shell.bash),
    "edit": (files.EditInput, files.edit),
    "read": (files.ReadInput, files.read),
    "write": (files.WriteInput, files.write),
    "glob": (search.GlobInput, search.glob),
    "grep": (search.GrepInput, search.grep),
    "web_fetch": (web.WebFetchInput, web.web_fetch),
    "web_search": (web_search.WebSearchInput, web_search.web_search),
}


async def run_tool(
    name: str,
    tool_input: dict[str, Any],
    *,
    sandbox: Sandbox | None,
    config: dict[str, Any] | None = None,
    http: aiohttp.ClientSession | None = None,
    timeout: float = 120,  # noqa: ASYNC109 (the tool's own time limit, passed into the sandbox)
    allow_private_addresses: bool = False,
    search: web_search.SearchBackend | None = None,
) -> ToolOutcome:
    """Run a built-in tool. Never raises for bad input or a failing tool: those come back as an outcome
    with is_error set. `timeout` is the default time limit (bash's timeout_ms may raise it up to 600 s).
    `allow_private_addresses` lets web_fetch reach loopback and private networks."""
    handler = _HANDLERS.get(name)
    if handler is None:
        return ToolOutcome.text(f"Unknown tool {name!r}. Available tools: {', '.join(_HANDLERS)}", is_error=True)
    model, run = handler
    if not isinstance(tool_input, dict):
        return ToolOutcome.text(f"Invalid input for {name}: expected a JSON object", is_error=True)
    try:
        args = model.model_validate(tool_input)
    except ValidationError as e:
        return ToolOutcome.text(f"Invalid input for {name}: {_describe(e)}", is_error=True)
    ctx = ToolContext(sandbox, dict(config or {}), http, timeout, allow_private_addresses, search)
    try:
        return await run(args, ctx)
    except (ToolError, SandboxError) as e:
        return ToolOutcome.text(f"{name}: {e}", is_error=True)
    except Exception as e:
        log.exception("tool %s failed unexpectedly", name)
        return ToolOutcome.text(f"{name}: internal error: {type(e).__name__}: {e}", is_error=True)


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "input"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)
