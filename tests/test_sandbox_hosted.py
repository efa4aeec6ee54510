"""Hosted sandbox runtimes (e2b, daytona) end to end: a real server whose environment chooses the
runtime (metadata `oma.runtime`), the runtime's key taken from the session's vault (an
`environment_variable` credential), the service a local fake of its API (core/fakes) driven by the
real SDK. The conformance suite (test_sandbox_conformance.py) covers the contract itself."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from core.fakes.model_server import FakeModelServer
from tests.scan import database_bytes, leaks
from tests.servers import TERMINAL, LoopThread, ServerThread, converse, database_url, make_settings

KEY_NAMES = {"e2b": "E2B_API_KEY", "daytona": "DAYTONA_API_KEY"}


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def model(loop: LoopThread) -> Iterator[FakeModelServer]:
    server = FakeModelServer()
    loop.call(server.start)
    yield server
    loop.call(server.stop)


@pytest.fixture(scope="module", params=["e2b", "daytona"])
def service(request: pytest.FixtureRequest, loop: LoopThread) -> Iterator[tuple[str, Any]]:
    runtime = str(request.param)
    if runtime == "e2b":
        from core.fakes.e2b_api import FakeE2B

        fake: Any = FakeE2B(api_key="e2b_" + secrets.token_hex(20))
    else:
        from core.fakes.daytona_api import FakeDaytona

        fake = FakeDaytona(api_key="dtn_" + secrets.token_hex(20))
    loop.call(fake.start)
    yield runtime, fake
    loop.call(fake.stop)


@pytest.fixture(scope="module")
def server(
    backend: str, model: FakeModelServer, service: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    runtime, fake = service
    tmp = tmp_path_factory.mktemp(f"hosted-{runtime}-{backend}")
    endpoints: dict[str, Any] = (
        {"e2b_api_url": fake.url, "e2b_sandbox_url": fake.url} if runtime == "e2b" else {"daytona_api_url": fake.url}
    )
    with database_url(backend, tmp) as url:
        # The server knows where the service is, but holds no key for it: sessions bring theirs.
        settings = make_settings(
            url,
            runner_enabled=True,
            anthropic_api_key="sk-ant-test",
            anthropic_base_url=model.url,
            model_max_retries=0,
            data_dir=tmp / "data",
            lease_seconds=5,
            sandbox_runtime="local-subprocess",
            **endpoints,
        )
        srv = ServerThread(settings).start()
        yield srv
        srv.stop()


@pytest.fixture(autouse=True)
def fresh_model(model: FakeModelServer, loop: LoopThread) -> None:
    """Each test scripts the model from an empty queue (the server and its `client` are conftest's)."""
    loop.run(lambda: model._queue.clear())


def run(client: anthropic.Anthropic, env_id: str, text: str, **session: Any) -> tuple[str, list[Any]]:
    tools: Any = [{"type": "agent_toolset_20260401"}]
    agent = client.beta.agents.create(name="hosted", model="claude-sonnet-5", tools=tools)
    session_id = client.beta.sessions.create(agent=agent.id, environment_id=env_id, **session).id
    message = {"type": "user.message", "content": [{"type": "text", "text": text}]}
    return session_id, converse(client, session_id, [message])


def test_a_session_runs_its_tools_in_the_hosted_sandbox_with_the_vault_key(
    client: anthropic.Anthropic,
    server: ServerThread,
    service: tuple[str, Any],
    model: FakeModelServer,
    loop: LoopThread,
    tmp_path: Path,
) -> None:
    runtime, fake = service
    env = client.beta.environments.create(
        name=f"{runtime}-box",
        config={"type": "cloud", "networking": {"type": "limited"}},
        metadata={"oma.runtime": runtime},
    )
    vault = client.beta.vaults.create(display_name="sandbox keys")
    client.beta.vaults.credentials.create(
        vault.id,
        auth={  # type: ignore[arg-type]
            "type": "environment_variable",
            "secret_name": KEY_NAMES[runtime],
            "secret_value": fake.api_key,
            "networking": {"type": "unrestricted"},
        },
    )
    marker = secrets.token_hex(6)
    loop.run(
        lambda: model.reply("Looking.", tool_use={"name": "bash", "input": {"command": f"echo {marker} > f.txt; pwd"}})
    )
    loop.run(lambda: model.reply("Done."))

    session_id, events = run(client, env.id, "work", vault_ids=[vault.id])

    assert events[-1].type == "session.status_idle", [e.type for e in events]
    result = next(e for e in events if e.type == "agent.tool_result")
    assert not result.is_error, result.content
    workspace = result.content[0].text.strip()
    # The command ran in the service's machine, tagged with the session, networking off as asked.
    (box,) = [b for b in fake.sandboxes.values() if session_id in str(getattr(b, "metadata", None) or b.labels)]
    assert workspace == str(Path(box.home) / "workspace")
    assert (Path(workspace) / "f.txt").read_text() == marker + "\n"
    if runtime == "e2b":
        assert box.allow_internet_access is False
    else:
        assert box.network_block_all is True
    # The key reached the service and nowhere else: not the events, not the database in clear.
    assert leaks(repr(list(client.beta.sessions.events.list(session_id))), [fake.api_key]) == []
    assert leaks(database_bytes(server.settings.database_url), [fake.api_key]) == []


def test_without_a_key_the_tool_fails_clearly(
    client: anthropic.Anthropic, service: tuple[str, Any], model: FakeModelServer, loop: LoopThread
) -> None:
    runtime, _ = service
    env = client.beta.environments.create(name=f"{runtime}-nokey", metadata={"oma.runtime": runtime})
    loop.run(lambda: model.reply("Trying.", tool_use={"name": "bash", "input": {"command": "true"}}))
    loop.run(lambda: model.reply("It failed."))

    _, events = run(client, env.id, "work")

    assert events[-1].type in TERMINAL, [e.type for e in events]
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.is_error
    assert KEY_NAMES[runtime] in result.content[0].text


# --- the machine stopped or deleted behind the runtime's back ---------------------------------------


@pytest.fixture(scope="module")
def service_options(service: tuple[str, Any]) -> dict[str, Any]:
    runtime, fake = service
    if runtime == "e2b":
        return {"api_url": fake.url, "credentials": {"api_key": fake.api_key, "sandbox_url": fake.url}}
    return {"api_url": fake.url, "credentials": {"api_key": fake.api_key}}


async def open_hosted(runtime: str, options: dict[str, Any], tmp_path: Path) -> Any:
    from sandbox import SandboxOptions, runtime_factory

    sb = runtime_factory(runtime)(
        f"sesn_revive_{secrets.token_hex(4)}", root=tmp_path, options=SandboxOptions(**options)
    )
    await sb.start()
    return sb


async def test_a_machine_suspended_behind_our_back_is_resumed(
    service: tuple[str, Any], service_options: dict[str, Any], tmp_path: Path
) -> None:
    runtime, _ = service
    sb = await open_hosted(runtime, service_options, tmp_path)
    try:
        await sb.write_file("kept.txt", b"still here")
        # The service's idle timeout, or an operator, pauses / stops it; our object does not know.
        await (sb._box.pause() if runtime == "e2b" else sb._box.stop())
        res = await sb.exec(["cat", "kept.txt"])
        assert (res.exit_code, res.stdout) == (0, "still here")
        assert await sb.read_file("kept.txt") == b"still here"
    finally:
        await sb.destroy()


async def test_a_machine_deleted_behind_our_back_is_recreated(
    service: tuple[str, Any], service_options: dict[str, Any], tmp_path: Path
) -> None:
    runtime, fake = service
    sb = await open_hosted(runtime, service_options, tmp_path)
    try:
        await sb.write_file("lost.txt", b"gone with the machine")
        first = sb.workspace
        await (sb._box.kill() if runtime == "e2b" else sb._box.delete())
        res = await sb.exec("ls -A; echo fresh > new.txt")
        assert (res.exit_code, res.stdout) == (0, "")  # a new machine: the workspace starts empty
        assert await sb.read_file("new.txt") == b"fresh\n"
        assert sb.workspace != first  # another machine, another home
    finally:
        await sb.destroy()
    # Neither machine of this session is left running (other tests' sessions may still have theirs).
    machines = [*fake.sandboxes.values(), *getattr(fake, "killed", {}).values()]  # e2b moves killed ones aside
    mine = [b for b in machines if sb.session_id in str(getattr(b, "metadata", None) or b.labels)]
    assert len(mine) == 2 and not [b for b in mine if b.state in ("running", "started")]
