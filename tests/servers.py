"""Test infrastructure: a real server on an ephemeral port in its own thread and event loop, and
throw-away databases (a SQLite file, or a fresh PostgreSQL database per run)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from bot.app import create_app
from bot.config import Settings
from core.migrate import upgrade
from core.platform import PLATFORM, Platform

T = TypeVar("T")

POSTGRES_ENV = "OMA_TEST_DATABASE_URL"


def postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database on the server named by OMA_TEST_DATABASE_URL; drop it afterwards."""
    import asyncpg

    admin = postgres_admin_url()
    assert admin is not None
    dsn = Settings(database_url=admin).database_url.replace("postgresql+asyncpg://", "postgresql://")
    name = "oma_test_" + secrets.token_hex(6)

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    base, _, _ = dsn.rpartition("/")
    try:
        yield f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"
    finally:
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def database_url(backend: str, tmp_dir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_dir / 'oma.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


class ServerThread:
    """`oma serve` in a background thread: the tests talk to it over real HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready: Future[str] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="oma-test-server", daemon=True)
        self.app: web.Application | None = None

    def start(self) -> ServerThread:
        upgrade(self.settings.database_url)
        self._thread.start()
        self.url = self._ready.result(timeout=30)
        return self

    @property
    def platform(self) -> Platform:
        assert self.app is not None
        return self.app[PLATFORM]

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the server's loop (e.g. to mint a tenant key) and wait for it."""
        return asyncio.run_coroutine_threadsafe(_await(fn), self.loop).result(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.app = create_app(self.settings)
            runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        except BaseException as exc:
            self._ready.set_exception(exc)
            raise
        self._ready.set_result(f"http://127.0.0.1:{port}")
        await self._stop.wait()
        await runner.cleanup()

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)


async def _await(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


class LoopThread:
    """An asyncio loop in a background thread, for async services the sync tests drive
    (e.g. the fake model server): `call` runs a coroutine there, `run` a plain function."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return asyncio.run_coroutine_threadsafe(_await(fn), self.loop).result(timeout=60)

    def run(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.call(wrapper)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "stream_ping_seconds": 0.5,
        "api_key": None,
        "runner_enabled": False,
        # Tests of the runner use the local runtime; the sandbox suites cover the isolating ones.
        "sandbox_runtime": "local-subprocess",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def hosted_service(runtime: str) -> Iterator[dict[str, Any]]:
    """For a hosted sandbox runtime (e2b, daytona): its fake service (core/fakes), started in a
    loop thread of its own; yields the `SandboxOptions` fields that point the runtime at it.
    Any other runtime: yields {}."""
    if runtime not in ("e2b", "daytona"):
        yield {}
        return
    thread = LoopThread()
    fake: Any = None
    try:
        if runtime == "e2b":
            from core.fakes.e2b_api import FakeE2B

            fake = thread.call(lambda: FakeE2B().start())
            options = {"api_url": fake.url, "credentials": {"api_key": fake.api_key, "sandbox_url": fake.url}}
        else:
            from core.fakes.daytona_api import FakeDaytona

            fake = thread.call(lambda: FakeDaytona().start())
            options = {"api_url": fake.url, "credentials": {"api_key": fake.api_key}}
        yield options
    finally:
        if fake is not None:
            thread.call(fake.stop)
        thread.stop()


TERMINAL = ("session.status_idle", "session.status_terminated")


def converse(client: Any, session_id: str, events: list[Any]) -> list[Any]:
    """Open the session's stream, send `events`, and collect what streams until it idles or ends."""
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=events)
        for event in stream:
            seen.append(event)
            if event.type in TERMINAL:
                break
    return seen
