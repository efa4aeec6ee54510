"""The `local-subprocess` runtime: commands run directly on the host, with no isolation.

For development only. The workspace is `<root>/<session_id>/workspace`; `/workspace/...` paths map
into it, and commands see it under its host path (`LocalSandbox.workspace`). Commands get a
minimal environment, never the server's own (it holds secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import stat
from pathlib import Path, PurePosixPath

from sandbox.base import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_TIMEOUT,
    WORKSPACE,
    ExecResult,
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    PathOutsideWorkspace,
    Sandbox,
    SandboxError,
    SandboxOptions,
    SandboxUnavailable,
    check_session_id,
)
from sandbox.shell import Capture

log = logging.getLogger("oma.sandbox")

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# After the command exits, how long its output pipes may take to close before we go looking for
# (and kill) escaped processes still holding them.
_EOF_GRACE = 0.05
# Upper bound on reading what is left in the pipes once every process holding them was killed.
_DRAIN_TIMEOUT = 5.0
_KILL_ROUNDS = 10


@functools.cache
def _warn_no_isolation() -> None:
    log.warning(
        "sandbox runtime 'local-subprocess' runs agent commands directly on this host with NO isolation; "
        "use it for development only"
    )


@functools.cache
def _warn_networking() -> None:
    log.warning("sandbox runtime 'local-subprocess' cannot turn networking off; commands keep the host's network")


class LocalSandbox(Sandbox):
    runtime = "local-subprocess"

    def __init__(self, session_id: str, *, root: Path, options: SandboxOptions | None = None) -> None:
        self.session_id = check_session_id(session_id)
        self.options = options or SandboxOptions()
        self.networking = self.options.networking
        self._root = Path(root)
        self._ws = self._root / self.session_id / "workspace"
        self.workspace = str(self._ws)
        self._started = False
        self._running: set[asyncio.subprocess.Process] = set()

    async def start(self) -> None:
        _warn_no_isolation()
        if not self.networking:
            _warn_networking()
        try:
            self._ws = await asyncio.to_thread(_make_workspace, self._ws)
        except OSError as e:
            raise SandboxUnavailable(f"cannot create the workspace {self._ws}: {e.strerror or e}") from e
        self.workspace = str(self._ws)
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for proc in list(self._running):
            _killpg(proc.pid)

    async def exec_path(self, path: str) -> str:
        self._check_started()
        return str(await asyncio.to_thread(self._host_path, path))

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self._check_started()
        return await asyncio.to_thread(self._read, path, max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        self._check_started()
        await asyncio.to_thread(self._write, path, data)

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the contract's own deadline, enforced inside)
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        self._check_started()
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        if not argv or not argv[0]:
            raise SandboxError("exec: empty command")
        host_cwd = await asyncio.to_thread(self._directory, cwd or WORKSPACE)
        run_env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": str(self._ws), **(env or {})}
        stdout = await _Output.open(max_output)
        try:
            stderr = await _Output.open(max_output)
        except BaseException:
            stdout.close()
            raise
        try:
            return await self._run(argv, host_cwd, run_env, timeout, stdout, stderr)
        finally:
            stdout.close()
            stderr.close()

    async def _run(
        self, argv: list[str], cwd: Path, env: dict[str, str], limit: float, out: _Output, err: _Output
    ) -> ExecResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out.write_fd,
                stderr=err.write_fd,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            return ExecResult(127, "", f"{argv[0]}: command not found\n")
        except PermissionError:
            return ExecResult(126, "", f"{argv[0]}: permission denied\n")
        except (OSError, ValueError) as e:
            raise SandboxError(f"exec: cannot start {argv[0]!r}: {e}") from e
        finally:
            out.close_write_end()
            err.close_write_end()

        inodes = {out.inode, err.inode}
        self._running.add(proc)
        cleaned = False
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError:
                timed_out = True
                await asyncio.to_thread(_kill_leftovers, proc.pid, proc.returncode is None, inodes)
            else:
                # The command is done; whatever it left running must not outlive it.
                _killpg(proc.pid)
                if not await _closed(out, err, _EOF_GRACE):
                    await asyncio.to_thread(_kill_leftovers, proc.pid, False, inodes)
            cleaned = True
            if not await _closed(out, err, _DRAIN_TIMEOUT):
                log.warning("exec %r: output pipes still open after killing the command; giving up on them", argv[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _DRAIN_TIMEOUT)
        finally:
            self._running.discard(proc)
            if not cleaned:  # cancelled or failed mid-way: still leave nothing behind
                _kill_leftovers(proc.pid, proc.returncode is None, inodes)

        code = proc.returncode
        exit_code = 128 + 9 if code is None else (128 - code if code < 0 else code)
        return ExecResult(
            exit_code=exit_code,
            stdout=out.capture.text(),
            stderr=err.capture.text(),
            truncated=out.capture.truncated or err.capture.truncated,
            timed_out=timed_out,
        )

    # --- paths and files (run in a worker thread) ----------------------------------------------

    def _check_started(self) -> None:
        if not self._started:
            raise SandboxUnavailable(f"sandbox for session {self.session_id} is not started (call start())")

    def _host_path(self, path: str) -> Path:
        if not path:
            raise SandboxError("empty path", path=path)
        if "\0" in path:
            raise SandboxError(f"{path!r}: path contains a NUL byte", path=path)
        pure = PurePosixPath(path)
        if pure.is_absolute() and pure.parts[1:2] == (WORKSPACE.strip("/"),):
            candidate = self._ws.joinpath(*pure.parts[2:])
        elif pure.is_absolute():
            candidate = Path(path)
        else:
            candidate = self._ws / path
        # realpath follows every existing symlink, so a link pointing out of the workspace is caught.
        resolved = Path(os.path.realpath(candidate))
        if not resolved.is_relative_to(self._ws):
            raise PathOutsideWorkspace(f"{path}: outside the workspace ({WORKSPACE})", path=path)
        return resolved

    def _directory(self, path: str) -> Path:
        host = self._host_path(path)
        try:
            mode = host.stat().st_mode
        except FileNotFoundError as e:
            raise FileNotFound(f"{path}: no such directory", path=path) from e
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        if not stat.S_ISDIR(mode):
            raise SandboxError(f"{path}: not a directory", path=path)
        return host

    def _read(self, path: str, max_bytes: int | None) -> bytes:
        host = self._host_path(path)
        try:
            st = host.stat()
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(f"{path} is a directory", path=path)
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block the read forever
                raise SandboxError(f"{path} is not a regular file", path=path)
            if max_bytes is not None and st.st_size > max_bytes:
                raise FileTooLarge(
                    f"{path} is {st.st_size} bytes, over the {max_bytes}-byte limit",
                    path=path,
                    size=st.st_size,
                    limit=max_bytes,
                )
            with host.open("rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise FileNotFound(f"{path}: no such file", path=path) from e
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        if max_bytes is not None and len(data) > max_bytes:  # grew since stat()
            raise FileTooLarge(f"{path} is over the {max_bytes}-byte limit", path=path, size=len(data), limit=max_bytes)
        return data

    def _write(self, path: str, data: bytes) -> None:
        host = self._host_path(path)
        if host.is_dir():
            raise IsADirectory(f"{path} is a directory", path=path)
        try:
            host.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise SandboxError(f"{path}: a parent of this path is a file, not a directory", path=path) from e
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        try:
            # Non-blocking: opening a FIFO nobody reads would otherwise wait forever.
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ENXIO:  # a FIFO without a reader, a socket
                raise SandboxError(f"{path} is not a regular file", path=path) from e
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        with os.fdopen(fd, "wb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SandboxError(f"{path} is not a regular file", path=path)
            try:
                os.set_blocking(fd, True)
                os.ftruncate(fd, 0)
                f.write(data)
            except OSError as e:
                raise SandboxError(f"{path}: {_reason(e)}", path=path) from e


def _make_workspace(ws: Path) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    return ws.resolve()


def _reason(e: OSError) -> str:
    # Never the raw OSError text: it embeds the host path.
    return (e.strerror or type(e).__name__).lower()


# --- output capture ------------------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.capture.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class _Output:
    """One output pipe: the child gets `write_fd`; the read end feeds a `Capture` on the loop."""

    def __init__(self, write_fd: int, inode: int, transport: asyncio.ReadTransport, sink: _Sink) -> None:
        self.write_fd = write_fd
        self._write_open = True
        self.inode = inode
        self.capture = sink.capture
        self.closed = sink.closed
        self._transport = transport

    @classmethod
    async def open(cls, limit: int) -> _Output:
        read_fd, write_fd = os.pipe()
        inode = os.fstat(read_fd).st_ino
        sink = _Sink(Capture(limit))
        try:
            pipe = os.fdopen(read_fd, "rb", buffering=0)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: sink, pipe)
        except BaseException:
            pipe.close()
            os.close(write_fd)
            raise
        return cls(write_fd, inode, transport, sink)

    def close_write_end(self) -> None:
        if self._write_open:
            self._write_open = False
            os.close(self.write_fd)

    def close(self) -> None:
        self.close_write_end()
        self._transport.close()


async def _closed(out: _Output, err: _Output, within: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.gather(out.closed.wait(), err.closed.wait()), within)
    except TimeoutError:
        return False
    return True


# --- killing what a command left behind (Linux /proc; elsewhere only the process group) --------


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_leftovers(pgid: int, root_alive: bool, pipe_inodes: set[int]) -> None:
    """Kill the command's process group and every process that escaped it (setsid) but is still
    its descendant or still holds its output pipes; a killed group alone misses those, and a
    survivor holding a pipe would keep the output open for as long as it lives."""
    killed: set[int] = set()
    for _ in range(_KILL_ROUNDS):
        # Descendants only while the root is unreaped: after that its pid may belong to someone else.
        found = _descendants(pgid) if root_alive and not killed else set()
        found |= _pipe_writers(pipe_inodes)
        found.discard(os.getpid())
        _killpg(pgid)
        fresh = found - killed
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= fresh
        if not fresh:
            return


def _proc_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _pipe_writers(inodes: set[int]) -> set[int]:
    links = {f"pipe:[{inode}]" for inode in inodes}
    found: set[int] = set()
    for pid in _proc_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in links and _writable(pid, fd):
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def _writable(pid: int, fd: str) -> bool:
    # The server itself holds the read ends of the same pipes: only a write end counts.
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    return False
