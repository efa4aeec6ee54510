"""The web_fetch tool. It runs on the platform (not in the sandbox), follows redirects itself so
every hop is checked against the tool config's allowed_domains / blocked_domains, and by default
refuses hosts that resolve to private, loopback or link-local addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import aiohttp
from yarl import URL

from core.tools.base import ToolContext, ToolError, ToolInput, ToolOutcome, clean_text
from core.tools.html_text import html_to_text

MAX_FETCH_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_CHARS = 100_000
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = {
    "User-Agent": "open-managed-agents-web-fetch/0.1",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.8",
}
_TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-yaml")


class WebFetchInput(ToolInput):
    url: str


async def web_fetch(args: WebFetchInput, ctx: ToolContext) -> ToolOutcome:
    url = _parse(args.url)
    max_chars = _max_chars(ctx.config)
    timeout = aiohttp.ClientTimeout(total=ctx.timeout)
    session = ctx.http or aiohttp.ClientSession()
    try:
        for _ in range(MAX_REDIRECTS + 1):
            await _check_url(url, ctx)
            async with session.get(url, allow_redirects=False, timeout=timeout, headers=_HEADERS) as resp:
                location = resp.headers.get("Location")
                if resp.status in _REDIRECTS and location:
                    url = _parse(str(url.join(URL(location))))
                    continue
                body, cut = await _read_capped(resp)
                return _render(url, resp, body, cut, max_chars)
        raise ToolError(f"too many redirects (more than {MAX_REDIRECTS}) fetching {args.url}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        reason = f"timed out after {ctx.timeout:g}s" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
        raise ToolError(f"fetching {url} failed: {reason}") from e
    finally:
        if ctx.http is None:
            await session.close()


def _parse(raw: str) -> URL:
    try:
        url = URL(raw.strip())
    except ValueError as e:
        raise ToolError(f"not a valid URL: {raw!r}") from e
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolError(f"only absolute http:// and https:// URLs can be fetched, not {raw!r}")
    return url


def _max_chars(config: dict[str, Any]) -> int:
    tokens = config.get("max_content_tokens")
    return tokens * 4 if isinstance(tokens, int) and tokens > 0 else DEFAULT_MAX_CHARS


async def _check_url(url: URL, ctx: ToolContext) -> None:
    host = (url.host or "").lower().rstrip(".")
    allowed = ctx.config.get("allowed_domains") or []
    blocked = ctx.config.get("blocked_domains") or []
    if any(_matches(rule, host, url.path) for rule in blocked):
        raise ToolError(f"{host} is blocked by this agent's web_fetch configuration (blocked_domains)")
    if allowed and not any(_matches(rule, host, url.path) for rule in allowed):
        raise ToolError(f"{host} is not in this agent's web_fetch allowed_domains ({', '.join(map(str, allowed))})")
    if not ctx.allow_private_addresses:
        for address in await _addresses(host, url.port or 80):
            if not address.is_global:
                raise ToolError(f"refusing to fetch {host}: it is a private or local address ({address})")


def _matches(rule: object, host: str, path: str) -> bool:
    """`example.com` matches it and its subdomains; `example.com/docs` also needs the path under /docs."""
    if not isinstance(rule, str):
        return False
    rule = rule.strip().lower()
    rule = rule.split("://", 1)[-1]
    rule_host, _, rule_path = rule.partition("/")
    rule_host = rule_host.split(":", 1)[0].removeprefix("*.").rstrip(".")
    if not rule_host or not (host == rule_host or host.endswith("." + rule_host)):
        return False
    prefix = "/" + rule_path.strip("/")
    return not rule_path.strip("/") or path == prefix or path.startswith(prefix + "/")


async def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [_unmapped(literal)]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ToolError(f"cannot resolve {host}: {e.strerror or e}") from e
    return [_unmapped(ipaddress.ip_address(info[4][0])) for info in infos]


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _read_capped(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_FETCH_BYTES:
            return bytes(body[:MAX_FETCH_BYTES]), True
    return bytes(body), False


def _render(url: URL, resp: aiohttp.ClientResponse, body: bytes, cut: bool, max_chars: int) -> ToolOutcome:
    content_type = resp.content_type.lower()
    text = body.decode(_charset(resp.charset), "replace")
    is_html = content_type in ("text/html", "application/xhtml+xml") or (
        content_type == "application/octet-stream" and "<html" in text[:1000].lower()
    )
    is_text = is_html or content_type.startswith("text/") or content_type in _TEXT_TYPES
    is_text = is_text or content_type.endswith(("+json", "+xml"))
    title = ""
    if is_html:
        title, text = html_to_text(text, str(url))
    if not 200 <= resp.status < 300:
        snippet = clean_text(text.strip()[:500]) if is_text else ""
        message = f"HTTP {resp.status} {resp.reason or ''}".rstrip() + f" fetching {url}"
        raise ToolError(message + (f"\n{snippet}" if snippet else ""))
    if not is_text:
        raise ToolError(f"{url} returned {content_type} ({len(body)} bytes); web_fetch can only return text and HTML")
    header = f"URL: {url}\nContent-Type: {content_type}\n" + (f"Title: {title}\n" if title else "")
    note = ""
    if len(text) > max_chars:
        text, note = text[:max_chars], f"\n[content truncated at {max_chars} characters]"
    elif cut:
        note = f"\n[content truncated: the response is over {MAX_FETCH_BYTES} bytes]"
    return ToolOutcome.text(clean_text(f"{header}\n{text}{note}"))


def _charset(charset: str | None) -> str:
    if charset:
        try:
            "".encode(charset)
            return charset
        except LookupError:
            pass
    return "utf-8"
