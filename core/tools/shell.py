"""The bash tool. Each call is a fresh `bash` run through the sandbox's exec, but it behaves like
one persistent shell: the working directory and exported variables are saved in the workspace
(`.oma/bash/`, git-ignored) when a command ends and restored before the next one."""

from __future__ import annotations

import re

from pydantic import Field

from core.tools.base import MAX_TOOL_OUTPUT, ToolContext, ToolError, ToolInput, ToolOutcome
from sandbox.base import Sandbox

MAX_TIMEOUT = 600.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# One line, so that line numbers in the command's own syntax errors stay right.
# $1: the .oma directory, $2: the workspace, $3: the command.
_WRAPPER = "; ".join(
    [
        "exec 2>&1",
        '__oma_dir=$1 __oma_state=$1/bash __oma_cmd=$3; cd -- "$2" 2>/dev/null',
        'if [ -r "$__oma_state/env" ]; then . "$__oma_state/env" >/dev/null 2>&1; fi',
        'if [ -r "$__oma_state/cwd" ]; then cd -- "$(cat -- "$__oma_state/cwd")" 2>/dev/null; fi',
        "__oma_save() { __oma_rc=$?; {"
        ' mkdir -p -- "$__oma_state" && pwd >"$__oma_state/cwd"'
        " && export -p | grep -Ev '^declare -x (OLDPWD|PWD|SHLVL|_)(=|$)' >\"$__oma_state/env\""
        # A .gitignore of "*" hides the whole .oma directory from git, itself included.
        ' && { [ -e "$__oma_dir/.gitignore" ] || echo "*" >"$__oma_dir/.gitignore"; }'
        '; } >/dev/null 2>&1; exit "$__oma_rc"; }',
        "trap __oma_save EXIT",
        "set --",
        'eval "$__oma_cmd"',
    ]
)


class BashInput(ToolInput):
    command: str | None = None
    restart: bool | None = None
    timeout_ms: int | None = Field(default=None, ge=0)


async def bash(args: BashInput, ctx: ToolContext) -> ToolOutcome:
    if not args.restart and not args.command:
        raise ToolError("command is required (or pass restart: true to restart the shell)")
    oma_dir = f"{ctx.sandbox.workspace.rstrip('/')}/.oma"
    if args.restart:
        await _reset(ctx.sandbox, f"{oma_dir}/bash")
        if not args.command:
            return ToolOutcome.text("bash session restarted")
    limit = max(ctx.timeout, MAX_TIMEOUT)
    timeout = min(args.timeout_ms / 1000, limit) if args.timeout_ms else ctx.timeout
    res = await ctx.sandbox.exec(
        ["bash", "-c", _WRAPPER, "bash", oma_dir, ctx.sandbox.workspace, args.command or ""],
        timeout=timeout,
        max_output=MAX_TOOL_OUTPUT,
    )
    text = _ANSI.sub("", res.stdout + res.stderr).rstrip("\n")
    if res.timed_out:
        text += f"\n[the command timed out after {timeout:g}s and was killed]"
    elif res.exit_code != 0:
        text += f"\n[exit code {res.exit_code}]"
    return ToolOutcome.text(text.lstrip("\n"), is_error=res.timed_out or res.exit_code != 0)


async def _reset(sandbox: Sandbox, state: str) -> None:
    res = await sandbox.exec(["rm", "-rf", "--", state], timeout=30)
    if res.exit_code != 0:
        raise ToolError(f"could not restart the shell: {res.stdout}{res.stderr}".strip())
