"""The fake E2B API (core/fakes/e2b_api.py), driven by the real `e2b.AsyncSandbox` pointed at it by
configuration only, and checked against this host: the processes it started and the files it wrote."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2b import AsyncSandbox
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import CommandExitException
from e2b.sandbox.filesystem.filesystem import FileType
from e2b.sandbox.sandbox_api import SandboxQuery, SandboxState

from core.fakes.e2b_api import UIDS, FakeE2B

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0


@pytest.fixture
async def fake() -> AsyncIterator[FakeE2B]:
    async with FakeE2B() as server:
        yield server


@pytest.fixture
def opts(fake: FakeE2B) -> dict[str, Any]:
    return fake.sdk_options()


def marker() -> str:
    """A `sleep` duration no other process on this host has on its command line."""
    return f"600.{secrets.randbelow(10**9):09d}"


def procs_with(arg: str) -> list[psutil.Process]:
    """The live processes on this host with `arg` on their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if arg in (proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- the control plane -------------------------------------------------------------------------


async def test_create_list_and_info(fake: FakeE2B, opts: dict[str, Any]) -> None:
    tag = secrets.token_hex(4)
    first = await AsyncSandbox.create(
        template="python-3",
        timeout=120,
        metadata={"tag": tag, "n": "1"},
        envs={"A": "1"},
        allow_internet_access=False,
        **opts,
    )
    second = await AsyncSandbox.create(metadata={"tag": tag, "n": "2", "odd key": "a b&c=d/é+%"}, **opts)
    await AsyncSandbox.create(metadata={"tag": "other"}, **opts)

    record = fake.sandboxes[first.sandbox_id]
    assert (record.template, record.state, record.metadata) == ("python-3", "running", {"tag": tag, "n": "1"})
    assert record.envs == {"A": "1"} and record.allow_internet_access is False
    assert record.home == fake.root / first.sandbox_id / "home" / "user" and record.home.is_dir()
    if AS_ROOT:
        assert record.uid in UIDS and record.home.stat().st_uid == record.uid
        assert record.uid != fake.sandboxes[second.sandbox_id].uid

    info = await first.get_info()
    assert (info.sandbox_id, info.template_id, info.metadata) == (first.sandbox_id, "python-3", {"tag": tag, "n": "1"})
    assert info.state == SandboxState.RUNNING and info.allow_internet_access is False
    assert 110 < (info.end_at - info.started_at).total_seconds() <= 120

    found = await AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}), **opts).next_items()
    assert {s.sandbox_id for s in found} == {first.sandbox_id, second.sandbox_id}
    one = await AsyncSandbox.list(query=SandboxQuery(metadata={"odd key": "a b&c=d/é+%"}), **opts).next_items()
    assert [(s.sandbox_id, s.metadata["n"]) for s in one] == [(second.sandbox_id, "2")]

    # One per page, newest first, until the API stops sending a next token.
    pages = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1, **opts)
    seen = []
    while pages.has_next:
        seen.append([s.sandbox_id for s in await pages.next_items()])
    assert seen == [[second.sandbox_id], [first.sandbox_id]]

    await second.pause()
    paused = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED]), **opts)
    assert [(s.sandbox_id, s.state) for s in await paused.next_items()] == [(second.sandbox_id, SandboxState.PAUSED)]
    running = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING]), **opts)
    assert [s.sandbox_id for s in await running.next_items()] == [first.sandbox_id]
    assert fake.counts()["POST /v2/sandboxes"] == 3


async def test_pause_freezes_processes_and_resume_continues_them(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    await sbx.files.write("kept.txt", b"before the pause")
    duration = marker()
    await sbx.commands.run(f"sleep {duration}", background=True, timeout=0)
    await eventually(lambda: len(procs_with(duration)) == 1)
    [sleeper] = procs_with(duration)

    assert await sbx.pause() is True
    assert fake.sandboxes[sbx.sandbox_id].state == "paused"
    assert sleeper.status() == psutil.STATUS_STOPPED
    assert await sbx.is_running() is False
    with pytest.raises(SandboxNotRunningException):
        await sbx.commands.run("true")
    assert await sbx.pause() is False  # already paused: the API's 409

    resumed = await AsyncSandbox.connect(sbx.sandbox_id, **opts)
    assert fake.sandboxes[sbx.sandbox_id].state == "running"
    assert sleeper.is_running() and sleeper.status() != psutil.STATUS_STOPPED
    assert await resumed.files.read("kept.txt") == "before the pause"
    assert [p.pid for p in await resumed.commands.list()] == [sleeper.pid]
    assert (await resumed.commands.run("echo still here")).stdout == "still here\n"
    assert fake.counts()["POST /v2/sandboxes/{sandboxID}/connect"] == 1


async def test_kill_kills_every_process_and_deletes_the_files(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    home = fake.sandboxes[sbx.sandbox_id].home
    await sbx.files.write("doomed.txt", "x")
    inside, escaped = marker(), marker()
    running = await sbx.commands.run(f"sleep {inside}", background=True, timeout=0)
    await sbx.commands.run(f"setsid -f sleep {escaped}")  # its own session: out of every process group
    await eventually(lambda: len(procs_with(inside)) == 1 and len(procs_with(escaped)) == 1)

    assert await sbx.kill() is True
    assert procs_with(inside) == [] and procs_with(escaped) == []
    with pytest.raises(SandboxNotRunningException):  # its stream ends as the edge proxy ends it
        await running.wait()
    assert not home.exists() and not (fake.root / sbx.sandbox_id).exists()
    assert sbx.sandbox_id not in fake.sandboxes and fake.killed[sbx.sandbox_id].state == "killed"
    assert await AsyncSandbox.kill(sbx.sandbox_id, **opts) is False
    assert await sbx.is_running() is False
    with pytest.raises(SandboxNotRunningException):
        await sbx.files.read("doomed.txt")


async def test_timeouts_kill_or_pause_the_sandbox(fake: FakeE2B, opts: dict[str, Any]) -> None:
    doomed = await AsyncSandbox.create(timeout=300, **opts)
    await doomed.set_timeout(1)
    pausing = await AsyncSandbox.create(timeout=1, lifecycle={"on_timeout": "pause"}, **opts)
    assert (await pausing.get_info()).lifecycle == {"on_timeout": "pause", "auto_resume": False}

    await eventually(lambda: doomed.sandbox_id not in fake.sandboxes)
    await eventually(lambda: fake.sandboxes[pausing.sandbox_id].state == "paused")
    with pytest.raises(SandboxNotFoundException):
        await doomed.get_info()
    assert (await pausing.get_info()).state == SandboxState.PAUSED
    resumed = await pausing.connect(timeout=60)
    assert (await resumed.commands.run("echo up")).stdout == "up\n"

    waking = await AsyncSandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True}, **opts)
    await waking.pause()
    assert (await waking.commands.run("echo woken")).stdout == "woken\n"  # traffic resumes it
    assert fake.sandboxes[waking.sandbox_id].state == "running"


# --- commands ----------------------------------------------------------------------------------


async def test_run_reports_output_and_exit_codes(opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    result = await sbx.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("out\n", "err\n", 0, None)

    with pytest.raises(CommandExitException) as failed:
        await sbx.commands.run("echo partial; echo broken >&2; exit 3")
    assert (failed.value.exit_code, failed.value.stdout, failed.value.stderr) == (3, "partial\n", "broken\n")
    assert failed.value.error == "exit status 3"

    stdin_closed = await sbx.commands.run("cat; echo done")  # stdin is /dev/null unless asked for
    assert stdin_closed.stdout == "done\n"


async def test_run_environment_cwd_and_user(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(envs={"FROM_CREATE": "c", "E2B_SANDBOX_ID": "spoofed"}, **opts)
    record = fake.sandboxes[sbx.sandbox_id]
    await sbx.files.make_dir("work/sub")

    env = (await sbx.commands.run("env", envs={"FROM_RUN": "r", "FROM_CREATE": "overridden"})).stdout
    variables = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert variables["E2B_SANDBOX"] == "true" and variables["E2B_SANDBOX_ID"] == sbx.sandbox_id
    assert variables["HOME"] == str(record.home) and variables["USER"] == variables["LOGNAME"] == "user"
    assert (variables["FROM_RUN"], variables["FROM_CREATE"]) == ("r", "overridden")

    assert (await sbx.commands.run("pwd")).stdout == f"{record.home}\n"
    assert (await sbx.commands.run("pwd", cwd="work/sub")).stdout == f"{record.home}/work/sub\n"
    assert (await sbx.commands.run("pwd", cwd=f"{record.home}/work")).stdout == f"{record.home}/work\n"
    with pytest.raises(InvalidArgumentException, match="does not exist"):
        await sbx.commands.run("pwd", cwd="nowhere")

    uid = int((await sbx.commands.run("id -u")).stdout)
    assert uid == (record.uid if AS_ROOT else os.getuid())
    assert int((await sbx.commands.run("id -u", user="root")).stdout) == uid  # no privileges to hand out


async def test_output_streams_as_it_comes_and_stdin_is_sent(opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    out: list[str] = []
    err: list[str] = []
    ready = asyncio.Event()

    def on_stdout(chunk: str) -> None:
        out.append(chunk)
        ready.set()

    handle = await sbx.commands.run(
        "echo ready; echo warn >&2; read line; echo got $line",
        background=True,
        stdin=True,
        on_stdout=on_stdout,
        on_stderr=err.append,
    )
    await asyncio.wait_for(ready.wait(), 10)
    assert "".join(out) == "ready\n" and handle.exit_code is None  # streamed while it still runs
    await handle.send_stdin("hello\n")
    result = await handle.wait()
    assert "".join(out) == result.stdout == "ready\ngot hello\n"
    assert "".join(err) == result.stderr == "warn\n"


async def test_client_timeout_ends_the_command_like_envd(opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    duration = marker()
    started = time.monotonic()
    run = asyncio.create_task(sbx.commands.run(f"sleep {duration}", timeout=2))
    await eventually(lambda: len(procs_with(duration)) == 1)
    with pytest.raises(TimeoutException):
        await run
    assert 1.5 < time.monotonic() - started < 6
    await eventually(lambda: procs_with(duration) == [])  # envd kills it when the call's timeout passes


async def test_background_commands_list_connect_and_kill(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    duration = marker()
    handle = await sbx.commands.run(f"sleep {duration}", background=True, timeout=0)
    listed = await sbx.commands.list()
    assert [(p.pid, p.cmd, p.args) for p in listed] == [(handle.pid, "/bin/bash", ["-l", "-c", f"sleep {duration}"])]

    # Closing the stream leaves the process running, as with envd.
    [start] = [c for c in fake.calls if c.kind == "process.Process/Start"]
    await handle.disconnect()
    await eventually(lambda: start.error == "canceled")  # the fake saw the client go
    assert psutil.Process(handle.pid).status() != psutil.STATUS_ZOMBIE
    await eventually(lambda: [p.pid for p in procs_with(duration)] == [handle.pid])  # bash -c execs a lone command
    again = await sbx.commands.connect(handle.pid, timeout=0)
    assert await again.kill() is True
    with pytest.raises(CommandExitException) as killed:
        await again.wait()
    assert (killed.value.exit_code, killed.value.error) == (-1, "signal: killed")
    assert procs_with(duration) == []
    assert await sbx.commands.list() == []
    assert await sbx.commands.kill(handle.pid) is False


# --- files -------------------------------------------------------------------------------------


async def test_files_round_trip_large_binary(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    home = fake.sandboxes[sbx.sandbox_id].home
    blob = os.urandom(25 * 1024 * 1024)
    info = await sbx.files.write("data/blob.bin", blob)
    assert (info.name, info.type, info.path) == ("blob.bin", FileType.FILE, f"{home}/data/blob.bin")
    assert (home / "data" / "blob.bin").read_bytes() == blob
    assert await sbx.files.read("data/blob.bin", format="bytes") == blob
    await sbx.files.write("~/note.txt", "héllo\n")
    assert await sbx.files.read(f"{home}/note.txt") == "héllo\n"
    both = await sbx.files.write_files(
        [{"path": "x/1.txt", "data": "one"}, {"path": f"{home}/x/2.txt", "data": b"two"}]
    )
    assert [w.path for w in both] == [f"{home}/x/1.txt", f"{home}/x/2.txt"]
    await sbx.files.write("packed.txt", b"z" * 100_000, gzip=True)  # octet-stream, gzip-encoded
    assert (home / "packed.txt").read_bytes() == b"z" * 100_000
    if AS_ROOT:
        uid = fake.sandboxes[sbx.sandbox_id].uid
        assert {(home / p).stat().st_uid for p in ("data", "data/blob.bin", "note.txt", "x/2.txt")} == {uid}


async def test_file_operations(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    home = fake.sandboxes[sbx.sandbox_id].home
    assert await sbx.files.make_dir("tree/leaf") is True
    assert await sbx.files.make_dir("tree/leaf") is False
    await sbx.files.write("tree/leaf/a.txt", "aaa")
    assert await sbx.files.exists("tree/leaf/a.txt") and not await sbx.files.exists("tree/b.txt")

    info = await sbx.files.get_info("tree/leaf/a.txt")
    assert (info.name, info.type, info.path, info.size) == ("a.txt", FileType.FILE, f"{home}/tree/leaf/a.txt", 3)
    assert (info.owner, info.permissions) == ("user", "-rw-r--r--")

    assert [(e.name, e.type) for e in await sbx.files.list("tree")] == [("leaf", FileType.DIR)]
    assert [e.path for e in await sbx.files.list("tree", depth=2)] == [f"{home}/tree/leaf", f"{home}/tree/leaf/a.txt"]

    moved = await sbx.files.rename("tree/leaf/a.txt", "moved/b.txt")
    assert (moved.path, (home / "moved" / "b.txt").read_text()) == (f"{home}/moved/b.txt", "aaa")
    await sbx.files.remove("tree")
    assert not (home / "tree").exists()
    await sbx.files.remove("tree")  # gone already: envd's RemoveAll does not mind
    assert sorted(p.name for p in home.iterdir()) == ["moved"]


async def test_file_errors(fake: FakeE2B, opts: dict[str, Any]) -> None:
    sbx = await AsyncSandbox.create(**opts)
    other = await AsyncSandbox.create(**opts)
    with pytest.raises(FileNotFoundException):
        await sbx.files.read("missing.txt")
    with pytest.raises(NotFoundException):
        await sbx.files.get_info("missing.txt")
    with pytest.raises(NotFoundException):
        await sbx.files.list("missing")
    with pytest.raises(InvalidArgumentException, match="is a directory"):
        await sbx.files.read(".")

    outside = fake.root.parent / f"fake-e2b-escape-{secrets.token_hex(4)}.txt"
    other_home = fake.sandboxes[other.sandbox_id].home
    for target in (str(outside), f"{other_home}/planted.txt", "/etc/e2b-fake-test"):
        with pytest.raises(SandboxException, match="permission denied"):
            await sbx.files.write(target, "nope")
    with pytest.raises(SandboxException, match="permission denied"):
        await sbx.files.make_dir(f"{other_home}/dir")
    with pytest.raises(SandboxException, match="permission denied"):
        await sbx.files.read(f"{other_home}/../../.")
    assert not outside.exists() and list(other_home.iterdir()) == []
    assert "root:" in await sbx.files.read("/etc/passwd")  # world-readable host files are readable


# --- errors and scripted failures --------------------------------------------------------------


async def test_authentication_and_unknown_sandboxes(fake: FakeE2B, opts: dict[str, Any]) -> None:
    wrong = {**opts, "api_key": "e2b_" + "0" * 40}
    with pytest.raises(AuthenticationException):
        await AsyncSandbox.create(**wrong)
    with pytest.raises(AuthenticationException):
        await AsyncSandbox.list(**wrong).next_items()
    assert fake.sandboxes == {}

    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.connect("inosuchsandbox000000", **opts)
    with pytest.raises(NotFoundException):
        await AsyncSandbox.get_info("inosuchsandbox000000", **opts)
    assert await AsyncSandbox.kill("inosuchsandbox000000", **opts) is False

    async with httpx.AsyncClient(base_url=fake.url) as http:
        response = await http.get("/sandboxes/inosuchsandbox000000", headers={"X-API-Key": fake.api_key})
        assert response.status_code == 404 and response.json()["code"] == 404
        response = await http.post("/v2/sandboxes", json={"templateID": "base"})
        assert response.status_code == 401
        assert response.json() == {"code": 401, "message": response.json()["message"]} and "API key" in response.text


async def test_scripted_failures(fake: FakeE2B, opts: dict[str, Any]) -> None:
    fake.fail("POST /v2/sandboxes", status=500, message="boom")
    with pytest.raises(SandboxException, match="boom") as failed:
        await AsyncSandbox.create(**opts)
    assert failed.value.status_code == 500 and fake.sandboxes == {}
    sbx = await AsyncSandbox.create(**opts)
    assert fake.counts()["POST /v2/sandboxes"] == 2
    fake.fail("POST /sandboxes", status=503, headers={"Retry-After": "0"})  # busy: the SDK retries it
    await AsyncSandbox.create(**opts)
    assert [c.status for c in fake.calls if c.kind == "POST /v2/sandboxes"] == [500, 201, 503, 201]

    fake.fail("process.Process/Start", status=500, message="envd broke")
    with pytest.raises(SandboxException, match="envd broke"):
        await sbx.commands.run("echo never")
    fake.fail("GET /files", status=500, message="disk on fire")
    with pytest.raises(SandboxException, match="disk on fire"):
        await sbx.files.read("anything")
    assert (await sbx.commands.run("echo fine")).stdout == "fine\n"
    starts = [c for c in fake.calls if c.kind == "process.Process/Start"]
    assert [(c.sandbox_id, c.error) for c in starts] == [(sbx.sandbox_id, "internal"), (sbx.sandbox_id, None)]


def test_serves_on_its_own() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.fakes.e2b_api", "--port", "0", "--api-key", "e2b_standalone"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening http://127.0.0.1:")
        url = line.split()[1]
        response = httpx.get(f"{url}/v2/sandboxes", headers={"X-API-Key": "e2b_standalone"})
        assert (response.status_code, response.json()) == (200, [])
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
