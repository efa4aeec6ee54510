"""Bring-your-own-key: sessions run with the model key from a vault credential, never letting it out.

A real server (runner on, no model key in its settings) talks to the fake model server, which
answers 401 unless a request carries the key we expect; the official SDK drives the API."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from bot.cli import main as oma
from core import log
from core.db import vault_credentials
from core.fakes.model_server import FakeModelServer
from tests.scan import RecordingTransport, database_bytes, leaks
from tests.servers import LoopThread, ServerThread, database_url, make_settings

TERMINAL = ("session.status_idle", "session.status_terminated")


@pytest.fixture(scope="module")
def fake_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def fake(fake_loop: LoopThread) -> Iterator[FakeModelServer]:
    server = FakeModelServer()
    fake_loop.call(server.start)
    yield server
    fake_loop.call(server.stop)


@pytest.fixture(scope="module")
def byok_server(
    backend: str, fake: FakeModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"byok-{backend}")
    with database_url(backend, tmp) as url:
        # The server knows where the models are, but holds no key for them.
        settings = make_settings(
            url,
            runner_enabled=True,
            anthropic_api_key=None,
            anthropic_base_url=fake.url,
            openai_api_key=None,
            openai_base_url=fake.openai_base_url,
            openrouter_api_key=None,
            model_max_retries=0,
            data_dir=tmp / "data",
            lease_seconds=5,
        )
        srv = ServerThread(settings).start()
        yield srv
        srv.stop()


class World:
    def __init__(self, server: ServerThread, loop: LoopThread, fake: FakeModelServer) -> None:
        self.server, self.loop, self.fake = server, loop, fake
        self.transport = RecordingTransport()
        from core.keys import create_key, create_tenant

        async def mint() -> tuple[str, str]:
            tenant_id = await create_tenant(server.platform.db, "byok")
            return tenant_id, (await create_key(server.platform.db, "t", tenant_id)).key

        self.tenant_id, api_key = server.call(mint)
        self.client = anthropic.Anthropic(
            base_url=server.url,
            api_key=api_key,
            max_retries=0,
            timeout=30,
            http_client=httpx2.Client(transport=self.transport),
        )
        self.env_id = self.client.beta.environments.create(name="box").id

    def expect_key(self, key: str | None) -> None:
        """The fake answers 401 to any other key from now on."""

        def set_key() -> None:
            self.fake.api_key = key
            self.fake._queue.clear()

        self.loop.run(set_key)

    def reply(self, *args: Any, **kwargs: Any) -> None:
        self.loop.run(lambda: self.fake.reply(*args, **kwargs))

    def vault(self, *credentials: dict[str, Any], **kw: Any) -> str:
        vault_id = self.client.beta.vaults.create(display_name="keys", **kw).id
        for auth in credentials:
            self.client.beta.vaults.credentials.create(vault_id, auth=auth)  # type: ignore[arg-type]
        return vault_id

    def agent(self, model: str = "claude-sonnet-5") -> str:
        return self.client.beta.agents.create(
            name="byok", model=model, tools=[{"type": "agent_toolset_20260401"}], system="Be brief."
        ).id

    def run(self, agent_id: str, text: str, **session: Any) -> tuple[str, list[Any]]:
        session_id = self.client.beta.sessions.create(agent=agent_id, environment_id=self.env_id, **session).id
        seen: list[Any] = []
        with self.client.beta.sessions.events.stream(session_id) as stream:
            self.client.beta.sessions.events.send(
                session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": text}]}]
            )
            for event in stream:
                seen.append(event)
                if event.type in TERMINAL:
                    break
        return session_id, seen

    def key_sources(self, session_id: str) -> list[dict[str, Any]]:
        """The private `_model_key` of every model request span: where its key came from."""

        async def read() -> list[dict[str, Any]]:
            async with self.server.platform.db.read() as conn:
                events = await log.read_all(conn, session_id)
            return [e.payload["_model_key"] for e in events if e.type == "span.model_request_start"]

        return self.server.call(read)


@pytest.fixture
def world(byok_server: ServerThread, fake_loop: LoopThread, fake: FakeModelServer) -> Iterator[World]:
    w = World(byok_server, fake_loop, fake)
    yield w
    w.client.close()
    w.expect_key(None)


def text_of(events: list[Any]) -> str:
    return " ".join(b.text for e in events if e.type == "agent.message" for b in e.content)


def test_a_session_runs_on_the_vault_key_and_nothing_leaks(
    world: World, byok_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = "sk-ant-byok-" + secrets.token_hex(24)
    world.expect_key(key)
    vault_id = world.vault({"type": "anthropic_api_key", "api_key": key})
    (credential,) = world.client.beta.vaults.credentials.list(vault_id)
    world.reply("Let me look.", tool_use={"name": "bash", "input": {"command": "echo checked"}})
    world.reply("All checked.", usage={"input_tokens": 30, "output_tokens": 4})

    session_id, events = world.run(world.agent(), "check it", vault_ids=[vault_id])

    assert events[-1].type == "session.status_idle", [e.type for e in events]
    assert "All checked." in text_of(events)
    result = next(e for e in events if e.type == "agent.tool_result")
    assert not result.is_error and "checked" in result.content[0].text
    # The fake refuses any other key, and it served both calls: it received the vault's key.
    assert len(world.fake.requests) >= 2
    # The session records where the key came from and what was used, never the key.
    assert (
        world.key_sources(session_id) == [{"source": "vault", "vault_id": vault_id, "credential_id": credential.id}] * 2
    )
    session = world.client.beta.sessions.retrieve(session_id)
    assert session.vault_ids == [vault_id] and session.usage.output_tokens >= 4
    # Every response the client received, a few more reads, the logs and the database: no key.
    list(world.client.beta.sessions.events.list(session_id))
    list(world.client.beta.sessions.list())
    world.client.beta.vaults.credentials.retrieve(credential.id, vault_id=vault_id)
    world.client.beta.vaults.retrieve(vault_id)
    received = world.transport.everything()
    assert b"All checked." in received and vault_id.encode() in received
    assert leaks(received, [key]) == []
    # Every log record of the server (its threads; the test's own SDK client, on the main
    # thread, logs the request bodies it sends at DEBUG: the caller's log, not ours).
    server_logs = [caplog.handler.format(r) for r in caplog.records if r.threadName != "MainThread"]
    # Among them, the provider SDK's debug log of the model calls made with the key.
    assert any("/v1/messages" in line for line in server_logs)
    assert leaks("\n".join(server_logs), [key]) == []
    assert leaks(database_bytes(byok_server.settings.database_url), [key]) == []


def test_key_order_session_vaults_then_tenant_default_then_settings(world: World) -> None:
    first, second, default = (f"sk-ant-{name}-" + secrets.token_hex(8) for name in ("first", "second", "default"))
    openai_only = world.vault({"type": "openai_api_key", "api_key": "sk-openai-" + secrets.token_hex(8)})
    vault_first = world.vault({"type": "anthropic_api_key", "api_key": first})
    vault_second = world.vault({"type": "anthropic_api_key", "api_key": second})
    vault_default = world.vault(
        {"type": "anthropic_api_key", "api_key": default}, metadata={"oma.tenant_default": "true"}
    )
    agent_id = world.agent()

    # The session's vaults, in order: one without an Anthropic key is passed over.
    world.expect_key(first)
    session_id, events = world.run(agent_id, "one", vault_ids=[openai_only, vault_first, vault_second])
    assert events[-1].type == "session.status_idle" and "echo: one" in text_of(events)
    assert world.key_sources(session_id)[0]["vault_id"] == vault_first

    world.expect_key(second)
    session_id, events = world.run(agent_id, "two", vault_ids=[vault_second, vault_first])
    assert "echo: two" in text_of(events)

    # No key in the session's vaults: the tenant's default vault.
    world.expect_key(default)
    session_id, events = world.run(agent_id, "three", vault_ids=[openai_only])
    assert "echo: three" in text_of(events)
    assert world.key_sources(session_id)[0]["vault_id"] == vault_default
    session_id, events = world.run(agent_id, "four")
    assert "echo: four" in text_of(events)

    # An archived credential is never used; with no key left anywhere the session fails clearly.
    (credential,) = world.client.beta.vaults.credentials.list(vault_default)
    world.client.beta.vaults.credentials.archive(credential.id, vault_id=vault_default)
    session_id, events = world.run(agent_id, "five")
    assert events[-1].type == "session.status_terminated"
    error = next(e for e in events if e.type == "session.error")
    assert "no API key for provider 'anthropic'" in error.error.message
    assert "vault" in error.error.message


def test_openai_compatible_gateway_from_a_vault(world: World) -> None:
    key = "sk-gw-" + secrets.token_hex(16)
    vault_id = world.vault(
        {"type": "openai_compatible", "provider": "acme", "base_url": world.fake.openai_base_url, "api_key": key}
    )
    world.expect_key(key)
    world.reply("Hello from the gateway.")
    before = len(world.fake.requests)
    _, events = world.run(world.agent("acme/llama-5-70b"), "hi", vault_ids=[vault_id])
    assert events[-1].type == "session.status_idle", [e.type for e in events]
    assert "Hello from the gateway." in text_of(events)
    (request,) = world.fake.requests[before:]
    assert request.protocol.value == "openai" and request.body["model"] == "llama-5-70b"
    # Without the vault nobody knows the gateway "acme".
    _, events = world.run(world.agent("acme/llama-5-70b"), "hi")
    assert events[-1].type == "session.status_terminated"
    assert "cannot tell which provider serves model 'acme/llama-5-70b'" in text_of_errors(events)


def text_of_errors(events: list[Any]) -> str:
    return " ".join(e.error.message for e in events if e.type == "session.error")


def test_a_wrong_key_in_the_vault_fails_the_session_without_showing_it(world: World) -> None:
    wrong = "sk-ant-wrong-" + secrets.token_hex(16)
    world.expect_key("sk-ant-right-" + secrets.token_hex(16))
    vault_id = world.vault({"type": "anthropic_api_key", "api_key": wrong})
    _, events = world.run(world.agent(), "hi", vault_ids=[vault_id])
    assert events[-1].type == "session.status_terminated"
    assert "401" in text_of_errors(events) and wrong not in world.transport.everything().decode()


def test_rotation_while_the_server_runs(
    world: World, byok_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`oma vault rotate-key` next to a running server: the server reads the new keyring file on
    its own, keeps opening every secret and seals new ones with the new key."""
    key = "sk-ant-rotate-" + secrets.token_hex(16)
    vault_id = world.vault({"type": "anthropic_api_key", "api_key": key})
    agent_id = world.agent()
    settings = byok_server.settings
    monkeypatch.setenv("OMA_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("OMA_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("OMA_MASTER_KEY", raising=False)
    keyring = Path(settings.data_dir) / "vault-keyring.json"
    before = keyring.read_bytes()

    oma(["vault", "rotate-key"])

    assert keyring.read_bytes() != before
    world.expect_key(key)
    _, events = world.run(agent_id, "after rotation", vault_ids=[vault_id])
    assert "echo: after rotation" in text_of(events)

    async def key_ids() -> set[str]:
        async with byok_server.platform.db.read() as conn:
            rows = await conn.execute(vault_credentials.select().where(vault_credentials.c.secret.is_not(None)))
            return {r.key_id for r in rows}

    active = byok_server.platform.vaults.box.active_key_id  # type: ignore[union-attr]
    assert byok_server.call(key_ids) == {active}
    newer = world.vault({"type": "anthropic_api_key", "api_key": key})
    assert byok_server.call(key_ids) == {active}
    world.expect_key(key)
    _, events = world.run(agent_id, "newer", vault_ids=[newer])
    assert "echo: newer" in text_of(events)


async def test_provider_clients_are_bounded_and_dropped_ones_closed_after_a_grace() -> None:
    from core.providers import Endpoint, ProviderConfig, Providers

    providers = Providers(ProviderConfig(anthropic=Endpoint("http://127.0.0.1:9/", None)), max_clients=2, close_grace=0)
    resolve = providers.resolve

    def closed(provider: Any) -> bool:
        return bool(provider._client.is_closed())

    first, _ = resolve("claude-sonnet-5", api_key="sk-ant-1")
    second, _ = resolve("claude-sonnet-5", api_key="sk-ant-2")
    assert resolve("claude-sonnet-5", api_key="sk-ant-1")[0] is first  # reused, and now the freshest
    third, _ = resolve("claude-sonnet-5", api_key="sk-ant-3")
    # The least recently used (key 2) was dropped: a new client if asked again, and closed after its grace.
    assert resolve("claude-sonnet-5", api_key="sk-ant-1")[0] is first
    for _ in range(1000):  # let the loop run the close (grace 0): no wall-clock wait
        if closed(second):
            break
        await asyncio.sleep(0)
    assert closed(second)
    assert not closed(first) and not closed(third)
    await providers.close()
    assert closed(first) and closed(third)
