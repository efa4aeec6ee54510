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
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from core.tools.base import ToolOutcome

log = logging.getLogger("oma.mcp")
T = TypeVar("T")

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


class TokenSource(Protocol):
    """Where a session's MCP bearer tokens come from (core/mcp_oauth.py: its vaults)."""

    async def token(self, url: str) -> str | None: ...

    async def refreshed(self, url: str, stale: str) -> str | None:
        """After the server refused `stale`: another token to try, or None."""


class NoTokens:
    async def token(self, url: str) -> str | None:
        return None

    async def refreshed(self, url: str, stale: str) -> str | None:
        return None


class McpServers:
    """A session run's view of its agent's MCP servers."""

    def __init__(self, agent: dict[str, Any], tokens: TokenSource) -> None:
        self.servers = toolsets(agent)
        self.tokens = tokens
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

    async def _authorized(self, name: str, server: dict[str, Any], work: Callable[[Any], Awaitable[T]]) -> T:
        """`work(client)` on a connection with the session's token; when the server refuses it,
        once more with a refreshed one (an expired OAuth access token)."""
        url = server["url"]
        token = await self.tokens.token(url)
        try:
            async with connect(name, url, token) as client:
                return await work(client)
        except McpFailure as failure:
            if failure.kind != "authentication" or not token:
                raise
            fresh = await self.tokens.refreshed(url, token)
            if not fresh:
                raise
        async with connect(name, url, fresh) as client:
            return await work(client)

    async def _list(self, name: str, server: dict[str, Any]) -> list[McpTool]:
        return await self._authorized(name, server, lambda client: self._listing(name, server, client))

    async def _listing(self, name: str, server: dict[str, Any], client: Any) -> list[McpTool]:
        tools: list[McpTool] = []
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

        async def run(client: Any) -> Any:
            return await client.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT)

        try:
            result = await self._authorized(server, spec, run)
        except McpFailure as failure:
            return ToolOutcome.text(f"{tool}: {failure.message}", is_error=True)
        except Exception as e:
            return ToolOutcome.text(f"{tool}: the MCP server failed: {_describe(e)}", is_error=True)
        content = [_block(item) for item in result.content]
        if not content and result.structured_content is not None:
            content = [{"type": "text", "text": json.dumps(result.structured_content)}]
        return ToolOutcome(content or [{"type": "text", "text": "(no output)"}], bool(result.is_error))


@contextlib.asynccontextmanager
async def connect(name: str, url: str, token: str | None, responses: list[Any] | None = None) -> AsyncIterator[Any]:
    """An initialized MCP client for the server at `url`; McpFailure when it cannot be had.
    `responses` collects the HTTP error responses seen (status, content type, body)."""
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx2.Timeout(CONNECT_TIMEOUT, read=CALL_TIMEOUT)
    refused: list[int] = []  # the SDK reports an HTTP 401 as a generic error: watch for it here

    async def watch(response: httpx2.Response) -> None:
        if response.status_code in (401, 403):
            refused.append(response.status_code)
        if response.status_code >= 400 and responses is not None:
            body = (await response.aread()).decode(errors="replace")
            responses.append((response.status_code, response.headers.get("content-type", ""), body))

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
            raise McpFailure(name, "authentication", f"MCP server {name!r} refused the credentials ({status})") from e
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


async def probe(url: str, token: str | None) -> dict[str, Any] | None:
    """Connect to the MCP server at `url` with `token`, initialize and list its tools: None if all
    went well, else the failing step as the validation object's `mcp_probe` shows it."""
    from core.mcp_oauth import captured

    responses: list[Any] = []
    method = "initialize"
    try:
        async with connect("probe", url, token, responses) as client:
            method = "tools/list"
            await client.list_tools()
    except Exception as e:
        log.info("mcp probe of %s failed at %s: %s", url, method, _describe(e))
        http = captured(*responses[-1]) if responses else None
        return {"method": method, "http_response": http}
    return None
