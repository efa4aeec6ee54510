"""The fake Daytona (core/fakes/daytona_api.py), driven by the real `daytona` SDK's async client:
sandbox lifecycle, processes and sessions running on this host, the files API, errors, and the
failure hook. Every test has its own fake and its own client."""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest
from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
    ListSandboxesQuery,
    SessionExecuteRequest,
)
from daytona.common.errors import (
    DaytonaAuthenticationError,
    DaytonaBadRequestError,
    DaytonaError,
    DaytonaFileAccessDeniedError,
    DaytonaFileNotFoundError,
    DaytonaGoneError,
    DaytonaInternalServerError,
    DaytonaNotFoundError,
    DaytonaTimeoutError,
)

from core.fakes.daytona_api import UID_RANGE, FakeDaytona

ROOT = os.geteuid() == 0


# --- helpers -------------------------------------------------------------------------------------


def marker() -> str:
    """A `sleep` duration no other process on this host has in its command line."""
    return f"3600.{secrets.randbelow(10**9):09d}"


def live(mark: str) -> list[int]:
    """Live (non-zombie) processes with `mark` in their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(mark in part for part in proc.info["cmdline"] or ()):
            found.append(proc.pid)
    return found


async def eventually(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def start_background(sandbox: AsyncSandbox) -> tuple[str, str]:
    """A plain background process and a setsid'd one (its own session and process group)."""
    plain, detached = marker(), marker()
    result = await sandbox.process.exec(
        f"nohup sleep {plain} >/dev/null 2>&1 & setsid sleep {detached} >/dev/null 2>&1 </dev/null &"
    )
    assert result.exit_code == 0
    await eventually(lambda: bool(live(plain)) and bool(live(detached)))
    return plain, detached


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeDaytona]:
    async with FakeDaytona() as server:
        yield server


def config(fake: FakeDaytona, api_key: str | None = None) -> DaytonaConfig:
    return DaytonaConfig(api_key=api_key or fake.api_key, api_url=fake.api_url, target=fake.target)


@pytest.fixture
async def daytona(fake: FakeDaytona) -> AsyncIterator[AsyncDaytona]:
    async with AsyncDaytona(config(fake)) as client:
        yield client


@pytest.fixture
async def sandbox(daytona: AsyncDaytona) -> AsyncSandbox:
    return await daytona.create(CreateSandboxFromSnapshotParams(env_vars={"GREETING": "hello there"}))


# --- the control plane ---------------------------------------------------------------------------


async def test_create_list_get(fake: FakeDaytona, daytona: AsyncDaytona) -> None:
    team = secrets.token_hex(4)
    first = await daytona.create(
        CreateSandboxFromSnapshotParams(
            snapshot="my-snapshot",
            labels={"team": team, "role": "a"},
            env_vars={"A": "1"},
            network_block_all=True,
            auto_stop_interval=0,
        )
    )
    second = await daytona.create(CreateSandboxFromImageParams(image="python:3.12-slim", labels={"team": team}))
    other = await daytona.create(CreateSandboxFromSnapshotParams(labels={"team": "someone-else"}))
    assert first.state == second.state == "started"

    recorded = fake.sandboxes[first.id]
    assert recorded.state == "started"
    assert recorded.snapshot == "my-snapshot"
    assert recorded.labels["team"] == team
    assert recorded.env_vars == {"A": "1"}
    assert recorded.network_block_all is True
    assert recorded.auto_stop_interval == 0
    assert recorded.home == fake.root / first.id / "home" / "daytona" and recorded.home.is_dir()
    assert fake.sandboxes[second.id].image == "python:3.12-slim"
    if ROOT:
        assert recorded.uid in UID_RANGE and recorded.uid != fake.sandboxes[second.id].uid
        assert recorded.home.stat().st_uid == recorded.uid
        for directory in [recorded.home, *recorded.home.parents]:
            assert directory.stat().st_mode & stat.S_IXOTH, directory
    else:
        assert recorded.uid is None

    listed = [s.id async for s in daytona.list(ListSandboxesQuery(labels={"team": team}))]
    assert sorted(listed) == sorted([first.id, second.id])
    assert [s.id async for s in daytona.list(ListSandboxesQuery(labels={"team": team, "role": "a"}))] == [first.id]
    assert other.id not in listed

    # Pages of one: two requests, every sandbox once.
    before = fake.counts()["GET /sandbox"]
    paged = [s.id async for s in daytona.list(ListSandboxesQuery(labels={"team": team}, limit=1))]
    assert sorted(paged) == sorted(listed)
    assert fake.counts()["GET /sandbox"] - before == 2

    got = await daytona.get(first.id)
    assert got.id == first.id and got.labels["team"] == team and got.env == {"A": "1"}
    assert got.network_block_all is True
    assert got.toolbox_proxy_url == fake.toolbox_url
    await got.refresh_data()
    assert got.state == "started"
    assert await got.get_user_home_dir() == str(recorded.home)
    assert await got.get_work_dir() == str(recorded.home)


async def test_the_api_also_answers_at_the_root_url(fake: FakeDaytona) -> None:
    async with AsyncDaytona(DaytonaConfig(api_key=fake.api_key, api_url=fake.url, target=fake.target)) as daytona:
        sandbox = await daytona.create()
        assert (await sandbox.process.exec("echo hi")).result == "hi\n"
    assert fake.counts()["POST /sandbox"] == 1 and fake.counts()["GET /socket.io/"] == 1


async def test_stop_kills_processes_keeps_files_and_starts_again(fake: FakeDaytona, sandbox: AsyncSandbox) -> None:
    await sandbox.fs.upload_file(b"kept", "notes/keep.txt")
    plain, detached = await start_background(sandbox)
    in_session = marker()
    await sandbox.process.create_session("worker")
    await sandbox.process.execute_session_command(
        "worker", SessionExecuteRequest(command=f"sleep {in_session}", run_async=True)
    )
    await eventually(lambda: bool(live(in_session)))

    await sandbox.stop()
    assert sandbox.state == "stopped" and fake.sandboxes[sandbox.id].state == "stopped"
    assert live(plain) == live(detached) == live(in_session) == []
    assert (fake.sandboxes[sandbox.id].home / "notes" / "keep.txt").read_bytes() == b"kept"

    # The toolbox of a stopped sandbox answers as the proxy does.
    with pytest.raises(DaytonaBadRequestError) as stopped:
        await sandbox.process.exec("true")
    assert stopped.value.status_code == 400 and stopped.value.code == "SANDBOX_NOT_STARTED"

    await sandbox.start()
    assert sandbox.state == "started" and fake.sandboxes[sandbox.id].state == "started"
    assert await sandbox.fs.download_file("notes/keep.txt") == b"kept"
    assert await sandbox.process.list_sessions() == []  # the daemon restarted


async def test_delete_kills_processes_and_removes_files(fake: FakeDaytona, daytona: AsyncDaytona) -> None:
    sandbox = await daytona.create()
    directory = fake.sandboxes[sandbox.id].dir
    plain, detached = await start_background(sandbox)

    await daytona.delete(sandbox)
    assert live(plain) == live(detached) == []
    assert not directory.exists()
    assert fake.sandboxes[sandbox.id].state == "destroyed"
    with pytest.raises(DaytonaNotFoundError):
        await daytona.get(sandbox.id)
    assert sandbox.id not in [s.id async for s in daytona.list()]

    # An ephemeral sandbox is deleted as soon as it stops.
    ephemeral = await daytona.create(CreateSandboxFromSnapshotParams(ephemeral=True))
    await ephemeral.stop()
    assert fake.sandboxes[ephemeral.id].state == "destroyed"
    assert not fake.sandboxes[ephemeral.id].dir.exists()


async def test_processes_of_the_current_user_are_found_by_tree_and_environment() -> None:
    """Without a uid per sandbox, stopping finds the sandbox's processes by process tree, and
    setsid'd orphans by the sandbox id in their environment; so does stopping the fake."""
    async with FakeDaytona(per_sandbox_uid=False) as fake:
        async with AsyncDaytona(config(fake)) as daytona:
            sandbox = await daytona.create()
            assert fake.sandboxes[sandbox.id].uid is None
            assert (await sandbox.process.exec("id -u")).result.strip() == str(os.geteuid())
            plain, detached = await start_background(sandbox)
            await daytona.stop(sandbox)
            assert live(plain) == live(detached) == []
            await daytona.start(sandbox)
            left_running = await start_background(sandbox)
        assert all(live(mark) for mark in left_running)
    assert [live(mark) for mark in left_running] == [[], []]


async def test_the_sdk_waits_for_a_sandbox_to_start() -> None:
    """A sandbox is "creating" (or "starting") for `start_delay`; the SDK waits, told of the
    change by the notification gateway rather than by polling."""
    async with FakeDaytona(start_delay=0.3) as fake, AsyncDaytona(config(fake)) as daytona:
        began = time.monotonic()
        sandbox = await daytona.create()
        assert sandbox.state == "started" and time.monotonic() - began >= 0.3
        create = next(c for c in fake.calls if c.key == "POST /sandbox")
        assert create.status == 200
        await sandbox.stop()
        began = time.monotonic()
        await sandbox.start()
        assert sandbox.state == "started" and time.monotonic() - began >= 0.3
        assert fake.counts()["GET /socket.io/"] == 1
        assert fake.counts()["GET /sandbox/{id}"] <= 6  # no polling loop


# --- processes ------------------------------------------------------------------------------------


async def test_exec(fake: FakeDaytona, sandbox: AsyncSandbox) -> None:
    recorded = fake.sandboxes[sandbox.id]
    assert (await sandbox.process.exec("echo $0")).result == f"{fake.shell}\n"  # the daemon's shell, fed on stdin
    result = await sandbox.process.exec("echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert result.result == "out\nerr\n"  # stdout and stderr, combined

    result = await sandbox.process.exec("pwd; echo $HOME; echo $GREETING; echo $DAYTONA_SANDBOX_ID; id -u")
    home = str(recorded.home)
    uid = str(recorded.uid if recorded.uid is not None else os.geteuid())
    assert result.exit_code == 0
    assert result.result.splitlines() == [home, home, "hello there", sandbox.id, uid]

    await sandbox.fs.create_folder("work/sub", "755")
    assert (await sandbox.process.exec("pwd", cwd="work/sub")).result == f"{home}/work/sub\n"
    assert (await sandbox.process.exec("pwd", cwd="/")).result == "/\n"
    missing = await sandbox.process.exec("pwd", cwd="/no/such/dir")
    assert missing.exit_code == -1 and "chdir /no/such/dir: no such file or directory" in missing.result

    result = await sandbox.process.exec('echo "$GREETING/$EXTRA"', env={"EXTRA": "x y", "GREETING": "over"})
    assert result.result == "over/x y\n"

    # Several lines, quotes and pipes: the command is a shell script.
    result = await sandbox.process.exec('for i in 1 2 3; do echo "n=$i"; done | tail -n 1\nfalse')
    assert (result.exit_code, result.result) == (1, "n=3\n")

    # The timeout kills the command's process group and surfaces as the daemon's 408.
    stuck = marker()
    started = time.monotonic()
    with pytest.raises(DaytonaTimeoutError) as timed_out:
        await sandbox.process.exec(f"sleep {stuck}", timeout=1)
    assert 0.9 < time.monotonic() - started < 5
    assert timed_out.value.status_code == 408
    assert live(stuck) == []


async def test_sessions(fake: FakeDaytona, sandbox: AsyncSandbox) -> None:
    process = sandbox.process
    await process.create_session("main")
    response = await process.execute_session_command(
        "main", SessionExecuteRequest(command="echo to-out; echo to-err >&2; printf partial; exit_code=4; cd /")
    )
    assert response.exit_code == 0
    assert response.stdout == "to-out\npartial\n"
    assert response.stderr == "to-err\n"
    # State carries over between the commands of a session: they run in one shell.
    response = await process.execute_session_command(
        "main", SessionExecuteRequest(command='pwd; echo "$exit_code" >&2; exit "$exit_code"')
    )
    assert (response.exit_code, response.stdout, response.stderr) == (4, "/\n", "4\n")
    # ... and that `exit` ended the session's shell, as it does the daemon's.
    with pytest.raises(DaytonaGoneError):
        await process.execute_session_command("main", SessionExecuteRequest(command="true"))

    # An async command: no exit code while it runs, then logs with separate streams.
    await process.create_session("background")
    flag = fake.sandboxes[sandbox.id].home / "go"
    waiting = await process.execute_session_command(
        "background",
        SessionExecuteRequest(
            command=f"echo waiting; while [ ! -e '{flag}' ]; do sleep 0.02; done; echo oops >&2; sh -c 'exit 7'",
            run_async=True,
        ),
    )
    assert waiting.exit_code is None
    command = await process.get_session_command("background", waiting.cmd_id)
    assert command.exit_code is None and command.command.startswith("echo waiting")
    await sandbox.fs.upload_file(b"", "go")
    out: list[str] = []
    err: list[str] = []
    await process.get_session_command_logs_async("background", waiting.cmd_id, out.append, err.append)
    assert ("".join(out), "".join(err)) == ("waiting\n", "oops\n")
    assert (await process.get_session_command("background", waiting.cmd_id)).exit_code == 7
    logs = await process.get_session_command_logs("background", waiting.cmd_id)
    assert (logs.stdout, logs.stderr) == ("waiting\n", "oops\n")

    sessions = {s.session_id: s for s in await process.list_sessions()}
    assert set(sessions) == {"main", "background"}
    assert len(sessions["main"].commands) == 2

    # Deleting a session kills what it runs.
    running = marker()
    await process.execute_session_command(
        "background", SessionExecuteRequest(command=f"sleep {running}", run_async=True)
    )
    await eventually(lambda: bool(live(running)))
    await process.delete_session("background")
    assert live(running) == []
    with pytest.raises(DaytonaNotFoundError):
        await process.get_session("background")
    assert [s.session_id for s in await process.list_sessions()] == ["main"]


async def test_commands_of_different_sessions_overlap_and_of_one_session_queue(
    fake: FakeDaytona, sandbox: AsyncSandbox
) -> None:
    home = fake.sandboxes[sandbox.id].home
    # A rendezvous: each command waits (bounded) for the other to have started.
    script = (
        "touch {me}; i=0; while [ ! -e {other} ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done; [ -e {other} ]"
    )
    for name in ("a", "b"):
        await sandbox.process.create_session(name)
    both = await asyncio.gather(
        *(
            sandbox.process.execute_session_command(
                me, SessionExecuteRequest(command=script.format(me=home / f"{me}.up", other=home / f"{other}.up"))
            )
            for me, other in (("a", "b"), ("b", "a"))
        )
    )
    assert [r.exit_code for r in both] == [0, 0]

    # Within one session the daemon's shell runs one command after the other.
    gate = home / "gate"
    first = await sandbox.process.execute_session_command(
        "a", SessionExecuteRequest(command=f"while [ ! -e '{gate}' ]; do sleep 0.02; done", run_async=True)
    )
    second = await sandbox.process.execute_session_command(
        "a", SessionExecuteRequest(command=f"[ -e '{gate}' ] && echo after-gate", run_async=True)
    )
    assert (await sandbox.process.get_session_command("a", second.cmd_id)).exit_code is None
    await sandbox.fs.upload_file(b"", str(gate))
    third = await sandbox.process.execute_session_command("a", SessionExecuteRequest(command="echo last"))
    assert third.stdout == "last\n"
    assert (await sandbox.process.get_session_command("a", first.cmd_id)).exit_code == 0
    assert (await sandbox.process.get_session_command_logs("a", second.cmd_id)).stdout == "after-gate\n"


# --- files ---------------------------------------------------------------------------------------


async def test_files(fake: FakeDaytona, sandbox: AsyncSandbox) -> None:
    recorded = fake.sandboxes[sandbox.id]
    payload = os.urandom(25 * 1024 * 1024)
    await sandbox.fs.upload_file(payload, "data/blob.bin")  # relative: under the home
    on_disk = recorded.home / "data" / "blob.bin"
    assert on_disk.stat().st_size == len(payload)
    if ROOT:
        assert on_disk.stat().st_uid == recorded.uid and on_disk.parent.stat().st_uid == recorded.uid
    assert await sandbox.fs.download_file(str(on_disk)) == payload

    info = await sandbox.fs.get_file_info("data/blob.bin")
    assert (info.name, info.size, info.is_dir) == ("blob.bin", len(payload), False)
    await sandbox.fs.create_folder("data/empty", "700")
    assert stat.S_IMODE((recorded.home / "data" / "empty").stat().st_mode) == 0o700
    assert {f.name: f.is_dir for f in await sandbox.fs.list_files("data")} == {"blob.bin": False, "empty": True}

    await sandbox.fs.move_files("data/blob.bin", "data/empty/moved.bin")
    assert (recorded.home / "data" / "empty" / "moved.bin").stat().st_size == len(payload)
    with pytest.raises(DaytonaFileNotFoundError):
        await sandbox.fs.get_file_info("data/blob.bin")
    with pytest.raises(DaytonaBadRequestError):  # a directory needs recursive=True
        await sandbox.fs.delete_file("data/empty")
    await sandbox.fs.delete_file("data/empty", recursive=True)
    assert not (recorded.home / "data" / "empty").exists()

    # What commands write, the files API reads, and the other way around.
    await sandbox.process.exec("printf 'from a command' > made.txt")
    assert await sandbox.fs.download_file("made.txt") == b"from a command"
    await sandbox.fs.upload_file(b"from the API", "given.txt")
    assert (await sandbox.process.exec("cat given.txt")).result == "from the API"


async def test_writes_outside_the_sandbox_are_refused(fake: FakeDaytona, sandbox: AsyncSandbox, tmp_path: Path) -> None:
    # Next to the sandboxes, readable by their users: only writing is in question.
    outside = fake.root / f"outside-{secrets.token_hex(4)}"
    outside.mkdir(mode=0o755)
    victim = outside / "victim.txt"
    victim.write_text("untouched")
    victim.chmod(0o644)

    with pytest.raises(DaytonaError) as upload:
        await sandbox.fs.upload_file(b"x", str(outside / "new.txt"))
    assert upload.value.status_code == 400 and "permission denied" in str(upload.value)
    with pytest.raises(DaytonaError):
        await sandbox.fs.upload_file(b"x", str(victim))
    with pytest.raises(DaytonaFileAccessDeniedError):
        await sandbox.fs.create_folder(str(outside / "dir"), "755")
    with pytest.raises(DaytonaBadRequestError):
        await sandbox.fs.delete_file(str(victim))
    with pytest.raises(DaytonaBadRequestError):
        await sandbox.fs.move_files(str(victim), "stolen.txt")
    # A symlink inside the sandbox does not lead out of it either.
    await sandbox.process.exec(f"ln -s '{outside}' escape")
    with pytest.raises(DaytonaError):
        await sandbox.fs.upload_file(b"x", "escape/through-link.txt")

    assert victim.read_text() == "untouched"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert fake.counts()["POST /files/bulk-upload"] == 3
    # Reading the host is allowed, with the sandbox user's rights.
    assert await sandbox.fs.download_file(str(victim)) == b"untouched"
    assert b"root:" in await sandbox.fs.download_file("/etc/passwd")
    private = tmp_path / "private.txt"  # pytest's temporary directories are 0700
    private.write_text("secret")
    if ROOT:
        with pytest.raises(DaytonaFileAccessDeniedError):
            await sandbox.fs.download_file(str(private))
    else:
        assert await sandbox.fs.download_file(str(private)) == b"secret"


# --- errors and the failure hook -----------------------------------------------------------------


async def test_errors(fake: FakeDaytona, daytona: AsyncDaytona, sandbox: AsyncSandbox) -> None:
    async with AsyncDaytona(config(fake, api_key="dtn_wrong")) as intruder:
        with pytest.raises(DaytonaAuthenticationError) as denied:
            await intruder.get(sandbox.id)
        assert denied.value.status_code == 401 and denied.value.source == "DAYTONA_API"
        with pytest.raises(DaytonaAuthenticationError):
            await intruder.create()
    assert [c.status for c in fake.calls if c.api == "api"][-2:] == [401, 401]
    assert len(fake.sandboxes) == 1

    with pytest.raises(DaytonaNotFoundError) as unknown:
        await daytona.get("no-such-sandbox")
    assert unknown.value.status_code == 404 and "no-such-sandbox" in unknown.value.message

    with pytest.raises(DaytonaFileNotFoundError) as missing:
        await sandbox.fs.download_file("does/not/exist.txt")
    assert isinstance(missing.value, DaytonaNotFoundError) and missing.value.status_code == 404
    with pytest.raises(DaytonaNotFoundError):
        await sandbox.process.get_session("never-created")
    await sandbox.process.create_session("twice")
    with pytest.raises(DaytonaError) as twice:
        await sandbox.process.create_session("twice")
    assert twice.value.status_code == 409


async def test_fail_hook(fake: FakeDaytona, daytona: AsyncDaytona) -> None:
    fake.fail("POST /sandbox", status=500)
    with pytest.raises(DaytonaInternalServerError) as failed:
        await daytona.create()
    assert failed.value.status_code == 500 and failed.value.code == "INTERNAL_SERVER_ERROR"
    assert fake.sandboxes == {}  # without effect
    sandbox = await daytona.create()  # only the next one failed
    assert list(fake.sandboxes) == [sandbox.id]

    fake.fail("POST /process/execute", status=500, times=2, message="daemon exploded")
    for _ in range(2):
        with pytest.raises(DaytonaInternalServerError, match="daemon exploded"):
            await sandbox.process.exec("touch ran")
    assert (await sandbox.process.exec("echo ok")).result == "ok\n"
    assert not (fake.sandboxes[sandbox.id].home / "ran").exists()

    fake.fail("POST /sandbox/{id}/stop", status=500)
    with pytest.raises(DaytonaInternalServerError):
        await sandbox.stop()
    assert fake.sandboxes[sandbox.id].state == "started"

    executes = [c for c in fake.calls if c.key == "POST /process/execute"]
    assert [c.status for c in executes] == [500, 500, 200]
    assert {c.sandbox_id for c in executes} == {sandbox.id}
    assert fake.counts()["POST /sandbox"] == 2


def test_serves_on_its_own() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "core.fakes.daytona_api", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().split()
            assert first[0] == "listening" and first[1].startswith("http://127.0.0.1:")
        finally:
            proc.terminate()
        assert proc.wait(timeout=10) == 0
