"""web_search against local servers speaking the SearXNG JSON API and the Brave Search API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from core.tools import run_tool
from core.tools.web_search import SearchBackend

RESULTS = [
    ("https://docs.python.org/3/library/asyncio.html", "asyncio — Asynchronous I/O", "asyncio is a <b>library</b>"),
    ("https://blog.example.com/asyncio-tips", "Ten asyncio tips", "Tips   for\nasyncio"),
    ("https://spam.example.net/asyncio", "Buy asyncio", "spam"),
    ("ftp://files.example.org/asyncio.tar", "A tarball", "not a web page"),
]


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def searxng(request: web.Request) -> web.Response:
        seen.append({"api": "searxng", "query": dict(request.query), "auth": request.headers.get("Authorization")})
        if request.query.get("format") != "json":
            return web.Response(status=403, text="json output disabled")
        results = [{"url": u, "title": t, "content": c} for u, t, c in RESULTS]
        return web.json_response({"query": request.query["q"], "results": results})

    async def brave(request: web.Request) -> web.Response:
        seen.append(
            {"api": "brave", "query": dict(request.query), "token": request.headers.get("X-Subscription-Token")}
        )
        if request.headers.get("X-Subscription-Token") != "brave-key":
            return web.json_response(
                {"type": "ErrorResponse", "error": {"code": "SUBSCRIPTION_TOKEN_INVALID"}}, status=401
            )
        results = [{"url": u, "title": t, "description": c} for u, t, c in RESULTS]
        return web.json_response({"type": "search", "web": {"type": "search", "results": results}})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    app = web.Application()
    app.router.add_get("/search", searxng)
    app.router.add_get("/res/v1/web/search", brave)
    app.router.add_get("/broken/search", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", seen
    await runner.cleanup()


async def search(backend: SearchBackend, query: str, **config: Any) -> tuple[str, bool]:
    outcome = await run_tool("web_search", {"query": query}, sandbox=None, config=config, search=backend, timeout=10)
    return outcome.content[0]["text"], outcome.is_error


async def test_searxng_results_are_listed_plainly(backend: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = backend
    text, is_error = await search(SearchBackend("searxng", url, "searx-token"), "asyncio")
    assert not is_error
    assert "1. asyncio — Asynchronous I/O\n   https://docs.python.org/3/library/asyncio.html" in text
    assert "asyncio is a library" in text and "Tips for asyncio" in text  # markup and spacing cleaned
    assert "ftp://" not in text  # not a web page
    assert seen[-1]["query"] == {"q": "asyncio", "format": "json"} and seen[-1]["auth"] == "Bearer searx-token"


async def test_brave_results_and_domain_filters(backend: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = backend
    brave = SearchBackend("brave", url + "/res/v1/web/search", "brave-key")
    text, _ = await search(brave, "asyncio", blocked_domains=["example.net"])
    assert "spam.example.net" not in text and "blog.example.com" in text
    assert seen[-1]["token"] == "brave-key" and seen[-1]["query"]["count"] == "20"  # more, to filter from
    only, _ = await search(brave, "asyncio", allowed_domains=["example.com"])
    assert "blog.example.com" in only and "docs.python.org" not in only  # a domain covers its subdomains
    none, is_error = await search(brave, "asyncio", allowed_domains=["nowhere.invalid"])
    assert (none, is_error) == ("No results for 'asyncio'.", False)


async def test_backend_failures_are_tool_errors(backend: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = backend
    refused, is_error = await search(SearchBackend("brave", url + "/res/v1/web/search", "wrong"), "asyncio")
    assert is_error and "refused the API key" in refused
    broken, is_error = await search(SearchBackend("searxng", url + "/broken"), "asyncio")
    assert is_error and "HTTP 502" in broken
    unconfigured, is_error = await search(None, "asyncio")  # type: ignore[arg-type]
    assert is_error and "not configured" in unconfigured
    empty = await run_tool("web_search", {"query": ""}, sandbox=None, search=SearchBackend("searxng", url))
    assert empty.is_error and "Invalid input" in empty.content[0]["text"]


def test_the_server_offers_web_search_only_with_a_backend() -> None:
    from bot.app import search_backend
    from bot.config import Settings

    assert search_backend(Settings(database_url="sqlite:///x.db")) is None
    searx = search_backend(Settings(database_url="sqlite:///x.db", web_search_url="http://searx:8080"))
    assert searx == SearchBackend("searxng", "http://searx:8080", None)
    brave = search_backend(Settings(database_url="sqlite:///x.db", BRAVE_SEARCH_API_KEY="k"))
    assert brave is not None and (brave.kind, brave.api_key) == ("brave", "k")


def test_a_session_searches_without_opening_a_sandbox(tmp_path: Any) -> None:
    """End to end: the server offers web_search (a SearXNG backend is set), the model calls it,
    the result comes back; the session's sandbox is never opened for it."""
    import anthropic

    from core.fakes.model_server import FakeModelServer
    from tests.servers import LoopThread, ServerThread, database_url, make_settings

    loop = LoopThread()
    model = FakeModelServer()
    loop.call(model.start)

    async def start_searx() -> tuple[web.AppRunner, str]:
        async def searxng(request: web.Request) -> web.Response:
            results = [{"url": u, "title": t, "content": c} for u, t, c in RESULTS]
            return web.json_response({"results": results})

        app = web.Application()
        app.router.add_get("/search", searxng)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return runner, f"http://{host}:{port}"

    searx_runner, searx_url = loop.call(start_searx)
    try:
        with database_url("sqlite", tmp_path) as url:
            settings = make_settings(
                url,
                runner_enabled=True,
                anthropic_api_key="sk-ant-test",
                anthropic_base_url=model.url,
                data_dir=tmp_path / "data",
                sandbox_runtime="no-such-runtime",  # any use of the sandbox would fail the tool
                web_search_url=searx_url,
            )
            server = ServerThread(settings).start()
            try:
                from core.keys import create_key, create_tenant

                async def mint() -> str:
                    tenant = await create_tenant(server.platform.db, "search")
                    return (await create_key(server.platform.db, "t", tenant)).key

                loop.run(
                    lambda: model.reply("Searching.", tool_use={"name": "web_search", "input": {"query": "asyncio"}})
                )
                loop.run(lambda: model.reply("Found it."))
                with anthropic.Anthropic(base_url=server.url, api_key=server.call(mint), max_retries=0) as client:
                    tools: Any = [{"type": "agent_toolset_20260401"}]
                    agent = client.beta.agents.create(name="searcher", model="claude-sonnet-5", tools=tools)
                    env = client.beta.environments.create(name="web")
                    session = client.beta.sessions.create(agent=agent.id, environment_id=env.id)
                    seen: list[Any] = []
                    with client.beta.sessions.events.stream(session.id) as stream:
                        text = [{"type": "text", "text": "what is asyncio?"}]
                        client.beta.sessions.events.send(session.id, events=[{"type": "user.message", "content": text}])
                        for event in stream:
                            seen.append(event)
                            if event.type in ("session.status_idle", "session.status_terminated"):
                                break
                result = next(e for e in seen if e.type == "agent.tool_result")
                assert not result.is_error, result.content
                assert "https://docs.python.org/3/library/asyncio.html" in result.content[0].text
                offered = {t["name"] for t in model.requests[0].body["tools"]}
                assert "web_search" in offered
            finally:
                server.stop()
    finally:
        loop.call(searx_runner.cleanup)
        loop.call(model.stop)
        loop.stop()
