"""A fake of Daytona's HTTP APIs (a self-hosted Daytona in one process) that the real `daytona`
SDK drives unchanged: the REST control plane, the toolbox (the sandbox daemon behind the toolbox
proxy) and the Socket.IO notification gateway the SDK listens to for state changes.

    async with FakeDaytona(root=tmp) as fake:
        config = DaytonaConfig(api_key=fake.api_key, api_url=fake.api_url, target=fake.target)
        async with AsyncDaytona(config) as daytona:
            sandbox = await daytona.create(CreateSandboxFromSnapshotParams(labels={"app": "x"}))
            await sandbox.process.exec("echo hi")              # runs on this host, as the sandbox
        fake.sandboxes[sandbox.id].state                        # "started"
        fake.fail("POST /sandbox", status=500)                  # the next create fails, like the API's 500
        fake.counts()["POST /process/execute"]                  # requests per route

The control plane is served under `api_url` (`<url>/api`, as Daytona serves it; mirrored at
`<url>` itself) with Bearer API key auth and Daytona's error envelope. Every sandbox carries
`toolboxProxyUrl` = `<url>/toolbox`, so the SDK sends its toolbox traffic back here as
`<url>/toolbox/<sandbox id>/<daemon path>`, answered the way the daemon (and, for a stopped or
unknown sandbox, the proxy) answers it.

A sandbox is a directory `<root>/<id>/` with the user's home at `<root>/<id>/home/daytona`: that
host path is `$HOME`, the working directory and what `get_user_home_dir()` returns. Commands run on
this host through the shell the daemon would pick (zsh, bash, then `$SHELL`, then sh). Run as
root, every sandbox gets its own unprivileged uid (61500..61999) that its processes run under and
its files belong to; otherwise they run as the current user. Stopping a sandbox kills all of its
processes (found by uid as root, else by process tree and their environment) and keeps its files;
deleting it removes them too. The files API refuses writes outside the sandbox's own directory.
`python -m core.fakes.daytona_api --port 0` serves it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import functools
import grp
import logging
import mimetypes
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
from aiohttp import WSMsgType, web

STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UID_RANGE = range(61500, 62000)
SANDBOX_USER = "daytona"
DAEMON_VERSION = "v0.0.0-fake"
_DOWNLOAD_BOUNDARY = "DAYTONA-FILE-BOUNDARY"
_CHUNK = 256 * 1024
_MARK = b"\x1e"  # starts the session shell's control lines (begin / end of a command)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
log = logging.getLogger(__name__)

# ApiErrorCode by HTTP status (apps/api/src/common/errors/api-error-code.enum.ts).
_API_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_SERVER_ERROR",
}
# common-go's typed errors: status -> (message prefix, code).
_DAEMON_ERRORS = {
    400: ("bad request", "BAD_REQUEST"),
    401: ("unauthorized", "UNAUTHORIZED"),
    403: ("forbidden", "FORBIDDEN"),
    404: ("not found", "NOT_FOUND"),
    408: ("request timeout", "REQUEST_TIMEOUT"),
    409: ("conflict", "CONFLICT"),
    410: ("gone", "GONE"),
    422: ("unprocessable entity", "UNPROCESSABLE_ENTITY"),
    500: ("internal server error", "INTERNAL_SERVER_ERROR"),
}
_NOT_STARTED = "sandbox is not running — start the sandbox before accessing it"


def _iso(at: float) -> str:
    """JavaScript's Date.toISOString(), as the API writes timestamps."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _go_time(at: float) -> str:
    """Go's time.Time.String() in UTC (the daemon's deprecated FileInfo.modTime)."""
    moment = datetime.fromtimestamp(at, UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + " +0000 UTC"


def _go_error(op: str, path: str, err: OSError | int) -> str:
    """An *os.PathError's text, as Go prints it: "open /x: no such file or directory"."""
    code = err if isinstance(err, int) else (err.errno or errno.EIO)
    return f"{op} {path}: {os.strerror(code).lower()}"


def _version(header: str | None) -> tuple[int, ...] | None:
    if not header:
        return None
    numbers = re.match(r"v?(\d+)\.(\d+)\.(\d+)", header.strip())
    return tuple(int(n) for n in numbers.groups()) if numbers else None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def get_shell() -> str:
    """The daemon's shell: zsh, else bash when /etc/shells lists them, else $SHELL, else sh."""
    try:
        shells = Path("/etc/shells").read_text()
    except OSError:
        return "sh"
    for candidate in ("/usr/bin/zsh", "/bin/zsh", "/usr/bin/bash", "/bin/bash"):
        if candidate in shells:
            return candidate
    return os.environ.get("SHELL") or "sh"


# --- the model ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One request: `api` is "api" (control plane), "toolbox" or "events" (Socket.IO); `path` is
    relative to the API base or to the sandbox's toolbox, `route` its template."""

    api: str
    method: str
    path: str
    route: str
    sandbox_id: str | None
    query: dict[str, str]
    at: float
    status: int | None = None
    body: Any = None

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


@dataclass(slots=True)
class Failure:
    status: int
    message: str | None


class SessionCommand:
    """A command run in a session. Its output is kept the way the daemon logs it: each line of
    each stream, prefixed with that stream's marker."""

    def __init__(self, command_id: str, command: str, run_async: bool, directory: Path) -> None:
        self.id = command_id
        self.command = command
        self.run_async = run_async
        self.dir = directory
        self.exit_code: int | None = None
        self.log = bytearray()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.done = asyncio.Event()
        self.changed = asyncio.Event()
        self.begun = False
        self.shell_status: int | None = None
        self.fds: dict[str, int] = {}
        self.input_fd: int | None = None
        self.transports: list[asyncio.BaseTransport] = []
        self._open: set[str] = {"stdout", "stderr"}
        self._partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "command": self.command}
        if self.exit_code is not None:
            body["exitCode"] = self.exit_code
        return body

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def _line(self, kind: str, line: bytes) -> None:
        self.log += (STDOUT_PREFIX if kind == "stdout" else STDERR_PREFIX) + line
        (self.stdout if kind == "stdout" else self.stderr).extend(line)
        self._notify()

    def feed(self, kind: str, data: bytes) -> None:
        buffer = self._partial[kind]
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[: end + 1])
            del buffer[: end + 1]
            self._line(kind, line)

    def stream_closed(self, kind: str) -> None:
        if kind not in self._open:
            return
        self._open.discard(kind)
        rest = self._partial[kind]
        if rest:
            self._line(kind, bytes(rest) + b"\n")
            rest.clear()
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if not self.done.is_set() and self.shell_status is not None and not self._open:
            self.exit_code = self.shell_status
            self._finish()

    def abandon(self) -> None:
        """The shell is gone: a command it never finished has no result."""
        if self.done.is_set() or (self.shell_status is not None and self.begun):
            return
        self._finish()

    def _finish(self) -> None:
        self.done.set()
        for fd in [*self.fds.values(), *([self.input_fd] if self.input_fd is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.input_fd = None
        for transport in self.transports:
            transport.close()
        self._notify()


class Session:
    """A session: one long-lived shell that runs its commands one after the other, as the
    daemon's does (so `cd` and `export` carry over)."""

    def __init__(self, session_id: str, directory: Path, process: asyncio.subprocess.Process) -> None:
        self.id = session_id
        self.dir = directory
        self.process = process
        self.commands: dict[str, SessionCommand] = {}
        self.ended = False
        self.deleted = False
        self.closed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def as_json(self) -> dict[str, Any]:
        return {"sessionId": self.id, "commands": [c.as_json() for c in self.commands.values()]}


@dataclass(eq=False)
class FakeSandbox:
    id: str
    name: str
    organization_id: str
    labels: dict[str, str]
    env_vars: dict[str, str]
    snapshot: str | None
    image: str | None
    dockerfile: str | None
    network_block_all: bool
    public: bool
    target: str
    cpu: int
    gpu: int
    memory: int
    disk: int
    auto_stop_interval: int | None
    auto_archive_interval: int | None
    auto_delete_interval: int | None
    dir: Path
    home: Path
    uid: int | None
    request: dict[str, Any]
    user: str = SANDBOX_USER
    state: str = "creating"
    desired_state: str = "started"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    ready_at: float = 0.0
    sessions: dict[str, Session] = field(default_factory=dict)
    processes: set[asyncio.subprocess.Process] = field(default_factory=set)
    uid_released: bool = False

    @property
    def started(self) -> bool:
        return self.state == "started"


class _HttpError(Exception):
    """Raised by a handler; the dispatcher turns it into the error envelope of its side."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _daemon(status: int, detail: str) -> _HttpError:
    """A common-go typed error: "not found: session not found", code NOT_FOUND."""
    prefix, code = _DAEMON_ERRORS[status]
    return _HttpError(status, f"{prefix}: {detail}", code)


def _fs_error(op: str, path: str, err: OSError | int) -> _HttpError:
    code = err if isinstance(err, int) else err.errno
    text = _go_error(op, path, err)
    if code == errno.ENOENT:
        return _HttpError(404, text, "FILE_NOT_FOUND")
    if code in (errno.EACCES, errno.EPERM):
        return _HttpError(403, text, "FILE_ACCESS_DENIED")
    return _daemon(400, text)


class _FifoReader(asyncio.Protocol):
    def __init__(self, command: SessionCommand, kind: str) -> None:
        self.command, self.kind = command, kind

    def data_received(self, data: bytes) -> None:
        self.command.feed(self.kind, data)

    def eof_received(self) -> bool | None:
        self.command.stream_closed(self.kind)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.command.stream_closed(self.kind)


def _compile(routes: Iterable[tuple[str, str, str]]) -> list[tuple[str, re.Pattern[str], str, str]]:
    table = []
    for method, template, handler in routes:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        table.append((method, re.compile(f"^{pattern}$"), template, handler))
    return table


_API_ROUTES = _compile(
    [
        ("POST", "/sandbox", "_create"),
        ("GET", "/sandbox", "_list"),
        ("GET", "/sandbox/{id}", "_get"),
        ("DELETE", "/sandbox/{id}", "_delete"),
        ("POST", "/sandbox/{id}/start", "_start"),
        ("POST", "/sandbox/{id}/stop", "_stop"),
        ("PUT", "/sandbox/{id}/labels", "_labels"),
        ("GET", "/sandbox/{id}/toolbox-proxy-url", "_proxy_url"),
    ]
)
_TOOLBOX_ROUTES = _compile(
    [
        ("GET", "/user-home-dir", "_home_dir"),
        ("GET", "/work-dir", "_work_dir"),
        ("GET", "/version", "_daemon_version"),
        ("POST", "/process/execute", "_execute"),
        ("GET", "/process/session", "_list_sessions"),
        ("POST", "/process/session", "_create_session"),
        ("GET", "/process/session/{session}", "_get_session"),
        ("DELETE", "/process/session/{session}", "_delete_session"),
        ("POST", "/process/session/{session}/exec", "_session_exec"),
        ("GET", "/process/session/{session}/command/{command}", "_get_command"),
        ("GET", "/process/session/{session}/command/{command}/logs", "_command_logs"),
        ("POST", "/process/session/{session}/command/{command}/input", "_command_input"),
        ("GET", "/files", "_list_files"),
        ("DELETE", "/files", "_delete_file"),
        ("GET", "/files/info", "_file_info"),
        ("POST", "/files/folder", "_create_folder"),
        ("POST", "/files/move", "_move"),
        ("POST", "/files/permissions", "_permissions"),
        ("POST", "/files/bulk-upload", "_upload"),
        ("POST", "/files/bulk-download", "_bulk_download"),
        ("GET", "/files/download", "_download"),
    ]
)


def _match(
    table: list[tuple[str, re.Pattern[str], str, str]], method: str, path: str
) -> tuple[str | None, str | None, dict[str, str]]:
    """(template, handler name, path parameters); a known path with another method gives the
    template and no handler."""
    known: str | None = None
    for route_method, pattern, template, handler in table:
        found = pattern.match(path)
        if found:
            if route_method == method:
                return template, handler, found.groupdict()
            known = known or template
    return known, None, {}


# --- the host side: processes, permissions ------------------------------------------------------


@dataclass(slots=True)
class _Proc:
    pid: int
    ppid: int
    pgid: int
    uid: int
    zombie: bool


def _processes() -> list[_Proc]:
    table = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/status", "rb") as handle:
                uid_line = next(line for line in handle if line.startswith(b"Uid:"))
        except (OSError, StopIteration, IndexError):
            continue
        table.append(
            _Proc(int(name), int(fields[1]), int(fields[2]), int(uid_line.split()[1]), fields[0] in (b"Z", b"X"))
        )
    return table


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return marker in b"\0" + handle.read()
    except OSError:
        return False


def _kill_until_gone(select: Callable[[list[_Proc]], set[int]], rounds: int = 400) -> None:
    """SIGKILL what `select` picks until nothing it picks is alive (zombies are dead)."""
    me = os.getpid()
    for _ in range(rounds):
        table = _processes()
        alive = {p.pid for p in table if not p.zombie}
        targets = (select(table) & alive) - {me}
        if not targets:
            return
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _tree(roots: set[int], marker: bytes | None) -> Callable[[list[_Proc]], set[int]]:
    """Picks the process trees under `roots` (and their process groups), remembering every
    process once seen (an orphan keeps being picked after its parent died), plus any process
    whose environment carries `marker` (setsid'd orphans)."""
    seen: set[int] = set(roots)

    def select(table: list[_Proc]) -> set[int]:
        children: dict[int, list[int]] = {}
        for proc in table:
            children.setdefault(proc.ppid, []).append(proc.pid)
            if proc.pgid in roots or (marker is not None and proc.pid not in seen and _has_marker(proc.pid, marker)):
                seen.add(proc.pid)
        queue = deque(seen)
        while queue:
            for child in children.get(queue.popleft(), ()):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return set(seen)

    return select


def _allows(st: os.stat_result, uid: int, bits: int) -> bool:
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid == uid:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def _access_errno(uid: int, path: str, bits: int) -> int:
    """What an open() by `uid` (no supplementary groups) would fail with: 0 when allowed."""
    current = "/"
    for part in [p for p in os.path.realpath(path).split("/") if p]:
        try:
            if not _allows(os.stat(current), uid, 1):
                return errno.EACCES
        except OSError as err:
            return err.errno or errno.EIO
        current = os.path.join(current, part)
    try:
        st = os.stat(current)
    except OSError as err:
        return err.errno or errno.EIO
    return 0 if _allows(st, uid, bits) else errno.EACCES


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _file_info(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "size": st.st_size,
        "mode": stat.filemode(st.st_mode),
        "modTime": _go_time(st.st_mtime),
        "modifiedAt": datetime.fromtimestamp(st.st_mtime, UTC).isoformat().replace("+00:00", "Z"),
        "isDir": stat.S_ISDIR(st.st_mode),
        "owner": _owner(st.st_uid),
        "group": _group(st.st_gid),
        "permissions": f"{st.st_mode & 0o777:04o}",
        "path": path,
    }


def _disposition(name: str, path: str) -> str:
    latin = "".join(
        "_" if ord(c) > 0xFF or ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in path.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "").replace("\0", "")
    )
    return f'form-data; name="{name}"; filename="{latin}"; filename*=utf-8\'\'{quote(path, safe="!#$&+-.^_`|~")}'


# --- the server ---------------------------------------------------------------------------------


class FakeDaytona:
    """`start()`/`stop()` (or `async with`); `url`, `api_url`, `toolbox_url`, `api_key`, `target`;
    `sandboxes` (id -> FakeSandbox, destroyed ones kept), `calls` and `counts()`, `fail()`.

    `start_delay`: how long a sandbox stays "creating"/"starting" before it is "started".
    `per_sandbox_uid`: run each sandbox as its own uid (default: when running as root).
    `shell`: what runs commands (default: the daemon's choice, `get_shell()`)."""

    _uids_taken: ClassVar[dict[int, int]] = {}  # uid -> the fd holding its lock

    def __init__(
        self,
        *,
        root: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        organization_id: str = "fake-organization",
        target: str = "us",
        default_snapshot: str = "daytonaio/sandbox:0.5.0",
        start_delay: float = 0.0,
        per_sandbox_uid: bool | None = None,
        shell: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.api_key = api_key or "dtn_" + secrets.token_hex(24)
        self.organization_id = organization_id
        self.target = target
        self.default_snapshot = default_snapshot
        self.start_delay = start_delay
        # As root, every sandbox runs as its own unprivileged uid (None: only when root).
        self.per_sandbox_uid = os.geteuid() == 0 if per_sandbox_uid is None else per_sandbox_uid
        if self.per_sandbox_uid and os.geteuid() != 0:
            raise ValueError("a uid per sandbox needs the fake to run as root")
        self.shell = shell or get_shell()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-daytona-")
            root = Path(self._tmp.name)
        self.root = Path(root).resolve()
        self.calls: list[Call] = []
        self.sandboxes: dict[str, FakeSandbox] = {}
        self._failures: dict[str, deque[Failure]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake Daytona is not started")
        return self._url

    @property
    def api_url(self) -> str:
        """`DaytonaConfig(api_url=...)`, DAYTONA_API_URL: where a self-hosted Daytona serves its
        API. (The same API answers at `url` itself, Socket.IO gateway included.)"""
        return f"{self.url}/api"

    @property
    def toolbox_url(self) -> str:
        """The toolbox proxy URL every sandbox reports."""
        return f"{self.url}/toolbox"

    # --- scripting and reading -----------------------------------------------------------------

    def fail(self, key: str, *, status: int = 500, times: int = 1, message: str | None = None) -> None:
        """The next `times` requests matching `key` ("POST /sandbox", "POST /sandbox/{id}/stop",
        "POST /process/execute", or a concrete "GET /sandbox/<id>") fail without effect, with the
        error envelope of their side (the API's, or the daemon's for toolbox routes)."""
        method, _, path = key.partition(" ")
        for _ in range(times):
            self._failures.setdefault(f"{method.upper()} {path}", deque()).append(Failure(status, message))

    def counts(self) -> Counter[str]:
        return Counter(call.key for call in self.calls)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeDaytona:
        self._prepare_root()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self._url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for sandbox in list(self.sandboxes.values()):
            if sandbox.state != "destroyed":
                await self._halt(sandbox)
            self._release_uid(sandbox)
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            await asyncio.to_thread(self._tmp.cleanup)
            self._tmp = None

    async def __aenter__(self) -> FakeDaytona:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        if self.per_sandbox_uid:
            # Every directory on the way to a sandbox's home must be searchable by its uid.
            for parent in self.root.parents:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- dispatch ------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self._is_key(token.strip())

    def _is_key(self, token: str) -> bool:
        return secrets.compare_digest(token.encode(), self.api_key.encode())

    def _record(self, api: str, request: web.Request, path: str, route: str, sandbox_id: str | None) -> Call:
        call = Call(api, request.method, path, route, sandbox_id, dict(request.query), time.time())
        self.calls.append(call)
        return call

    def _failure(self, call: Call) -> Failure | None:
        for key in (call.key, f"{call.method} {call.path}"):
            queue = self._failures.get(key)
            if queue:
                return queue.popleft()
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.rstrip("/") in ("/api/socket.io", "/socket.io"):
            return await self._socketio(request)
        if path.startswith("/toolbox/"):
            return await self._toolbox(request, path[len("/toolbox/") :])
        if path == "/api" or path.startswith("/api/"):
            return await self._api(request, path[4:] or "/")
        # The control plane is mirrored at the root, so `url` works as an API URL too.
        return await self._api(request, path)

    def _api_error(self, request: web.Request, status: int, message: str, code: str | None = None) -> web.Response:
        """The API's exception filter: {statusCode, source, code, message, error, path, ...}."""
        body = {
            "statusCode": status,
            "source": "DAYTONA_API",
            "code": code or _API_CODES.get(status, "INTERNAL_SERVER_ERROR"),
            "message": message,
            "error": HTTPStatus(status).phrase,
            "path": request.path_qs,
            "timestamp": _iso(time.time()),
            "method": request.method,
        }
        return _json(body, status)

    def _envelope(
        self, source: str, status: int, message: str, code: str | None, path: str, method: str
    ) -> web.Response:
        """common-go's ErrorResponse, as the daemon and the proxy write it."""
        body: dict[str, Any] = {"statusCode": status, "message": message, "source": source}
        if code:
            body["code"] = code
        body.update({"timestamp": _iso(time.time()), "path": path, "method": method})
        return _json(body, status)

    async def _api(self, request: web.Request, sub: str) -> web.StreamResponse:
        route, handler, params = _match(_API_ROUTES, request.method, sub)
        call = self._record("api", request, sub, route or sub, params.get("id"))
        try:
            if not self._authorized(request):
                raise _HttpError(401, "Unauthorized")
            if handler is None:
                raise _HttpError(404, f"Cannot {request.method} {request.path}")
            failure = self._failure(call)
            if failure is not None:
                message = failure.message or (
                    "An unexpected error occurred." if failure.status == 500 else HTTPStatus(failure.status).phrase
                )
                raise _HttpError(failure.status, message)
            response: web.StreamResponse = await getattr(self, handler)(request, call, params)
        except _HttpError as err:
            response = self._api_error(request, err.status, err.message, err.code)
        except Exception:  # the API's exception filter answers for what nothing else caught
            log.exception("fake Daytona API: %s %s", request.method, request.path)
            response = self._api_error(request, 500, "An unexpected error occurred.")
        call.status = response.status
        return response

    async def _toolbox(self, request: web.Request, rest: str) -> web.StreamResponse:
        sandbox_id, _, sub = rest.partition("/")
        sub = "/" + sub
        route, handler, params = _match(_TOOLBOX_ROUTES, request.method, sub)
        call = self._record("toolbox", request, sub, route or sub, sandbox_id)
        sandbox = self.sandboxes.get(sandbox_id)
        # The proxy answers for what never reaches a daemon.
        proxy: tuple[int, str, str] | None = None
        if not self._authorized(request):
            proxy = (401, "unauthorized: invalid or missing credentials", "UNAUTHORIZED")
        elif sandbox is None or sandbox.state == "destroyed":
            proxy = (404, f"Sandbox with ID or name {sandbox_id} not found", "SANDBOX_NOT_FOUND")
        else:
            self._advance(sandbox)
            if not sandbox.started:
                proxy = (400, _NOT_STARTED, "SANDBOX_NOT_STARTED")
        if proxy is not None:
            response: web.StreamResponse = self._envelope("DAYTONA_PROXY", *proxy, request.path, request.method)
            call.status = response.status
            return response
        assert sandbox is not None
        try:
            if handler is None:
                call.status = 404
                return web.Response(status=404, text="404 page not found")
            failure = self._failure(call)
            if failure is not None:
                phrase = HTTPStatus(failure.status)
                prefix, code = _DAEMON_ERRORS.get(failure.status, (phrase.phrase.lower(), phrase.name))
                raise _HttpError(failure.status, failure.message or f"{prefix}: scripted failure", code)
            response = await getattr(self, handler)(request, call, sandbox, params)
        except _HttpError as err:
            response = self._envelope("DAYTONA_DAEMON", err.status, err.message, err.code, sub, request.method)
        except Exception as err:  # the daemon's error middleware: an untyped error is a 500
            log.exception("fake Daytona toolbox: %s %s", request.method, request.path)
            response = self._envelope("DAYTONA_DAEMON", 500, str(err) or type(err).__name__, None, sub, request.method)
        call.status = response.status
        return response

    async def _body(self, request: web.Request, call: Call) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise _HttpError(400, f"invalid request body: {err}", "BAD_REQUEST") from err
        if not isinstance(body, dict):
            raise _HttpError(400, "invalid request body", "BAD_REQUEST")
        call.body = body
        return body

    # --- the control plane ---------------------------------------------------------------------

    def _dto(self, sandbox: FakeSandbox, *, list_item: bool = False, advance: bool = True) -> dict[str, Any]:
        if advance:
            self._advance(sandbox)
        dto: dict[str, Any] = {
            "id": sandbox.id,
            "organizationId": sandbox.organization_id,
            "name": sandbox.name,
            "target": sandbox.target,
            "runnerId": "fake-runner",
            "sandboxClass": "container",
            "state": sandbox.state,
            "desiredState": sandbox.desired_state,
            "snapshot": sandbox.snapshot,
            "user": sandbox.user,
            "errorReason": None,
            "recoverable": False,
            "public": sandbox.public,
            "networkBlockAll": sandbox.network_block_all,
            "networkAllowList": sandbox.request.get("networkAllowList"),
            "domainAllowList": sandbox.request.get("domainAllowList"),
            "cpu": sandbox.cpu,
            "gpu": sandbox.gpu,
            "spot": False,
            "memory": sandbox.memory,
            "disk": sandbox.disk,
            "labels": dict(sandbox.labels),
            "backupState": "None",
            "autoStopInterval": sandbox.auto_stop_interval,
            "autoPauseInterval": 0,
            "autoArchiveInterval": sandbox.auto_archive_interval,
            "autoDeleteInterval": sandbox.auto_delete_interval,
            "createdAt": _iso(sandbox.created_at),
            "updatedAt": _iso(sandbox.updated_at),
            "lastActivityAt": _iso(sandbox.updated_at),
            "daemonVersion": DAEMON_VERSION,
            "toolboxProxyUrl": self.toolbox_url,
        }
        if not list_item:
            dto.update(
                {
                    "env": dict(sandbox.env_vars),
                    "kvm": False,
                    "volumes": [],
                    "outboundProxyUrl": sandbox.request.get("outboundProxyUrl"),
                }
            )
            if sandbox.dockerfile is not None:
                dto["buildInfo"] = {
                    "dockerfileContent": sandbox.dockerfile,
                    "contextHashes": (sandbox.request.get("buildInfo") or {}).get("contextHashes") or [],
                    "createdAt": _iso(sandbox.created_at),
                    "updatedAt": _iso(sandbox.created_at),
                    "snapshotRef": sandbox.image or "",
                }
        return dto

    def _lookup(self, id_or_name: str) -> FakeSandbox:
        sandbox = self.sandboxes.get(id_or_name) or next(
            (s for s in self.sandboxes.values() if s.name == id_or_name and s.state != "destroyed"), None
        )
        if sandbox is None or sandbox.state == "destroyed":
            raise _HttpError(404, f"Sandbox with ID or name {id_or_name} not found")
        return sandbox

    def _set_state(self, sandbox: FakeSandbox, state: str) -> None:
        old = sandbox.state
        if old == state:
            return
        sandbox.state = state
        sandbox.updated_at = time.time()
        dto = self._dto(sandbox, advance=False)
        self._emit("sandbox.state.updated", {"sandbox": dto, "oldState": old, "newState": state})

    def _advance(self, sandbox: FakeSandbox) -> None:
        if sandbox.state in ("creating", "starting") and time.monotonic() >= sandbox.ready_at:
            self._set_state(sandbox, "started")

    def _schedule_start(self, sandbox: FakeSandbox) -> None:
        sandbox.desired_state = "started"
        sandbox.ready_at = time.monotonic() + self.start_delay
        self._timers.append(asyncio.get_running_loop().call_later(self.start_delay, self._advance, sandbox))

    async def _create(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        body = await self._body(request, call)
        name = body.get("name") or None
        if name and any(s.name == name and s.state != "destroyed" for s in self.sandboxes.values()):
            raise _HttpError(409, f"Sandbox with name {name} already exists")
        for key in ("labels", "env"):
            value = body.get(key)
            if value is not None and not (
                isinstance(value, dict) and all(isinstance(v, str) for v in [*value, *value.values()])
            ):
                raise _HttpError(400, f"{key} must be an object of strings")
        build = body.get("buildInfo") if isinstance(body.get("buildInfo"), dict) else None
        dockerfile = build.get("dockerfileContent") if build else None
        image = None
        if isinstance(dockerfile, str):
            image = next((ln.split()[1] for ln in dockerfile.splitlines() if ln.upper().startswith("FROM ")), None)
        sandbox_id = str(uuid.uuid4())
        directory = self.root / sandbox_id
        sandbox = FakeSandbox(
            id=sandbox_id,
            name=name or sandbox_id,
            organization_id=self.organization_id,
            labels=dict(body.get("labels") or {}),
            env_vars=dict(body.get("env") or {}),
            snapshot=body.get("snapshot") or (None if dockerfile else self.default_snapshot),
            image=image,
            dockerfile=dockerfile if isinstance(dockerfile, str) else None,
            network_block_all=bool(body.get("networkBlockAll")),
            public=bool(body.get("public")),
            target=body.get("target") or self.target,
            cpu=int(body.get("cpu") or 1),
            gpu=int(body.get("gpu") or 0),
            memory=int(body.get("memory") or 1),
            disk=int(body.get("disk") or 3),
            auto_stop_interval=body.get("autoStopInterval", 15),
            auto_archive_interval=body.get("autoArchiveInterval", 10080),
            auto_delete_interval=body.get("autoDeleteInterval", -1),
            dir=directory,
            home=directory / "home" / SANDBOX_USER,
            uid=self._take_uid() if self.per_sandbox_uid else None,
            request=body,
        )
        try:
            self._provision(sandbox)
        except BaseException:
            self._release_uid(sandbox)
            raise
        self.sandboxes[sandbox_id] = sandbox
        self._schedule_start(sandbox)
        dto = self._dto(sandbox, advance=False)  # "creating": started once `start_delay` has passed
        self._emit("sandbox.created", dto)
        return _json(dto)

    def _take_uid(self) -> int:
        """A uid no process runs as, locked (flock, so across processes too) while in use."""
        busy = {p.uid for p in _processes() if not p.zombie}
        locks = Path(tempfile.gettempdir()) / "fake-daytona-uids"
        locks.mkdir(mode=0o700, exist_ok=True)
        for uid in UID_RANGE:
            if uid in self._uids_taken or uid in busy:
                continue
            fd = os.open(locks / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._uids_taken[uid] = fd
            return uid
        raise _HttpError(503, "no free sandbox uid")

    def _release_uid(self, sandbox: FakeSandbox) -> None:
        if sandbox.uid is None or sandbox.uid_released:
            return
        sandbox.uid_released = True
        fd = self._uids_taken.pop(sandbox.uid, None)
        if fd is not None:
            os.close(fd)  # releases the lock

    def _chown(self, sandbox: FakeSandbox, path: str | Path) -> None:
        if sandbox.uid is not None:
            os.chown(path, sandbox.uid, sandbox.uid, follow_symlinks=False)

    def _provision(self, sandbox: FakeSandbox) -> None:
        for directory, mode in ((sandbox.dir, 0o711), (sandbox.dir / "home", 0o711), (sandbox.home, 0o755)):
            directory.mkdir(mode=mode)
            os.chmod(directory, mode)
            self._chown(sandbox, directory)

    async def _list(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        query = request.query
        try:
            labels = orjson.loads(query["labels"]) if query.get("labels") else {}
            limit = int(query.get("limit") or 100)
            offset = int(query.get("cursor") or 0)
        except (orjson.JSONDecodeError, ValueError) as err:
            raise _HttpError(400, str(err)) from err
        if not isinstance(labels, dict) or limit < 1:
            raise _HttpError(400, "invalid labels or limit")
        states = set(query.getall("states", []))
        snapshots = set(query.getall("snapshots", []))
        matched = []
        for sandbox in self.sandboxes.values():
            self._advance(sandbox)
            if sandbox.state == "destroyed" or any(sandbox.labels.get(k) != v for k, v in labels.items()):
                continue
            if (states and sandbox.state not in states) or (snapshots and sandbox.snapshot not in snapshots):
                continue
            if query.get("id") and not sandbox.id.lower().startswith(query["id"].lower()):
                continue
            if query.get("name") and not sandbox.name.lower().startswith(query["name"].lower()):
                continue
            matched.append(sandbox)
        matched.sort(key=lambda s: s.created_at, reverse=True)
        page = matched[offset : offset + limit]
        more = offset + limit < len(matched)
        return _json(
            {
                "items": [self._dto(s, list_item=True) for s in page],
                "nextCursor": str(offset + limit) if more else None,
            }
        )

    async def _get(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        return _json(self._dto(self._lookup(params["id"])))

    async def _proxy_url(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        self._lookup(params["id"])
        return _json({"url": self.toolbox_url})

    async def _labels(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        sandbox = self._lookup(params["id"])
        labels = (await self._body(request, call)).get("labels")
        if not isinstance(labels, dict):
            raise _HttpError(400, "labels must be an object")
        sandbox.labels = {str(k): str(v) for k, v in labels.items()}
        return _json({"labels": sandbox.labels})

    async def _start(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        sandbox = self._lookup(params["id"])
        self._advance(sandbox)
        if sandbox.state == "stopped":
            self._schedule_start(sandbox)
            self._set_state(sandbox, "starting")
        elif sandbox.state not in ("started", "starting", "creating"):
            raise _HttpError(400, f"Sandbox {sandbox.id} cannot be started from state {sandbox.state}")
        return _json(self._dto(sandbox, advance=False))

    async def _stop(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        sandbox = self._lookup(params["id"])
        self._advance(sandbox)
        sandbox.desired_state = "stopped"
        if sandbox.state != "stopped":
            self._set_state(sandbox, "stopping")
            await self._halt(sandbox)
            self._set_state(sandbox, "stopped")
            if sandbox.auto_delete_interval == 0:  # ephemeral: deleted as soon as it stops
                await self._destroy(sandbox)
        return _json(self._dto(sandbox))

    async def _delete(self, request: web.Request, call: Call, params: dict[str, str]) -> web.StreamResponse:
        sandbox = self._lookup(params["id"])
        await self._destroy(sandbox)
        return _json(self._dto(sandbox))

    async def _destroy(self, sandbox: FakeSandbox) -> None:
        sandbox.desired_state = "destroyed"
        self._set_state(sandbox, "destroying")
        await self._halt(sandbox)
        await asyncio.to_thread(shutil.rmtree, sandbox.dir, True)
        self._release_uid(sandbox)
        self._set_state(sandbox, "destroyed")

    async def _halt(self, sandbox: FakeSandbox) -> None:
        """Kill every process of the sandbox (the daemon and its sessions go with the container)."""
        for session in sandbox.sessions.values():
            session.deleted = True
        if sandbox.uid is not None:
            uid = sandbox.uid
            with contextlib.suppress(OSError):
                helper = await asyncio.create_subprocess_exec(
                    "kill",
                    "-9",
                    "-1",
                    user=uid,
                    group=uid,
                    extra_groups=[],
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env={"PATH": DEFAULT_PATH},
                )
                await helper.wait()
            await asyncio.to_thread(_kill_until_gone, lambda table: {p.pid for p in table if p.uid == uid})
        else:
            roots = {p.pid for p in sandbox.processes}
            marker = f"DAYTONA_SANDBOX_ID={sandbox.id}\0".encode()
            await asyncio.to_thread(_kill_until_gone, _tree(roots, b"\0" + marker))
        await self._reap(sandbox.processes)
        for session in list(sandbox.sessions.values()):
            await self._close_session(session)
        sandbox.sessions.clear()

    async def _reap(self, processes: Iterable[asyncio.subprocess.Process]) -> None:
        waits = [asyncio.ensure_future(p.wait()) for p in list(processes)]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=5.0)
            for task in pending:
                task.cancel()

    # --- the notification gateway (Socket.IO over an engine.io v4 WebSocket) --------------------

    def _emit(self, event: str, payload: Any) -> None:
        frame = "42" + orjson.dumps([event, payload]).decode()
        for ws in list(self._sockets):
            if not ws.closed:
                self._spawn_task(self._send(ws, frame))

    async def _send(self, ws: web.WebSocketResponse, frame: str) -> None:
        with contextlib.suppress(Exception):
            await ws.send_str(frame)

    async def _socketio(self, request: web.Request) -> web.StreamResponse:
        call = self._record("events", request, "/socket.io/", "/socket.io/", None)
        if request.query.get("transport") != "websocket" or request.headers.get("Upgrade", "").lower() != "websocket":
            call.status = 400
            return _json({"code": 0, "message": "Transport unknown"}, 400)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        call.status = 101
        ping_interval = 25.0
        await ws.send_str(
            "0"
            + orjson.dumps(
                {
                    "sid": secrets.token_urlsafe(15),
                    "upgrades": [],
                    "pingInterval": int(ping_interval * 1000),
                    "pingTimeout": 20000,
                    "maxPayload": 1000000,
                }
            ).decode()
        )

        async def ping() -> None:
            while not ws.closed:
                await asyncio.sleep(ping_interval)
                await self._send(ws, "2")

        pinger = self._spawn_task(ping())
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                data: str = message.data
                if data.startswith("40"):
                    try:
                        auth = orjson.loads(data[data.index("{") :]) if "{" in data else {}
                    except orjson.JSONDecodeError:
                        auth = {}
                    token = auth.get("token") if isinstance(auth, dict) else None
                    if isinstance(token, str) and self._is_key(token):
                        self._sockets.add(ws)
                        await ws.send_str("40" + orjson.dumps({"sid": secrets.token_urlsafe(15)}).decode())
                    else:
                        await ws.send_str("44" + orjson.dumps({"message": "Unauthorized"}).decode())
                elif data.startswith("41"):
                    self._sockets.discard(ws)
                elif data == "1":
                    break
        finally:
            self._sockets.discard(ws)
            pinger.cancel()
            await ws.close()
        return ws

    # --- toolbox: paths, permissions ------------------------------------------------------------

    @staticmethod
    def _resolve(sandbox: FakeSandbox, raw: str) -> str:
        """A path as the daemon resolves it: relative to its working directory (the home)."""
        return os.path.normpath(raw if os.path.isabs(raw) else os.path.join(sandbox.home, raw))

    @staticmethod
    def _inside(sandbox: FakeSandbox, path: str) -> bool:
        real, base = os.path.realpath(path), os.path.realpath(sandbox.dir)
        return real == base or real.startswith(base + os.sep)

    def _readable(self, sandbox: FakeSandbox, path: str, bits: int = 4) -> int:
        """0, or the errno the sandbox's user would get reading `path`."""
        if sandbox.uid is None:
            return 0
        return _access_errno(sandbox.uid, path, bits)

    def _writable_dir(self, sandbox: FakeSandbox, directory: str) -> int:
        """0, or the errno creating an entry in `directory` gets: EACCES outside the sandbox."""
        if not self._inside(sandbox, directory):
            return errno.EACCES
        return self._readable(sandbox, directory, 3)

    def _makedirs(self, sandbox: FakeSandbox, directory: str, mode: int = 0o755) -> None:
        """mkdir -p inside the sandbox, the new directories belonging to its user."""
        missing: list[str] = []
        current = directory
        while not os.path.exists(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        if os.path.exists(current) and not os.path.isdir(current):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), current)
        for path in reversed(missing):
            if code := self._writable_dir(sandbox, os.path.dirname(path)):
                raise OSError(code, os.strerror(code), path)
            os.mkdir(path, mode)
            self._chown(sandbox, path)

    # --- toolbox: info ---------------------------------------------------------------------------

    async def _home_dir(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        return _json({"dir": str(sandbox.home)})

    async def _work_dir(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        return _json({"dir": str(sandbox.home)})

    async def _daemon_version(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        return _json({"version": DAEMON_VERSION})

    # --- toolbox: processes ----------------------------------------------------------------------

    def _environment(self, sandbox: FakeSandbox, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The container's environment, which the daemon passes on to what it runs."""
        env = {
            "PATH": DEFAULT_PATH,
            "HOSTNAME": sandbox.id[:12],
            "HOME": str(sandbox.home),
            "DAYTONA_SANDBOX_ID": sandbox.id,
            "DAYTONA_SANDBOX_SNAPSHOT": sandbox.snapshot or sandbox.image or "",
            "DAYTONA_SANDBOX_USER": sandbox.user,
        }
        env.update(sandbox.env_vars)
        env.update(extra or {})
        return env

    async def _spawn(
        self, sandbox: FakeSandbox, cwd: str, env: dict[str, str], *, stderr: int
    ) -> asyncio.subprocess.Process:
        uid = sandbox.uid
        process = await asyncio.create_subprocess_exec(
            self.shell,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=env,
            start_new_session=True,
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
        )
        sandbox.processes.add(process)
        self._spawn_task(self._forget(sandbox, process))
        return process

    @staticmethod
    async def _forget(sandbox: FakeSandbox, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        sandbox.processes.discard(process)

    @staticmethod
    async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(data)
            await process.stdin.drain()
        process.stdin.close()

    async def _execute(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        """POST /process/execute: the command is piped to the shell, stdout and stderr combined; a
        timeout kills the process group and answers 408."""
        body = await self._body(request, call)
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise _daemon(400, "command cannot be empty or whitespace-only")
        envs = body.get("envs") or {}
        if not isinstance(envs, dict):
            raise _daemon(400, "invalid request body: envs must be an object")
        for key in envs:
            if not _ENV_KEY.match(str(key)):
                raise _daemon(400, f"invalid environment variable name: '{key}'")
        cwd = self._resolve(sandbox, body["cwd"]) if body.get("cwd") else str(sandbox.home)
        timeout = body.get("timeout")
        limit = float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None
        if (missing := _chdir_error(cwd)) is not None:
            return _json({"exitCode": -1, "result": missing})
        try:
            process = await self._spawn(
                sandbox, cwd, self._environment(sandbox, {str(k): str(v) for k, v in envs.items()}), stderr=-2
            )
        except OSError as err:
            op = "chdir" if err.filename == cwd else f"fork/exec {self.shell}"
            return _json({"exitCode": -1, "result": _go_error(op, err.filename or cwd, err)})
        assert process.stdout is not None
        self._spawn_task(self._feed(process, command.encode()))
        reader = self._spawn_task(process.stdout.read())
        waiter = self._spawn_task(process.wait())
        _done, pending = await asyncio.wait({reader, waiter}, timeout=limit)
        if pending:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await waiter
            _finished, unfinished = await asyncio.wait({reader}, timeout=1.0)
            for task in unfinished:
                task.cancel()
            raise _daemon(408, "command execution timeout")
        code = waiter.result()
        return _json({"exitCode": code if code >= 0 else -1, "result": reader.result().decode("utf-8", "replace")})

    # --- toolbox: sessions -----------------------------------------------------------------------

    def _session(self, sandbox: FakeSandbox, session_id: str) -> Session:
        session = sandbox.sessions.get(session_id)
        if session is None or session.deleted:
            raise _daemon(404, "session not found")
        return session

    def _command(self, sandbox: FakeSandbox, params: dict[str, str]) -> tuple[Session, SessionCommand]:
        session = self._session(sandbox, params["session"])
        command = session.commands.get(params["command"])
        if command is None:
            raise _daemon(404, "command not found")
        return session, command

    async def _list_sessions(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        return _json([s.as_json() for s in sandbox.sessions.values() if not s.deleted])

    async def _get_session(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        return _json(self._session(sandbox, params["session"]).as_json())

    async def _get_command(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        return _json(self._command(sandbox, params)[1].as_json())

    async def _create_session(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        session_id = (await self._body(request, call)).get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise _daemon(400, "invalid request body: sessionId is required")
        if session_id in sandbox.sessions and not sandbox.sessions[session_id].deleted:
            raise _daemon(409, "session already exists")
        directory = sandbox.dir / ".daytona" / "sessions" / uuid.uuid4().hex
        self._makedirs(sandbox, str(directory), 0o700)
        try:
            process = await self._spawn(sandbox, str(sandbox.home), self._environment(sandbox), stderr=-1)
        except OSError as err:
            raise _daemon(500, str(err)) from err
        session = Session(session_id, directory, process)
        sandbox.sessions[session_id] = session
        session.tasks.append(self._spawn_task(self._control(session)))
        assert process.stderr is not None
        session.tasks.append(self._spawn_task(process.stderr.read()))
        return web.Response(status=201)

    async def _control(self, session: Session) -> None:
        """Reads the session shell's control lines: a command began (its output FIFOs are open
        for writing), a command ended with a status."""
        process = session.process
        assert process.stdout is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:
                continue
            if not line:
                break
            if not line.startswith(_MARK):
                continue
            parts = line[1:].decode("utf-8", "replace").split()
            command = session.commands.get(parts[1]) if len(parts) >= 2 else None
            if command is None:
                continue
            if parts[0] == "B" and not command.begun:
                command.begun = True
                for kind in ("stdout", "stderr"):
                    fd = command.fds.pop(kind, None)
                    if fd is None:
                        continue
                    pipe = os.fdopen(fd, "rb", buffering=0)
                    transport, _ = await loop.connect_read_pipe(functools.partial(_FifoReader, command, kind), pipe)
                    command.transports.append(transport)
            elif parts[0] == "E" and len(parts) == 3:
                with contextlib.suppress(ValueError):
                    command.shell_status = int(parts[2])
                if not command.begun:  # its redirections failed: it never ran
                    command._open.clear()
                command.maybe_finish()
        code = await process.wait()
        session.ended = True
        for command in session.commands.values():
            if command.begun and command.shell_status is None and code >= 0 and not session.deleted:
                command.shell_status = code  # `exit N` in the command ended the shell
                command.maybe_finish()
            command.abandon()
        session.closed.set()

    async def _close_session(self, session: Session) -> None:
        session.deleted = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session.process.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(session.closed.wait(), 5.0)
        for command in session.commands.values():
            command.abandon()
            for transport in command.transports:
                transport.close()
        for task in session.tasks:
            task.cancel()

    async def _delete_session(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        session = self._session(sandbox, params["session"])
        session.deleted = True
        roots = {session.process.pid}
        await asyncio.to_thread(_kill_until_gone, _tree(roots, None))
        await self._close_session(session)
        sandbox.sessions.pop(session.id, None)
        await asyncio.to_thread(shutil.rmtree, session.dir, True)
        return web.Response(status=204)

    def _new_command(self, sandbox: FakeSandbox, session: Session, text: str, run_async: bool) -> SessionCommand:
        command_id = str(uuid.uuid4())
        directory = session.dir / command_id
        self._makedirs(sandbox, str(directory), 0o700)
        command = SessionCommand(command_id, text, run_async, directory)
        script = directory / "cmd.sh"
        script.write_text(text)
        os.chmod(script, 0o600)
        self._chown(sandbox, script)
        for kind in ("stdout", "stderr", "input"):
            if kind == "input" and not run_async:
                continue
            fifo = directory / f"{kind}.pipe"
            os.mkfifo(fifo, 0o600)
            self._chown(sandbox, fifo)
            if kind == "input":
                command.input_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            else:
                command.fds[kind] = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        session.commands[command_id] = command
        return command

    @staticmethod
    def _wrapper(command: SessionCommand) -> bytes:
        """What the session shell is sent: in the shell itself (so state carries over), announce
        the command on the control channel once its output FIFOs are open, source it, then report
        its status."""
        directory = command.dir
        stdin = f"<>'{directory}/input.pipe'" if command.run_async else "</dev/null"
        return (
            f"{{ printf '\\036B %s\\n' {command.id} >&9; . '{directory}/cmd.sh' 9>&-; }} 9>&1 {stdin}"
            f" >'{directory}/stdout.pipe' 2>'{directory}/stderr.pipe'; printf '\\036E %s %s\\n' {command.id} \"$?\"\n"
        ).encode()

    async def _session_exec(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        body = await self._body(request, call)
        session = self._session(sandbox, params["session"])
        text = body.get("command")
        if not isinstance(text, str) or not text.strip():
            raise _daemon(400, "command cannot be empty")
        run_async = bool(body.get("runAsync") or body.get("async"))
        if session.ended:
            raise _daemon(410, "session is no longer accepting commands")
        command = self._new_command(sandbox, session, text, run_async)
        stdin = session.process.stdin
        assert stdin is not None
        try:
            stdin.write(self._wrapper(command))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as err:
            command.abandon()
            raise _daemon(410, "session is no longer accepting commands") from err
        if run_async:
            return _json({"cmdId": command.id}, 202)
        await command.done.wait()
        if command.exit_code is None:
            raise _daemon(
                400, "session cancelled" if session.deleted else "session shell ended without a command result"
            )
        version = _version(request.headers.get("X-Daytona-SDK-Version"))
        log = bytes(command.log)
        if (version is not None and version < (0, 27, 0)) or (
            version is None and request.headers.get("X-Daytona-Split-Output") != "true"
        ):
            return _json({"cmdId": command.id, "output": _strip(log), "exitCode": command.exit_code})
        result: dict[str, Any] = {"cmdId": command.id, "output": log.decode("utf-8", "replace")}
        if version is None or version >= (0, 163, 0):
            result["stdout"] = command.stdout.decode("utf-8", "replace")
            result["stderr"] = command.stderr.decode("utf-8", "replace")
        result["exitCode"] = command.exit_code
        return _json(result)

    async def _command_input(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        _session, command = self._command(sandbox, params)
        data = (await self._body(request, call)).get("data")
        if not isinstance(data, str):
            raise _daemon(400, "invalid request body: data is required")
        if command.done.is_set():
            raise _HttpError(410, "command has already completed", "COMMAND_ALREADY_COMPLETED")
        if command.input_fd is None:
            raise _daemon(400, "command does not accept input")
        try:
            os.write(command.input_fd, data.encode())
        except OSError as err:
            raise _daemon(400, f"failed to write input: {err}") from err
        return web.Response(status=204)

    async def _command_logs(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        _session, command = self._command(sandbox, params)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._follow_logs(request, command, request.query.get("follow") == "true")
        log = bytes(command.log)
        version = _version(request.headers.get("X-Daytona-SDK-Version"))
        if version is not None and version >= (0, 167, 0):
            return _json(
                {
                    "output": _strip(log),
                    "stdout": command.stdout.decode("utf-8", "replace"),
                    "stderr": command.stderr.decode("utf-8", "replace"),
                }
            )
        text = _strip(log) if version is None or version < (0, 27, 0) else log.decode("utf-8", "replace")
        return web.Response(text=text)

    async def _follow_logs(self, request: web.Request, command: SessionCommand, follow: bool) -> web.StreamResponse:
        """The log as the daemon streams it: the raw, prefixed bytes, then a normal close once
        the command has ended (at once without `follow`)."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)

        async def drain_client() -> None:
            async for _message in ws:
                pass

        client = asyncio.ensure_future(drain_client())
        sent = 0
        try:
            while not ws.closed:
                changed = command.changed
                if sent < len(command.log):
                    chunk = bytes(command.log[sent:])
                    sent += len(chunk)
                    await ws.send_bytes(chunk)
                    continue
                if not follow or command.done.is_set():
                    break
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait({waiter, client}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if client.done():
                    break
        except ConnectionError:
            pass
        finally:
            await ws.close()
            client.cancel()
        return ws

    # --- toolbox: files --------------------------------------------------------------------------

    def _query_path(self, request: web.Request, sandbox: FakeSandbox, name: str = "path") -> tuple[str, str]:
        raw = request.query.get(name, "")
        if not raw:
            raise _daemon(400, f"{name} is required")
        return raw, self._resolve(sandbox, raw)

    async def _file_info(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        _raw, path = self._query_path(request, sandbox)
        if code := self._readable(sandbox, path, 0):
            raise _fs_error("stat", path, code)
        try:
            return _json(_file_info(path))
        except OSError as err:
            raise _fs_error("stat", path, err) from err

    async def _list_files(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        path = self._resolve(sandbox, request.query.get("path") or ".")
        try:
            depth = int(request.query.get("depth") or 1)
        except ValueError as err:
            raise _daemon(400, "invalid depth") from err
        if depth < 1:
            raise _daemon(400, "depth must be at least 1")
        if code := self._readable(sandbox, path, 5):
            raise _fs_error("open", path, code)
        entries: list[dict[str, Any]] = []

        def walk(directory: str, level: int) -> None:
            for name in sorted(os.listdir(directory)):
                child = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    entries.append(_file_info(child))
                    if level > 1 and os.path.isdir(child) and not self._readable(sandbox, child, 5):
                        walk(child, level - 1)

        try:
            walk(path, depth)
        except OSError as err:
            raise _fs_error("open", path, err) from err
        return _json(entries)

    async def _create_folder(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        _raw, path = self._query_path(request, sandbox)
        try:
            mode = int(request.query.get("mode") or "755", 8)
        except ValueError as err:
            raise _daemon(400, "invalid mode format") from err
        try:
            self._makedirs(sandbox, path, mode)
        except OSError as err:
            raise _fs_error("mkdir", err.filename or path, err) from err
        return web.Response(status=201)

    async def _delete_file(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        _raw, path = self._query_path(request, sandbox)
        recursive = request.query.get("recursive") == "true"
        if code := self._readable(sandbox, path, 0):
            raise _fs_error("stat", path, code)
        try:
            info = os.lstat(path)
        except OSError as err:
            raise _fs_error("stat", path, err) from err
        if stat.S_ISDIR(info.st_mode) and not recursive:
            raise _daemon(400, "cannot delete directory without recursive flag")
        if code := self._writable_dir(sandbox, os.path.dirname(path)):
            raise _daemon(400, _go_error("remove", path, code))
        try:
            if stat.S_ISDIR(info.st_mode):
                await asyncio.to_thread(shutil.rmtree, path)
            else:
                os.remove(path)
        except OSError as err:
            raise _daemon(400, _go_error("remove", path, err)) from err
        return web.Response(status=204)

    async def _move(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        source_raw, destination_raw = request.query.get("source", ""), request.query.get("destination", "")
        if not source_raw or not destination_raw:
            raise _daemon(400, "source and destination paths are required")
        self._move_sync(sandbox, self._resolve(sandbox, source_raw), self._resolve(sandbox, destination_raw))
        return web.Response(status=200)

    def _move_sync(self, sandbox: FakeSandbox, source: str, destination: str) -> None:
        for path in (source, os.path.dirname(destination)):
            if code := self._readable(sandbox, path, 0):
                raise _fs_error("stat", path, code)
            if not os.path.exists(path):
                raise _fs_error("stat", path, errno.ENOENT)
        if os.path.lexists(destination):
            raise _daemon(409, "destination already exists")
        for directory in (os.path.dirname(source), os.path.dirname(destination)):
            if code := self._writable_dir(sandbox, directory):
                raise _daemon(400, "failed to move file: " + _go_error("rename", source, code))
        try:
            os.rename(source, destination)
        except OSError as err:
            raise _daemon(400, "failed to move file: " + _go_error("rename", source, err)) from err

    async def _permissions(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        _raw, path = self._query_path(request, sandbox)
        self._chmod(sandbox, path, request.query.get("mode"))
        return web.Response(status=200)

    def _chmod(self, sandbox: FakeSandbox, path: str, mode: str | None) -> None:
        if not os.path.lexists(path):
            raise _fs_error("stat", path, errno.ENOENT)
        if not self._inside(sandbox, path):
            raise _daemon(400, _go_error("chmod", path, errno.EPERM))
        if mode:
            try:
                os.chmod(path, int(mode, 8))
            except ValueError as err:
                raise _daemon(400, "invalid mode format") from err

    async def _upload(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        """POST /files/bulk-upload: `files[i].path` then `files[i].file` parts; each file is written
        to a temporary file next to its destination and renamed over it."""
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return _json({"errors": ["invalid multipart form"]}, 400)
        destinations: dict[str, str] = {}
        errors: list[str] = []
        while True:
            try:
                part = await reader.next()
            except Exception as err:  # a broken body: nothing after it can be read
                errors.append(f"reading part: {err}")
                break
            if part is None:
                break
            name = getattr(part, "name", None) or ""
            index = name.removeprefix("files[").removesuffix("].path").removesuffix("].file")
            if name.endswith(".path"):
                try:
                    destinations[index] = (await part.text()).strip()  # type: ignore[union-attr]
                except Exception as err:
                    errors.append(f"path[{index}]: {err}")
                    break
                continue
            if not name.endswith(".file"):
                await part.release()
                continue
            destination = destinations.get(index) or getattr(part, "filename", None) or ""
            if not destination:
                errors.append(f"file[{index}]: empty path")
                await part.release()
                continue
            error = await self._receive(sandbox, part, destination)
            if error:
                errors.append(error)
        call.body = {"paths": list(destinations.values())}
        if errors:
            return _json({"errors": errors}, 400)
        return web.Response(status=200)

    async def _receive(self, sandbox: FakeSandbox, part: Any, destination: str) -> str | None:
        path = self._resolve(sandbox, destination)
        parent = os.path.dirname(path)
        temporary: str | None = None
        try:
            self._check_upload(sandbox, path)
            fd, temporary = tempfile.mkstemp(dir=parent, prefix=".daytona-upload-")
            with os.fdopen(fd, "wb") as handle:
                while chunk := await part.read_chunk(_CHUNK):
                    handle.write(chunk)
                os.fchmod(handle.fileno(), 0o644)
            self._chown(sandbox, temporary)
            os.replace(temporary, path)
            temporary = None
            return None
        except OSError as err:
            with contextlib.suppress(Exception):
                await part.release()
            return f"{destination}: {_go_error('open', err.filename or path, err)}"
        except Exception as err:  # the part's body broke off
            return f"{destination}: write: {err}"
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def _check_upload(self, sandbox: FakeSandbox, path: str) -> None:
        """Raises the OSError creating `path` gets: outside the sandbox, EACCES."""
        if not self._inside(sandbox, path):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        parent = os.path.dirname(path)
        self._makedirs(sandbox, parent)
        if code := self._writable_dir(sandbox, parent):
            raise OSError(code, os.strerror(code), path)
        if os.path.isdir(path):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)

    def _open_for_download(self, sandbox: FakeSandbox, raw: str, method: str) -> tuple[Any, int] | dict[str, Any]:
        """(open file, size), or the daemon's error payload for that path."""

        def error(status: int, code: str, message: str) -> dict[str, Any]:
            return {
                "statusCode": status,
                "message": message,
                "source": "DAYTONA_DAEMON",
                "code": code,
                "timestamp": _iso(time.time()),
                "path": raw,
                "method": method,
            }

        if not raw:
            return error(400, "INVALID_FILE_PATH", "invalid file path: path is empty")
        path = self._resolve(sandbox, raw)
        code = self._readable(sandbox, path)
        try:
            if code:
                raise OSError(code, os.strerror(code), path)
            handle = open(path, "rb")  # noqa: SIM115 - streamed, closed by the caller
        except OSError as err:
            if err.errno == errno.ENOENT:
                return error(404, "FILE_NOT_FOUND", f"file not found: {raw}")
            if err.errno in (errno.EACCES, errno.EPERM):
                return error(403, "FILE_ACCESS_DENIED", f"permission denied: {raw}")
            if err.errno == errno.EISDIR:
                return error(400, "INVALID_FILE_PATH", f"invalid file path: path points to a directory: {raw}")
            return error(500, "FILE_READ_FAILED", f"failed to open file: {err}")
        size = os.fstat(handle.fileno()).st_size
        if stat.S_ISDIR(os.fstat(handle.fileno()).st_mode):
            handle.close()
            return error(400, "INVALID_FILE_PATH", f"invalid file path: path points to a directory: {raw}")
        return handle, size

    async def _bulk_download(
        self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]
    ) -> Any:
        """POST /files/bulk-download: a multipart body with a `file` part per file (or an `error`
        part with the daemon's JSON error), each named by the path as requested."""
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            return _json({"error": 'request body must be {"paths": [ ... ]} and non-empty'}, 400)
        call.body = {"paths": paths}
        response = web.StreamResponse(
            status=200, headers={"Content-Type": f"multipart/form-data; boundary={_DOWNLOAD_BOUNDARY}"}
        )
        await response.prepare(request)
        for index, raw in enumerate(paths):
            opened = self._open_for_download(sandbox, raw, request.method)
            lead = b"\r\n" if index else b""
            if isinstance(opened, dict):
                headers = (
                    f"Content-Disposition: {_disposition('error', raw)}\r\n"
                    "Content-Type: application/json; charset=utf-8\r\n\r\n"
                )
                await response.write(lead + f"--{_DOWNLOAD_BOUNDARY}\r\n{headers}".encode() + orjson.dumps(opened))
                continue
            handle, size = opened
            content_type = mimetypes.guess_type(raw)[0] or "application/octet-stream"
            headers = (
                f"Content-Disposition: {_disposition('file', raw)}\r\n"
                f"Content-Length: {size}\r\nContent-Type: {content_type}\r\n\r\n"
            )
            await response.write(lead + f"--{_DOWNLOAD_BOUNDARY}\r\n{headers}".encode())
            with handle:
                while chunk := handle.read(_CHUNK):
                    await response.write(chunk)
        await response.write(f"\r\n--{_DOWNLOAD_BOUNDARY}--\r\n".encode())
        await response.write_eof()
        return response

    async def _download(self, request: web.Request, call: Call, sandbox: FakeSandbox, params: dict[str, str]) -> Any:
        raw = request.query.get("path", "")
        opened = self._open_for_download(sandbox, raw, request.method)
        if isinstance(opened, dict):
            raise _HttpError(opened["statusCode"], opened["message"], opened["code"])
        handle, size = opened
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{os.path.basename(raw)}"',
                "Content-Length": str(size),
            },
        )
        await response.prepare(request)
        with handle:
            while chunk := handle.read(_CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response


def _chdir_error(cwd: str) -> str | None:
    """What Go's cmd.Start() says when the working directory is unusable."""
    if os.path.isdir(cwd):
        return None
    return _go_error("chdir", cwd, errno.ENOTDIR if os.path.exists(cwd) else errno.ENOENT)


def _strip(log: bytes) -> str:
    return log.replace(STDOUT_PREFIX, b"").replace(STDERR_PREFIX, b"").decode("utf-8", "replace")


# --- serving it on its own ----------------------------------------------------------------------


async def _serve(server: FakeDaytona) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"listening {server.url}", flush=True)
        print(f"api-url {server.api_url}", flush=True)
        print(f"api-key {server.api_key}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.fakes.daytona_api", description="A fake Daytona.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--root", type=Path, default=None, help="where sandboxes live (default: a temporary directory)")
    parser.add_argument("--api-key", default=None, help="the API key to accept (default: a random one, printed)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(FakeDaytona(host=args.host, port=args.port, root=args.root, api_key=args.api_key)))


if __name__ == "__main__":
    main(sys.argv[1:])
