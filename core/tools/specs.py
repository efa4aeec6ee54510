"""What the model is told about each built-in tool, and which tools an agent has enabled."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

TOOLSET = "agent_toolset_20260401"
READ_ONLY_TOOLS = frozenset({"read", "glob", "grep", "web_search"})
# Built-in tools that run on the platform and need no sandbox.
PLATFORM_TOOLS = frozenset({"web_fetch", "web_search"})
POLICIES = ("always_allow", "always_ask", "auto")


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    permission_policy: str
    # The tool's entry from the toolset's `configs` (e.g. web_fetch's allowed_domains); pass it to run_tool.
    config: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        """The tool definition for a Messages API request."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_PATH = "Path of the file: absolute, or relative to the workspace."
_SEARCH_ROOT = "Directory to search under, absolute or relative to the workspace. Defaults to the workspace."

# name -> (description, input schema), in the toolset's order.
_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash": (
        "Run a shell command with bash in the session's sandbox and return its combined stdout and stderr. "
        "The shell persists between calls: the working directory and exported environment variables carry over "
        "(the first command starts in the workspace). Processes still running when a command finishes are "
        "stopped, so don't start background servers expecting them to stay up. There is no terminal and no "
        "stdin: use non-interactive flags (e.g. `apt-get -y`, `git --no-pager`). Long output keeps its start "
        "and end with the middle cut. Commands time out after 120 s unless timeout_ms says otherwise. "
        "Prefer the read, edit, write, glob and grep tools for working with files.",
        _schema(
            {
                "command": {"type": "string", "description": "The command to run."},
                "restart": {
                    "type": "boolean",
                    "description": "Restart the shell (forgetting its directory and variables) instead of running "
                    "a command.",
                },
                "timeout_ms": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Timeout in milliseconds (at most 600000); 0 or omitted for the default.",
                },
            },
            [],
        ),
    ),
    "edit": (
        "Replace text in a file by exact string match. old_string must match the file exactly, including "
        "whitespace and indentation, and occur exactly once, unless replace_all is true, in which case every "
        "occurrence is replaced. To make a match unique, include more surrounding lines. Read the file first; "
        "use write to create a file.",
        _schema(
            {
                "file_path": {"type": "string", "description": _PATH},
                "old_string": {"type": "string", "description": "The exact text to replace."},
                "new_string": {"type": "string", "description": "The text to replace it with."},
                "replace_all": {
                    "type": "boolean",
                    "description": "Replace every occurrence of old_string (default false).",
                },
            },
            ["file_path", "old_string", "new_string"],
        ),
    ),
    "read": (
        "Read a file from the sandbox. Returns the text exactly as stored (no line numbers added). For a large "
        "file pass view_range to read some lines; whole-file reads are limited to 256 KiB. PNG, JPEG, GIF and "
        "WebP images and PDFs are returned as image and document content.",
        _schema(
            {
                "file_path": {"type": "string", "description": _PATH},
                "view_range": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "[start_line, end_line], 1-indexed and inclusive; end_line 0 or negative reads "
                    "to the end of the file.",
                },
            },
            ["file_path"],
        ),
    ),
    "write": (
        "Write a file, replacing it if it exists and creating missing parent directories. Prefer edit for "
        "changing part of an existing file.",
        _schema(
            {
                "file_path": {"type": "string", "description": _PATH},
                "content": {"type": "string", "description": "The complete new contents of the file."},
            },
            ["file_path", "content"],
        ),
    ),
    "glob": (
        "Find files and directories whose path matches a glob pattern: `**` matches any number of directories, "
        "`*` and `?` match within one name, `{a,b}` and `[abc]` work; e.g. `**/*.py`, `src/**/test_*.{js,ts}`. "
        "The pattern is relative to path. Returns absolute paths, newest first, at most 200. `.git` and "
        "`node_modules` are skipped unless the pattern names them.",
        _schema(
            {
                "pattern": {"type": "string", "description": "The glob pattern, relative to path."},
                "path": {"type": "string", "description": _SEARCH_ROOT},
            },
            ["pattern"],
        ),
    ),
    "grep": (
        "Search file contents for a regular expression (Python `re` syntax, matched against each line). "
        "path may be a directory, searched recursively, or a single file. Returns matching lines as "
        "`path:line_number:text`. Binary files, `.git` and `node_modules` are skipped. Output is capped; if it "
        "is truncated, narrow the pattern or the path.",
        _schema(
            {
                "pattern": {"type": "string", "description": "The regular expression to search for."},
                "path": {"type": "string", "description": "File or directory to search. Defaults to the workspace."},
            },
            ["pattern"],
        ),
    ),
    "web_fetch": (
        "Fetch a URL over HTTP or HTTPS and return its content as text; HTML is converted to readable text with "
        "its links kept. Only text and HTML content is supported, and long pages are truncated. The agent's "
        "configuration may limit which domains can be fetched.",
        _schema({"url": {"type": "string", "description": "The absolute http:// or https:// URL."}}, ["url"]),
    ),
    "web_search": (
        "Search the web and return the top results (title, URL and a snippet each). Use it for current "
        "information or to find pages, then web_fetch a result to read it. The agent's configuration may limit "
        "which domains results come from.",
        _schema({"query": {"type": "string", "description": "The search query."}}, ["query"]),
    ),
}
# Built-in tools that need something the server may lack (a search backend): offered only when present.
OPTIONAL_TOOLS = frozenset({"web_search"})
BUILTIN_TOOLS = tuple(_TOOLS)


def enabled_tools(agent_tools: list[dict[str, Any]], *, available: frozenset[str] = frozenset()) -> list[ToolSpec]:
    """The built-in tools an agent's resolved `tools` list enables. A tool missing from `configs` takes
    `default_config`. Optional tools (web_search) count only when `available` names them: the server
    has what they need."""
    specs: list[ToolSpec] = []
    for entry in agent_tools:
        if entry.get("type") != TOOLSET:
            continue
        default = entry.get("default_config") or {}
        configs = {c.get("name"): c for c in entry.get("configs") or [] if isinstance(c, dict)}
        for name, (description, schema) in _TOOLS.items():
            if name in OPTIONAL_TOOLS and name not in available:
                continue
            config = configs.get(name, {})
            enabled = config.get("enabled")
            if not (default.get("enabled", True) if enabled is None else enabled):
                continue
            policy = _policy(config.get("permission_policy")) or _policy(default.get("permission_policy"))
            options = {k: v for k, v in config.items() if k not in ("name", "type", "enabled", "permission_policy")}
            specs.append(ToolSpec(name, description, copy.deepcopy(schema), policy or "always_allow", options))
    return specs


def _policy(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else value
    return kind if kind in POLICIES else None
