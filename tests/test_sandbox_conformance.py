"""The sandbox contract, run against every runtime this machine has.

Each runtime module may define `available() -> str | None` (None, or why it cannot run here);
runtimes that are not registered or not installed are skipped with the reason. Assertions go
through the contract only (`sandbox.workspace`, `exec_path`), never through a runtime's host paths.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import os
import posixpath
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.tools import run_tool
from sandbox import (
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    PathOutsideWorkspace,
    Sandbox,
    SandboxError,
    SandboxOptions,
    SandboxUnavailable,
    runtime_factory,
)
from tests.servers import hosted_service

ALL_RUNTIMES = ["local-subprocess", "bubblewrap", "docker", "e2b", "daytona"]
PACKAGE_RUNTIMES = ["bubblewrap", "docker", "e2b", "daytona"]
# Runtimes that install an environment's packages once and share them between its sessions; the
# hosted ones install into each session's machine (a shared install is a template or snapshot).
SHARED_PACKAGE_RUNTIMES = ["bubblewrap", "docker"]

OpenSandbox = Callable[..., Awaitable[Sandbox]]


@functools.cache
def unavailable(runtime: str) -> str | None:
    """Why `runtime` cannot run here, or None. A runtime module without `available()` always can."""
    try:
        factory = runtime_factory(runtime)
    except SandboxUnavailable as e:
        return e.message
    check = getattr(importlib.import_module(factory.__module__), "available", None)
    return check() if check is not None else None


def runtimes_here(names: list[str]) -> list[str]:
    """The runtimes of `names` that can run here; `test_runtime_is_available` says why the others can't."""
    return [name for name in names if unavailable(name) is None]


@pytest.fixture(scope="session", params=runtimes_here(ALL_RUNTIMES))
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("name", ALL_RUNTIMES)
def test_runtime_is_available(name: str) -> None:
    reason = unavailable(name)
    if reason is not None:
        pytest.skip(f"sandbox runtime {name!r} is not tested here: {reason}")


@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    # Not under pytest's tmp_path: isolating runtimes enter the root as an unprivileged uid, and
    # pytest's directories are private to their owner.
    root = Path(tempfile.mkdtemp(prefix="oma-sandboxes-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def service(runtime: str) -> Iterator[dict[str, Any]]:
    """The hosted runtimes' service: a local fake of its HTTP API (core/fakes), driven by the real
    SDK; yields the options that point the runtime at it. Other runtimes: no options."""
    with hosted_service(runtime) as options:
        yield options


@pytest.fixture
async def open_sb(runtime: str, sandbox_root: Path, service: dict[str, Any]) -> AsyncIterator[OpenSandbox]:
    opened: list[Sandbox] = []
    ids: dict[str, str] = {}

    async def open_(label: str = "main", *, start: bool = True, **options: Any) -> Sandbox:
        # Unique per test, the same for one label within it: some runtimes keep workspaces by
        # session id alone (e.g. docker volumes), outside `sandbox_root`.
        session_id = ids.setdefault(label, unique_session(label))
        sb = runtime_factory(runtime)(session_id, root=sandbox_root, options=SandboxOptions(**{**service, **options}))
        opened.append(sb)
        if start:
            await sb.start()
        return sb

    yield open_
    await release(opened)


@pytest.fixture
async def sb(open_sb: OpenSandbox) -> Sandbox:
    return await open_sb()


async def release(opened: list[Sandbox]) -> None:
    """Stop the sandboxes; runtimes that keep workspaces outside `sandbox_root` (docker volumes)
    also offer `destroy()`, so that tests leave nothing behind."""
    for sb in opened:
        destroy = getattr(sb, "destroy", None)
        await (destroy() if destroy is not None else sb.stop())


def unique_session(label: str) -> str:
    return f"sesn_{label}_{secrets.token_hex(4)}"


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


async def no_processes_left(marker: str, within: float = 5.0) -> list[str]:
    """Processes are reaped asynchronously after a kill: poll, with a deadline, until none is left."""
    deadline = time.monotonic() + within
    while True:
        left = await asyncio.to_thread(live_processes, marker)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.02)


async def wait_for_file(sb: Sandbox, path: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            await sb.read_file(path)
            return
        except FileNotFound:
            assert time.monotonic() < deadline, f"{path} never appeared"
            await asyncio.sleep(0.01)


# --- lifecycle --------------------------------------------------------------------------------------


async def test_unstarted_and_stopped_sandboxes_refuse_work(open_sb: OpenSandbox) -> None:
    sb = await open_sb(start=False)
    with pytest.raises(SandboxUnavailable, match="not started"):
        await sb.exec(["true"])
    with pytest.raises(SandboxUnavailable):
        await sb.write_file("x", b"")
    await sb.start()
    await sb.start()  # idempotent
    assert (await sb.exec(["true"])).exit_code == 0
    await sb.stop()
    with pytest.raises(SandboxUnavailable):
        await sb.read_file("x")


async def test_workspace_persists_across_sandboxes_of_a_session(open_sb: OpenSandbox) -> None:
    first = await open_sb()
    await first.write_file("notes.txt", b"remember me")
    assert (await first.exec("mkdir -p build && echo artifact > build/out.txt")).exit_code == 0
    await first.stop()

    again = await open_sb()
    assert again.workspace == first.workspace
    assert await again.read_file("/workspace/notes.txt") == b"remember me"
    assert await again.read_file("build/out.txt") == b"artifact\n"
    assert (await again.exec(["cat", "notes.txt"])).stdout == "remember me"

    other = await open_sb("other")
    with pytest.raises(FileNotFound):
        await other.read_file("notes.txt")
    assert (await other.exec("ls -A")).stdout == ""


async def test_context_manager_starts_and_stops(open_sb: OpenSandbox) -> None:
    sb = await open_sb(start=False)
    async with sb:
        assert (await sb.exec(["true"])).exit_code == 0
    with pytest.raises(SandboxUnavailable, match="not started"):
        await sb.exec(["true"])


async def test_bad_session_ids_are_refused(runtime: str, sandbox_root: Path) -> None:
    for bad in ("../escape", "", "a/b", "."):
        with pytest.raises(SandboxError, match="invalid session id"):
            runtime_factory(runtime)(bad, root=sandbox_root, options=SandboxOptions())
    assert os.listdir(sandbox_root) == []


# --- exec -------------------------------------------------------------------------------------------


async def test_exec_string_runs_bash_in_the_workspace(sb: Sandbox) -> None:
    res = await sb.exec("pwd; echo out; echo err >&2; exit 3")
    assert (res.exit_code, res.stdout, res.stderr) == (3, f"{sb.workspace}\nout\n", "err\n")
    assert not res.truncated and not res.timed_out


async def test_exec_argv_is_not_shell_parsed(sb: Sandbox) -> None:
    res = await sb.exec(["printf", "%s|", "a b", "$HOME", "*", "'"])
    assert (res.exit_code, res.stdout) == (0, "a b|$HOME|*|'|")


async def test_exit_codes(sb: Sandbox) -> None:
    assert (await sb.exec(["false"])).exit_code == 1
    assert (await sb.exec("exit 42")).exit_code == 42
    assert (await sb.exec("kill -TERM $$")).exit_code == 143


async def test_missing_program_is_127_and_not_executable_is_126(sb: Sandbox) -> None:
    res = await sb.exec(["no-such-program-oma-test", "arg"])
    assert res.exit_code == 127
    assert "command not found" in res.stderr
    assert (await sb.exec("no-such-program-oma-test")).exit_code == 127
    await sb.write_file("script.sh", b"#!/bin/sh\necho hi\n")
    assert (await sb.exec([await sb.exec_path("script.sh")])).exit_code == 126
    assert (await sb.exec("chmod +x script.sh && ./script.sh")).stdout == "hi\n"


async def test_stdin_is_closed(sb: Sandbox) -> None:
    res = await sb.exec("cat; echo done", timeout=30)
    assert (res.stdout, res.timed_out) == ("done\n", False)


async def test_cwd_is_a_sandbox_path(sb: Sandbox) -> None:
    await sb.write_file("/workspace/sub/dir/f.txt", b"x")
    expected = posixpath.join(sb.workspace, "sub/dir") + "\n"
    assert (await sb.exec(["pwd"], cwd="/workspace/sub/dir")).stdout == expected
    assert (await sb.exec(["pwd"], cwd="sub/dir")).stdout == expected
    assert (await sb.exec(["pwd"], cwd="/workspace")).stdout == sb.workspace + "\n"
    with pytest.raises(PathOutsideWorkspace):
        await sb.exec(["pwd"], cwd="/etc")
    with pytest.raises(PathOutsideWorkspace):
        await sb.exec(["pwd"], cwd="..")
    with pytest.raises(FileNotFound):
        await sb.exec(["pwd"], cwd="/workspace/missing")
    with pytest.raises(SandboxError, match="not a directory"):
        await sb.exec(["pwd"], cwd="sub/dir/f.txt")


async def test_env_is_minimal_and_never_the_servers(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMA_TEST_SECRET_TOKEN", "hunter2")
    res = await sb.exec(["env"], env={"GIVEN": "yes", "HOME": "/workspace/home"})
    env = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert "hunter2" not in res.stdout
    assert env["GIVEN"] == "yes"
    assert env["HOME"] == "/workspace/home"  # the caller's env wins
    assert "/usr/bin" in env["PATH"].split(":")
    assert set(env) <= {"PATH", "LANG", "HOME", "GIVEN", "PWD", "SHLVL", "_", "NODE_EXTRA_CA_CERTS"}
    assert (await sb.exec('echo "$HOME"')).stdout == sb.workspace + "\n"


async def test_output_is_capped_keeping_start_and_end(sb: Sandbox) -> None:
    res = await sb.exec(
        "printf START; head -c 1000000 /dev/zero | tr '\\0' a; printf END; head -c 50000 /dev/zero >&2",
        max_output=1000,
    )
    assert res.truncated and res.exit_code == 0
    assert res.stdout.startswith("STARTaaa") and res.stdout.endswith("aaaEND")
    assert "bytes of output omitted" in res.stdout
    assert res.stdout.count("a") <= 1000
    assert len(res.stderr) < 1200  # capped independently


async def test_output_at_the_cap_is_not_truncated(sb: Sandbox) -> None:
    res = await sb.exec("head -c 1000 /dev/zero | tr '\\0' b", max_output=1000)
    assert (res.truncated, res.stdout) == (False, "b" * 1000)


async def test_timeout_kills_the_whole_process_tree(sb: Sandbox) -> None:
    marker = sleep_marker()
    started = time.monotonic()
    res = await sb.exec(f"sleep {marker} & setsid sleep {marker} & sleep {marker}", timeout=0.5)
    assert res.timed_out and res.exit_code == 137
    assert time.monotonic() - started < 10
    assert await no_processes_left(marker) == []


async def test_processes_left_running_by_a_finished_command_are_killed(sb: Sandbox) -> None:
    marker = sleep_marker()
    started = time.monotonic()
    res = await sb.exec(f"sleep {marker} & setsid sleep {marker} & echo started")
    assert (res.stdout, res.exit_code, res.timed_out) == ("started\n", 0, False)
    assert time.monotonic() - started < 10
    assert await no_processes_left(marker) == []


async def test_stop_kills_running_commands(sb: Sandbox) -> None:
    marker = sleep_marker()
    task = asyncio.create_task(sb.exec(f"touch started; sleep {marker}", timeout=300))
    await wait_for_file(sb, "started")
    await sb.stop()
    res = await asyncio.wait_for(task, 10)
    assert res.exit_code == 137
    assert await no_processes_left(marker) == []


async def test_cancelled_exec_leaves_nothing_behind(sb: Sandbox) -> None:
    marker = sleep_marker()
    task = asyncio.create_task(sb.exec(f"touch started; setsid sleep {marker} & sleep {marker}", timeout=300))
    await wait_for_file(sb, "started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_processes_left(marker) == []


async def test_execs_run_concurrently(sb: Sandbox) -> None:
    started = time.monotonic()
    results = await asyncio.gather(*(sb.exec("sleep 0.5; echo ok") for _ in range(3)))
    assert [r.stdout for r in results] == ["ok\n"] * 3
    assert time.monotonic() - started < 1.4


async def test_many_small_commands_leave_no_open_files(sb: Sandbox) -> None:
    await sb.exec(["true"])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        await sb.exec(["true"])
    assert len(os.listdir("/proc/self/fd")) - before < 5


# --- files ------------------------------------------------------------------------------------------


async def test_write_then_read_round_trips_bytes(sb: Sandbox) -> None:
    data = bytes(range(256)) * 10
    await sb.write_file("/workspace/a/b/data.bin", data)
    assert await sb.read_file("a/b/data.bin") == data
    res = await sb.exec(["sha256sum", await sb.exec_path("a/b/data.bin")])
    assert res.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    await sb.write_file("a/b/data.bin", b"new")
    assert await sb.read_file("/workspace/a/b/data.bin") == b"new"
    assert await sb.read_file("/workspace/./a/../a/b/data.bin") == b"new"


async def test_files_made_by_commands_are_readable_and_writable(sb: Sandbox) -> None:
    assert (await sb.exec("mkdir -p out && printf 'from exec' > out/made.txt")).exit_code == 0
    assert await sb.read_file("out/made.txt") == b"from exec"
    await sb.write_file("out/made.txt", b"from write_file")
    assert (await sb.exec("cat out/made.txt && echo more >> out/made.txt")).stdout == "from write_file"
    assert await sb.read_file("out/made.txt") == b"from write_filemore\n"


async def test_file_errors_are_one_exception_tree(sb: Sandbox) -> None:
    await sb.write_file("dir/f.txt", b"0123456789")
    with pytest.raises(FileNotFound) as missing:
        await sb.read_file("nope.txt")
    assert missing.value.path == "nope.txt" and "nope.txt" in str(missing.value)
    with pytest.raises(FileNotFound):
        await sb.read_file("nodir/nope.txt")
    with pytest.raises(FileNotFound):
        await sb.read_file("dir/f.txt/below")
    with pytest.raises(IsADirectory):
        await sb.read_file("dir")
    with pytest.raises(IsADirectory):
        await sb.read_file("/workspace")
    with pytest.raises(IsADirectory):
        await sb.write_file("dir", b"x")
    with pytest.raises(FileTooLarge) as large:
        await sb.read_file("dir/f.txt", max_bytes=5)
    assert (large.value.size, large.value.limit) == (10, 5)
    assert await sb.read_file("dir/f.txt", max_bytes=10) == b"0123456789"
    with pytest.raises(SandboxError, match="not a directory"):
        await sb.write_file("dir/f.txt/g.txt", b"x")


async def test_special_files_are_not_read(sb: Sandbox) -> None:
    assert (await sb.exec("mkfifo pipe")).exit_code == 0
    with pytest.raises(SandboxError, match="not a regular file"):
        await asyncio.wait_for(sb.read_file("pipe"), 10)
    with pytest.raises(SandboxError, match="not a regular file"):
        await asyncio.wait_for(sb.write_file("pipe", b"x"), 10)


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/workspace/../outside.txt", "/etc/passwd", "a/../../outside.txt", "/", "/workspacex"]
)
async def test_paths_escaping_the_workspace_are_refused(sb: Sandbox, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace) as refused:
        await sb.read_file(path)
    assert refused.value.path == path
    with pytest.raises(PathOutsideWorkspace):
        await sb.write_file(path, b"x")
    with pytest.raises(PathOutsideWorkspace):
        await sb.exec_path(path)


async def test_symlinks_out_of_the_workspace_are_refused(sb: Sandbox) -> None:
    await sb.write_file("real.txt", b"inside")
    res = await sb.exec(
        "ln -s /etc/passwd out.txt && ln -s .. up && ln -s / top && ln -s real.txt in.txt"
        ' && ln -s "$PWD/real.txt" abs.txt && mkdir d && ln -s ../real.txt d/rel.txt'
    )
    assert res.exit_code == 0, res.stderr
    for path in ("out.txt", "up/x", "top/etc/passwd", "/workspace/up/outside.txt"):
        with pytest.raises(PathOutsideWorkspace):
            await sb.read_file(path)
        with pytest.raises(PathOutsideWorkspace):
            await sb.write_file(path, b"overwritten")
    for path in ("in.txt", "abs.txt", "d/rel.txt"):
        assert await sb.read_file(path) == b"inside"
    await sb.write_file("in.txt", b"through the link")
    assert await sb.read_file("real.txt") == b"through the link"


async def test_large_files(sb: Sandbox) -> None:
    data = os.urandom(1024 * 1024) * 24
    await sb.write_file("big.bin", data)
    assert (await sb.exec(["wc", "-c", "big.bin"])).stdout.split()[0] == str(len(data))
    assert await sb.read_file("big.bin") == data
    with pytest.raises(FileTooLarge):
        await sb.read_file("big.bin", max_bytes=len(data) - 1)
    assert (await sb.exec("head -c 30000000 /dev/zero > made.bin")).exit_code == 0
    assert len(await sb.read_file("made.bin")) == 30_000_000


async def test_exec_path_maps_workspace_paths(sb: Sandbox) -> None:
    assert await sb.exec_path("/workspace") == sb.workspace
    assert await sb.exec_path("/workspace/a/b") == posixpath.join(sb.workspace, "a/b")
    assert await sb.exec_path("a/b") == posixpath.join(sb.workspace, "a/b")
    assert await sb.exec_path("missing/x/../y") == posixpath.join(sb.workspace, "missing/y")
    await sb.write_file("a/b/c.txt", b"seen")
    res = await sb.exec(["cat", await sb.exec_path("/workspace/a/b/c.txt")], cwd="/workspace/a")
    assert res.stdout == "seen"
    assert await sb.exec_path("a/b/c.txt/below") == posixpath.join(sb.workspace, "a/b/c.txt/below")


# --- the built-in tools through the runtime ---------------------------------------------------------


async def tool(sb: Sandbox, name: str, **tool_input: Any) -> tuple[str, bool]:
    outcome = await run_tool(name, tool_input, sandbox=sb, timeout=60)
    return outcome.content[0]["text"], outcome.is_error


async def test_bash_tool_keeps_shell_state(sb: Sandbox) -> None:
    assert await tool(sb, "bash", command="echo hello") == ("hello", False)
    assert await tool(sb, "bash", command="mkdir -p sub && cd sub && export GREETING=hi") == ("(no output)", False)
    assert await tool(sb, "bash", command='pwd; echo "$GREETING"') == (
        posixpath.join(sb.workspace, "sub") + "\nhi",
        False,
    )
    text, is_error = await tool(sb, "bash", command="echo bad >&2; exit 3")
    assert is_error and text == "bad\n[exit code 3]"
    text, is_error = await tool(sb, "bash", command="sleep 30", timeout_ms=300)
    assert is_error and "timed out" in text


async def test_file_tools(sb: Sandbox) -> None:
    assert (await tool(sb, "write", file_path="/workspace/src/app.py", content="x = 1\ny = 2\n"))[1] is False
    assert await tool(sb, "read", file_path="src/app.py") == ("x = 1\ny = 2\n", False)
    assert await tool(sb, "edit", file_path="src/app.py", old_string="y = 2", new_string="y = 3") == (
        "edited src/app.py (1 replacement)",
        False,
    )
    assert (await sb.read_file("src/app.py")) == b"x = 1\ny = 3\n"
    text, is_error = await tool(sb, "read", file_path="/etc/passwd")
    assert is_error and "outside the workspace" in text


async def test_glob_and_grep_tools(sb: Sandbox) -> None:
    await sb.write_file("src/app.py", b"import os\nprint('needle')\n")
    await sb.write_file("src/pkg/util.py", b"# nothing here\n")
    await sb.write_file("README.md", b"needle in the docs\n")
    text, is_error = await tool(sb, "glob", pattern="**/*.py")
    assert not is_error
    ws = sb.workspace
    assert sorted(text.splitlines()) == [posixpath.join(ws, "src/app.py"), posixpath.join(ws, "src/pkg/util.py")]
    text, is_error = await tool(sb, "grep", pattern="needle", path="src")
    assert (text, is_error) == (f"{posixpath.join(ws, 'src/app.py')}:2:print('needle')", False)
    text, is_error = await tool(sb, "grep", pattern="needle")
    assert len(text.splitlines()) == 2 and not is_error


# --- packages (runtimes that install them) ----------------------------------------------------------


@pytest.fixture
def package_runtime(runtime: str) -> str:
    if runtime not in PACKAGE_RUNTIMES:
        pytest.skip(f"{runtime} does not install packages")
    return runtime


def registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


async def test_unsupported_package_managers_fail_clearly(package_runtime: str, open_sb: OpenSandbox) -> None:
    if package_runtime != "bubblewrap":
        pytest.skip("apt is installable in container runtimes")
    with pytest.raises(SandboxError, match="cannot install apt packages"):
        await open_sb(packages={"apt": ("cowsay",)}, environment_id="env_apt")


async def test_failed_install_is_a_clear_error(package_runtime: str, open_sb: OpenSandbox) -> None:
    options: dict[str, Any] = {"packages": {"pip": ("/nonexistent/oma-no-such-package",)}, "environment_id": "env_bad"}
    with pytest.raises(SandboxError, match="installing the environment's pip packages") as failed:
        await open_sb("first", **options)
    assert "exit code" in failed.value.message
    # Nothing half-installed is taken for a finished install: the next session tries again.
    with pytest.raises(SandboxError, match="installing the environment's pip packages"):
        await open_sb("second", **options)


async def test_packages_install_once_per_environment(package_runtime: str, open_sb: OpenSandbox) -> None:
    if package_runtime not in SHARED_PACKAGE_RUNTIMES:
        pytest.skip(f"{package_runtime} installs packages per session (see test_hosted_packages_install_once)")
    if not await asyncio.to_thread(registry_reachable):
        pytest.skip("pypi.org is not reachable from this machine")
    plain = await open_sb("plain")
    if (await plain.exec(["python3", "-m", "pip", "--version"])).exit_code != 0:
        pytest.skip("the sandbox has no pip (on Debian hosts: apt-get install python3-pip)")
    options: dict[str, Any] = {"packages": {"pip": ("text-unidecode==1.3",)}, "environment_id": "env_pkgs"}
    probe = ["python3", "-c", "import text_unidecode as m; print(m.__file__)"]
    # Two sessions of one environment start together: one installs, the other waits for it.
    first, second = await asyncio.gather(open_sb("pkg1", **options), open_sb("pkg2", **options))
    module_files = set()
    for sb in (first, second):
        res = await sb.exec(probe)
        assert res.exit_code == 0, res.stderr
        module_files.add(res.stdout.strip())
    [module_file] = module_files  # one install, shared
    assert (await first.exec(["touch", posixpath.join(posixpath.dirname(module_file), "x")])).exit_code != 0
    started = time.monotonic()
    third = await open_sb("pkg3", **options)
    assert time.monotonic() - started < 5  # already installed
    assert (await third.exec(probe)).stdout.strip() == module_file
    # Another environment does not see them.
    other = await open_sb("pkg4", environment_id="env_other")
    assert (await other.exec(probe)).exit_code != 0


async def test_hosted_packages_install_once(package_runtime: str, open_sb: OpenSandbox) -> None:
    if package_runtime in SHARED_PACKAGE_RUNTIMES:
        pytest.skip(
            f"{package_runtime} shares one install per environment (test_packages_install_once_per_environment)"
        )
    if not await asyncio.to_thread(registry_reachable):
        pytest.skip("pypi.org is not reachable from this machine")
    plain = await open_sb("plain")
    if (await plain.exec(["python3", "-m", "pip", "--version"])).exit_code != 0:
        pytest.skip("the sandbox has no pip")
    options: dict[str, Any] = {"packages": {"pip": ("text-unidecode==1.3",)}, "environment_id": "env_pkgs"}
    probe = ["python3", "-c", "import text_unidecode as m; print(m.__file__)"]
    first = await open_sb("pkg", **options)
    assert (await first.exec(probe)).exit_code == 0
    await first.stop()
    started = time.monotonic()
    again = await open_sb("pkg", **options)  # the same session's machine, resumed: no second install
    assert time.monotonic() - started < 5
    assert (await again.exec(probe)).exit_code == 0
    assert (await plain.exec(probe)).exit_code != 0  # another session's machine does not have them


def test_the_runtime_list_covers_the_registry() -> None:
    from sandbox import RUNTIMES

    assert set(RUNTIMES) <= set(ALL_RUNTIMES)
