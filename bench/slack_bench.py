"""Slack adapter latencies on loopback: `oma serve` (runner on) in its own process, the fake model
and the fake Slack Web API in this one.

    .venv/bin/python bench/slack_bench.py                  # 200 mentions, SQLite in a temp dir
    .venv/bin/python bench/slack_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

(with a PostgreSQL URL the run gets a fresh database on that server, dropped afterwards)

Prints, and checks against the targets of issue 6:
  ack    time from sending a signed delivery to its HTTP response     (p99 ≤ 50 ms)
  reply  time from the final agent.message being written to the call
         that shows it on the fake Slack                              (p50 ≤ 100 ms)
Exit status 1 when a target is missed. Deliveries go out one at a time at `--rate` per second,
each a mention in a new thread, so each starts a session that runs while later ones arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.base import AdapterStore, Route  # noqa: E402
from bot.config import Settings  # noqa: E402
from core.db import session_events  # noqa: E402
from core.fakes.model_server import FakeModelServer  # noqa: E402
from core.fakes.slack_api import FakeSlack, sign  # noqa: E402
from core.keys import DEFAULT_TENANT  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.platform import Platform  # noqa: E402

SECRET = "bench-signing-secret"
ACK_P99_MS = 50.0
REPLY_P50_MS = 100.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Server:
    """`oma serve` in its own process (so the client and the fakes do not share its event loop)."""

    def __init__(self, database_url: str, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("OMA_", "SLACK_", "ANTHROPIC_"))}
        environment.update(
            OMA_DATABASE_URL=database_url,
            OMA_DATA_DIR=str(workdir / "data"),
            OMA_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
            **env,
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "oma"), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=workdir,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def healthy(self, wait_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + wait_seconds
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/health") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError("the server did not become healthy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(mentions: int, rate: float, database_url: str, wait_seconds: float) -> bool:
    model, slack = FakeModelServer(), FakeSlack()
    await model.start()
    await slack.start()
    workdir = Path(tempfile.mkdtemp(prefix="oma-slack-bench-"))
    api_key = "oma_bench_" + secrets.token_hex(16)
    await asyncio.to_thread(upgrade, database_url)
    server = Server(
        database_url,
        workdir,
        {
            "OMA_API_KEY": api_key,
            "ANTHROPIC_API_KEY": "sk-bench",
            "ANTHROPIC_BASE_URL": model.url,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.api_url,
        },
    )
    platform = Platform.build(database_url, bootstrap_key=None)
    try:
        await server.healthy()
        team = "TBENCH" + secrets.token_hex(3).upper()
        auth = {"x-api-key": api_key}
        async with aiohttp.ClientSession(server.url, headers=auth) as api:
            async with api.post("/v1/agents", json={"name": "bench", "model": "claude-sonnet-5"}) as response:
                agent_id = (await response.json())["id"]
            async with api.post("/v1/environments", json={"name": "bench"}) as response:
                environment_id = (await response.json())["id"]
        await AdapterStore(platform, "slack").install(team, Route(DEFAULT_TENANT, agent_id, environment_id))
        acks: list[float] = []
        threads: dict[str, str] = {}
        async with aiohttp.ClientSession(server.url) as http:
            # Mention -1 warms up (lazy imports, the first model client, auth.test) and is not counted.
            for index in range(-1, mentions):
                channel = "CBENCH"
                ts = slack.add_message(channel, f"<@{slack.bot_user_id}> question {index}", user="U0BENCH01")
                body = json.dumps(
                    {
                        "type": "event_callback",
                        "team_id": team,
                        "api_app_id": "A0BENCH",
                        "event_id": f"Ev{secrets.token_hex(6).upper()}",
                        "event_time": int(time.time()),
                        "event": {
                            "type": "app_mention",
                            "user": "U0BENCH01",
                            "text": f"<@{slack.bot_user_id}> question {index}",
                            "ts": ts,
                            "channel": channel,
                            "event_ts": ts,
                        },
                    }
                ).encode()
                headers = {**sign(SECRET, body), "Content-Type": "application/json"}
                started = time.perf_counter()
                async with http.post("/slack/events", data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"delivery {index} answered {response.status}")
                if index < 0:
                    await asyncio.wait_for(slack.wait_for("chat.stopStream"), wait_seconds)
                    continue
                acks.append((time.perf_counter() - started) * 1000)
                threads[ts] = f"echo: <@U0BENCH01>: question {index}"
                await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        await asyncio.wait_for(slack.wait_for("chat.stopStream", mentions + 1), wait_seconds)
        replies = await reply_latencies(platform, slack, threads)
    finally:
        server.stop()
        await platform.close()
        await slack.stop()
        await model.stop()
    ack_p50, ack_p99 = statistics.median(acks), percentile(acks, 0.99)
    reply_p50, reply_p99 = statistics.median(replies), percentile(replies, 0.99)
    print(f"{'':8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}   target")
    print(f"{'ack':8}{ack_p50:>10.1f}{ack_p99:>10.1f}{max(acks):>10.1f}   p99 ≤ {ACK_P99_MS:g}")
    print(f"{'reply':8}{reply_p50:>10.1f}{reply_p99:>10.1f}{max(replies):>10.1f}   p50 ≤ {REPLY_P50_MS:g}")
    print(f"({mentions} mentions at {rate:g}/s; Slack calls: {dict(slack.counts())})")
    return ack_p99 <= ACK_P99_MS and reply_p50 <= REPLY_P50_MS


async def reply_latencies(platform: Any, slack: FakeSlack, threads: dict[str, str]) -> list[float]:
    """Per thread: the wall-clock time of the call that first carried the answer's text, minus the
    time its agent.message was written."""
    from sqlalchemy import select

    async with platform.db.read() as conn:
        rows = (
            await conn.execute(
                select(session_events.c.payload, session_events.c.created_at).where(
                    session_events.c.type == "agent.message"
                )
            )
        ).all()
    written = {r.payload["content"][0]["text"]: r.created_at / 1e6 for r in rows}
    shown: dict[str, float] = {}
    for call in slack.calls:
        for chunk in call.params.get("chunks") or []:
            said = chunk.get("text", "")
            if chunk.get("type") == "markdown_text" and said in written and said not in shown:
                shown[said] = call.wall
    return [(shown[t] - written[t]) * 1000 for t in threads.values() if t in shown and t in written]


@contextlib.contextmanager
def fresh_database(url: str | None) -> Iterator[str]:
    """SQLite in a temp dir; with a PostgreSQL URL, a new `oma_bench_*` database on that server,
    dropped afterwards (the server's own database is never written to)."""
    if url is None:
        yield Settings(database_url=f"sqlite:///{tempfile.mkdtemp(prefix='oma-slack-bench-')}/oma.db").database_url
        return
    import asyncpg

    dsn = Settings(database_url=url).database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = "oma_bench_" + secrets.token_hex(5)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield Settings(database_url=dsn.rsplit("/", 1)[0] + "/" + name).database_url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mentions", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="mentions per second (each starts a session)")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server to use (default: SQLite)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    ok = False
    with fresh_database(args.database_url) as database_url, contextlib.suppress(KeyboardInterrupt):
        ok = asyncio.run(run(args.mentions, args.rate, database_url, args.timeout))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
