"""Benchmarks for sessions that run: the runner, the harness and the sandbox, end to end against
a real `oma serve` process over loopback.

    .venv/bin/python bench/runner_bench.py            # full run (SQLite in a temp dir)
    .venv/bin/python bench/runner_bench.py --quick    # smaller

1. Platform overhead of one turn with a zero-latency model (the offline `demo` model, no tools):
   from sending `user.message` to receiving `session.status_idle` on the stream; target p50 <= 20 ms.
2. 200 concurrent sessions each doing three tool round-trips (the demo model runs `true` in the
   sandbox each turn): throughput and per-turn p50/p99.
3. Restart to recovery: a session is in a model call (a fake model holding its answer) when the
   server is killed with SIGKILL; time from starting the new process to the session's first new
   event (`session.status_rescheduled`) and to its final `session.status_idle`; target <= 2 s.

Figures are printed and appended as a section to BENCHMARKS.md (replaced on re-run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
OMA = REPO / ".venv" / "bin" / "oma"
SECTION = "## Runner benchmarks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Server:
    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.key = "oma_" + secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OMA_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
            "OMA_API_KEY": self.key,
            "OMA_DATA_DIR": str(workdir / "data"),
            "SANDBOX_RUNTIME": "local-subprocess",
            "OMA_LOG_LEVEL": "WARNING",
            "OMA_RUNNER_CONCURRENCY": "256",
            **(extra_env or {}),
        }
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(OMA), "serve", "--port", str(self.port)],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return started

    async def wait_healthy(self, http: aiohttp.ClientSession, deadline: float = 30) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/health") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.01)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Client:
    def __init__(self, http: aiohttp.ClientSession, server: Server) -> None:
        self.http, self.server = http, server
        self.headers = {"x-api-key": server.key, "content-type": "application/json"}

    async def post(self, path: str, body: Any) -> Any:
        async with self.http.post(self.server.url + path, json=body, headers=self.headers) as r:
            data = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{path}: {r.status} {data}")
            return data

    async def get(self, path: str) -> Any:
        async with self.http.get(self.server.url + path, headers=self.headers) as r:
            return await r.json()

    async def session(self, model: str, tools: list[dict[str, Any]]) -> str:
        agent = await self.post("/v1/agents", {"name": "bench", "model": model, "tools": tools})
        env = await self.post("/v1/environments", {"name": "bench"})
        return str((await self.post("/v1/sessions", {"agent": agent["id"], "environment_id": env["id"]}))["id"])

    async def turn(self, session_id: str, text: str) -> float:
        """Send one message on an open stream; seconds until session.status_idle arrives."""
        url = f"{self.server.url}/v1/sessions/{session_id}/events/stream"
        async with self.http.get(url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=120)) as stream:
            started = time.perf_counter()
            await self.post(
                f"/v1/sessions/{session_id}/events",
                {"events": [{"type": "user.message", "content": [{"type": "text", "text": text}]}]},
            )
            async for line in stream.content:
                if line.startswith(b"event: session.status_idle"):
                    return time.perf_counter() - started
        raise RuntimeError("stream ended before idle")


async def bench_overhead(client: Client, turns: int) -> dict[str, float]:
    latencies = []
    for i in range(turns + 10):
        session_id = await client.session("demo", [])
        elapsed = await client.turn(session_id, f"hello {i}")
        if i >= 10:  # warm-up
            latencies.append(elapsed * 1000)
    later = []
    session_id = await client.session("demo", [])
    for i in range(20):
        elapsed = await client.turn(session_id, f"again {i}")
        if i >= 10:
            later.append(elapsed * 1000)
    return {
        "p50": statistics.median(latencies),
        "p95": pct(latencies, 95),
        "p99": pct(latencies, 99),
        "p50_turn_11_20": statistics.median(later),
    }


async def bench_concurrent(client: Client, sessions: int, rounds: int) -> dict[str, float]:
    tools = [{"type": "agent_toolset_20260401"}]
    ids = await asyncio.gather(*(client.session("demo", tools) for _ in range(sessions)))
    latencies: list[float] = []

    async def work(session_id: str) -> None:
        for i in range(rounds):
            latencies.append(1000 * await client.turn(session_id, f"please run `true` ({i})"))

    started = time.perf_counter()
    await asyncio.gather(*(work(s) for s in ids))
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "turns_per_s": sessions * rounds / wall,
        "p50": statistics.median(latencies),
        "p99": pct(latencies, 99),
    }


def start_fake() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "core.fakes.model_server", "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )


async def bench_restart(workdir: Path, http: aiohttp.ClientSession, trials: int) -> dict[str, float]:
    fake = start_fake()
    assert fake.stdout is not None
    fake_url = fake.stdout.readline().strip().split(" ", 1)[1]
    server = Server(workdir, {"ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": fake_url})
    to_resume: list[float] = []
    to_idle: list[float] = []
    try:
        server.spawn()
        await server.wait_healthy(http)
        client = Client(http, server)
        for _ in range(trials):
            session_id = await client.session("claude-sonnet-5", [])
            async with http.post(f"{fake_url}/_fake/script", json=[{"text": "partial", "hold": True}]) as r:
                r.raise_for_status()
            await client.post(
                f"/v1/sessions/{session_id}/events",
                {"events": [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]},
            )
            while True:
                async with http.get(f"{fake_url}/_fake/state") as r:
                    if (await r.json())["holding"]:
                        break
                await asyncio.sleep(0.01)
            server.kill()
            async with http.post(f"{fake_url}/_fake/release") as r:
                r.raise_for_status()
            async with http.post(f"{fake_url}/_fake/script", json=[{"text": "recovered"}]) as r:
                r.raise_for_status()
            started = server.spawn()
            resumed = None
            while True:
                with contextlib.suppress(aiohttp.ClientError, json.JSONDecodeError):
                    data = await client.get(f"/v1/sessions/{session_id}/events")
                    kinds = [e["type"] for e in data.get("data", [])]
                    if resumed is None and "session.status_rescheduled" in kinds:
                        resumed = time.monotonic() - started
                    if kinds and kinds[-1] == "session.status_idle":
                        to_idle.append(time.monotonic() - started)
                        to_resume.append(resumed if resumed is not None else to_idle[-1])
                        break
                if time.monotonic() - started > 60:
                    raise RuntimeError("the session did not recover")
                await asyncio.sleep(0.01)
    finally:
        server.stop()
        fake.terminate()
        fake.wait(timeout=10)
    return {"resume_p50_s": statistics.median(to_resume), "resume_max_s": max(to_resume),
            "idle_p50_s": statistics.median(to_idle)}  # fmt: skip


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="oma-bench-") as tmp:
        yield Path(tmp)


async def main(quick: bool) -> str:
    turns, sessions, rounds, trials = (50, 50, 3, 2) if quick else (200, 200, 3, 5)
    lines = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        with workdir() as tmp:
            server = Server(tmp)
            server.spawn()
            try:
                await server.wait_healthy(http)
                client = Client(http, server)
                overhead = await bench_overhead(client, turns)
                lines.append(
                    f"| turn overhead, demo model, fresh session ({turns} turns) | p50 {overhead['p50']:.1f} ms · "
                    f"p95 {overhead['p95']:.1f} ms · p99 {overhead['p99']:.1f} ms | p50 ≤ 20 ms |"
                )
                lines.append(
                    f"| turn overhead, turns 11-20 of one session | p50 {overhead['p50_turn_11_20']:.1f} ms | |"
                )
                concurrent = await bench_concurrent(client, sessions, rounds)
                lines.append(
                    f"| {sessions} concurrent sessions x {rounds} tool round-trips (bash `true`) | "
                    f"{concurrent['wall_s']:.1f} s wall · {concurrent['turns_per_s']:.0f} turns/s · "
                    f"p50 {concurrent['p50']:.0f} ms · p99 {concurrent['p99']:.0f} ms | |"
                )
            finally:
                server.stop()
        with workdir() as tmp:
            restart = await bench_restart(tmp, http, trials)
            lines.append(
                f"| restart → recovered session resumes (SIGKILL mid model call, {trials} trials) | "
                f"p50 {restart['resume_p50_s']:.2f} s · max {restart['resume_max_s']:.2f} s "
                f"(→ idle p50 {restart['idle_p50_s']:.2f} s) | ≤ 2 s |"
            )
    stamp = datetime.date.today().isoformat()
    body = [
        SECTION,
        "",
        f"{stamp}, SQLite, {os.cpu_count()} cores, "
        f"`.venv/bin/python bench/runner_bench.py{' --quick' if quick else ''}`",
        "",
        "| what | figures | target |",
        "|---|---|---|",
        *lines,
        "",
    ]
    return "\n".join(body)


def write_section(text: str) -> None:
    path = REPO / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if SECTION in current:
        start = current.index(SECTION)
        rest = current[start + len(SECTION) :]
        nxt = rest.find("\n## ")
        current = current[:start] + (rest[nxt + 1 :] if nxt >= 0 else "")
    path.write_text(current.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    args = parser.parse_args()
    section = asyncio.run(main(args.quick))
    print(section)
    write_section(section)
