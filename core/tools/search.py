"""The glob and grep tools. They run `sandbox_search.py` inside the sandbox with `python3`, so they
see exactly the files the agent's commands see, in every runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.tools.base import MAX_TOOL_OUTPUT, ToolContext, ToolError, ToolInput, ToolOutcome, clean_text
from sandbox.base import WORKSPACE

GLOB_LIMIT = 200
_NO_MATCHES_PARTIAL = "no matches (the search stopped early: too many files; narrow the path)"
_SCRIPT = (Path(__file__).parent / "sandbox_search.py").read_text()
# Bounds the JSON the walker prints; its own limits keep it far smaller.
_MAX_SCRIPT_OUTPUT = 4 * MAX_TOOL_OUTPUT + 200 * 4096


class GlobInput(ToolInput):
    pattern: str
    path: str | None = None


class GrepInput(ToolInput):
    pattern: str
    path: str | None = None


async def glob(args: GlobInput, ctx: ToolContext) -> ToolOutcome:
    result = await _run(ctx, "glob", args.path, args.pattern, GLOB_LIMIT)
    matches: list[str] = result["matches"]
    if not matches:
        return ToolOutcome.text(_NO_MATCHES_PARTIAL if result["partial"] else "no matches")
    text = "\n".join(matches)
    if result["total"] > len(matches):
        text += f"\n[showing the {len(matches)} newest of {result['total']} matches; narrow the pattern or path]"
    elif result["partial"]:
        text += "\n[the search stopped early: too many files; narrow the path]"
    return ToolOutcome.text(clean_text(text))


async def grep(args: GrepInput, ctx: ToolContext) -> ToolOutcome:
    result = await _run(ctx, "grep", args.path, args.pattern, MAX_TOOL_OUTPUT)
    matches: list[str] = result["matches"]
    if not matches:
        return ToolOutcome.text(_NO_MATCHES_PARTIAL if result["partial"] else "no matches")
    text = "\n".join(matches)
    if result["partial"]:
        text += "\n[output truncated; narrow the pattern or path]"
    return ToolOutcome.text(clean_text(text))


async def _run(ctx: ToolContext, mode: str, path: str | None, pattern: str, limit: int) -> dict[str, Any]:
    shown = path or WORKSPACE
    root = await ctx.sandbox.exec_path(shown)
    res = await ctx.sandbox.exec(
        ["python3", "-I", "-c", _SCRIPT, mode, root, pattern, str(limit)],
        timeout=ctx.timeout,
        max_output=_MAX_SCRIPT_OUTPUT,
    )
    if res.timed_out:
        raise ToolError(f"{mode} timed out after {ctx.timeout:g}s; narrow the pattern or path")
    if res.exit_code == 127:
        raise ToolError(f"{mode} needs python3 in the sandbox, and it is not installed; use bash instead")
    try:
        result = json.loads(res.stdout)
    except ValueError:
        detail = res.stderr.strip().splitlines()[-1:] or [f"exit code {res.exit_code}"]
        raise ToolError(f"{mode} failed: {clean_text(detail[0])}") from None
    if not isinstance(result, dict):
        raise ToolError(f"{mode} failed: unexpected output")
    if "error" in result:
        error = str(result["error"])
        raise ToolError(f"{shown}: {error}" if error.startswith(("no such", "not a")) else error)
    return result
