"""The web_search tool, on a search backend the operator runs or subscribes to: a SearXNG
instance (`OMA_WEB_SEARCH_URL`, its JSON API: `/search?q=…&format=json`) or the Brave Search API
(`BRAVE_SEARCH_API_KEY`). It runs on the platform, not in the sandbox; the tool config's
`allowed_domains` / `blocked_domains` filter the results (a domain covers its subdomains). Without
a backend the tool is not offered to the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import Field
from yarl import URL

from core.tools.base import ToolContext, ToolError, ToolInput, ToolOutcome, clean_text

MAX_RESULTS = 10
_SNIPPET_CHARS = 500
_HEADERS = {"User-Agent": "open-managed-agents-web-search/0.1", "Accept": "application/json"}


@dataclass(frozen=True, slots=True)
class SearchBackend:
    """`kind` is `searxng` (url: the instance's base URL) or `brave` (url: the web search endpoint)."""

    kind: str
    url: str
    api_key: str | None = None


class WebSearchInput(ToolInput):
    query: str = Field(min_length=1, max_length=400)


async def web_search(args: WebSearchInput, ctx: ToolContext) -> ToolOutcome:
    backend = ctx.search
    if backend is None:
        raise ToolError("web search is not configured on this server")
    allowed = _domains(ctx.config.get("allowed_domains"))
    blocked = _domains(ctx.config.get("blocked_domains"))
    filtered = bool(allowed or blocked)
    session = ctx.http or aiohttp.ClientSession()
    try:
        if backend.kind == "brave":
            found = await _brave(session, backend, args.query, 20 if filtered else MAX_RESULTS, ctx.timeout)
        else:
            found = await _searxng(session, backend, args.query, ctx.timeout)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        reason = f"timed out after {ctx.timeout:g}s" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
        raise ToolError(f"the search backend failed: {reason}") from e
    finally:
        if ctx.http is None:
            await session.close()
    results = [r for r in found if _keep(r["url"], allowed, blocked)][:MAX_RESULTS]
    if not results:
        return ToolOutcome.text(f"No results for {args.query!r}.")
    lines = [f"Results for {args.query!r}:"]
    for i, r in enumerate(results, 1):
        lines.append(f"\n{i}. {r['title'] or r['url']}\n   {r['url']}")
        if r["snippet"]:
            lines.append("   " + r["snippet"][:_SNIPPET_CHARS])
    return ToolOutcome.text(clean_text("\n".join(lines)))


async def _searxng(session: aiohttp.ClientSession, backend: SearchBackend, query: str, limit: float) -> list[Any]:
    url = URL(backend.url.rstrip("/") + "/search").with_query(q=query, format="json")
    headers = dict(_HEADERS)
    if backend.api_key:
        headers["Authorization"] = f"Bearer {backend.api_key}"
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=limit)) as resp:
        if resp.status != 200:
            raise ToolError(f"the search backend answered HTTP {resp.status}")
        body = await resp.json(content_type=None)
    items = body.get("results") if isinstance(body, dict) else None
    return [_result(i.get("url"), i.get("title"), i.get("content")) for i in items or [] if isinstance(i, dict)]


async def _brave(
    session: aiohttp.ClientSession, backend: SearchBackend, query: str, count: int, limit: float
) -> list[Any]:
    url = URL(backend.url).with_query(q=query, count=str(count))
    headers = {**_HEADERS, "X-Subscription-Token": backend.api_key or ""}
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=limit)) as resp:
        if resp.status in (401, 403):
            raise ToolError("the search backend refused the API key")
        if resp.status != 200:
            raise ToolError(f"the search backend answered HTTP {resp.status}")
        body = await resp.json(content_type=None)
    web = body.get("web") if isinstance(body, dict) else None
    items = web.get("results") if isinstance(web, dict) else None
    return [_result(i.get("url"), i.get("title"), i.get("description")) for i in items or [] if isinstance(i, dict)]


def _result(url: Any, title: Any, snippet: Any) -> dict[str, str]:
    return {"url": str(url or ""), "title": str(title or "").strip(), "snippet": _plain(str(snippet or ""))}


def _plain(text: str) -> str:
    # Backends mark matches with <strong>/<b>; the model wants plain text.
    for tag in ("<strong>", "</strong>", "<b>", "</b>"):
        text = text.replace(tag, "")
    return " ".join(text.split())


def _domains(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(d).lower().strip(".") for d in value if isinstance(d, str) and d.strip(".")]


def _keep(url: str, allowed: list[str], blocked: list[str]) -> bool:
    try:
        host = (URL(url).host or "").lower().rstrip(".")
    except ValueError:
        return False
    if not host or not url.startswith(("http://", "https://")):
        return False

    def covers(domain: str) -> bool:
        return host == domain or host.endswith("." + domain)

    if any(covers(d) for d in blocked):
        return False
    return not allowed or any(covers(d) for d in allowed)
