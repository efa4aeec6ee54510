"""Benchmarks for the /v1 API, against a real `oma serve` process over loopback.

    .venv/bin/python bench/api_bench.py                 # SQLite in a temp dir, full run
    .venv/bin/python bench/api_bench.py --quick         # smaller and faster
    .venv/bin/python bench/api_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

Measures, against the targets of the performance issue:

1. `POST /v1/sessions` latency (sequential, after warm-up): p50/p95/p99; target p50 <= 5 ms.
2. Events appended per second (`POST /v1/sessions/{id}/events`) from N concurrent connections,
   over many sessions and onto one session, 1 and 10 events per request; target >= 2,000 events/s.
3. Concurrent SSE streams (`GET /v1/sessions/{id}/events/stream`) receiving one event: delivered
   count, send-to-receipt latency p50/p99 and the server's RSS; targets: all delivered, p99 <= 200 ms,
   RSS <= 200 MB. Each stream scenario gets a freshly started server so its RSS is not inflated by
   the earlier phases (the RSS of the server after the events phase is reported for context).

The server runs as a separate process (so its RSS is its own and the load generator's CPU is not
in its process); the load generator is one aiohttp ClientSession. With a PostgreSQL URL, the script
creates a fresh database on that server (the URL names the server and credentials only) and drops
it on exit. Figures are printed and written as a markdown section to BENCHMARKS.md at the repo root
(one section per backend, replaced on re-run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
MB = 1024 * 1024

CREATE_P50_TARGET_MS = 5.0
EVENTS_PER_S_TARGET = 2000.0
SSE_P99_TARGET_MS = 200.0
SSE_RSS_TARGET_MB = 200.0

JSON_HEADERS = {"content-type": "application/json"}

# The server gets none of the caller's OMA_* settings or provider credentials.
PROVIDER_ENV_PREFIXES = ("OMA_", "ANTHROPIC_", "OPENAI_", "OPENROUTER_")
PROVIDER_BASE_URL_ENV = ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "OPENROUTER_BASE_URL")
DEAD_LOOPBACK_URL = "http://127.0.0.1:9"


# --- small helpers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds == seconds else "n/a"


def busy_fraction(before: Any, after: Any) -> float:
    """Share of all cores' time that was not idle between two psutil.cpu_times() samples."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return 1.0 - idle / total if total > 0 else float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redact(url: str) -> str:
    """Hide a password in a database URL."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def events_body(batch: int) -> bytes:
    event = b'{"type":"user.message","content":[{"type":"text","text":"benchmark message"}]}'
    return b'{"events":[' + b",".join([event] * batch) + b"]}"


@dataclass
class Row:
    """One figure of the report."""

    section: str
    name: str
    figure: str
    target: str = ""
    ok: bool | None = None
    detail: str = ""

    @property
    def status(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        status = f"  [{row.status}]" if row.status else ""
        target = f"  (target {row.target})" if row.target else ""
        print(f"  {row.name}: {row.figure}{target}{status}" + (f" — {row.detail}" if row.detail else ""), flush=True)


# --- the server process ------------------------------------------------------------------------


class Server:
    """`oma serve` in its own process on a free loopback port."""

    def __init__(
        self,
        database_url: str,
        api_key: str,
        workdir: Path,
        *,
        profile: Path | None = None,
        command: Sequence[str] = (),
    ) -> None:
        self.database_url = database_url
        self.api_key = api_key
        self.workdir = workdir
        self.profile = profile
        self.command = list(command) or [str(VENV_BIN / "oma")]
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self._ps: psutil.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_ENV_PREFIXES)}
        env.update(
            OMA_DATABASE_URL=self.database_url,
            OMA_API_KEY=self.api_key,
            OMA_LOG_LEVEL="WARNING",
            OMA_DATA_DIR=str(self.workdir / "data"),
            # The API alone: no runner consuming the user messages (it would call a model).
            OMA_RUNNER_ENABLED="false",
            PYTHONUNBUFFERED="1",
        )
        # Belt and braces: should anything still try a model provider, it meets a closed
        # loopback port, never the network.
        env.update({name: DEAD_LOOPBACK_URL for name in PROVIDER_BASE_URL_ENV})
        serve = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.profile is not None:
            cmd = [str(VENV_BIN / "python"), "-m", "cProfile", "-o", str(self.profile), "-m", "bot.cli", *serve]
        else:
            cmd = [*self.command, *serve]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        log = self.log_path.open("ab")
        try:
            # cwd: a temp dir, so that no `.env` of the checkout leaks into the settings.
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self._ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _processes(self) -> list[psutil.Process]:
        if self._ps is None:
            return []
        try:
            return [self._ps, *self._ps.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> int:
        total = 0
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM is a graceful exit for aiohttp's run_app (and lets cProfile write its file).
        # Stream handlers linger until their next ping, so allow a while, then kill.
        grace = 75.0 if self.profile is not None else 20.0
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt, SystemExit):
            # Too slow, or interrupted again while waiting: no server outlives the benchmark.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    database_url: str, api_key: str, workdir: Path, args: argparse.Namespace, phase: str
) -> Iterator[Server]:
    command = shlex.split(args.server_command) if args.server_command else ()
    server = Server(database_url, api_key, workdir, profile=profile_path(args, phase), command=command)
    try:
        yield server.start()
    finally:
        server.stop()


# --- databases ---------------------------------------------------------------------------------


def _pg_dsn(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise SystemExit(f"not a PostgreSQL URL: {redact(url)}")
    return "postgresql://" + rest


def _pg_run(dsn: str, sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=10, command_timeout=60)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@contextlib.contextmanager
def database(url: str | None, tmp: Path) -> Iterator[tuple[str, str]]:
    """(backend, url): a temp SQLite file, a given SQLite URL, or a fresh PostgreSQL database."""
    if url is None:
        yield "sqlite", f"sqlite:///{tmp / 'bench.db'}"
        return
    if url.startswith("sqlite"):
        yield "sqlite", url
        return
    dsn = _pg_dsn(url)
    name = "oma_bench_" + secrets.token_hex(5)
    _pg_run(dsn, f'CREATE DATABASE "{name}"')
    try:
        yield "postgresql", urllib.parse.urlsplit(dsn)._replace(path="/" + name, query="").geturl()
    finally:
        _pg_run(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- API helpers -------------------------------------------------------------------------------


async def post_json(http: aiohttp.ClientSession, path: str, body: bytes) -> Any:
    async with http.post(path, data=body, headers=JSON_HEADERS) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data}")
        return data


@dataclass
class Fixture:
    agent_id: str
    environment_id: str

    def session_body(self) -> bytes:
        return f'{{"agent":"{self.agent_id}","environment_id":"{self.environment_id}"}}'.encode()


async def make_fixture(http: aiohttp.ClientSession) -> Fixture:
    agent = await post_json(http, "/v1/agents", b'{"model":"claude-sonnet-5","name":"bench","system":"You help."}')
    env = await post_json(http, "/v1/environments", b'{"name":"bench","config":{"type":"cloud"}}')
    return Fixture(agent["id"], env["id"])


async def create_sessions(http: aiohttp.ClientSession, fixture: Fixture, count: int, parallel: int = 8) -> list[str]:
    ids: list[str] = []
    body = fixture.session_body()

    async def one(_: int) -> None:
        data = await post_json(http, "/v1/sessions", body)
        ids.append(data["id"])

    await bounded_gather([one] * count, parallel)
    return ids


async def bounded_gather(jobs: Sequence[Callable[[int], Awaitable[None]]], parallel: int) -> None:
    sem = asyncio.Semaphore(parallel)

    async def run(i: int, job: Callable[[int], Awaitable[None]]) -> None:
        async with sem:
            await job(i)

    await asyncio.gather(*(run(i, j) for i, j in enumerate(jobs)))


def new_client(url: str, api_key: str, *, total_timeout: float | None = 60.0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=5000, limit_per_host=5000, keepalive_timeout=60)
    return aiohttp.ClientSession(
        base_url=url,
        connector=connector,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=aiohttp.ClientTimeout(total=total_timeout, sock_connect=30),
    )


# --- 1. session creation latency ---------------------------------------------------------------


async def bench_create(http: aiohttp.ClientSession, fixture: Fixture, n: int, warmup: int, report: Report) -> None:
    body = fixture.session_body()
    for _ in range(warmup):
        await post_json(http, "/v1/sessions", body)
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.post("/v1/sessions", data=body, headers=JSON_HEADERS) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST /v1/sessions: HTTP {resp.status}")
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    report.add(
        Row(
            "create",
            f"POST /v1/sessions latency ({n} sequential, {warmup} warm-up)",
            f"p50 {ms(p50)} / p95 {ms(p95)} / p99 {ms(p99)}",
            f"p50 <= {CREATE_P50_TARGET_MS:g} ms",
            p50 * 1000 <= CREATE_P50_TARGET_MS,
            f"mean {ms(sum(latencies) / n)}, max {ms(max(latencies))}, {n / elapsed:.0f} req/s",
        )
    )


# --- 2. event append throughput ----------------------------------------------------------------


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_busy: float = 0.0


async def drive_events(
    http: aiohttp.ClientSession,
    server: Server,
    sessions: Sequence[str],
    *,
    concurrency: int,
    batch: int,
    duration: float,
    max_requests: int,
) -> LoadResult:
    """`concurrency` workers post back to back until `duration` has passed or `max_requests` were sent."""
    body = events_body(batch)
    result = LoadResult()
    per_worker = max(1, max_requests // concurrency)
    started = time.perf_counter()
    deadline = started + duration
    last_end = started

    async def worker(w: int) -> None:
        nonlocal last_end
        for k in range(per_worker):
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            sid = sessions[(w + k * concurrency) % len(sessions)]
            try:
                async with http.post(f"/v1/sessions/{sid}/events", data=body, headers=JSON_HEADERS) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, payload = -1, repr(exc).encode()
            t1 = time.perf_counter()
            result.latencies.append(t1 - t0)
            last_end = max(last_end, t1)
            if status == 200:
                result.ok += 1
            else:
                result.errors += 1
                if not result.first_error:
                    result.first_error = f"HTTP {status}: {payload[:200]!r}"

    cpu0, pcpu0, sys0 = server.cpu_seconds(), time.process_time(), psutil.cpu_times()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result.elapsed = max(last_end - started, 1e-9)
    result.server_cpu = (server.cpu_seconds() - cpu0) / result.elapsed
    result.client_cpu = (time.process_time() - pcpu0) / result.elapsed
    result.machine_busy = busy_fraction(sys0, psutil.cpu_times())
    return result


async def bench_events(
    http: aiohttp.ClientSession,
    server: Server,
    many: Sequence[str],
    single: str,
    *,
    concurrencies: Sequence[int],
    batches: Sequence[int],
    duration: float,
    warmup: float,
    report: Report,
) -> None:
    for batch in batches:
        for concurrency in concurrencies:
            for label, sessions in ((f"{len(many)} sessions", many), ("1 session", [single])):
                common = {"concurrency": concurrency, "batch": batch, "max_requests": 1_000_000}
                await drive_events(http, server, sessions, duration=warmup, **common)
                res = await drive_events(http, server, sessions, duration=duration, **common)
                rate = res.ok * batch / res.elapsed
                others = max(0.0, res.machine_busy * (os.cpu_count() or 1) - res.server_cpu - res.client_cpu)
                detail = (
                    f"{res.ok / res.elapsed:.0f} req/s, req p50 {ms(percentile(res.latencies, 50))}"
                    f" p99 {ms(percentile(res.latencies, 99))}; CPU (1 core = 100%): server {res.server_cpu:.0%},"
                    f" client {res.client_cpu:.0%}, other processes {others:.0%}"
                )
                if res.errors:
                    detail += f"; {res.errors} errors, first: {res.first_error}"
                report.add(
                    Row(
                        "events",
                        f"events/s: {label}, {concurrency} conns, {batch} event{'s' if batch > 1 else ''}/req",
                        f"{rate:,.0f} events/s",
                        f">= {EVENTS_PER_S_TARGET:,.0f}",
                        rate >= EVENTS_PER_S_TARGET and res.errors == 0,
                        detail,
                    )
                )


# --- 3. SSE fan-out ----------------------------------------------------------------------------


@dataclass
class FanoutResult:
    streams: int
    connected: int = 0
    delivered: int = 0
    connect_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    post_latencies: list[float] = field(default_factory=list)
    rss_idle: int = 0
    rss_connected: int = 0
    rss_peak: int = 0
    # CPU (1 core = 1.0) from the first send until delivery ended: the server's, and that of
    # processes other than the server and this client.
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    failures: list[str] = field(default_factory=list)


async def bench_fanout(
    server: Server,
    api_key: str,
    sessions: Sequence[str],
    n_streams: int,
    *,
    open_parallel: int,
    settle: float,
    connect_timeout: float,
    delivery_timeout: float,
) -> FanoutResult:
    """Open `n_streams` streams spread evenly over `sessions`, then send one event per session."""
    result = FanoutResult(streams=n_streams)
    result.rss_idle = server.rss()
    sent_at: dict[str, float] = {}
    all_connected = asyncio.Event()
    open_sem = asyncio.Semaphore(open_parallel)
    body = events_body(1)
    peak = result.rss_idle

    async def sample_rss() -> None:
        nonlocal peak
        for _ in range(int((connect_timeout + delivery_timeout + settle + 60) / 0.1)):
            peak = max(peak, server.rss())
            await asyncio.sleep(0.1)

    settled = 0

    def one_settled() -> None:
        nonlocal settled
        settled += 1
        if settled == n_streams:
            all_connected.set()

    async def stream(http: aiohttp.ClientSession, sid: str) -> None:
        async with open_sem:
            try:
                resp = await http.get(f"/v1/sessions/{sid}/events/stream")
            except (aiohttp.ClientError, TimeoutError) as exc:
                result.failures.append(f"connect: {exc!r}")
                one_settled()
                return
        try:
            if resp.status != 200:
                result.failures.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                one_settled()
                return
            result.connected += 1
            one_settled()
            tail = b""
            # Bounded: a stream gets one event and some pings; the caller also cancels on timeout.
            for _ in range(10_000):
                chunk = await resp.content.readany()
                if not chunk:
                    result.failures.append("stream ended before the event arrived")
                    return
                received = time.perf_counter()
                tail += chunk
                if b"event: user.message" in tail:
                    result.latencies.append(received - sent_at[sid])
                    result.delivered += 1
                    return
                tail = tail[-64:]
        finally:
            resp.close()

    async with (
        new_client(server.url, api_key, total_timeout=None) as streams_http,
        new_client(server.url, api_key) as http,
    ):
        sampler = asyncio.create_task(sample_rss())
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(stream(streams_http, sessions[i % len(sessions)])) for i in range(n_streams)]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_connected.wait(), connect_timeout)
            result.connect_seconds = time.perf_counter() - t0
            if result.connected < n_streams:
                result.failures.append(f"only {result.connected}/{n_streams} connected in {connect_timeout:.0f}s")
            # Headers arrive once the handler has prepared the response; give every handler time
            # to reach its wait before the event is sent (the event is never lost either way).
            await asyncio.sleep(settle)
            result.rss_connected = server.rss()
            cpu0, own0, sys0, t_send = (
                server.cpu_seconds(),
                time.process_time(),
                psutil.cpu_times(),
                time.perf_counter(),
            )
            for sid in sessions:
                sent_at[sid] = time.perf_counter()
                async with http.post(f"/v1/sessions/{sid}/events", data=body, headers=JSON_HEADERS) as resp:
                    await resp.read()
                    if resp.status != 200:
                        result.failures.append(f"send to {sid}: HTTP {resp.status}")
                result.post_latencies.append(time.perf_counter() - sent_at[sid])
            pending = [t for t in tasks if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=delivery_timeout)
            window = max(time.perf_counter() - t_send, 1e-9)
            server_cpu = server.cpu_seconds() - cpu0
            busy = busy_fraction(sys0, psutil.cpu_times()) * (os.cpu_count() or 1) * window
            result.server_cpu = server_cpu / window
            result.other_cpu = max(0.0, busy - server_cpu - (time.process_time() - own0)) / window
            result.rss_peak = max(peak, server.rss())
        finally:
            sampler.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(sampler, *tasks, return_exceptions=True)
    return result


def add_fanout_rows(res: FanoutResult, label: str, report: Report) -> None:
    p50, p99 = percentile(res.latencies, 50), percentile(res.latencies, 99)
    worst = max(res.latencies) if res.latencies else float("nan")
    failures = f"; {len(res.failures)} failures, first: {res.failures[0]}" if res.failures else ""
    report.add(
        Row(
            "sse",
            f"SSE {label}: delivered",
            f"{res.delivered}/{res.streams}",
            "all",
            res.delivered == res.streams,
            f"{res.connected} connected in {res.connect_seconds:.1f}s{failures}",
        )
    )
    report.add(
        Row(
            "sse",
            f"SSE {label}: send-to-receipt latency",
            f"p50 {ms(p50)} / p99 {ms(p99)}",
            f"p99 <= {SSE_P99_TARGET_MS:g} ms",
            bool(res.latencies) and p99 * 1000 <= SSE_P99_TARGET_MS,
            f"max {ms(worst)}; send POST p50 {ms(percentile(res.post_latencies, 50))}; CPU while delivering:"
            f" server {res.server_cpu:.0%}, other processes {res.other_cpu:.0%}",
        )
    )
    report.add(
        Row(
            "sse",
            f"SSE {label}: server RSS",
            f"{res.rss_peak / MB:.0f} MB peak",
            f"<= {SSE_RSS_TARGET_MB:g} MB",
            res.rss_peak / MB <= SSE_RSS_TARGET_MB,
            f"{res.rss_idle / MB:.0f} MB before the streams, {res.rss_connected / MB:.0f} MB with all connected",
        )
    )


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Plan:
    create_n: int
    create_warmup: int
    many_sessions: int
    concurrencies: list[int]
    batches: list[int]
    duration: float
    warmup: float
    streams: int
    stream_sessions: int
    phases: set[str]


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        create_n=args.create_requests or (200 if quick else 500),
        create_warmup=20 if quick else 50,
        many_sessions=100 if quick else 200,
        concurrencies=args.concurrency or ([32] if quick else [16, 64]),
        batches=args.batch or [1, 10],
        duration=args.duration or (2.0 if quick else 5.0),
        warmup=0.5 if quick else 1.0,
        streams=args.streams or (200 if quick else 1000),
        stream_sessions=args.stream_sessions or (20 if quick else 100),
        phases=set(args.only.split(",")) if args.only else {"create", "events", "sse"},
    )


def profile_path(args: argparse.Namespace, phase: str) -> Path | None:
    if not args.server_profile:
        return None
    base = Path(args.server_profile)
    return base.with_name(f"{base.stem}-{phase}{base.suffix or '.prof'}")


async def phase_api(server: Server, api_key: str, plan: Plan, report: Report) -> None:
    async with new_client(server.url, api_key) as http:
        fixture = await make_fixture(http)
        if "create" in plan.phases:
            print("POST /v1/sessions latency", flush=True)
            await bench_create(http, fixture, plan.create_n, plan.create_warmup, report)
        if "events" in plan.phases:
            print("events appended per second", flush=True)
            many = await create_sessions(http, fixture, plan.many_sessions)
            (single,) = await create_sessions(http, fixture, 1)
            await bench_events(
                http,
                server,
                many,
                single,
                concurrencies=plan.concurrencies,
                batches=plan.batches,
                duration=plan.duration,
                warmup=plan.warmup,
                report=report,
            )
        report.notes.append(f"server RSS after the create/events phases: {server.rss() / MB:.0f} MB")


async def phase_fanout(server: Server, api_key: str, plan: Plan, n_sessions: int, report: Report) -> None:
    async with new_client(server.url, api_key) as http:
        fixture = await make_fixture(http)
        sessions = await create_sessions(http, fixture, n_sessions)
    label = f"{plan.streams} streams / {n_sessions} session{'s' if n_sessions > 1 else ''}"
    print(f"SSE fan-out: {label}", flush=True)
    res = await bench_fanout(
        server,
        api_key,
        sessions,
        plan.streams,
        open_parallel=64,
        settle=1.0,
        connect_timeout=120.0,
        delivery_timeout=30.0,
    )
    add_fanout_rows(res, label, report)


def run(args: argparse.Namespace, report: Report) -> str:
    plan = make_plan(args)
    api_key = "bench_" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="oma-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with database(args.database_url, tmp) as (backend, url):
            print(f"backend: {backend} ({redact(url)})", flush=True)
            before = psutil.cpu_times()
            time.sleep(1.0)
            busy = busy_fraction(before, psutil.cpu_times()) * (os.cpu_count() or 1)
            report.notes.append(f"other processes used {busy:.0%} of a core in the second before the run")
            if busy > 0.2:
                print(f"warning: the machine is busy ({busy:.0%} of a core): figures will be noisy", flush=True)
            if plan.phases & {"create", "events"}:
                with running_server(url, api_key, tmp, args, "api") as server:
                    asyncio.run(phase_api(server, api_key, plan, report))
            if "sse" in plan.phases:
                for n_sessions in (1, plan.stream_sessions):
                    # A fresh server per scenario: RSS is that of the streams, not of earlier load.
                    with running_server(url, api_key, tmp, args, f"sse{n_sessions}") as server:
                        asyncio.run(phase_fanout(server, api_key, plan, n_sessions, report))
    return backend


# --- output ------------------------------------------------------------------------------------


def text_table(rows: Sequence[Row]) -> str:
    headers = ("benchmark", "figure", "target", "")
    cells = [(r.name, r.figure, r.target, r.status) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out.extend(line.format(*c) for c in cells)
    return "\n".join(s.rstrip() for s in out)


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / (1024**3)
    return (
        f"{os.cpu_count()} cores ({model}), {mem:.0f} GB RAM, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


def code_version() -> str:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{rev} (with uncommitted changes)" if dirty else rev


def section_heading(backend: str) -> str:
    return f"## API benchmarks: {'SQLite' if backend == 'sqlite' else 'PostgreSQL'}"


def markdown_section(backend: str, report: Report, command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        section_heading(backend),
        "",
        "`oma serve` as its own process on a loopback port (runner disabled: the API alone), driven by one",
        "aiohttp client on the same machine; latencies are the client's. Each SSE scenario gets a freshly",
        'started server. "Other processes": CPU used by neither server nor client (PostgreSQL\'s backends,',
        "and whatever else ran on the machine). Method and options: `bench/README.md`.",
        "",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- code: {code_version()}",
        f"- command: `{command}`",
        "",
        "| benchmark | figure | target | status | detail |",
        "|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(f"| {r.name} | {r.figure} | {r.target} | {r.status} | {r.detail.replace('|', '/')} |")
    if report.notes:
        lines.append("")
        lines.extend(f"- {n}" for n in report.notes)
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, heading: str, section: str) -> None:
    """Replace the section under `heading` (up to the next `## ` heading) or append it; other
    sections of the file (e.g. other benchmarks') are left as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == heading)
    except StopIteration:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""))


# --- entry point -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--database-url",
        help="sqlite:///PATH (used as is) or a PostgreSQL server URL (a fresh database is created on it"
        " and dropped afterwards); default: a temp SQLite file",
    )
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    p.add_argument("--only", help="comma-separated phases: create,events,sse (default: all)")
    p.add_argument("--concurrency", type=int, action="append", help="client connections for events (repeatable)")
    p.add_argument("--batch", type=int, action="append", help="events per request (repeatable; default 1 and 10)")
    p.add_argument("--duration", type=float, help="seconds per events measurement")
    p.add_argument("--create-requests", type=int, help="POST /v1/sessions requests to time")
    p.add_argument("--streams", type=int, help="concurrent SSE streams (default 1000)")
    p.add_argument("--stream-sessions", type=int, help="sessions for the spread-out SSE scenario (default 100)")
    p.add_argument(
        "--server-profile",
        metavar="FILE.prof",
        help="run the server under cProfile; writes FILE-<phase>.prof per server (slower: figures are not comparable)",
    )
    p.add_argument(
        "--server-command",
        help="command that serves the app, `serve --host H --port P` appended (default: .venv/bin/oma);"
        " e.g. an instrumented wrapper",
    )
    p.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print only; do not update the markdown file")
    return p.parse_args(argv)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the server and the database are always cleaned up.
    signal.signal(signal.SIGTERM, _raise_exit)
    with contextlib.suppress(ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    report = Report()
    backend = run(args, report)
    print()
    print(text_table(report.rows))
    for note in report.notes:
        print(f"note: {note}")
    if not args.no_write:
        shown = [a if not a.startswith(("postgres", "sqlite")) else redact(a) for a in sys.argv[1:]]
        command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/api_bench.py", *shown])
        write_markdown(Path(args.output), section_heading(backend), markdown_section(backend, report, command))
        print(f"\nwrote {args.output}")
    return 0 if all(r.ok is not False for r in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
