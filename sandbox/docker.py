"""The `docker` runtime: one container per session, on a local or remote Docker engine.

The container `oma-<session_id>` runs an idle `sleep` (as uid 65534) under docker's init with a
read-only root, a tmpfs /tmp, no capabilities, `no-new-privileges`, no network unless the options
allow it, and the options' memory, pids and CPU limits. Commands run in it with `docker exec` as the
sandbox user (uid 1000). The workspace is the named volume `oma-<session_id>-workspace` mounted at
/workspace: a volume rather than a bind of `<root>/<session_id>/workspace` because it also works
when DOCKER_HOST is a remote engine (which cannot see our disk), a new volume takes its owner from
the image's /workspace, and it survives the container being stopped or recreated. `root` is unused.

A new DockerSandbox for the same session (a restart of our process) finds the same container and
volume; the container is recreated, keeping the volume, when its image or limits changed.

Packages (`options.packages`) are installed once per environment into a derived image
`oma-env-<environment_id>:<digest of base image and packages>`, committed after the install: apt
writes all over the root filesystem, which a volume cannot capture, and an image is immutable, so
one session cannot change what the environment's next session starts from.

Every command runs under a small shell wrapper that resolves `cwd`, then reports on stderr (in a
line with a random token, removed from the output) its exit code and whether any other process of
the sandbox user is still alive. If one is, or the command timed out, it is killed: with
`kill -9 -1` as the sandbox user when no other command of this sandbox is running (the idle
process is another user and survives), else by session, process tree and output pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from sandbox.base import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_TIMEOUT,
    WORKSPACE,
    ExecResult,
    FileTooLarge,
    Sandbox,
    SandboxError,
    SandboxOptions,
    SandboxUnavailable,
    check_session_id,
)
from sandbox.shell import (
    FILE_OP,
    INSTALL_STEPS,
    KILL_ONE,
    Bytes,
    Capture,
    Outcome,
    Report,
    Sink,
    Streams,
    cwd_error,
    exec_argv,
    file_op_error,
    first,
    install_failure,
    install_script,
    wanted_packages,
)

try:
    import docker
    import requests
    from docker.errors import APIError, DockerException, ImageNotFound, NotFound
except ImportError as e:  # the SDK is optional: `available()` and `start()` say what is missing
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None
    # The SDK lets the HTTP library's errors through (engine gone, read timeout).
    _ENGINE_ERRORS = (DockerException, requests.RequestException)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.api.client import APIClient
    from docker.models.containers import Container
    from docker.models.images import Image

log = logging.getLogger("oma.sandbox")
T = TypeVar("T")

DEFAULT_IMAGE = "oma-sandbox:bookworm"
SANDBOX_UID = 1000  # runs every command and owns the workspace
SANDBOX_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
# Runs the container's idle process: a different user, so the commands' `kill -9 -1` spares it.
_KEEPER_USER = "65534:65534"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SPEC_VERSION = "1"  # bump when the container's settings change, to recreate existing containers
_DRAIN_TIMEOUT = 5.0
_FILE_TIMEOUT = 120.0
_BUILD_TIMEOUT = 1800.0
_API_TIMEOUT = 60

# $1 token, $2 cwd ('' for the workspace), $3 flags (h: drop docker's HOSTNAME), then the argv.
_WRAPPER = r"""
t=$1 d=$2 f=$3
shift 3
fail() { printf 'oma-exit:%s:fail %s\n' "$t" "$1" >&2; exit 125; }
if [ -n "$d" ]; then
  r=$(realpath -m -- "$d" 2>/dev/null) || r=$(readlink -f -- "$d" 2>/dev/null) || fail missing
  case $r in /workspace|/workspace/*) ;; *) fail outside ;; esac
  [ -e "$r" ] || fail missing
  [ -d "$r" ] || fail notdir
  cd "$r" 2>/dev/null || fail denied
fi
case $f in *h*) unset HOSTNAME ;; esac
exec 3>&2 2>/dev/null
case $1 in
  */*) p=$1 ;;
  *) p=; IFS=:; for dir in $PATH; do [ -f "$dir/$1" ] && [ -x "$dir/$1" ] && { p=$dir/$1; break; }; done; unset IFS ;;
esac
if [ -z "$p" ] || { [ ! -e "$p" ] && [ ! -L "$p" ]; }; then
  printf '%s: command not found\n' "$1" >&3; rc=127
elif [ -d "$p" ] || [ ! -x "$p" ]; then
  printf '%s: permission denied\n' "$1" >&3; rc=126
else
  (exec "$@") 2>&3 3>&-
  rc=$?
fi
state=clean
for q in /proc/[0-9]*; do
  [ "$q" = "/proc/$$" ] && continue
  [ -O "$q" ] || continue
  read -r s < "$q/stat" 2>/dev/null || continue
  s=${s##*") "}
  [ "${s%% *}" = Z ] && continue
  state=dirty
  break
done
if [ $state = dirty ]; then
  state="dirty $(readlink /proc/$$/fd/1 2>/dev/null) $(readlink /proc/$$/fd/3 2>/dev/null)"
fi
printf 'oma-exit:%s:%s %s %s\n' "$t" "$rc" "$$" "$state" >&3
exit $rc
"""

# Kills every process of the sandbox user but itself; used only when no other command is running.
_SWEEP = r"""
i=0
while [ $i -lt 200 ]; do
  kill -9 -1 2>/dev/null
  left=
  for q in /proc/[0-9]*; do
    [ "$q" = "/proc/$$" ] && continue
    [ -O "$q" ] || continue
    read -r s < "$q/stat" 2>/dev/null || continue
    s=${s##*") "}
    [ "${s%% *}" = Z ] && continue
    left=1
    break
  done
  [ -z "$left" ] && exit 0
  i=$((i + 1))
done
exit 1
"""


def _default_image() -> str:
    # TODO(settings): belongs in the settings object (OMA_DOCKER_IMAGE), passed in as options.image.
    return os.environ.get("OMA_DOCKER_IMAGE") or DEFAULT_IMAGE


def available(image: str | None = None) -> str | None:
    """None when a docker engine answers and has the sandbox image; otherwise why not. Blocking."""
    if _IMPORT_ERROR is not None:
        return f"the docker Python package is not installed ({_IMPORT_ERROR})"
    name = image or _default_image()
    try:
        client = docker.from_env(timeout=10)
    except _ENGINE_ERRORS as e:
        return f"no docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {e}"
    try:
        client.images.get(name)
    except ImageNotFound:
        return f"the docker engine has no image {name}; run scripts/docker-sandbox-setup"
    except _ENGINE_ERRORS as e:
        return f"the docker engine at {client.api.base_url} does not answer: {e}"
    finally:
        client.close()
    return None


def _pump(sock: socket.socket, pending: bytes, streams: Streams) -> None:
    """Reads the exec's frames (8-byte header: stream, 3 zero bytes, big-endian length) to EOF."""
    buf = bytearray(pending)
    while True:
        while len(buf) >= 8:
            size = int.from_bytes(buf[4:8], "big")
            if len(buf) < 8 + size:
                break
            streams.feed(buf[0], bytes(buf[8 : 8 + size]))
            del buf[: 8 + size]
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    streams.finish()


@dataclass
class _Hijacked:
    """The connection of a started exec. `pending` is what the HTTP client had already read past
    the response headers (output that would otherwise be lost)."""

    exec_id: str
    sock: socket.socket
    pending: bytes
    handle: Any

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.shutdown()
        response = getattr(self.handle, "_response", None)
        with contextlib.suppress(Exception):
            if response is not None:
                response.close()
        with contextlib.suppress(Exception):
            self.handle.close()
        self.sock.close()


def _hijack(exec_id: str, handle: Any) -> _Hijacked:
    sock = handle if isinstance(handle, socket.socket) else getattr(handle, "_sock", None)
    if not isinstance(sock, socket.socket):
        with contextlib.suppress(Exception):
            handle.close()
        raise SandboxUnavailable("the docker runtime needs a unix:// or tcp:// DOCKER_HOST (ssh:// is not supported)")
    pending = b""
    reader = getattr(getattr(getattr(getattr(handle, "_response", None), "raw", None), "_fp", None), "fp", None)
    if isinstance(reader, io.BufferedReader):
        sock.setblocking(False)
        try:
            pending = reader.peek()
        except OSError:
            pending = b""
        finally:
            sock.setblocking(True)
    sock.settimeout(None)  # the client's API timeout must not end a long, quiet command
    return _Hijacked(exec_id, sock, pending, handle)


class DockerSandbox(Sandbox):
    runtime = "docker"

    def __init__(self, session_id: str, *, root: Path, options: SandboxOptions | None = None) -> None:
        self.session_id = check_session_id(session_id)
        self.options = options or SandboxOptions()
        self.networking = self.options.networking
        self.workspace = WORKSPACE
        self.image = self.options.image or _default_image()
        self.container_name = f"oma-{self.session_id}"
        self.volume_name = f"oma-{self.session_id}-workspace"
        self._root = Path(root)
        self._client: DockerClient | None = None
        self._container_id = ""
        self._started = False
        self._running: set[str] = set()  # tokens of the commands in flight
        self._idle = asyncio.Event()
        self._idle.set()
        # Held while a sweep (`kill -9 -1`) runs and while a command registers, so a sweep never
        # meets a command that started after it was decided.
        self._gate = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if _IMPORT_ERROR is not None:
            raise SandboxUnavailable(f"sandbox runtime 'docker' needs the docker package ({_IMPORT_ERROR})")
        client = await asyncio.to_thread(_connect)
        try:
            cid, fresh, was_running = await _own_thread(lambda: self._ensure_container(client))
        except BaseException:
            client.close()
            raise
        self._client, self._container_id, self._started = client, cid, True
        if fresh:
            await self._ensure_writable_workspace()
        elif was_running:
            # Our previous process may have died with commands running: they must not outlive it.
            async with self._gate:
                await self._helper(["sh", "-c", _SWEEP, "oma-sweep"])

    async def stop(self) -> None:
        self._started = False
        client, self._client = self._client, None
        if client is None:
            return
        try:
            with contextlib.suppress(*_ENGINE_ERRORS):
                await asyncio.to_thread(client.api.stop, self._container_id, timeout=0)
            # The container's processes are gone, so running commands see EOF and return.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), _DRAIN_TIMEOUT)
        finally:
            client.close()

    async def destroy(self, *, keep_workspace: bool = False) -> None:
        """Stop, then remove the container and (unless `keep_workspace`) the workspace volume."""
        await self.stop()
        await asyncio.to_thread(self._remove, keep_workspace)

    def _remove(self, keep_workspace: bool) -> None:
        client = _connect()
        try:
            with contextlib.suppress(NotFound):
                client.api.remove_container(self.container_name, force=True)
            if not keep_workspace:
                with contextlib.suppress(NotFound):
                    client.api.remove_volume(self.volume_name, force=True)
        except _ENGINE_ERRORS as e:
            raise SandboxError(f"cannot remove the sandbox of session {self.session_id}: {e}") from e
        finally:
            client.close()

    def _check_started(self) -> None:
        if not self._started:
            raise SandboxUnavailable(f"sandbox for session {self.session_id} is not started (call start())")

    @property
    def _api(self) -> APIClient:
        if self._client is None:
            raise SandboxUnavailable(f"sandbox for session {self.session_id} is not started (call start())")
        return self._client.api

    # --- the container (worker thread) -------------------------------------------------------------

    def _ensure_container(self, client: DockerClient) -> tuple[str, bool, bool]:
        """(container id, newly created, was already running)."""
        try:
            image = self._env_image(client, _get_image(client, self.image))
            spec = self._spec(image.id or "")
            for _ in range(5):
                try:
                    container: Container | None = client.containers.get(self.container_name)
                except NotFound:
                    container = None
                if container is not None and container.labels.get("oma.spec") != spec:
                    log.info("sandbox %s: image or limits changed; recreating the container", self.container_name)
                    with contextlib.suppress(NotFound):
                        container.remove(force=True)
                    container = None
                if container is None:
                    try:
                        container = self._create(client, image.id or "", spec)
                    except APIError as e:
                        if e.status_code == 409:  # another process created it first: re-attach
                            continue
                        raise
                    container.start()
                    return container.id or "", True, False
                running = container.status == "running"
                if not running:
                    container.start()
                return container.id or "", False, running
        except SandboxError:
            raise
        except _ENGINE_ERRORS as e:
            raise SandboxUnavailable(f"cannot start the docker sandbox {self.container_name}: {_explain(e)}") from e
        raise SandboxUnavailable(f"cannot start the docker sandbox {self.container_name}: it keeps changing")

    def _spec(self, image_id: str) -> str:
        o = self.options
        parts = [_SPEC_VERSION, image_id, str(o.networking), str(o.memory_mb), str(o.pids), str(o.cpus)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def _create(self, client: DockerClient, image_id: str, spec: str) -> Container:
        o = self.options
        labels = {"oma.runtime": "docker", "oma.session": self.session_id}
        client.volumes.create(self.volume_name, labels=labels)
        limits: dict[str, Any] = {}
        if o.memory_mb is not None:
            limits["mem_limit"] = limits["memswap_limit"] = f"{o.memory_mb}m"
        if o.pids is not None:
            limits["pids_limit"] = o.pids
        if o.cpus is not None:
            limits["nano_cpus"] = int(o.cpus * 1e9)
        log.info("sandbox %s: creating the container from %s", self.container_name, self.image)
        return client.containers.create(
            image_id,
            ["sleep", "infinity"],
            name=self.container_name,
            hostname="sandbox",
            labels={**labels, "oma.spec": spec},
            user=_KEEPER_USER,
            init=True,
            network_mode="bridge" if o.networking else "none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,exec,size={o.memory_mb or 1024}m,mode=1777"},
            volumes={self.volume_name: {"bind": WORKSPACE, "mode": "rw"}},
            working_dir=WORKSPACE,
            environment={"PATH": _PATH, "LANG": "C.UTF-8", "HOME": WORKSPACE},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            **limits,
        )

    async def _ensure_writable_workspace(self) -> None:
        # A new volume copies the owner of the image's /workspace: ours is the sandbox user's;
        # another image may have none (root-owned). One root helper with CAP_CHOWN fixes that.
        probe = await self.exec(["sh", "-c", "test -w /workspace"], timeout=60)
        if probe.exit_code == 0:
            return
        log.info("sandbox %s: giving the workspace volume to the sandbox user", self.container_name)
        try:
            await asyncio.to_thread(self._chown_workspace)
        except _ENGINE_ERRORS as e:
            raise SandboxUnavailable(f"cannot prepare the workspace of {self.container_name}: {_explain(e)}") from e

    def _chown_workspace(self) -> None:
        client = self._client
        if client is None:
            raise SandboxUnavailable(f"sandbox for session {self.session_id} is not started (call start())")
        image = client.containers.get(self._container_id).attrs["Image"]
        client.containers.run(
            image,
            ["chown", SANDBOX_USER, WORKSPACE],
            user="0:0",
            network_mode="none",
            cap_drop=["ALL"],
            cap_add=["CHOWN"],
            security_opt=["no-new-privileges"],
            volumes={self.volume_name: {"bind": WORKSPACE, "mode": "rw"}},
            remove=True,
        )

    # --- packages: one derived image per environment (worker thread) -------------------------------

    def _env_image(self, client: DockerClient, base: Image) -> Image:
        packages = {m: tuple(p) for m, p in self.options.packages.items() if p}
        if not packages:
            return base
        wanted = wanted_packages(packages)
        digest = hashlib.sha256(json.dumps([base.id, wanted, INSTALL_STEPS]).encode()).hexdigest()[:16]
        env_name = re.sub(r"[^a-z0-9]+", "-", (self.options.environment_id or "").lower()).strip("-") or "none"
        repo = f"oma-env-{env_name}"
        ref, builder_name = f"{repo}:{digest}", f"oma-build-{env_name}-{digest}"
        deadline = time.monotonic() + _BUILD_TIMEOUT
        while True:
            with contextlib.suppress(ImageNotFound):
                return client.images.get(ref)
            try:
                builder = client.containers.create(
                    base.id or "",
                    ["sh", "-c", install_script(wanted)],
                    name=builder_name,
                    user="0:0",
                    labels={"oma.runtime": "docker", "oma.environment": self.options.environment_id or ""},
                    network_mode="bridge",
                )
            except APIError as e:
                if e.status_code != 409:
                    raise
                # Another process is building the same image: wait for it (or clear a dead build).
                if time.monotonic() > deadline:
                    raise SandboxError(f"packages: gave up waiting for {builder_name} to build {ref}") from e
                _clear_stale_builder(client, builder_name)
                time.sleep(0.5)
                continue
            try:
                # Built by another process between our look and our create (its builder was gone)?
                with contextlib.suppress(ImageNotFound):
                    return client.images.get(ref)
                log.info("sandbox: installing the packages of environment %s into %s", self.options.environment_id, ref)
                builder.start()
                status = int(builder.wait(timeout=_BUILD_TIMEOUT)["StatusCode"])
                if status != 0:
                    logs = builder.logs(tail=30).decode(errors="replace").strip()
                    raise SandboxError(install_failure(wanted, status, logs))
                builder.commit(
                    repository=repo,
                    tag=digest,
                    changes=['CMD ["sleep", "infinity"]', f"LABEL oma.environment={self.options.environment_id}"],
                )
            except _ENGINE_ERRORS as e:
                if isinstance(e, requests.Timeout) or "timed out" in str(e).lower():
                    message = f"installing the environment's packages timed out after {_BUILD_TIMEOUT:g}s"
                    raise SandboxError(message) from e
                raise SandboxError(f"installing the environment's packages into {ref} failed: {_explain(e)}") from e
            finally:
                with contextlib.suppress(*_ENGINE_ERRORS):
                    builder.remove(force=True)
            return client.images.get(ref)

    # --- exec --------------------------------------------------------------------------------------

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
        argv, run_env = exec_argv(command, env, name_ok=lambda k: bool(k) and "=" not in k and "\0" not in k)
        where = "" if cwd is None else _sandbox_path(cwd)
        out, err = Capture(max_output), Capture(max_output)
        outcome = await self._run(argv, where, run_env, timeout, out, err)
        if outcome.failure is not None:
            raise cwd_error(cwd or WORKSPACE, outcome.failure)
        return ExecResult(
            exit_code=outcome.exit_code,
            stdout=out.text(),
            stderr=err.text(),
            truncated=out.truncated or err.truncated,
            timed_out=outcome.timed_out,
        )

    async def _run(self, argv: list[str], cwd: str, env: dict[str, str], limit: float, out: Sink, err: Sink) -> Outcome:
        token = secrets.token_hex(12)
        loop = asyncio.get_running_loop()
        survivors = asyncio.Event()

        def on_dirty() -> None:
            loop.call_soon_threadsafe(survivors.set)

        streams = Streams(out, err, token, on_dirty)
        command = ["/bin/sh", "-c", _WRAPPER, "oma-exec", token, cwd, "" if "HOSTNAME" in env else "h", *argv]
        async with self._gate:
            self._check_started()
            self._running.add(token)
            self._idle.clear()
        conn: _Hijacked | None = None
        cleaned = False
        try:
            conn = await _shielded(asyncio.to_thread(self._start_exec, command, env), _Hijacked.close)
            hijacked = conn
            reader = asyncio.ensure_future(_own_thread(lambda: _pump(hijacked.sock, hijacked.pending, streams)))
            # The output ends when the command and everything holding its pipes are gone. Before
            # that: the deadline, or the wrapper reporting survivors (which may hold the pipes).
            timed_out = not await first(limit, reader, survivors)
            killed = timed_out or not reader.done()
            if killed:
                await self._kill_leftovers(token, streams.report)
            if not await first(_DRAIN_TIMEOUT, reader):
                log.warning("exec %r: output still open after killing the command; giving up on it", argv[0])
                conn.shutdown()
                await reader
            code = await self._exit_code(conn.exec_id)
            report = streams.report
            trusted = report is not None and code == (125 if report.failure is not None else report.exit_code)
            if not killed and (not trusted or report is None or report.dirty):
                await self._kill_leftovers(token, report if trusted else None)
            cleaned = True
            if trusted and report is not None and report.failure is not None:
                return Outcome(code, False, failure=report.failure)
            return Outcome(code, timed_out)
        finally:
            try:
                if not cleaned:  # cancelled or failed mid-way: still leave nothing behind
                    with contextlib.suppress(SandboxError, *_ENGINE_ERRORS):
                        await self._kill_leftovers(token, None)
            finally:
                if conn is not None:
                    conn.close()
                self._running.discard(token)
                if not self._running:
                    self._idle.set()

    def _start_exec(self, command: list[str], env: dict[str, str]) -> _Hijacked:
        try:
            return self._exec_once(command, env)
        except _ENGINE_ERRORS as e:
            gone = isinstance(e, NotFound) or (isinstance(e, APIError) and e.status_code == 409)
            if not gone or self._client is None or not self._started:
                raise SandboxUnavailable(f"sandbox {self.container_name} cannot run commands: {_explain(e)}") from e
        # Stopped or removed behind our back (an engine restart, an operator): bring it back.
        log.warning("sandbox %s: the container is gone or stopped; starting it again", self.container_name)
        self._container_id = self._ensure_container(self._client)[0]
        try:
            return self._exec_once(command, env)
        except _ENGINE_ERRORS as e:
            raise SandboxUnavailable(f"sandbox {self.container_name} cannot run commands: {_explain(e)}") from e

    def _exec_once(self, command: list[str], env: dict[str, str]) -> _Hijacked:
        api = self._api
        exec_id = api.exec_create(
            self._container_id, command, stdin=False, user=SANDBOX_USER, environment=env, workdir=WORKSPACE
        )["Id"]
        return _hijack(exec_id, api.exec_start(exec_id, socket=True))

    async def _exit_code(self, exec_id: str) -> int:
        # The engine's word is the one that counts (a command can print a report line itself).
        # It may take a moment after the output ended to notice the exit.
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        while self._client is not None:
            try:
                info = await asyncio.to_thread(self._api.exec_inspect, exec_id)
            except (SandboxError, *_ENGINE_ERRORS):
                break
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        return 128 + 9

    async def _kill_leftovers(self, token: str, report: Report | None) -> None:
        async with self._gate:
            if not self._started:
                return  # stopped: the container's processes are gone
            if self._running <= {token}:
                command = ["sh", "-c", _SWEEP, "oma-sweep"]
            else:
                pid, pipes = (report.pid, report.pipes) if report is not None else ("", ("", ""))
                command = ["sh", "-c", KILL_ONE, "oma-kill", token, pid, *pipes]
            try:
                await self._helper(command)
            except SandboxUnavailable as e:
                # The killer itself cannot start (a fork bomb took every pid, say): restarting
                # the container is the only way left to stop what runs in it.
                log.warning("sandbox %s: cannot kill a command's processes (%s); restarting it", self.container_name, e)
                try:
                    await asyncio.to_thread(self._api.restart, self._container_id, timeout=0)
                except _ENGINE_ERRORS as restart_error:
                    raise SandboxUnavailable(
                        f"sandbox {self.container_name}: cannot stop a command: {_explain(restart_error)}"
                    ) from restart_error

    async def _helper(self, command: list[str]) -> None:
        """Run one of our own short scripts as the sandbox user (no wrapper, output ignored)."""

        def run() -> None:
            api = self._api
            try:
                exec_id = api.exec_create(self._container_id, command, stdin=False, user=SANDBOX_USER)["Id"]
                output = api.exec_start(exec_id)
                code = api.exec_inspect(exec_id).get("ExitCode")
            except _ENGINE_ERRORS as e:
                raise SandboxUnavailable(f"sandbox {self.container_name}: {_explain(e)}") from e
            if code not in (0, 1):  # 1: the sweep gave up on a process; anything else: it did not run
                detail = output.decode(errors="replace").strip() if isinstance(output, bytes) else ""
                raise SandboxUnavailable(f"sandbox {self.container_name}: exit code {code} {detail}".strip())

        await asyncio.to_thread(run)

    # --- paths and files ---------------------------------------------------------------------------

    async def _file_op(self, op: str, path: str, arg: str = "") -> bytes:
        target = _sandbox_path(path)
        out, err = Bytes(), Capture(4096)
        outcome = await self._run(["sh", "-c", FILE_OP, "oma-file", op, target, arg], "", {}, _FILE_TIMEOUT, out, err)
        if outcome.timed_out:
            raise SandboxError(f"{path}: timed out after {_FILE_TIMEOUT:g}s", path=path)
        if outcome.exit_code == 0:
            return bytes(out.data)
        raise file_op_error(outcome.exit_code, path, arg, bytes(out.data), err.text())

    async def exec_path(self, path: str) -> str:
        self._check_started()
        return (await self._file_op("path", path)).decode("utf-8", "surrogateescape")

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self._check_started()
        data = await self._file_op("read", path, "" if max_bytes is None else str(max(0, max_bytes)))
        if max_bytes is not None and len(data) > max_bytes:  # grew since it was measured
            raise FileTooLarge(f"{path} is over the {max_bytes}-byte limit", path=path, size=len(data), limit=max_bytes)
        return data

    async def write_file(self, path: str, data: bytes) -> None:
        self._check_started()
        mode, _, resolved = (await self._file_op("write", path)).decode("utf-8", "surrogateescape").partition("\n")
        target = PurePosixPath(resolved)
        archive = _tar_one(target.name, data, int(mode, 8) if mode.isdigit() else 0o644)
        try:
            await asyncio.to_thread(self._api.put_archive, self._container_id, str(target.parent), archive)
        except _ENGINE_ERRORS as e:
            raise SandboxError(f"{path}: cannot write: {_explain(e)}", path=path) from e


# --- helpers ---------------------------------------------------------------------------------------


def _connect() -> DockerClient:
    try:
        return docker.from_env(timeout=_API_TIMEOUT)
    except _ENGINE_ERRORS as e:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise SandboxUnavailable(
            f"sandbox runtime 'docker': no docker engine answers at {where} ({e}); "
            "run scripts/docker-sandbox-setup and export the DOCKER_HOST it prints"
        ) from e


def _get_image(client: DockerClient, ref: str) -> Image:
    try:
        return client.images.get(ref)
    except ImageNotFound:
        pass
    try:
        log.info("sandbox: pulling image %s", ref)
        return client.images.pull(ref)
    except _ENGINE_ERRORS as e:
        hint = "; run scripts/docker-sandbox-setup to build it" if ref == DEFAULT_IMAGE else ""
        raise SandboxUnavailable(f"image {ref} is not on the docker engine and cannot be pulled{hint}") from e


def _clear_stale_builder(client: DockerClient, name: str) -> None:
    with contextlib.suppress(NotFound):
        builder = client.containers.get(name)
        if builder.status in ("exited", "dead") or (builder.status == "created" and _age(builder) > 60):
            with contextlib.suppress(NotFound):
                builder.remove(force=True)


def _age(container: Container) -> float:
    try:
        created = datetime.fromisoformat(str(container.attrs.get("Created", ""))[:19]).replace(tzinfo=UTC)
    except ValueError:
        return 0.0
    return time.time() - created.timestamp()


def _tar_one(name: str, data: bytes, mode: int) -> bytes:
    buf = io.BytesIO()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uid = info.gid = SANDBOX_UID
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sandbox_path(path: str) -> str:
    if not path:
        raise SandboxError("empty path", path=path)
    if "\0" in path:
        raise SandboxError(f"{path!r}: path contains a NUL byte", path=path)
    return path if path.startswith("/") else f"{WORKSPACE}/{path}"


def _explain(e: Exception) -> str:
    if isinstance(e, APIError) and e.explanation:
        return str(e.explanation)
    return str(e)


async def _shielded(work: Awaitable[T], close: Callable[[T], None]) -> T:
    """Await `work` (a thread's result). If we are cancelled meanwhile, the thread still finishes:
    whatever it then returns is closed instead of leaked."""
    future: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def discard(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                close(done.result())

        future.add_done_callback(discard)
        raise


async def _own_thread(work: Callable[[], T]) -> T:
    """Like `asyncio.to_thread`, for calls that may block for minutes (a command's output, an image
    build): in a thread of their own, so they never hold one of the default executor's few workers."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as e:  # delivered to the awaiting task
            error = e
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=run, name="oma-docker", daemon=True).start()
    return await future
