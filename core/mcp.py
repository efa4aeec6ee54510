"""MCP toolsets: the tools of an agent's `mcp_servers`, offered to the model and called on its behalf.

Each server (`{type:"url", name, url}`) is reached over MCP's streamable HTTP transport with the
official `mcp` SDK, as the platform (not from the sandbox), with the bearer token of the session's
`static_bearer` or `mcp_oauth` credential for that URL (session vaults first, then the tenant's
default vaults). The servers' tools are listed once per run of a session and offered to the model as
`mcp__<server>__<tool>`; the log records `agent.mcp_tool_use` with the tool's own name and
`mcp_server_name`, and `agent.mcp_tool_result`. An `mcp_toolset`'s configs enable tools and set
their permission policy; `auto` allows tools the server marks read-only and asks for the others.

A call opens its own connection: a run's calls may come from different tasks, and MCP sessions
are cheap next to a model call. A server that cannot be reached (or refuses the token) leaves its
tools out of that model call and is reported as a `session.error` (`mcp_connection_failed_error`
or `mcp_authentication_failed_error`, with `mcp_server_name`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.tools.base import ToolOutcome

log = logging.getLogger("oma.mcp")

MODEL_PREFIX = "mcp__"
CALL_TIMEOUT = 300.0
CONNECT_TIMEOUT = 30.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class McpTool:
    server: str
    name: str
    model_name: str
    description: str
    input_schema: dict[str, Any]
    policy: str  # always_allow | always_ask | auto
    read_only: bool


class McpFailure(Exception):
    """A server could not be used: `kind` is `connection` or `authentication`."""

    def __init__(self, server: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.server = server
        self.kind = kind
        self.message = message

    @property
    def error_type(self) -> str:
        return "mcp_authentication_failed_error" if self.kind == "authentication" else "mcp_connection_failed_error"


def model_name(server: str, tool: str) -> str:
    """The name the model calls the tool by: `mcp__<server>__<tool>`, in the characters and length
    model APIs accept (`^[a-zA-Z0-9_-]{1,64}$`)."""
    name = f"{MODEL_PREFIX}{_UNSAFE.sub('_', server)}__{_UNSAFE.sub('_', tool)}"
    if len(name) > 64:
        import hashlib

        digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:8]
        name = f"{name[:55]}_{digest}"
    return name


def toolsets(agent: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The agent's MCP servers by name, each with its toolset (default_config, configs)."""
    servers = {s["name"]: s for s in agent.get("mcp_servers") or []}
    found: dict[str, dict[str, Any]] = {}
    for tool in agent.get("tools") or []:
        if tool.get("type") == "mcp_toolset" and tool.get("mcp_server_name") in servers:
            found[tool["mcp_server_name"]] = {**servers[tool["mcp_server_name"]], "toolset": tool}
    return found


def _config(toolset: dict[str, Any], tool: str) -> tuple[bool, str]:
    default = toolset.get("default_config") or {}
    config: dict[str, Any] = next((c for c in toolset.get("configs") or [] if c.get("name") == tool), {})
    enabled = config.get("enabled")
    enabled = default.get("enabled", True) if enabled is None else enabled
    policy = (config.get("permission_policy") or default.get("permission_policy") or {}).get("type", "always_allow")
    return bool(enabled), str(policy)


TokenFor = Callable[[str], Awaitable[str | None]]


class McpServers:
    """A session run's view of its agent's MCP servers."""

    def __init__(self, agent: dict[str, Any], token_for: TokenFor) -> None:
        self.servers = toolsets(agent)
        self.token_for = token_for
        self._tools: dict[str, list[McpTool]] = {}

    def __bool__(self) -> bool:
        return bool(self.servers)

    async def tools(self) -> tuple[list[McpTool], list[McpFailure]]:
        """Every enabled tool of the servers that answer (listed once per run), and the failures."""
        found: list[McpTool] = []
        failures: list[McpFailure] = []
        for name, server in self.servers.items():
            if name not in self._tools:
                try:
                    self._tools[name] = await self._list(name, server)
                except McpFailure as failure:
                    failures.append(failure)
                    continue
            found.extend(self._tools[name])
        return found, failures

    def lookup(self, model_tool: str) -> McpTool | None:
        return next((t for tools in self._tools.values() for t in tools if t.model_name == model_tool), None)

    def find(self, server: str, tool: str) -> McpTool | None:
        return next((t for t in self._tools.get(server, []) if t.name == tool), None)

    async def _list(self, name: str, server: dict[str, Any]) -> list[McpTool]:
        tools: list[McpTool] = []
        async with self._client(name, server) as client:
            cursor: str | None = None
            while True:
                listing = await client.list_tools(cursor=cursor)
                for tool in listing.tools:
                    enabled, policy = _config(server["toolset"], tool.name)
                    if not enabled:
                        continue
                    annotations = tool.annotations
                    tools.append(
                        McpTool(
                            server=name,
                            name=tool.name,
                            model_name=model_name(name, tool.name),
                            description=tool.description or tool.title or tool.name,
                            input_schema=dict(tool.input_schema or {"type": "object"}),
                            policy=policy,
                            read_only=bool(annotations is not None and annotations.read_only_hint),
                        )
                    )
                cursor = listing.next_cursor
                if not cursor:
                    return tools

    async def call(self, server: str, tool: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Call the tool; a failure to reach the server is an error result the model sees."""
        spec = self.servers.get(server)
        if spec is None:
            return ToolOutcome.text(f"MCP server {server!r} is not configured for this agent", is_error=True)
        try:
            async with self._client(server, spec) as client:
                result = await client.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT)
        except McpFailure as failure:
            return ToolOutcome.text(f"{tool}: {failure.message}", is_error=True)
        except Exception as e:
            return ToolOutcome.text(f"{tool}: the MCP server failed: {_describe(e)}", is_error=True)
        content = [_block(item) for item in result.content]
        if not content and result.structured_content is not None:
            import json

            content = [{"type": "text", "text": json.dumps(result.structured_content)}]
        return ToolOutcome(content or [{"type": "text", "text": "(no output)"}], bool(result.is_error))

    @contextlib.asynccontextmanager
    async def _client(self, name: str, server: dict[str, Any]) -> AsyncIterator[Any]:
        import httpx2
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client

        url = server["url"]
        token = await self.token_for(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=CALL_TIMEOUT)
        refused: list[int] = []  # the SDK reports an HTTP 401 as a generic error: watch for it here

        async def watch(response: httpx2.Response) -> None:
            if response.status_code in (401, 403):
                refused.append(response.status_code)

        entered = False
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks={"response": [watch]}) as http,
                Client(streamable_http_client(url, http_client=http), mode="legacy", raise_exceptions=True) as client,
            ):
                entered = True
                yield client
        except McpFailure:
            raise
        except Exception as e:
            status = refused[0] if refused else _status(e)
            if entered and status not in (401, 403) and not _is_transport_failure(e):
                raise
            if status in (401, 403):
                raise McpFailure(
                    name, "authentication", f"MCP server {name!r} refused the credentials ({status})"
                ) from e
            raise McpFailure(name, "connection", f"cannot reach MCP server {name!r} at {url}: {_describe(e)}") from e


def _block(item: Any) -> dict[str, Any]:
    kind = getattr(item, "type", None)
    if kind == "text":
        return {"type": "text", "text": item.text}
    if kind == "image":
        return {"type": "image", "source": {"type": "base64", "media_type": item.mime_type, "data": item.data}}
    if kind == "resource":
        resource = item.resource
        body = getattr(resource, "text", None)
        return {"type": "text", "text": body if body is not None else f"[resource {resource.uri}]"}
    if kind == "resource_link":
        return {"type": "text", "text": f"[resource {getattr(item, 'uri', '')}]"}
    return {"type": "text", "text": str(item)}


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for inner in e.exceptions for leaf in _leaves(inner)]
    found = [e]
    cause = e.__cause__ or e.__context__
    if cause is not None and cause is not e:
        found += _leaves(cause)
    return found


def _status(e: BaseException) -> int | None:
    for leaf in _leaves(e):
        response = getattr(leaf, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _is_transport_failure(e: BaseException) -> bool:
    import httpx2

    return any(isinstance(leaf, httpx2.HTTPError | OSError) for leaf in _leaves(e))


def _describe(e: BaseException) -> str:
    leaves = _leaves(e)
    leaf = next((x for x in leaves if not isinstance(x, BaseExceptionGroup)), e)
    return str(leaf) or type(leaf).__name__
