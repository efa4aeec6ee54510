"""The local-subprocess sandbox, with real processes and real files."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from sandbox import (
    RUNTIMES,
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    PathOutsideWorkspace,
    Sandbox,
    SandboxError,
    SandboxUnavailable,
    open_sandbox,
)
from sandbox import local as local_runtime
from sandbox.local import LocalSandbox

SESSION = "sesn_test01"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    sb = await open_sandbox(SESSION, runtime="local-subprocess", root=tmp_path)
    yield sb
    await sb.stop()


def workspace_of(root: Path, session_id: str = SESSION) -> Path:
    return (root / session_id / "workspace").resolve()


def sleep_marker() -> str:
    # A unique duration, so this test's processes can be told apart from any others.
    return f"100.{secrets.randbelow(10**9)}"


def live_processes(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.pid}: {cmdline}")
    return found


async def wait_for_file(path: Path) -> None:
    """Poll, with a deadline, until a command running in the background has created `path`."""
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(path.exists):
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        await asyncio.sleep(0.01)


# --- exec -----------------------------------------------------------------------------------------


async def test_exec_runs_in_the_workspace_and_reports_exit_code(sandbox: Sandbox, tmp_path: Path) -> None:
    res = await sandbox.exec("pwd; echo out; echo err >&2; exit 3")
    assert res.exit_code == 3
    assert res.stdout == f"{workspace_of(tmp_path)}\nout\n"
    assert res.stderr == "err\n"
    assert not res.truncated and not res.timed_out
    assert sandbox.workspace == str(workspace_of(tmp_path))


async def test_exec_argv_is_not_shell_parsed(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["printf", "%s|", "a b", "$HOME", "*"])
    assert res.exit_code == 0
    assert res.stdout == "a b|$HOME|*|"


async def test_exec_missing_program_is_exit_127(sandbox: Sandbox) -> None:
    res = await sandbox.exec(["no-such-program-oma-test"])
    assert res.exit_code == 127
    assert "command not found" in res.stderr


async def test_exec_stdin_is_closed(sandbox: Sandbox) -> None:
    res = await sandbox.exec("cat; echo done", timeout=30)
    assert res.stdout == "done\n"
    assert not res.timed_out


async def test_exec_cwd_is_a_sandbox_path(sandbox: Sandbox, tmp_path: Path) -> None:
    await sandbox.write_file("/workspace/sub/dir/f.txt", b"x")
    expected = f"{workspace_of(tmp_path) / 'sub' / 'dir'}\n"
    assert (await sandbox.exec(["pwd"], cwd="/workspace/sub/dir")).stdout == expected
    assert (await sandbox.exec(["pwd"], cwd="sub/dir")).stdout == expected
    with pytest.raises(PathOutsideWorkspace):
        await sandbox.exec(["pwd"], cwd="/etc")
    with pytest.raises(FileNotFound):
        await sandbox.exec(["pwd"], cwd="/workspace/missing")
    with pytest.raises(SandboxError, match="not a directory"):
        await sandbox.exec(["pwd"], cwd="sub/dir/f.txt")


async def test_exec_env_is_minimal_and_never_the_servers(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMA_TEST_SECRET_TOKEN", "hunter2")
    res = await sandbox.exec(["env"], env={"GIVEN": "yes"})
    env = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert "OMA_TEST_SECRET_TOKEN" not in env
    assert "hunter2" not in res.stdout
    assert env["HOME"] == str(workspace_of(tmp_path))
    assert env["GIVEN"] == "yes"
    assert "/usr/bin" in env["PATH"].split(":")
    assert set(env) <= {"PATH", "LANG", "HOME", "GIVEN", "PWD", "SHLVL", "_"}


async def test_timeout_kills_the_whole_process_tree(sandbox: Sandbox) -> None:
    marker = sleep_marker()
    started = time.monotonic()
    # The `setsid` child leaves the process group and keeps the output pipe open: killing the
    # group alone would leave it running and the read would hang for 100 s.
    res = await sandbox.exec(f"sleep {marker} & setsid sleep {marker} & sleep {marker}", timeout=0.5)
    assert res.timed_out
    assert res.exit_code == 137
    assert time.monotonic() - started < 10
    assert live_processes(marker) == []


async def test_processes_left_running_by_a_finished_command_are_killed(sandbox: Sandbox) -> None:
    marker = sleep_marker()
    started = time.monotonic()
    res = await sandbox.exec(f"sleep {marker} & setsid sleep {marker} & echo started")
    assert res.stdout == "started\n"
    assert res.exit_code == 0 and not res.timed_out
    assert time.monotonic() - started < 10
    assert live_processes(marker) == []


async def test_output_is_capped_keeping_start_and_end(sandbox: Sandbox) -> None:
    res = await sandbox.exec(
        "printf START; head -c 1000000 /dev/zero | tr '\\0' a; printf END; head -c 50000 /dev/zero >&2",
        max_output=1000,
    )
    assert res.truncated
    assert res.stdout.startswith("STARTaaa")
    assert res.stdout.endswith("aaaEND")
    assert "bytes of output omitted" in res.stdout
    assert res.stdout.count("a") <= 1000
    assert len(res.stderr) < 1200  # capped independently
    assert res.exit_code == 0


async def test_output_at_the_cap_is_not_truncated(sandbox: Sandbox) -> None:
    res = await sandbox.exec("head -c 1000 /dev/zero | tr '\\0' b", max_output=1000)
    assert not res.truncated
    assert res.stdout == "b" * 1000


async def test_exec_does_not_block_the_event_loop(sandbox: Sandbox) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(sandbox.exec("sleep 1; echo ok") for _ in range(3)))
    assert [r.stdout for r in results] == ["ok\n"] * 3
    assert time.monotonic() - started < 2.5


async def test_stop_kills_running_commands(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = sleep_marker()
    task = asyncio.create_task(sandbox.exec(f"touch started; sleep {marker}", timeout=300))
    await wait_for_file(workspace_of(tmp_path) / "started")
    await sandbox.stop()
    res = await asyncio.wait_for(task, 10)
    assert res.exit_code == 137
    assert live_processes(marker) == []
    with pytest.raises(SandboxUnavailable):
        await sandbox.exec(["true"])


async def test_cancelled_exec_leaves_nothing_behind(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = sleep_marker()
    task = asyncio.create_task(sandbox.exec(f"touch started; setsid sleep {marker} & sleep {marker}", timeout=300))
    await wait_for_file(workspace_of(tmp_path) / "started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live_processes(marker) == []


async def test_killed_by_a_signal_is_128_plus_the_signal(sandbox: Sandbox) -> None:
    assert (await sandbox.exec("kill -TERM $$")).exit_code == 143


# --- files ----------------------------------------------------------------------------------------


async def test_write_then_read_round_trips_bytes(sandbox: Sandbox, tmp_path: Path) -> None:
    data = bytes(range(256)) * 10
    await sandbox.write_file("/workspace/a/b/data.bin", data)
    assert await sandbox.read_file("a/b/data.bin") == data
    assert (workspace_of(tmp_path) / "a" / "b" / "data.bin").read_bytes() == data
    await sandbox.write_file("a/b/data.bin", b"new")
    assert await sandbox.read_file("/workspace/a/b/data.bin") == b"new"
    # The host path of a file inside the workspace works too: it is what commands see.
    assert await sandbox.read_file(str(workspace_of(tmp_path) / "a" / "b" / "data.bin")) == b"new"


async def test_file_errors_are_one_exception_tree(sandbox: Sandbox) -> None:
    await sandbox.write_file("dir/f.txt", b"0123456789")
    with pytest.raises(FileNotFound) as missing:
        await sandbox.read_file("nope.txt")
    assert missing.value.path == "nope.txt"
    assert "nope.txt" in str(missing.value)
    with pytest.raises(IsADirectory):
        await sandbox.read_file("dir")
    with pytest.raises(IsADirectory):
        await sandbox.write_file("dir", b"x")
    with pytest.raises(FileTooLarge) as large:
        await sandbox.read_file("dir/f.txt", max_bytes=5)
    assert (large.value.size, large.value.limit) == (10, 5)
    assert await sandbox.read_file("dir/f.txt", max_bytes=10) == b"0123456789"
    with pytest.raises(SandboxError, match="not a directory"):
        await sandbox.write_file("dir/f.txt/g.txt", b"x")
    for error in (FileNotFound, IsADirectory, FileTooLarge, PathOutsideWorkspace, SandboxUnavailable):
        assert issubclass(error, SandboxError)


@pytest.mark.parametrize("path", ["../outside.txt", "/workspace/../outside.txt", "/etc/passwd", "a/../../outside.txt"])
async def test_paths_escaping_the_workspace_are_refused(sandbox: Sandbox, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace) as refused:
        await sandbox.read_file(path)
    assert refused.value.path == path
    with pytest.raises(PathOutsideWorkspace):
        await sandbox.write_file(path, b"x")
    with pytest.raises(PathOutsideWorkspace):
        await sandbox.exec_path(path)


async def test_symlinks_out_of_the_workspace_are_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    ws = workspace_of(tmp_path)
    (ws / "link.txt").symlink_to(secret)
    (ws / "linkdir").symlink_to(tmp_path)
    for path in ("link.txt", "/workspace/linkdir/secret.txt"):
        with pytest.raises(PathOutsideWorkspace):
            await sandbox.read_file(path)
        with pytest.raises(PathOutsideWorkspace):
            await sandbox.write_file(path, b"overwritten")
    assert secret.read_text() == "top secret"
    # A symlink that stays inside the workspace is fine.
    await sandbox.write_file("real.txt", b"inside")
    (ws / "inner.txt").symlink_to(ws / "real.txt")
    assert await sandbox.read_file("inner.txt") == b"inside"


async def test_exec_path_maps_workspace_paths(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = workspace_of(tmp_path)
    assert await sandbox.exec_path("/workspace") == str(ws)
    assert await sandbox.exec_path("/workspace/a/b") == str(ws / "a" / "b")
    assert await sandbox.exec_path("a/b") == str(ws / "a" / "b")


# --- lifecycle and registry -----------------------------------------------------------------------


async def test_workspace_persists_across_sandboxes_of_a_session(tmp_path: Path) -> None:
    first = await open_sandbox(SESSION, runtime="local-subprocess", root=tmp_path)
    await first.write_file("notes.txt", b"remember me")
    await first.exec("mkdir -p build && echo artifact > build/out.txt")
    await first.stop()

    again = await open_sandbox(SESSION, runtime="local-subprocess", root=tmp_path)
    assert again.workspace == first.workspace
    assert await again.read_file("/workspace/notes.txt") == b"remember me"
    assert (await again.exec(["cat", "build/out.txt"])).stdout == "artifact\n"
    await again.stop()

    other = await open_sandbox("sesn_other", runtime="local-subprocess", root=tmp_path)
    with pytest.raises(FileNotFound):
        await other.read_file("notes.txt")
    await other.stop()


async def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    async with LocalSandbox(SESSION, root=tmp_path) as sb:
        assert (await sb.exec(["true"])).exit_code == 0
    with pytest.raises(SandboxUnavailable, match="not started"):
        await sb.read_file("x")


async def test_unstarted_sandbox_refuses_work(tmp_path: Path) -> None:
    sb = LocalSandbox(SESSION, root=tmp_path)
    with pytest.raises(SandboxUnavailable, match="not started"):
        await sb.exec(["true"])
    with pytest.raises(SandboxUnavailable):
        await sb.write_file("x", b"")


async def test_unknown_runtime_and_bad_session_ids(tmp_path: Path) -> None:
    assert "local-subprocess" in RUNTIMES
    with pytest.raises(SandboxUnavailable, match="unknown sandbox runtime 'nope'"):
        await open_sandbox(SESSION, runtime="nope", root=tmp_path)
    for bad in ("../escape", "", "a/b", "."):
        with pytest.raises(SandboxError, match="invalid session id"):
            await open_sandbox(bad, runtime="local-subprocess", root=tmp_path)
    assert entries(tmp_path) == []


async def test_start_warns_that_there_is_no_isolation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    local_runtime._warn_no_isolation.cache_clear()
    with caplog.at_level(logging.WARNING, logger="oma.sandbox"):
        await open_sandbox(SESSION, runtime="local-subprocess", root=tmp_path)
        await open_sandbox("sesn_second", runtime="local-subprocess", root=tmp_path)
    warnings = [r for r in caplog.records if "NO isolation" in r.getMessage()]
    assert len(warnings) == 1  # once per process


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def entries(path: Path) -> list[Path]:
    return list(path.iterdir())


async def test_exec_of_many_small_commands_leaves_no_open_files(sandbox: Sandbox) -> None:
    before = open_fds()
    for _ in range(30):
        await sandbox.exec(["true"])
    assert open_fds() - before < 5
