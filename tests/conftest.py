from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from core.fakes.model_server import FakeModelServer
from core.keys import create_key, create_tenant
from tests.servers import LoopThread, ServerThread, database_url, make_settings, postgres_admin_url

BACKENDS = ["sqlite", "postgres"]


def _backend_param(name: str) -> object:
    if name == "postgres" and postgres_admin_url() is None:
        return pytest.param(name, marks=pytest.mark.skip(reason="set OMA_TEST_DATABASE_URL to run on PostgreSQL"))
    return name


@pytest.fixture(scope="session", params=[_backend_param(b) for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with database_url(backend, tmp_path_factory.mktemp(backend)) as url:
        yield url


@pytest.fixture(scope="session")
def server(db_url: str) -> Iterator[ServerThread]:
    srv = ServerThread(make_settings(db_url)).start()
    yield srv
    srv.stop()


@pytest.fixture
def api_key(server: ServerThread) -> str:
    """A fresh tenant per test: tests share a server but never see each other's objects."""

    async def mint() -> str:
        db = server.platform.db
        tenant_id = await create_tenant(db, "test")
        return (await create_key(db, "test", tenant_id)).key

    return server.call(mint)


@pytest.fixture
def client(server: ServerThread, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    """An event loop in a thread for the fake servers a test module drives."""
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def model(loop: LoopThread) -> Iterator[FakeModelServer]:
    """The scripted fake model server (Anthropic and OpenAI wire protocols)."""
    server = FakeModelServer()
    loop.call(server.start)
    yield server
    loop.call(server.stop)


@pytest.fixture
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
