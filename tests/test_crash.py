"""Crash recovery with real processes: `oma serve` is killed with SIGKILL during a model call and
again during a side-effecting tool, then started again. Every session reaches idle with its
final answer, the log is gapless with nothing lost, and the side effect ran exactly once."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import psutil
import pytest

from tests.servers import database_url

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class FakeProcess:
    def __init__(self, tmp: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core.fakes.model_server", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening "), line
        self.url = line.split(" ", 1)[1]
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def script(self, *items: dict[str, Any]) -> None:
        self.http.post("/_fake/script", json=list(items)).raise_for_status()

    def state(self) -> dict[str, Any]:
        return dict(self.http.get("/_fake/state").json())

    def release(self) -> None:
        self.http.post("/_fake/release").raise_for_status()

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Server:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "oma"), "serve", "--port", str(self.port)],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, "the server to answer")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def world(backend: str, tmp_path: Path) -> Iterator[tuple[FakeProcess, Server, Path]]:
    fake = FakeProcess(tmp_path)
    with database_url(backend, tmp_path) as url:
        env = {
            **os.environ,
            "OMA_DATABASE_URL": url,
            "OMA_API_KEY": "oma_" + secrets.token_hex(16),
            "OMA_DATA_DIR": str(tmp_path / "data"),
            "SANDBOX_RUNTIME": "local-subprocess",
            "OMA_LOG_LEVEL": "WARNING",
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "ANTHROPIC_BASE_URL": fake.url,
        }
        server = Server(env, tmp_path)
        try:
            yield fake, server, tmp_path / "data"
        finally:
            server.stop()
            fake.stop()
            for proc in psutil.process_iter(["cmdline"]):  # tools orphaned by SIGKILL
                if "oma-crash-marker" in " ".join(proc.info["cmdline"] or []):
                    proc.kill()


def session_log(client: anthropic.Anthropic, session_id: str) -> list[Any]:
    return list(client.beta.sessions.events.list(session_id))


def test_kill_during_model_call_and_during_tool(world: tuple[FakeProcess, Server, Path]) -> None:
    fake, server, data_dir = world
    server.start()
    client = anthropic.Anthropic(base_url=server.url, api_key=server.env["OMA_API_KEY"], max_retries=3, timeout=20)
    agent = client.beta.agents.create(
        name="crashy", model="claude-sonnet-5", tools=[{"type": "agent_toolset_20260401"}]
    )
    env = client.beta.environments.create(name="box")

    # 1. Killed while the model is streaming its answer.
    first = client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    fake.script({"text": "A partial answer that never completes", "hold": True})
    client.beta.sessions.events.send(
        first.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "one"}]}]
    )
    wait_until(lambda: fake.state()["holding"], "the model call to be in flight")
    server.kill()
    fake.release()
    fake.script({"text": "Recovered answer."})
    server.start()
    wait_until(lambda: client.beta.sessions.retrieve(first.id).status == "idle", "session 1 to finish")
    events = session_log(client, first.id)
    types = [e.type for e in events]
    assert "session.status_rescheduled" in types
    assert [e.content[0].text for e in events if e.type == "agent.message"] == ["Recovered answer."], types
    assert events[-1].type == "session.status_idle" and events[-1].stop_reason.type == "end_turn"

    # 2. Killed while a side-effecting tool runs: it must not run again.
    second = client.beta.sessions.create(agent=agent.id, environment_id=env.id)
    command = "echo ran >> side-effect.txt; sleep 120 # oma-crash-marker"
    fake.script({"tool_use": {"name": "bash", "input": {"command": command}}})
    client.beta.sessions.events.send(
        second.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "two"}]}]
    )
    effect = data_dir / "sandboxes" / second.id / "workspace" / "side-effect.txt"
    wait_until(effect.exists, "the tool to start")
    server.kill()
    fake.script({"text": "Done after the crash."})
    server.start()
    wait_until(lambda: client.beta.sessions.retrieve(second.id).status == "idle", "session 2 to finish")
    events = session_log(client, second.id)
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.is_error and "interrupted" in result.content[0].text
    assert [e.content[0].text for e in events if e.type == "agent.message"] == ["Done after the crash."]
    assert effect.read_text().splitlines() == ["ran"]

    # Both logs are gapless (the SSE ids are the seqs) and every user event was consumed.
    for session_id in (first.id, second.id):
        listed = session_log(client, session_id)
        assert all(e.processed_at is not None for e in listed)
        assert seqs(server, session_id, len(listed)) == list(range(1, len(listed) + 1))
    client.close()


def seqs(server: Server, session_id: str, count: int) -> list[int]:
    """The seqs of the whole log, read back through the stream's resume extension."""
    out: list[int] = []
    headers = {"x-api-key": server.env["OMA_API_KEY"], "Last-Event-ID": "0"}
    url = f"{server.url}/v1/sessions/{session_id}/events/stream"
    with httpx.stream("GET", url, headers=headers, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("id: "):
                out.append(int(line[4:]))
                if len(out) == count:
                    break
    return out
