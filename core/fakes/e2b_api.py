"""A fake of E2B's HTTP APIs that the real `e2b` SDK drives unchanged: the control plane (the REST API at
`api.e2b.app`: create, list, connect, pause, kill sandboxes) and envd, the agent in every sandbox (Connect RPC
`process.Process` and `filesystem.Filesystem`, plus `GET/POST /files` and `GET /health`). Sandboxes are
directories on this host and their commands are real processes, so it also serves as a self-hosted,
E2B-compatible endpoint for trusted code.

    async with FakeE2B() as fake:
        opts = fake.sdk_options()      # api_key=, api_url=fake.url, sandbox_url=fake.url, http_version="1.1"
        sbx = await AsyncSandbox.create(metadata={"job": "1"}, envs={"A": "1"}, **opts)
        await sbx.commands.run("echo $A > out.txt")            # /bin/bash -l -c, cwd $HOME, as the sandbox's uid
        await sbx.files.read("out.txt")                        # <root>/<id>/home/user/out.txt on this host
        await sbx.pause()                                      # SIGSTOPs every process of the sandbox
        sbx = await AsyncSandbox.connect(sbx.sandbox_id, **opts)  # SIGCONTs them
        fake.fail("POST /v2/sandboxes", status=500)             # the next create fails as E2B's API reports it
        fake.counts()["process.Process/Start"]                  # calls per kind; fake.calls has each one
        fake.sandboxes[sbx.sandbox_id].home                     # what $HOME and `pwd` show inside commands

Routing: the SDK sends control-plane calls to `api_url` and, with `sandbox_url` set, every sandbox's envd calls to
that one URL with the `E2b-Sandbox-Id` header (as to E2B's edge proxy), so one server is both. Plain HTTP gets
HTTP/1.1 either way; `http_version="1.1"` just makes that explicit.

A sandbox is `<root>/<sandbox_id>/` with the user's home at `<root>/<sandbox_id>/home/user`; paths are not remapped,
so commands and the files API see this host's filesystem, and the files API refuses writes outside the sandbox's
directory (and reads of other sandboxes' directories). Run as root, each sandbox gets its own unprivileged uid/gid
from 61000..61499 (its processes run as it, its files are owned by it) and its processes are found by uid, so even
`setsid` escapees are paused and killed with it; otherwise processes run as the current user and are found by
process tree and by their `E2B_SANDBOX_ID` environment variable. Not implemented: PTYs, directory watching,
templates/snapshots/volumes/secrets, port forwarding other than envd's. `python -m core.fakes.e2b_api --port 0`
serves it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import errno
import fcntl
import grp
import itertools
import os
import pwd
import secrets
import shutil
import signal
import stat
import string
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast
from urllib.parse import unquote_plus

import orjson
from aiohttp import BodyPartReader, web
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.process import process_pb
from protobuf import Message, Oneof
from protobuf.wkt import Timestamp

ENVD_PORT = 49983
CLIENT_ID = "6532622b"  # what the API returns for clientID since sandboxes stopped being per client
DEFAULT_USER = "user"
UIDS = range(61000, 61500)
MAX_TIMEOUT = 86_400  # seconds; the Pro tier's cap
CHUNK = 32 << 10  # envd reads a process's stdout/stderr 32 KiB at a time
SUBSCRIBER_BUFFER = 64  # envd's output channel buffer: a slow stream holds the process's output back
API_KEY_HELP = "Invalid API key, please visit https://e2b.dev/docs/quickstart/api-key for more information."

# Connect error codes and the HTTP statuses of unary errors (https://connectrpc.com/docs/protocol#error-codes).
CONNECT_HTTP_STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}
_STATUS_CONNECT_CODE = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    429: "resource_exhausted",
    499: "canceled",
    500: "internal",
    501: "unimplemented",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}
# Go's syscall.Signal names, for the ProcessState strings envd reports ("signal: killed").
_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGHUP: "hangup",
    signal.SIGINT: "interrupt",
    signal.SIGQUIT: "quit",
    signal.SIGILL: "illegal instruction",
    signal.SIGTRAP: "trace/breakpoint trap",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating point exception",
    signal.SIGKILL: "killed",
    signal.SIGUSR1: "user defined signal 1",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGUSR2: "user defined signal 2",
    signal.SIGPIPE: "broken pipe",
    signal.SIGALRM: "alarm clock",
    signal.SIGTERM: "terminated",
}

StateName = Literal["running", "paused", "killed"]
_M = TypeVar("_M", bound="Message[Any]")


# --- records -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One request the fake answered. `kind` is what `counts()` and `fail()` key on: `"POST /v2/sandboxes"`,
    `"GET /sandboxes/{sandboxID}"` (control plane, path template), `"process.Process/Start"` (envd RPC),
    `"GET /files"` (envd HTTP)."""

    method: str
    path: str
    kind: str
    sandbox_id: str | None
    at: float
    status: int = 200
    # The Connect error code an envd RPC ended with (streams end with HTTP 200 and the error in the body).
    error: str | None = None
    body: Any = None

    @property
    def rpc(self) -> str | None:
        return self.kind if "/" in self.kind and " " not in self.kind else None

    @property
    def key(self) -> str:
        return self.kind


@dataclass(slots=True)
class Failure:
    status: int
    message: str
    headers: dict[str, str]


@dataclass(eq=False)
class FakeSandbox:
    """A sandbox: `path` is `<root>/<sandbox_id>`, `home` the user's home in it (the host path commands see)."""

    sandbox_id: str
    template: str
    metadata: dict[str, str]
    envs: dict[str, str]
    allow_internet_access: bool | None
    timeout: int
    auto_pause: bool
    auto_pause_memory: bool
    auto_resume: bool
    path: Path
    home: Path
    uid: int
    gid: int
    access_token: str
    started_at: datetime
    end_at: datetime
    state: StateName = "running"
    network: dict[str, Any] | None = None
    processes: dict[int, _Process] = field(default_factory=dict)
    paused_at: datetime | None = None
    # envd's environment for every process (E2B_SANDBOX=true, E2B_SANDBOX_ID, ..., then `envs`, the create call's
    # envVars) and the server streams in flight.
    env_vars: dict[str, str] = field(default_factory=dict)
    streams: set[_Subscriber] = field(default_factory=set)
    _expiry: asyncio.TimerHandle | None = None
    _uid_lock: int | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class _RpcError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Aborted(Exception):
    """The connection to the sandbox went away under a stream (it was paused or killed)."""


class _Subscriber:
    """One stream's view of a process's events: a bounded buffer (the producer waits while it is full, like
    envd's channel), that the stream can be cut off from."""

    def __init__(self) -> None:
        self.items: deque[process_pb.ProcessEvent] = deque()
        self.closed = False
        self.aborted: str | None = None
        self._changed = asyncio.Event()
        self._space = asyncio.Event()

    async def put(self, event: process_pb.ProcessEvent) -> None:
        while len(self.items) >= SUBSCRIBER_BUFFER and not self.closed:
            self._space.clear()
            await self._space.wait()
        if not self.closed:
            self.items.append(event)
            self._changed.set()

    def abort(self, message: str) -> None:
        self.aborted = message
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self.items.clear()
        self._space.set()

    async def get(self, patience: float | None) -> process_pb.ProcessEvent | None:
        """The next event, or None when `patience` seconds pass first."""
        while not self.items and self.aborted is None:
            self._changed.clear()
            try:
                async with asyncio.timeout(patience):
                    await self._changed.wait()
            except TimeoutError:
                return None
        if self.aborted is not None:
            raise _Aborted(self.aborted)
        event = self.items.popleft()
        self._space.set()
        return event


class _Process:
    """A process envd started: its output is pumped to the streams subscribed to it, in the order it comes."""

    def __init__(
        self,
        sandbox: FakeSandbox,
        popen: asyncio.subprocess.Process,
        config: process_pb.ProcessConfig,
        tag: str | None,
        out_fd: int,
        err_fd: int,
    ) -> None:
        self.sandbox, self.popen, self.config, self.tag = sandbox, popen, config, tag
        self.pid = popen.pid
        self._fds = {out_fd: "stdout", err_fd: "stderr"}
        self.subscribers: list[_Subscriber] = []
        self.end: process_pb.ProcessEvent | None = None
        self.done = asyncio.Event()
        self.output_cancelled = False  # after SIGKILL/SIGTERM envd stops forwarding output
        self.supervisor: asyncio.Task[None] | None = None
        self._deadline: float | None = None  # monotonic; envd kills the process when the call's timeout passes
        self._remaining: float | None = None  # while paused
        self._timer: asyncio.TimerHandle | None = None

    # the call's timeout: envd runs the process under a context with it, and SIGKILLs it when it expires

    def set_timeout(self, seconds: float | None) -> None:
        if seconds:
            self._deadline = time.monotonic() + seconds
            self._arm()

    def _arm(self) -> None:
        if self._deadline is not None:
            delay = max(0.0, self._deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self.end is None:
            _signal(self.pid, signal.SIGKILL)

    def freeze(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if self._deadline is not None:
                self._remaining = self._deadline - time.monotonic()

    def thaw(self) -> None:
        if self._remaining is not None:
            self._deadline = time.monotonic() + self._remaining
            self._remaining = None
            self._arm()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # output

    async def _emit(self, event: process_pb.ProcessEvent) -> None:
        for sub in list(self.subscribers):
            await sub.put(event)

    async def _data(self, stream: str, chunk: bytes) -> None:
        if self.output_cancelled:
            return
        data = process_pb.ProcessEvent.DataEvent(output=cast(Any, Oneof(stream, chunk)))
        await self._emit(_event("data", data))

    async def _wait_readable(self, exited: asyncio.Future[int]) -> list[int]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        hits: list[int] = []

        def on_ready(fd: int) -> None:
            hits.append(fd)
            if not ready.done():
                ready.set_result(None)

        for fd in self._fds:
            loop.add_reader(fd, on_ready, fd)
        try:
            waiters: list[asyncio.Future[Any]] = [ready, exited]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fd in self._fds:
                loop.remove_reader(fd)
            if not ready.done():
                ready.cancel()
        return list(dict.fromkeys(hits))

    async def _read(self, fd: int) -> bool:
        """Forward one chunk from `fd`; False at end of file or when nothing is buffered."""
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            os.close(fd)
            del self._fds[fd]
            return False
        await self._data(self._fds[fd], chunk)
        return True

    async def supervise(self) -> None:
        """Pump output until the process exits, then what is still buffered (not waiting for grandchildren that
        hold the pipes: envd's Wait closes them when the process exits), then the end event."""
        try:
            await self._supervise()
        finally:
            self.sandbox.processes.pop(self.pid, None)
            self.done.set()

    async def _supervise(self) -> None:
        exited: asyncio.Future[int] = asyncio.ensure_future(self.popen.wait())
        try:
            while self._fds and not exited.done():
                for fd in await self._wait_readable(exited):
                    if fd in self._fds:
                        await self._read(fd)
            for fd in list(self._fds):
                for _ in range(64):  # what the pipe holds, not what a grandchild goes on writing
                    if fd not in self._fds or not await self._read(fd):
                        break
            code = await exited
        finally:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            if not exited.done():
                exited.cancel()
            self.cancel_timer()
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        if code >= 0:
            end = process_pb.ProcessEvent.EndEvent(exit_code=code, exited=True, status=f"exit status {code}")
            if code:
                end.error = end.status
        else:
            name = _SIGNAL_NAMES.get(-code, f"signal {-code}")
            end = process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=f"signal: {name}")
            end.error = end.status
        self.end = _event("end", end)
        await self._emit(self.end)


# --- helpers -----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _api_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The control plane's error body (its OpenAPI `Error`), which the SDK turns into its exceptions."""
    return _json({"code": status, "message": message}, status, headers)


def _envd_error(status: int, message: str) -> web.Response:
    """envd's HTTP API error body (jsonError)."""
    return _json({"code": status, "message": message}, status)


def _go_error(op: str, path: str, code: int) -> str:
    """A Go *PathError's text, as envd passes it on: `open /x: permission denied`."""
    return f"{op} {path}: {os.strerror(code).lower()}"


def _event(kind: str, value: Any) -> process_pb.ProcessEvent:
    return process_pb.ProcessEvent(event=cast(Any, Oneof(kind, value)))


def _envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _end_stream(error: _RpcError | None) -> bytes:
    body: dict[str, Any] = {}
    if error is not None:
        body["error"] = {"code": error.code, "message": error.message}
    return _envelope(0b10, orjson.dumps(body))


def _encode(message: Message[Any], codec: str) -> bytes:
    return message.to_binary() if codec == "proto" else message.to_json().encode()


def _decode(cls: type[_M], data: bytes, codec: str) -> _M:
    try:
        if codec == "proto":
            return cls.from_binary(data, ignore_unknown_fields=True)
        return cls.from_json(data or b"{}", ignore_unknown_fields=True)
    except Exception as e:
        raise _RpcError("invalid_argument", f"unmarshal into {cls.__name__}: {e}") from e


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _proc_status(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _live(status: dict[str, str]) -> bool:
    return bool(status) and status.get("State", "Z")[:1] not in ("Z", "X")


def _pids_of_uid(uid: int) -> list[int]:
    """Every live process whose real or effective uid is `uid` (root only: a sandbox's uid is its own)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        status = _proc_status(name)
        if not _live(status):
            continue
        ids = status.get("Uid", "").split()
        if str(uid) in ids[:2]:
            pids.append(int(name))
    return pids


def _pids_of_sandbox(sandbox_id: str, roots: Iterable[int]) -> list[int]:
    """Without root: the processes descending from `roots` plus those carrying the sandbox's E2B_SANDBOX_ID."""
    me = os.getpid()
    marker = f"E2B_SANDBOX_ID={sandbox_id}".encode()
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        status = _proc_status(name)
        if not _live(status):
            continue
        with contextlib.suppress(ValueError):
            children.setdefault(int(status.get("PPid", "0")), []).append(int(name))
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.add(int(name))
        except OSError:
            continue
    todo = [pid for pid in roots if pid != me]
    while todo:
        pid = todo.pop()
        if pid in found and pid not in roots:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return sorted(pid for pid in found if _live(_proc_status(str(pid))))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _go_mode(st: os.stat_result) -> str:
    """Go's FileMode.String(): `drwxr-xr-x`, `-rw-r--r--`, `Lrwxrwxrwx`."""
    mode = st.st_mode
    kind = ""
    for test, letter in (
        (stat.S_ISDIR, "d"),
        (stat.S_ISLNK, "L"),
        (stat.S_ISBLK, "D"),
        (stat.S_ISFIFO, "p"),
        (stat.S_ISSOCK, "S"),
        (stat.S_ISCHR, "Dc"),
    ):
        if test(mode):
            kind = letter
    if mode & stat.S_ISUID:
        kind += "u"
    if mode & stat.S_ISGID:
        kind += "g"
    if mode & stat.S_ISVTX:
        kind += "t"
    perms = "".join(
        letter if mode & bit else "-"
        for bit, letter in zip((0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 0o4, 0o2, 0o1), "rwxrwxrwx", strict=True)
    )
    return (kind or "-") + perms


def _basic_user(header: str) -> str | None:
    """The username of envd's `Authorization: Basic base64("user:")`."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        return base64.b64decode(value).decode().partition(":")[0] or None
    except ValueError:
        return None


def _form_field(disposition: str) -> tuple[str | None, str | None]:
    """A multipart part's field name and file name, verbatim (aiohttp's parser strips a leading `/` from file
    names, and envd takes the whole path from them)."""
    header = EmailMessage()
    header["Content-Disposition"] = disposition
    values = []
    for key in ("name", "filename"):
        value = header.get_param(key, None, "content-disposition")
        values.append(None if value is None else email.utils.collapse_rfc2231_value(value))
    return values[0], values[1]


# --- blocking file helpers (run in a thread) ---------------------------------------------------


def _ensure_dirs(path: Path, uid: int | None, gid: int | None) -> None:
    """mkdir -p, with each directory it creates owned by the sandbox's user (envd's EnsureDirs)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        if uid is not None and gid is not None:
            os.chown(d, uid, gid)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _read_chunk(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- the fake ----------------------------------------------------------------------------------


class FakeE2B:
    def __init__(
        self,
        *,
        root: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        envd_version: str = "0.5.7",
        templates: Iterable[str] | None = None,
        paused_envd_response: Literal["not_found", "paused"] = "not_found",
        cpu_count: int = 2,
        memory_mb: int = 512,
        disk_size_mb: int = 10_240,
    ) -> None:
        """`root` holds the sandboxes (a temporary directory by default). `templates`, when given, are the only
        template names create accepts. `paused_envd_response` is how envd calls to a paused sandbox fail: like
        the edge proxy answers for a sandbox it does not run (502 "The sandbox was not found": the SDK's
        SandboxNotRunningException, `is_running()` False), or like newer proxies answer for a paused one
        (409 "The sandbox is paused")."""
        self.host, self.port = host, port
        self.api_key = api_key or "e2b_" + secrets.token_hex(20)
        self.envd_version = envd_version
        self.templates = set(templates) if templates is not None else None
        self.paused_envd_response = paused_envd_response
        self.cpu_count, self.memory_mb, self.disk_size_mb = cpu_count, memory_mb, disk_size_mb
        self.team_id = "00000000-0000-4000-8000-" + secrets.token_hex(6)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-e2b-")
            root = self._tmp.name
        self.root = Path(root).resolve()
        self.as_root = os.geteuid() == 0
        self.calls: list[Call] = []
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.killed: dict[str, FakeSandbox] = {}
        self._failures: dict[str, deque[Failure]] = {}
        self._idempotency: dict[str, str] = {}
        self._last_start = datetime.min.replace(tzinfo=UTC)
        self._uids = itertools.cycle(UIDS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake E2B API is not started")
        return self._url

    def sdk_options(self) -> dict[str, Any]:
        """What to pass to `AsyncSandbox.create/connect/list/kill(...)` to use this fake."""
        return {"api_key": self.api_key, "api_url": self.url, "sandbox_url": self.url, "http_version": "1.1"}

    def env(self) -> dict[str, str]:
        """The same, as the SDK's environment variables."""
        return {
            "E2B_API_KEY": self.api_key,
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
            "E2B_HTTP_VERSION": "1.1",
        }

    # --- scripting and reading -----------------------------------------------------------------

    def fail(
        self,
        kind: str,
        *,
        status: int = 500,
        times: int = 1,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next `times` calls of `kind` fail without effect, the way E2B reports that status: the control
        plane's `{"code", "message"}` body, envd's HTTP error body, or a Connect error for envd RPCs (for a
        server stream, HTTP 200 and the error in the end-of-stream message). `kind` is a `Call.kind`
        (`"POST /v2/sandboxes"`, `"DELETE /sandboxes/{sandboxID}"`, `"process.Process/Start"`, `"GET /files"`;
        a control-plane kind without `/v2` matches both versions) or a concrete `"METHOD /path"`. A 429 or 5xx
        other than 500 (502, 503, 504) is retried by the SDK, up to 3 times by default."""
        for _ in range(times):
            text = message or f"scripted failure ({status})"
            self._failures.setdefault(kind, deque()).append(Failure(status, text, headers or {}))

    def counts(self) -> Counter[str]:
        return Counter(call.kind for call in self.calls)

    def host_pids(self, sandbox_id: str) -> list[int]:
        """The pids of every live host process of the sandbox (by uid as root, else by tree and environment)."""
        sbx = self.sandboxes[sandbox_id]
        return self._pids(sbx)

    async def expire(self, sandbox_id: str) -> None:
        """Make the sandbox's timeout pass now (it is killed, or paused if created with on_timeout "pause")."""
        await self._expire(self.sandboxes[sandbox_id])

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeE2B:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            self._make_searchable(self.root)
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
        for sbx in list(self.sandboxes.values()):
            await self._kill(sbx)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> FakeE2B:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _make_searchable(root: Path) -> None:
        """Sandboxes' uids must reach their directories: every directory on the path searchable by others."""
        os.chmod(root, 0o711)
        for parent in root.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)

    # --- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        sandbox_header = request.headers.get("E2b-Sandbox-Id")
        if sandbox_header is not None:
            return await self._envd(request, sandbox_header)
        return await self._api(request)

    def _take_failure(self, call: Call) -> Failure | None:
        # "POST /sandboxes" also scripts the v2 route the SDK uses ("POST /v2/sandboxes").
        for key in (call.kind, f"{call.method} {call.path}", call.kind.replace(" /v2/", " /", 1)):
            failures = self._failures.get(key)
            if failures:
                return failures.popleft()
        return None

    # --- the control plane ---------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = [p for p in path.split("/") if p]
        kind, sandbox_id = self._api_kind(request.method, parts)
        call = Call(request.method, path, kind, sandbox_id, time.time())
        self.calls.append(call)
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            call.status = 400
            return _api_error(400, "Request body has an error: failed to decode request body")
        call.body = body
        if kind == "GET /health":
            return web.Response(status=200, text="Health check successful")
        key = request.headers.get("X-API-Key")
        if not key:
            call.status = 401
            return _api_error(401, f"{API_KEY_HELP} authorization header is missing")
        if not key.startswith("e2b_"):
            call.status = 401
            return _api_error(401, f"{API_KEY_HELP} authorization header is malformed")
        if not secrets.compare_digest(key, self.api_key):
            call.status = 401
            return _api_error(401, f"{API_KEY_HELP}\nInvalid API key. (invalid API key)")
        failure = self._take_failure(call)
        if failure is not None:
            call.status = failure.status
            return _api_error(failure.status, failure.message, failure.headers)
        try:
            response = await asyncio.shield(self._api_route(request, kind, sandbox_id, body))
        except (KeyError, TypeError, ValueError) as e:
            response = _api_error(400, f"Request body has an error: {e}")
        call.status = response.status
        return response

    @staticmethod
    def _api_kind(method: str, parts: list[str]) -> tuple[str, str | None]:
        if parts[:1] == ["v2"]:
            prefix, rest = "/v2", parts[1:]
        else:
            prefix, rest = "", parts
        if len(rest) >= 2 and rest[0] == "sandboxes":
            sandbox_id = rest[1].split("-")[0]
            tail = "".join("/" + p for p in rest[2:])
            return f"{method} {prefix}/sandboxes/{{sandboxID}}{tail}", sandbox_id
        return f"{method} {prefix}{''.join('/' + p for p in rest)}", None

    async def _api_route(
        self, request: web.Request, kind: str, sandbox_id: str | None, body: Any
    ) -> web.StreamResponse:
        method_path = kind.replace(" /v2/sandboxes/", " /sandboxes/")
        match method_path:
            case "POST /v2/sandboxes" | "POST /sandboxes":
                return self._create(body or {}, request.headers.get("Idempotency-Key"))
            case "GET /v2/sandboxes":
                return self._list_v2(request)
            case "GET /sandboxes":
                return self._list_v1(request)
        if sandbox_id is None:
            return _api_error(404, f"Not found: {request.method} {request.path}")
        sbx = self.sandboxes.get(sandbox_id)
        if sbx is None:
            return _api_error(
                404, f"Sandbox {orjson.dumps(sandbox_id).decode()} doesn't exist or you don't have access to it"
            )
        body = body or {}
        match method_path:
            case "GET /sandboxes/{sandboxID}":
                return _json(self._detail(sbx))
            case "DELETE /sandboxes/{sandboxID}":
                await self._kill(sbx)
                return web.Response(status=204)
            case "POST /sandboxes/{sandboxID}/timeout":
                return self._set_timeout(sbx, int(body["timeout"]))
            case "POST /sandboxes/{sandboxID}/refreshes":
                return self._refresh(sbx, int(body.get("duration", 60)))
            case "POST /sandboxes/{sandboxID}/pause":
                if not sbx.running:
                    return _api_error(409, f"Error pausing sandbox - sandbox '{sbx.sandbox_id}' is already paused")
                await self._pause(sbx, memory=body.get("memory", True) is not False)
                return web.Response(status=204)
            case "POST /sandboxes/{sandboxID}/resume":
                if sbx.running:
                    return _api_error(409, f"Sandbox {sbx.sandbox_id} is already running")
                await self._resume(sbx, int(body.get("timeout", sbx.timeout)))
                return _json(self._sandbox_json(sbx), 201)
            case "POST /sandboxes/{sandboxID}/connect":
                return await self._connect(sbx, body)
            case "GET /sandboxes/{sandboxID}/metrics":
                return _json([])
            case "PUT /sandboxes/{sandboxID}/network":
                sbx.network = dict(body)
                return web.Response(status=204)
        return _api_error(404, f"Not found: {request.method} {request.path}")

    def _sandbox_json(self, sbx: FakeSandbox) -> dict[str, Any]:
        """The API's `Sandbox`: what create, connect and resume return."""
        return {
            "templateID": sbx.template,
            "alias": sbx.template,
            "sandboxID": sbx.sandbox_id,
            "clientID": CLIENT_ID,
            "envdVersion": self.envd_version,
            "envdAccessToken": sbx.access_token,
            "trafficAccessToken": None,
            "domain": None,
        }

    def _listed_json(self, sbx: FakeSandbox) -> dict[str, Any]:
        """The API's `ListedSandbox`."""
        return {
            "templateID": sbx.template,
            "alias": sbx.template,
            "sandboxID": sbx.sandbox_id,
            "clientID": CLIENT_ID,
            "startedAt": _rfc3339(sbx.started_at),
            "endAt": _rfc3339(sbx.paused_at if sbx.paused_at is not None else sbx.end_at),
            "cpuCount": self.cpu_count,
            "memoryMB": self.memory_mb,
            "diskSizeMB": self.disk_size_mb,
            "state": "paused" if sbx.state == "paused" else "running",
            "envdVersion": self.envd_version,
            "metadata": dict(sbx.metadata),
        }

    def _detail(self, sbx: FakeSandbox) -> dict[str, Any]:
        """The API's `SandboxDetail`: what get_info returns."""
        detail = self._listed_json(sbx)
        detail.update(
            envdAccessToken=sbx.access_token,
            allowInternetAccess=sbx.allow_internet_access,
            domain=None,
            lifecycle={"autoResume": sbx.auto_resume, "onTimeout": "pause" if sbx.auto_pause else "kill"},
        )
        if sbx.network is not None:
            detail["network"] = sbx.network
        if sbx.state == "paused":
            detail["pauseMode"] = "full"
        return detail

    def _create(self, body: dict[str, Any], idempotency_key: str | None) -> web.Response:
        if idempotency_key and idempotency_key in self._idempotency:
            existing = self.sandboxes.get(self._idempotency[idempotency_key])
            if existing is not None:
                return _json(self._sandbox_json(existing), 201)
        template = str(body["templateID"])
        if self.templates is not None and template not in self.templates:
            return _api_error(404, f"template '{template}' not found")
        timeout = int(body.get("timeout", 300))
        if timeout < 0 or timeout > MAX_TIMEOUT:
            return _api_error(400, f"Timeout must be between 0 and {MAX_TIMEOUT} seconds")
        metadata = {str(k): str(v) for k, v in (body.get("metadata") or {}).items()}
        envs = {str(k): str(v) for k, v in (body.get("envVars") or {}).items()}
        auto_resume = body.get("autoResume") or {}
        network = body.get("network")
        if body.get("allow_internet_access") is False:
            network = {**(network or {}), "denyOut": ["0.0.0.0/0"]}
        sandbox_id = "i" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(19))
        path = self.root / sandbox_id
        home = path / "home" / DEFAULT_USER
        uid, gid, lock = self._allocate_uid()
        # Start times order the list: strictly increasing, so that order is the order of creation.
        now = max(_now(), self._last_start + timedelta(microseconds=1))
        self._last_start = now
        sbx = FakeSandbox(
            sandbox_id=sandbox_id,
            template=template,
            metadata=metadata,
            envs=envs,
            allow_internet_access=body.get("allow_internet_access"),
            timeout=timeout,
            auto_pause=bool(body.get("autoPause", False)),
            auto_pause_memory=body.get("autoPauseMemory", True) is not False,
            auto_resume=bool(auto_resume.get("enabled", False)) if isinstance(auto_resume, dict) else False,
            path=path,
            home=home,
            uid=uid,
            gid=gid,
            access_token=secrets.token_urlsafe(24),
            started_at=now,
            end_at=now + timedelta(seconds=timeout),
            network=network,
            _uid_lock=lock,
        )
        try:
            home.mkdir(parents=True)
            for d in (path, path / "home", home):
                os.chmod(d, 0o711 if d != home else 0o700)
                if self.as_root:
                    os.chown(d, uid, gid)
        except OSError:
            self._release_uid(sbx)
            raise
        # envd's environment: E2B_SANDBOX from its start, the MMDS ids from /init, then the create call's envVars
        # (which cannot override them).
        sbx.env_vars = {
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": sandbox_id,
            "E2B_TEMPLATE_ID": template,
            "E2B_TEAM_ID": self.team_id,
        }
        for key, value in envs.items():
            sbx.env_vars.setdefault(key, value)
        self.sandboxes[sandbox_id] = sbx
        if idempotency_key:
            self._idempotency[idempotency_key] = sandbox_id
        self._schedule_expiry(sbx)
        return _json(self._sandbox_json(sbx), 201)

    def _list_v1(self, request: web.Request) -> web.Response:
        try:
            wanted = self._metadata_filter(request.query.get("metadata") or request.query.get("query"))
        except ValueError:
            return _api_error(400, "Error parsing metadata")
        found = [
            s for s in self.sandboxes.values() if s.running and all(s.metadata.get(k) == v for k, v in wanted.items())
        ]
        found.sort(key=lambda s: (s.started_at, s.sandbox_id), reverse=True)
        return _json([self._listed_json(s) for s in found])

    @staticmethod
    def _metadata_filter(raw: str | None) -> dict[str, str]:
        """The list endpoints' `metadata` query, as the API parses it: the (already query-decoded) value is
        unescaped, split into `key=value` pairs on `&`, and each key and value unescaped once more."""
        if not raw:
            return {}
        wanted = {}
        for part in unquote_plus(raw).split("&"):
            key, sep, value = part.partition("=")
            if not sep or "=" in value:
                raise ValueError(part)
            wanted[unquote_plus(key)] = unquote_plus(value)
        return wanted

    def _list_v2(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            wanted = self._metadata_filter(query.get("metadata"))
        except ValueError:
            return _api_error(400, "Error parsing metadata")
        states = {s for raw in query.getall("state", []) for s in raw.split(",") if s} or {"running", "paused"}
        if not states <= {"running", "paused"}:
            return _api_error(400, f"Invalid state: {sorted(states - {'running', 'paused'})}")
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return _api_error(400, "Invalid limit")
        if limit < 1 or limit > 100:
            return _api_error(400, "limit must be between 1 and 100")
        started_after: datetime | None = None
        if query.get("startedAfter"):
            try:
                started_after = datetime.fromisoformat(query["startedAfter"].replace("Z", "+00:00"))
            except ValueError:
                return _api_error(400, "Invalid startedAfter")
        template = query.get("template")
        found = [
            s
            for s in self.sandboxes.values()
            if s.state in states
            and all(s.metadata.get(k) == v for k, v in wanted.items())
            and (started_after is None or s.started_at >= started_after)
            and (template is None or s.template == template)
        ]
        descending = query.get("order", "desc") != "asc"
        found.sort(key=lambda s: (s.started_at, s.sandbox_id), reverse=descending)
        token = query.get("nextToken")
        if token:
            try:
                at, _, after_id = base64.urlsafe_b64decode(token.encode()).decode().partition("__")
                cursor = (datetime.fromisoformat(at), after_id)
            except ValueError:
                return _api_error(400, "Invalid next token")
            found = [
                s
                for s in found
                if ((s.started_at, s.sandbox_id) < cursor if descending else (s.started_at, s.sandbox_id) > cursor)
            ]
        page, more = found[:limit], len(found) > limit
        headers = {"X-Total-Running": str(sum(1 for s in self.sandboxes.values() if s.running))}
        if more:
            last = page[-1]
            headers["X-Next-Token"] = base64.urlsafe_b64encode(
                f"{last.started_at.isoformat()}__{last.sandbox_id}".encode()
            ).decode()
        return _json([self._listed_json(s) for s in page], headers=headers)

    def _set_timeout(self, sbx: FakeSandbox, timeout: int) -> web.Response:
        if not sbx.running:
            return _api_error(404, f"Sandbox \"{sbx.sandbox_id}\" doesn't exist or you don't have access to it")
        if timeout < 0 or timeout > MAX_TIMEOUT:
            return _api_error(400, f"Timeout must be between 0 and {MAX_TIMEOUT} seconds")
        sbx.timeout = timeout
        sbx.end_at = _now() + timedelta(seconds=timeout)
        self._schedule_expiry(sbx)
        return web.Response(status=204)

    def _refresh(self, sbx: FakeSandbox, duration: int) -> web.Response:
        if not sbx.running:
            return _api_error(404, f"Sandbox \"{sbx.sandbox_id}\" doesn't exist or you don't have access to it")
        end = _now() + timedelta(seconds=min(duration, 3600))
        if end > sbx.end_at:
            sbx.end_at = end
            self._schedule_expiry(sbx)
        return web.Response(status=204)

    async def _connect(self, sbx: FakeSandbox, body: dict[str, Any]) -> web.Response:
        timeout = int(body.get("timeout", 300))
        if timeout < 0 or timeout > MAX_TIMEOUT:
            return _api_error(400, f"Timeout must be between 0 and {MAX_TIMEOUT} seconds")
        if sbx.running:
            end = _now() + timedelta(seconds=timeout)
            if end > sbx.end_at:  # a running sandbox's timeout only ever grows on connect
                sbx.end_at = end
                self._schedule_expiry(sbx)
            return _json(self._sandbox_json(sbx), 200)
        if body.get("memory") is False:
            await self._kill_processes(sbx)  # a cold boot from the filesystem: nothing kept running
        await self._resume(sbx, timeout)
        return _json(self._sandbox_json(sbx), 201)

    # --- sandbox lifecycle ---------------------------------------------------------------------

    def _allocate_uid(self) -> tuple[int, int, int | None]:
        """A uid no other sandbox (of this or another fake on this host: a lock file each) nor any live process
        uses. Without root, the current user."""
        if not self.as_root:
            return os.getuid(), os.getgid(), None
        lock_dir = Path(tempfile.gettempdir()) / "fake-e2b-uids"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        for _ in range(len(UIDS)):
            uid = next(self._uids)
            fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if _pids_of_uid(uid):
                os.close(fd)
                continue
            return uid, uid, fd
        raise RuntimeError(f"no free sandbox uid in {UIDS.start}..{UIDS.stop - 1}")

    @staticmethod
    def _release_uid(sbx: FakeSandbox) -> None:
        if sbx._uid_lock is not None:
            os.close(sbx._uid_lock)
            sbx._uid_lock = None

    def _schedule_expiry(self, sbx: FakeSandbox) -> None:
        if sbx._expiry is not None:
            sbx._expiry.cancel()
            sbx._expiry = None
        if sbx.running:
            delay = max(0.0, (sbx.end_at - _now()).total_seconds())
            sbx._expiry = asyncio.get_running_loop().call_later(delay, lambda: self._spawn(self._expire(sbx)))

    async def _expire(self, sbx: FakeSandbox) -> None:
        if not sbx.running:
            return
        if sbx.auto_pause:
            await self._pause(sbx, memory=sbx.auto_pause_memory)
        else:
            await self._kill(sbx)

    def _pids(self, sbx: FakeSandbox) -> list[int]:
        if self.as_root:
            return _pids_of_uid(sbx.uid)
        return _pids_of_sandbox(sbx.sandbox_id, [p.pid for p in sbx.processes.values()])

    async def _signal_all(self, sbx: FakeSandbox, sig: int, *, until_gone: bool = False) -> None:
        """Signal every process of the sandbox, again for ones forked meanwhile; with `until_gone`, until none
        is left alive."""
        seen: set[int] = set()
        for _ in range(200):
            pids = [pid for pid in self._pids(sbx) if until_gone or pid not in seen]
            if not pids:
                return
            for pid in pids:
                _signal(pid, sig)
            seen.update(pids)
            await asyncio.sleep(0.005)

    def _abort_streams(self, sbx: FakeSandbox) -> None:
        """The edge proxy's end of every in-flight stream when the sandbox goes away under it."""
        for sub in list(sbx.streams):
            sub.abort(f"the connection to sandbox {sbx.sandbox_id} ended before the stream completed")

    async def _kill_processes(self, sbx: FakeSandbox) -> None:
        await self._signal_all(sbx, signal.SIGKILL, until_gone=True)
        procs = [p for p in sbx.processes.values() if p.supervisor is not None]
        waits = [p.supervisor for p in procs if p.supervisor is not None]
        if waits:
            await asyncio.wait(waits, timeout=5)

    async def _pause(self, sbx: FakeSandbox, *, memory: bool) -> None:
        sbx.state = "paused"
        sbx.paused_at = _now()
        if sbx._expiry is not None:
            sbx._expiry.cancel()
            sbx._expiry = None
        self._abort_streams(sbx)
        for proc in sbx.processes.values():
            proc.freeze()
        if memory:
            await self._signal_all(sbx, signal.SIGSTOP)
            for _ in range(400):  # a signalled process stops when it next runs: wait for that (2 s at most)
                if all(_proc_status(str(pid)).get("State", "T")[:1] in "Tt" for pid in self._pids(sbx)):
                    break
                await asyncio.sleep(0.005)
        else:
            await self._kill_processes(sbx)

    async def _resume(self, sbx: FakeSandbox, seconds: int) -> None:
        await self._signal_all(sbx, signal.SIGCONT)
        sbx.state = "running"
        sbx.paused_at = None
        sbx.timeout = seconds
        sbx.end_at = _now() + timedelta(seconds=seconds)
        for proc in sbx.processes.values():
            proc.thaw()
        self._schedule_expiry(sbx)

    async def _kill(self, sbx: FakeSandbox) -> None:
        if sbx.state == "killed":
            return
        sbx.state = "killed"
        self.sandboxes.pop(sbx.sandbox_id, None)
        self.killed[sbx.sandbox_id] = sbx
        if sbx._expiry is not None:
            sbx._expiry.cancel()
            sbx._expiry = None
        self._abort_streams(sbx)
        await self._kill_processes(sbx)  # SIGKILL ends stopped (paused) processes too
        await asyncio.to_thread(_rmtree, sbx.path)
        self._release_uid(sbx)

    # --- envd: routing, auth, the edge proxy's answers -----------------------------------------

    def _envd_kind(self, request: web.Request) -> str:
        path = request.path
        if path.startswith(("/process.Process/", "/filesystem.Filesystem/")):
            return path[1:]
        return f"{request.method} {path}"

    async def _envd(self, request: web.Request, sandbox_header: str) -> web.StreamResponse:
        sandbox_id = sandbox_header.split("-")[0]
        kind = self._envd_kind(request)
        call = Call(request.method, request.path, kind, sandbox_id, time.time())
        self.calls.append(call)
        sbx = self.sandboxes.get(sandbox_id)
        port = request.headers.get("E2b-Sandbox-Port", str(ENVD_PORT))
        if sbx is None:
            call.status = 502
            return _json({"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}, 502)
        if sbx.state == "paused" and sbx.auto_resume:
            await self._resume(sbx, sbx.timeout)  # the proxy resumes a sandbox whose policy lets traffic wake it
        if sbx.state == "paused":
            if self.paused_envd_response == "paused":
                call.status = 409
                return _json(
                    {"sandboxId": sandbox_id, "message": "The sandbox is paused", "code": 409, "canAutoResume": False},
                    409,
                )
            call.status = 502
            return _json({"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}, 502)
        if port != str(ENVD_PORT):
            call.status = 502
            return _json(
                {
                    "sandboxId": sandbox_id,
                    "message": "The sandbox is running but port is not open",
                    "port": int(port) if port.isdigit() else port,
                    "code": 502,
                },
                502,
            )
        # envd's own auth: the access token the control plane handed out, except for /health and /files (which
        # accept the token or a signature; the fake only takes the token).
        open_path = f"{request.method}{request.path}" in ("GET/health", "POST/init")
        token = request.headers.get("X-Access-Token")
        if not open_path and not (token and secrets.compare_digest(token, sbx.access_token)):
            call.status = 401
            if request.path == "/files":
                message = (
                    "access token present in header but does not match"
                    if token
                    else "missing signature query parameter"
                )
            else:
                message = "unauthorized access, please provide a valid access token or method signing if supported"
            return _envd_error(401, message)
        failure = self._take_failure(call)
        is_rpc = call.rpc is not None
        if failure is not None:
            return await self._fail_envd(request, call, failure, is_rpc)
        if is_rpc:
            return await self._rpc(request, call, sbx)
        response = await self._envd_http(request, call, sbx)
        call.status = response.status
        return response

    async def _fail_envd(self, request: web.Request, call: Call, failure: Failure, is_rpc: bool) -> web.StreamResponse:
        if not is_rpc:
            call.status = failure.status
            return _envd_error(failure.status, failure.message)
        code = _STATUS_CONNECT_CODE.get(failure.status, "unknown")
        call.error = code
        error = _RpcError(code, failure.message)
        if call.kind in _STREAMS:
            codec = self._codec(request, stream=True)
            resp = web.StreamResponse(status=200, headers={"Content-Type": f"application/connect+{codec}"})
            await resp.prepare(request)
            await resp.write(_end_stream(error))
            return resp
        call.status = CONNECT_HTTP_STATUS[code]
        return _json({"code": code, "message": failure.message}, call.status)

    async def _envd_http(self, request: web.Request, call: Call, sbx: FakeSandbox) -> web.StreamResponse:
        match f"{request.method} {request.path}":
            case "GET /health":
                return web.Response(status=204, headers={"Cache-Control": "no-store"})
            case "GET /files":
                return await self._download(request, sbx)
            case "POST /files":
                return await self._upload(request, sbx)
            case "GET /envs":
                return _json(sbx.env_vars, headers={"Cache-Control": "no-store"})
            case "POST /init":
                body = orjson.loads(await request.read() or b"{}")
                for key, value in (body.get("envVars") or {}).items():
                    sbx.env_vars.setdefault(str(key), str(value))
                return web.Response(status=204, headers={"Cache-Control": "no-store"})
            case "GET /metrics":
                usage = shutil.disk_usage(sbx.path)
                return _json(
                    {
                        "ts": int(time.time()),
                        "cpu_count": self.cpu_count,
                        "cpu_used_pct": 0.0,
                        "mem_total": self.memory_mb << 20,
                        "mem_used": 0,
                        "disk_total": usage.total,
                        "disk_used": usage.used,
                    }
                )
        return _envd_error(404, f"not found: {request.method} {request.path}")

    # --- envd: users and paths -----------------------------------------------------------------

    def _user(self, sbx: FakeSandbox, username: str | None) -> str:
        """envd's users are `user` (the default) and `root`; both are the sandbox's unprivileged uid here."""
        name = username or DEFAULT_USER
        if name not in (DEFAULT_USER, "root"):
            raise LookupError(f"error looking up user '{name}': user: unknown user {name}")
        return name

    @staticmethod
    def _resolve(sbx: FakeSandbox, path: str) -> str:
        """envd's ExpandAndResolve: `~` is the home, relative paths are the home's, symlinks resolved if they
        resolve."""
        if path.startswith("~"):
            path = str(sbx.home) + path[1:]
        if not os.path.isabs(path):
            path = os.path.join(sbx.home, path)
        resolved = os.path.realpath(path)
        return resolved if os.path.lexists(resolved) else os.path.normpath(path)

    def _allowed(self, sbx: FakeSandbox, path: str, access: Literal["read", "stat", "write"]) -> bool:
        """The fake's boundary (envd itself runs as root): writes only inside the sandbox's directory; reads also
        of this host's world-readable files, never of other sandboxes'."""
        real = os.path.realpath(path)
        own = os.path.realpath(sbx.path)
        if _within(real, own):
            return access != "write" or real != own
        if access == "write" or _within(real, str(self.root)):
            return False
        if access == "stat":
            return True
        try:
            st = os.stat(real)
        except OSError:
            return True  # the caller reports it missing
        needed = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
        return st.st_mode & needed == needed

    def _owner(self, sbx: FakeSandbox, uid: int, gid: int) -> tuple[str, str]:
        if uid == sbx.uid and gid == sbx.gid:
            return DEFAULT_USER, DEFAULT_USER
        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:
            owner = str(uid)
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        return owner, group

    def _entry(self, sbx: FakeSandbox, path: str, name: str | None = None) -> filesystem_pb.EntryInfo:
        """envd's EntryInfo of `path` (lstat: a symlink is marked, its type is its target's)."""
        st = os.lstat(path)
        entry = filesystem_pb.EntryInfo(name=name or os.path.basename(path.rstrip("/")) or "/", path=path)
        target_st = st
        if stat.S_ISLNK(st.st_mode):
            entry.is_symlink = True
            entry.symlink_target = os.path.realpath(path)
            with contextlib.suppress(OSError):
                target_st = os.stat(path)
        if stat.S_ISDIR(target_st.st_mode):
            entry.type = filesystem_pb.FileType.DIRECTORY
        elif stat.S_ISREG(target_st.st_mode):
            entry.type = filesystem_pb.FileType.FILE
        elif stat.S_ISLNK(target_st.st_mode):
            entry.type = filesystem_pb.FileType.SYMLINK
        entry.size = st.st_size
        entry.mode = stat.S_IMODE(st.st_mode) & 0o777
        entry.permissions = _go_mode(st)
        entry.owner, entry.group = self._owner(sbx, st.st_uid, st.st_gid)
        entry.modified_time = Timestamp.from_datetime(datetime.fromtimestamp(st.st_mtime, UTC))
        return entry

    # --- envd: /files --------------------------------------------------------------------------

    async def _download(self, request: web.Request, sbx: FakeSandbox) -> web.StreamResponse:
        try:
            self._user(sbx, request.query.get("username"))
        except LookupError as e:
            return _envd_error(401, str(e))
        path = self._resolve(sbx, request.query.get("path", ""))
        if not self._allowed(sbx, path, "read"):
            return _envd_error(500, f"error opening file '{path}': {_go_error('open', path, errno.EACCES)}")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _envd_error(404, f"path '{path}' does not exist")
        except OSError as e:
            return _envd_error(500, f"error checking if path exists '{path}': {_go_error('stat', path, e.errno or 0)}")
        if stat.S_ISDIR(st.st_mode):
            return _envd_error(400, f"path '{path}' is a directory")
        accept = request.headers.get("Accept-Encoding", "")
        use_gzip = any(
            part.split(";")[0].strip().lower() == "gzip" and "q=0" not in part.replace(" ", "")
            for part in accept.split(",")
        ) and not request.headers.get("Range")
        headers = {"Vary": "Accept-Encoding", "Content-Type": "application/octet-stream"}
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=200, headers=headers)
        if not use_gzip:
            resp.content_length = st.st_size
        await resp.prepare(request)
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31) if use_gzip else None
        offset = 0
        while offset < st.st_size:
            chunk = await asyncio.to_thread(_read_chunk, Path(path), offset, min(1 << 20, st.st_size - offset))
            if not chunk:
                break
            offset += len(chunk)
            if compressor is not None:
                chunk = await asyncio.to_thread(compressor.compress, chunk)
            if chunk:
                await resp.write(chunk)
        if compressor is not None:
            await resp.write(compressor.flush())
        await resp.write_eof()
        return resp

    async def _upload(self, request: web.Request, sbx: FakeSandbox) -> web.Response:
        try:
            self._user(sbx, request.query.get("username"))
        except LookupError as e:
            return _envd_error(401, str(e))
        owner = (sbx.uid, sbx.gid) if self.as_root else (None, None)
        media = request.content_type
        written: list[dict[str, str]] = []
        if media == "application/octet-stream":
            if "path" not in request.query:
                return _envd_error(400, "path query parameter is required for raw body upload")
            encoding = request.headers.get("Content-Encoding", "").partition(";")[0].strip().lower()
            if encoding not in ("", "identity", "gzip"):
                return _envd_error(
                    400,
                    f"error decompressing request body: unsupported Content-Encoding: {encoding}, supported: [gzip]",
                )
            path = self._resolve(sbx, request.query["path"])

            async def raw_chunks() -> Any:
                # aiohttp inflates a gzip Content-Encoding itself, as envd does.
                async for chunk in request.content.iter_chunked(1 << 20):
                    yield chunk

            error = await self._store(sbx, path, raw_chunks(), owner)
            if error is not None:
                return error
            written.append({"name": os.path.basename(path), "type": "file", "path": path})
        elif media.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                field_name, filename = _form_field(part.headers.get("Content-Disposition", ""))
                if field_name != "file":
                    continue
                raw_path = request.query.get("path") or filename or ""
                path = self._resolve(sbx, raw_path)
                if any(w["path"] == path for w in written):
                    return _envd_error(
                        400,
                        f"you cannot upload multiple files to the same path '{path}' in one upload request, "
                        "only the first specified file was uploaded",
                    )

                async def part_chunks(part: BodyPartReader = part) -> Any:
                    while chunk := await part.read_chunk(1 << 20):
                        yield chunk

                error = await self._store(sbx, path, part_chunks(), owner)
                if error is not None:
                    return error
                written.append({"name": os.path.basename(path), "type": "file", "path": path})
        else:
            return _envd_error(
                400,
                f"unsupported content type: {request.headers.get('Content-Type', '')}, expected multipart/form-data or "
                "application/octet-stream",
            )
        return _json(written)

    def _open_for_write(self, sbx: FakeSandbox, path: str, owner: tuple[int | None, int | None]) -> int | web.Response:
        """envd's processFile up to the write: parents made (owned by the user), the file truncated and owned by
        the user. The open fd, or the error response."""
        uid, gid = owner
        target = Path(path)
        if not self._allowed(sbx, path, "write"):
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                return _envd_error(500, f"error ensuring directories: {_go_error('mkdir', parent, errno.EACCES)}")
            return _envd_error(500, f"error opening file: {_go_error('open', path, errno.EACCES)}")
        try:
            _ensure_dirs(target.parent, uid, gid)
        except OSError as e:
            return _envd_error(
                500, f"error ensuring directories: {_go_error('mkdir', str(target.parent), e.errno or 0)}"
            )
        if target.is_dir():
            return _envd_error(400, f"path is a directory: {path}")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                return _envd_error(507, f"not enough inodes available: {_go_error('open', path, e.errno)}")
            return _envd_error(500, f"error opening file: {_go_error('open', path, e.errno or 0)}")
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
        return fd

    async def _store(
        self, sbx: FakeSandbox, path: str, chunks: Any, owner: tuple[int | None, int | None]
    ) -> web.Response | None:
        """Write the upload to `path` as envd does; None, or the error response."""
        opened = await asyncio.to_thread(self._open_for_write, sbx, path, owner)
        if isinstance(opened, web.Response):
            return opened
        try:
            batch: list[bytes] = []
            size = 0
            async for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if size >= 4 << 20:
                    await asyncio.to_thread(_write_all, opened, batch)
                    batch, size = [], 0
            if batch:
                await asyncio.to_thread(_write_all, opened, batch)
        except zlib.error as e:
            return _envd_error(400, f"error decompressing request body: {e}")
        except OSError as e:
            if e.errno == errno.ENOSPC:
                return _envd_error(507, "not enough disk space available")
            return _envd_error(500, f"error writing file: {_go_error('write', path, e.errno or 0)}")
        finally:
            os.close(opened)
        return None

    # --- envd: Connect RPC ---------------------------------------------------------------------

    @staticmethod
    def _codec(request: web.Request, *, stream: bool) -> str:
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        prefix = "application/connect+" if stream else "application/"
        name = content_type[len(prefix) :] if content_type.startswith(prefix) else content_type
        return "proto" if name == "proto" else "json"

    async def _rpc(self, request: web.Request, call: Call, sbx: FakeSandbox) -> web.StreamResponse:
        name = call.kind
        handler = _UNARY.get(name)
        file_handler = _FILES.get(name)
        stream = _STREAMS.get(name)
        if name in _NOT_IMPLEMENTED:
            error = _RpcError("unimplemented", f"{name} is not implemented by the fake envd")
            call.error = error.code
            if name == "filesystem.Filesystem/WatchDir":
                resp = web.StreamResponse(status=200, headers={"Content-Type": "application/connect+json"})
                await resp.prepare(request)
                await resp.write(_end_stream(error))
                return resp
            call.status = CONNECT_HTTP_STATUS[error.code]
            return _json({"code": error.code, "message": error.message}, call.status)
        if handler is None and file_handler is None and stream is None and name != "process.Process/StreamInput":
            call.status = 404
            return web.Response(status=404, text="404 page not found")
        if request.method != "POST":
            call.status = 405
            return web.Response(status=405, headers={"Allow": "POST"})
        timeout_ms: int | None = None
        header = request.headers.get("Connect-Timeout-Ms")
        if header:
            with contextlib.suppress(ValueError):
                timeout_ms = int(header)
        if stream is not None:
            return await self._server_stream(request, call, sbx, stream, timeout_ms)
        if handler is None and file_handler is None:
            return await self._stream_input(request, call, sbx)
        codec = self._codec(request, stream=False)
        request_cls = handler[0] if handler is not None else file_handler[0] if file_handler is not None else Message
        try:
            message = _decode(request_cls, await request.read(), codec)
            user = _basic_user(request.headers.get("Authorization", ""))
            try:
                self._user(sbx, user)
            except LookupError as e:
                raise _RpcError("unauthenticated", str(e)) from e
            if handler is not None:
                reply = await handler[1](self, sbx, message)
            else:
                assert file_handler is not None
                reply = await asyncio.to_thread(file_handler[1], self, sbx, message)
        except _RpcError as e:
            call.error = e.code
            call.status = CONNECT_HTTP_STATUS[e.code]
            return _json({"code": e.code, "message": e.message}, call.status)
        call.body = message.to_json()
        return web.Response(body=_encode(reply, codec), content_type=f"application/{codec}")

    async def _server_stream(
        self, request: web.Request, call: Call, sbx: FakeSandbox, stream: _StreamSpec, timeout_ms: int | None
    ) -> web.StreamResponse:
        codec = self._codec(request, stream=True)
        request_cls, open_stream, response_cls = stream
        resp = web.StreamResponse(status=200, headers={"Content-Type": f"application/connect+{codec}"})
        sub: _Subscriber | None = None
        proc: _Process | None = None
        try:
            raw = await request.read()
            if len(raw) < 5:
                raise _RpcError("invalid_argument", "protocol error: incomplete envelope")
            message = _decode(request_cls, raw[5 : 5 + struct.unpack(">I", raw[1:5])[0]], codec)
            call.body = message.to_json()
            user = _basic_user(request.headers.get("Authorization", ""))
            try:
                self._user(sbx, user)
            except LookupError as e:
                raise _RpcError("unauthenticated", str(e)) from e
            sub = _Subscriber()
            proc = await open_stream(self, sbx, message, sub, timeout_ms)
            sbx.streams.add(sub)
            await resp.prepare(request)
            start = _event("start", process_pb.ProcessEvent.StartEvent(pid=proc.pid))
            await resp.write(_envelope(0, _encode(response_cls(event=start), codec)))
            if proc.end is not None and all(item is not proc.end for item in sub.items):
                sub.items.append(proc.end)  # it ended while this stream attached
            deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
            interval: float | None = None
            with contextlib.suppress(ValueError):
                interval = float(request.headers.get("Keepalive-Ping-Interval", "")) or None
            while True:
                waits = [t for t in (interval, deadline - time.monotonic() if deadline else None) if t is not None]
                event = await sub.get(max(0.0, min(waits)) if waits else None)
                if event is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise _RpcError("deadline_exceeded", "context deadline exceeded")
                    keepalive = _event("keepalive", process_pb.ProcessEvent.KeepAlive())
                    await resp.write(_envelope(0, _encode(response_cls(event=keepalive), codec)))
                    continue
                await resp.write(_envelope(0, _encode(response_cls(event=event), codec)))
                if event is proc.end:
                    break
            await resp.write(_end_stream(None))
        except _RpcError as e:
            call.error = e.code
            with contextlib.suppress(ConnectionResetError):
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(_end_stream(e))
        except _Aborted as e:
            call.error = "unavailable"  # what the edge proxy ends a stream with when the sandbox goes away
            with contextlib.suppress(ConnectionResetError):
                await resp.write(_end_stream(_RpcError("unavailable", str(e))))
        except (ConnectionResetError, asyncio.CancelledError):
            call.error = "canceled"  # the client went away: envd lets the process run on
            raise
        finally:
            if sub is not None:
                sub.close()
                sbx.streams.discard(sub)
                if proc is not None and sub in proc.subscribers:
                    proc.subscribers.remove(sub)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    async def _stream_input(self, request: web.Request, call: Call, sbx: FakeSandbox) -> web.StreamResponse:
        """process.Process/StreamInput: a client stream of input events for one process."""
        codec = self._codec(request, stream=True)
        resp = web.StreamResponse(status=200, headers={"Content-Type": f"application/connect+{codec}"})
        proc: _Process | None = None
        error: _RpcError | None = None
        try:
            while True:
                try:
                    head = await request.content.readexactly(5)
                except asyncio.IncompleteReadError:
                    break
                flags, size = struct.unpack(">BI", head)
                data = await request.content.readexactly(size)
                if flags & 0b10:
                    break
                message = _decode(process_pb.StreamInputRequest, data, codec)
                match message.event:
                    case Oneof(field="start", value=process_pb.StreamInputRequest.StartEvent() as start):
                        proc = self._find_process(sbx, start.process)
                    case Oneof(field="data", value=process_pb.StreamInputRequest.DataEvent() as event):
                        if proc is None:
                            raise _RpcError("failed_precondition", "no process selected")
                        await self._write_input(proc, event.input)
        except _RpcError as e:
            error = e
            call.error = e.code
        await resp.prepare(request)
        if error is None:
            await resp.write(_envelope(0, _encode(process_pb.StreamInputResponse(), codec)))
        await resp.write(_end_stream(error))
        return resp

    # --- envd: process.Process -----------------------------------------------------------------

    @staticmethod
    def _find_process(sbx: FakeSandbox, selector: process_pb.ProcessSelector | None) -> _Process:
        match selector.selector if selector is not None else None:
            case Oneof(field="pid", value=int() as pid):
                proc = sbx.processes.get(pid)
                if proc is None:
                    raise _RpcError("not_found", f"process with pid {pid} not found")
                return proc
            case Oneof(field="tag", value=tag):
                for proc in sbx.processes.values():
                    if proc.tag == tag:
                        return proc
                raise _RpcError("not_found", f"process with tag {tag} not found")
        raise _RpcError("unimplemented", f"invalid input type {type(selector).__name__}")

    def _cwd(self, sbx: FakeSandbox, config: process_pb.ProcessConfig) -> str:
        cwd = self._resolve(sbx, config.cwd if config.has_field("cwd") else "")
        if not os.path.exists(cwd):
            raise _RpcError("invalid_argument", f"cwd '{cwd}' does not exist")
        return cwd

    async def _start(
        self, sbx: FakeSandbox, req: process_pb.StartRequest, sub: _Subscriber, timeout_ms: int | None
    ) -> _Process:
        if req.pty is not None:
            raise _RpcError("unimplemented", "the fake envd does not implement PTYs")
        config = req.process or process_pb.ProcessConfig()
        cwd = self._cwd(sbx, config)
        # envd's environment for a process: its PATH, the user's, its own variables, then the call's.
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(sbx.home),
            "USER": DEFAULT_USER,
            "LOGNAME": DEFAULT_USER,
            **sbx.env_vars,
            **dict(config.envs),
        }
        stdin_wanted = req.stdin if req.has_field("stdin") else True
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        kwargs: dict[str, Any] = {}
        if self.as_root:
            kwargs.update(user=sbx.uid, group=sbx.gid, extra_groups=[])
        try:
            popen = await asyncio.create_subprocess_exec(
                config.cmd,
                *config.args,
                stdin=asyncio.subprocess.PIPE if stdin_wanted else asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                **kwargs,
            )
        except OSError as e:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            command = " ".join([config.cmd, *config.args])
            raise _RpcError("invalid_argument", f"error starting process '{command}': {e}") from e
        os.close(out_w)
        os.close(err_w)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        proc = _Process(sbx, popen, config, req.tag if req.has_field("tag") else None, out_r, err_r)
        proc.subscribers.append(sub)
        sbx.processes[proc.pid] = proc
        proc.set_timeout(timeout_ms / 1000 if timeout_ms else None)
        proc.supervisor = asyncio.ensure_future(proc.supervise())
        self._tasks.add(proc.supervisor)
        proc.supervisor.add_done_callback(self._tasks.discard)
        return proc

    async def _connect_process(
        self, sbx: FakeSandbox, req: process_pb.ConnectRequest, sub: _Subscriber, timeout_ms: int | None
    ) -> _Process:
        proc = self._find_process(sbx, req.process)
        proc.subscribers.append(sub)
        return proc

    async def _list_processes(self, sbx: FakeSandbox, req: process_pb.ListRequest) -> process_pb.ListResponse:
        return process_pb.ListResponse(
            processes=[
                process_pb.ProcessInfo(config=p.config, pid=p.pid, tag=p.tag)
                for p in sbx.processes.values()
                if p.end is None
            ]
        )

    async def _send_signal(self, sbx: FakeSandbox, req: process_pb.SendSignalRequest) -> process_pb.SendSignalResponse:
        proc = self._find_process(sbx, req.process)
        if req.signal == process_pb.Signal.SIGKILL:
            sig = signal.SIGKILL
        elif req.signal == process_pb.Signal.SIGTERM:
            sig = signal.SIGTERM
        else:
            raise _RpcError("unimplemented", f"invalid signal: {req.signal}")
        proc.output_cancelled = True  # envd's SendSignal stops forwarding output on SIGKILL/SIGTERM
        _signal(proc.pid, sig)  # to the process only, as envd does (not its group)
        return process_pb.SendSignalResponse()

    @staticmethod
    async def _write_input(proc: _Process, data: process_pb.ProcessInput | None) -> None:
        match data.input if data is not None else None:
            case Oneof(field="stdin", value=chunk):
                stdin = proc.popen.stdin
                if stdin is None or stdin.is_closing():
                    raise _RpcError("internal", "error writing to stdin: stdin not enabled or closed")
                try:
                    stdin.write(chunk)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError) as e:
                    raise _RpcError(
                        "internal", f"error writing to stdin: error writing to stdin of process '{proc.pid}': {e}"
                    ) from e
            case Oneof(field="pty"):
                raise _RpcError("internal", "error writing to tty: tty not assigned to process")
            case _:
                raise _RpcError("unimplemented", "invalid input type")

    async def _send_input(self, sbx: FakeSandbox, req: process_pb.SendInputRequest) -> process_pb.SendInputResponse:
        await self._write_input(self._find_process(sbx, req.process), req.input)
        return process_pb.SendInputResponse()

    async def _close_stdin(self, sbx: FakeSandbox, req: process_pb.CloseStdinRequest) -> process_pb.CloseStdinResponse:
        proc = self._find_process(sbx, req.process)
        if proc.popen.stdin is not None:
            proc.popen.stdin.close()
        return process_pb.CloseStdinResponse()

    async def _update(self, sbx: FakeSandbox, req: process_pb.UpdateRequest) -> process_pb.UpdateResponse:
        self._find_process(sbx, req.process)
        raise _RpcError("internal", "error resizing tty: tty not assigned to process")

    # --- envd: filesystem.Filesystem -----------------------------------------------------------

    def _denied(self, op: str, path: str, what: str) -> _RpcError:
        return _RpcError("internal", f"{what}: {_go_error(op, path, errno.EACCES)}")

    def _stat(self, sbx: FakeSandbox, req: filesystem_pb.StatRequest) -> filesystem_pb.StatResponse:
        path = self._resolve(sbx, req.path)
        if not self._allowed(sbx, path, "stat"):
            raise self._denied("lstat", path, "error getting file info")
        try:
            return filesystem_pb.StatResponse(entry=self._entry(sbx, path))
        except FileNotFoundError as e:
            raise _RpcError("not_found", f"file not found: {_go_error('lstat', path, errno.ENOENT)}") from e
        except OSError as e:
            raise _RpcError("internal", f"error getting file info: {_go_error('lstat', path, e.errno or 0)}") from e

    def _make_dir(self, sbx: FakeSandbox, req: filesystem_pb.MakeDirRequest) -> filesystem_pb.MakeDirResponse:
        path = self._resolve(sbx, req.path)
        if os.path.isdir(path):
            raise _RpcError("already_exists", f"directory already exists: {path}")
        if os.path.lexists(path):
            raise _RpcError("invalid_argument", f"path already exists but it is not a directory: {path}")
        if not self._allowed(sbx, path, "write"):
            raise _RpcError("internal", _go_error("mkdir", path, errno.EACCES))
        uid, gid = (sbx.uid, sbx.gid) if self.as_root else (None, None)
        try:
            _ensure_dirs(Path(path), uid, gid)
        except OSError as e:
            raise _RpcError("internal", _go_error("mkdir", path, e.errno or 0)) from e
        entry = filesystem_pb.EntryInfo(name=os.path.basename(path), type=filesystem_pb.FileType.DIRECTORY, path=path)
        return filesystem_pb.MakeDirResponse(entry=entry)

    def _move(self, sbx: FakeSandbox, req: filesystem_pb.MoveRequest) -> filesystem_pb.MoveResponse:
        source, destination = self._resolve(sbx, req.source), self._resolve(sbx, req.destination)
        if not self._allowed(sbx, source, "write") or not self._allowed(sbx, destination, "write"):
            raise _RpcError("internal", f"error renaming: rename {source} {destination}: permission denied")
        uid, gid = (sbx.uid, sbx.gid) if self.as_root else (None, None)
        try:
            _ensure_dirs(Path(destination).parent, uid, gid)
            os.rename(source, destination)
        except FileNotFoundError as e:
            raise _RpcError(
                "not_found", f"source file not found: rename {source} {destination}: no such file or directory"
            ) from e
        except OSError as e:
            raise _RpcError(
                "internal", f"error renaming: rename {source} {destination}: {os.strerror(e.errno or 0).lower()}"
            ) from e
        return filesystem_pb.MoveResponse(entry=self._entry(sbx, destination))

    def _list_dir(self, sbx: FakeSandbox, req: filesystem_pb.ListDirRequest) -> filesystem_pb.ListDirResponse:
        depth = req.depth or 1
        requested = req.path
        if requested.startswith("~"):
            requested = str(sbx.home) + requested[1:]
        if not os.path.isabs(requested):
            requested = os.path.join(sbx.home, requested)
        requested = os.path.normpath(requested)
        if not os.path.lexists(requested):
            raise _RpcError("not_found", f"path not found: {_go_error('lstat', requested, errno.ENOENT)}")
        resolved = os.path.realpath(requested)
        if not self._allowed(sbx, resolved, "read"):
            raise _RpcError(
                "internal", f"error reading directory {resolved}: {_go_error('open', resolved, errno.EACCES)}"
            )
        if not os.path.exists(resolved):
            raise _RpcError("not_found", f"directory not found: {_go_error('stat', resolved, errno.ENOENT)}")
        if not os.path.isdir(resolved):
            raise _RpcError("invalid_argument", f"path is not a directory: {resolved}")

        def walk(directory: str, shown: str, level: int) -> list[filesystem_pb.EntryInfo]:
            entries = []
            try:
                names = sorted(os.listdir(directory))
            except OSError as e:
                raise _RpcError(
                    "internal", f"error reading directory {resolved}: {_go_error('open', directory, e.errno or 0)}"
                ) from e
            for name in names:
                real, path = os.path.join(directory, name), os.path.join(shown, name)
                try:
                    entry = self._entry(sbx, real, name)
                except FileNotFoundError:
                    continue
                entry.path = path
                entries.append(entry)
                if level < depth and entry.type == filesystem_pb.FileType.DIRECTORY and not entry.is_symlink:
                    entries.extend(walk(real, path, level + 1))
            return entries

        return filesystem_pb.ListDirResponse(entries=walk(resolved, requested, 1))

    def _remove(self, sbx: FakeSandbox, req: filesystem_pb.RemoveRequest) -> filesystem_pb.RemoveResponse:
        path = self._resolve(sbx, req.path)
        if not self._allowed(sbx, path, "write"):
            raise _RpcError(
                "internal", f"error removing file or directory: {_go_error('unlinkat', path, errno.EACCES)}"
            )
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        except OSError as e:
            raise _RpcError(
                "internal", f"error removing file or directory: {_go_error('unlinkat', path, e.errno or 0)}"
            ) from e
        return filesystem_pb.RemoveResponse()


_UnaryHandler = Callable[[FakeE2B, FakeSandbox, Any], Awaitable[Message[Any]]]
_FileHandler = Callable[[FakeE2B, FakeSandbox, Any], Message[Any]]
_StreamOpener = Callable[[FakeE2B, FakeSandbox, Any, _Subscriber, int | None], Awaitable[_Process]]
_StreamSpec = tuple[type[Message[Any]], _StreamOpener, type[Any]]

_UNARY: dict[str, tuple[type[Message[Any]], _UnaryHandler]] = {
    "process.Process/List": (process_pb.ListRequest, FakeE2B._list_processes),
    "process.Process/SendInput": (process_pb.SendInputRequest, FakeE2B._send_input),
    "process.Process/SendSignal": (process_pb.SendSignalRequest, FakeE2B._send_signal),
    "process.Process/CloseStdin": (process_pb.CloseStdinRequest, FakeE2B._close_stdin),
    "process.Process/Update": (process_pb.UpdateRequest, FakeE2B._update),
}
# The filesystem service's calls are blocking file operations: they run in a thread.
_FILES: dict[str, tuple[type[Message[Any]], _FileHandler]] = {
    "filesystem.Filesystem/Stat": (filesystem_pb.StatRequest, FakeE2B._stat),
    "filesystem.Filesystem/MakeDir": (filesystem_pb.MakeDirRequest, FakeE2B._make_dir),
    "filesystem.Filesystem/Move": (filesystem_pb.MoveRequest, FakeE2B._move),
    "filesystem.Filesystem/ListDir": (filesystem_pb.ListDirRequest, FakeE2B._list_dir),
    "filesystem.Filesystem/Remove": (filesystem_pb.RemoveRequest, FakeE2B._remove),
}
_NOT_IMPLEMENTED = {
    "filesystem.Filesystem/WatchDir",
    "filesystem.Filesystem/CreateWatcher",
    "filesystem.Filesystem/GetWatcherEvents",
    "filesystem.Filesystem/RemoveWatcher",
}
_STREAMS: dict[str, _StreamSpec] = {
    "process.Process/Start": (process_pb.StartRequest, FakeE2B._start, process_pb.StartResponse),
    "process.Process/Connect": (process_pb.ConnectRequest, FakeE2B._connect_process, process_pb.ConnectResponse),
}


# --- running it on its own ---------------------------------------------------------------------


async def _serve(server: FakeE2B) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"listening {server.url}", flush=True)
        print(f"api_key {server.api_key}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m core.fakes.e2b_api",
        description="A fake of E2B's control-plane API and envd: point the e2b SDK's api_url and sandbox_url at it.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--api-key", default=None, help="the key clients must send (default: a random e2b_ key)")
    parser.add_argument("--root", default=None, help="where sandboxes live (default: a temporary directory)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(FakeE2B(host=args.host, port=args.port, api_key=args.api_key, root=args.root)))


if __name__ == "__main__":
    main(sys.argv[1:])
