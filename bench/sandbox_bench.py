"""Sandbox start time and per-exec overhead for every sandbox runtime available here, side by side
with a plain subprocess.

    .venv/bin/python bench/sandbox_bench.py                     # 200 execs per runtime
    .venv/bin/python bench/sandbox_bench.py --quick --no-write  # smaller, print only

- start: `start()` of a new session (workspace created, limits set up, a first sandbox run), and
  of a session whose workspace already exists (re-attach); each followed by `stop()`, not timed.
- exec: `exec(["true"])` on a started sandbox, after 10 warm-up runs; "overhead" is the median
  minus the plain subprocess's median (`asyncio.create_subprocess_exec("true")` and `wait()`).
- The rows are measured round-robin (one start or exec of each in turn), so that other load on
  the machine affects them alike.
- Runtimes use the default `SandboxOptions` (networking on, 1 GB, 256 pids, 1 CPU).

Prints a markdown table and replaces the `## Sandbox benchmarks` section of ../BENCHMARKS.md
(other sections are left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sandbox import Sandbox, SandboxOptions, SandboxUnavailable, runtime_factory  # noqa: E402

RUNTIMES = ["local-subprocess", "bubblewrap", "docker", "e2b", "daytona"]
# Extra rows that show what a runtime's parts cost.
VARIANTS = {"bubblewrap": [("no limits (no cgroup join)", SandboxOptions(memory_mb=None, pids=None, cpus=None))]}
VERSIONS = {
    "bubblewrap": ["bwrap", "--version"],
    "docker": ["/usr/bin/docker", "version", "--format", "{{.Server.Version}}"],
}
SECTION = "## Sandbox benchmarks"
# Hosted runtimes and the variable that holds a real key; without one, they run against core/fakes.
HOSTED = {"e2b": "E2B_API_KEY", "daytona": "DAYTONA_API_KEY"}


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    start_new: list[float]
    start_again: list[float]
    execs: list[float]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def unavailable(runtime: str) -> str | None:
    try:
        factory = runtime_factory(runtime)
    except SandboxUnavailable as e:
        return e.message
    check = getattr(importlib.import_module(factory.__module__), "available", None)
    return check() if check is not None else None


class Subject:
    """One row: a runtime with some options, or the plain subprocess (runtime None)."""

    def __init__(self, name: str, runtime: str | None, options: SandboxOptions | None = None) -> None:
        self.name = name
        self.runtime = runtime
        self.options = options or SandboxOptions()
        self.tag = secrets.token_hex(3)  # fresh session ids: "new session" must mean new
        self.root = make_root()
        self.sessions: list[str] = []
        self.sandbox: Sandbox | None = None
        self.start_new: list[float] = []
        self.start_again: list[float] = []
        self.execs: list[float] = []

    def make(self, session_id: str) -> Sandbox:
        assert self.runtime is not None
        if session_id not in self.sessions:
            self.sessions.append(session_id)
        return runtime_factory(self.runtime)(session_id, root=self.root, options=self.options)

    async def start_stop(self, session_id: str) -> float:
        sb = self.make(session_id)
        started = time.perf_counter()
        await sb.start()
        elapsed = (time.perf_counter() - started) * 1000
        await sb.stop()
        return elapsed

    async def exec_true(self) -> float:
        started = time.perf_counter()
        if self.sandbox is None:
            proc = await asyncio.create_subprocess_exec("true", stdin=asyncio.subprocess.DEVNULL)
            await proc.wait()
        else:
            res = await self.sandbox.exec(["true"])
            if res.exit_code != 0:
                raise RuntimeError(f"{self.name}: `true` failed: {res}")
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        if self.sandbox is not None:
            await self.sandbox.stop()
        for session_id in self.sessions:
            # Runtimes that keep workspaces outside `root` (docker volumes) can remove them.
            remove = getattr(self.make(session_id), "destroy", None)
            if remove is not None:
                await remove()
        await asyncio.to_thread(shutil.rmtree, self.root, ignore_errors=True)

    def row(self) -> Row:
        return Row(self.name, self.start_new, self.start_again, self.execs)


def make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="oma-sandbox-bench-"))
    root.chmod(0o711)  # isolating runtimes enter it as an unprivileged uid
    return root


async def measure(subjects: list[Subject], n: int, starts: int) -> None:
    """Round-robin over the subjects, so that other load on the machine hits every row alike."""
    sandboxed = [s for s in subjects if s.runtime is not None]
    for i in range(starts):
        for s in sandboxed:
            s.start_new.append(await s.start_stop(f"sesn_bench_{s.tag}_{i}"))
    for _ in range(starts):
        for s in sandboxed:
            s.start_again.append(await s.start_stop(f"sesn_bench_{s.tag}_0"))
    for s in sandboxed:
        s.sandbox = s.make(f"sesn_bench_{s.tag}_exec")
        await s.sandbox.start()
    for _ in range(10):  # warm-up
        for s in subjects:
            await s.exec_true()
    for _ in range(n):
        for s in subjects:
            s.execs.append(await s.exec_true())


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {pct(values, 95):.1f} / {min(values):.1f} ms"


def table(rows: list[Row]) -> list[str]:
    base = statistics.median(rows[0].execs)
    lines = [
        "| runtime | start, new session (p50 / p95 / min) | start, re-attach (p50 / p95 / min) "
        "| exec `true` (p50 / p95 / min) | overhead per exec (p50) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        overhead = f"+{statistics.median(row.execs) - base:.1f} ms" if row is not rows[0] else "(reference)"
        lines.append(f"| {row.name} | {fmt(row.start_new)} | {fmt(row.start_again)} | {fmt(row.execs)} | {overhead} |")
    return lines


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({model}), {system}, Python {platform.python_version()}"


def tool_versions(measured: list[str]) -> str:
    found = []
    for runtime in measured:
        argv = VERSIONS.get(runtime)
        if argv and shutil.which(argv[0]):
            out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10).stdout.strip()
            found.append(f"{runtime}: {out.splitlines()[0] if out else '?'}")
    return ", ".join(found) or "-"


def section(rows: list[Row], notes: list[str], command: str, n: int, starts: int, load: float) -> str:
    measured = [r.name.split(" ")[0] for r in rows if r.name.split(" ")[0] in RUNTIMES]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f'`exec(["true"])` {n} times per runtime after 10 warm-up runs; {starts} starts of new sessions and',
        f"{starts} re-attaches. Method: `bench/sandbox_bench.py`'s docstring.",
        "",
        f"- date: {now}",
        f"- machine: {machine()}",
        f"- tools: {tool_versions(measured)}",
        f"- load average before the run: {load:.2f} (other work on a 2-core machine moves the medians too;"
        " min: the best case)",
        f"- command: `{command}`",
        "",
        *table(rows),
    ]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace the section (up to the next `## ` heading) or append it."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == SECTION), None)
    if start is None:
        path.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + text + ("\n" + tail if tail else ""))


class FakeService:
    """A hosted runtime's local fake (core/fakes), served from a thread and loop of its own, as a
    separate server would be."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"fake-{runtime}", daemon=True)
        self.fake: Any = None

    async def start(self) -> SandboxOptions:
        self.thread.start()
        if self.runtime == "e2b":
            from core.fakes.e2b_api import FakeE2B

            self.fake = await self._call(FakeE2B().start())
            creds = {"api_key": self.fake.api_key, "sandbox_url": self.fake.url}
        else:
            from core.fakes.daytona_api import FakeDaytona

            self.fake = await self._call(FakeDaytona().start())
            creds = {"api_key": self.fake.api_key}
        return SandboxOptions(api_url=self.fake.url, credentials=creds)

    async def _call(self, work: Coroutine[Any, Any, Any]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    async def stop(self) -> None:
        if self.fake is not None:
            await self._call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


async def run(n: int, starts: int) -> tuple[list[Row], list[str]]:
    subjects = [Subject("plain subprocess", None)]
    notes = []
    fakes: list[FakeService] = []
    for runtime in RUNTIMES:
        reason = unavailable(runtime)
        if reason is not None:
            notes.append(f"{runtime}: not measured ({reason})")
            continue
        if runtime in HOSTED and not os.environ.get(HOSTED[runtime]):
            fake = FakeService(runtime)
            fakes.append(fake)
            options = await fake.start()
            subjects.append(Subject(f"{runtime} (local fake of its API)", runtime, options))
            notes.append(
                f"{runtime}: against core/fakes on loopback ({HOSTED[runtime]} unset): what the runtime and the SDK"
                " cost on top of the service, not the service's own latency"
            )
            continue
        subjects.append(Subject(runtime, runtime))
        subjects += [Subject(f"{runtime}, {label}", runtime, options) for label, options in VARIANTS.get(runtime, [])]
    print(f"measuring {', '.join(s.name for s in subjects)} ...", file=sys.stderr)
    try:
        await measure(subjects, n, starts)
    finally:
        for subject in subjects:
            await subject.close()
        for fake in fakes:
            await fake.stop()
    return [s.row() for s in subjects], notes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="50 execs and 5 starts per runtime")
    p.add_argument("--execs", type=int, help="execs to time per runtime (default 200)")
    p.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    n = args.execs or (50 if args.quick else 200)
    starts = 5 if args.quick else 20
    load = os.getloadavg()[0]
    rows, notes = asyncio.run(run(n, starts))
    command = " ".join([".venv/bin/python", "bench/sandbox_bench.py", *(argv if argv is not None else sys.argv[1:])])
    text = section(rows, notes, command, n, starts, load)
    print(text)
    if not args.no_write:
        write_section(Path(args.output), text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
