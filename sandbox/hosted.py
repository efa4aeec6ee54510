"""What the hosted runtimes (`e2b`, `daytona`) share: the contract on top of a service that can
start a shell command in a remote machine (streaming its output) and move whole files in and out.

The session's sandbox is a machine of the service, found again by a label/metadata entry
`oma-session=<session_id>`; `stop()` suspends it (E2B pauses it, Daytona stops it: the disk is
kept and it costs nothing) and the next `start()` of the session resumes it. `destroy()` deletes it.
The workspace is `$HOME/workspace` of the machine's user (`workspace` is its real path there, e.g.
`/home/user/workspace`); contract paths under `/workspace` are mapped onto it.

Every command runs under `env -i` with the minimal environment, through the wrapper below, which
checks `cwd`, finds the program (127/126 like a shell) and reports on stderr, in a line carrying a
random token, its exit code and whether processes it started are still alive. Those, and a timed
out or cancelled command, are killed by `KILL_ONE` (the command's process tree and whoever holds
its output), run as a second command. File reads and writes first resolve and check the path in
the machine (symlinks included, `FILE_OP`), then move the bytes with the service's file API.

The machine is the isolation boundary here (a VM or container of the service, one per session):
the workspace checks keep the contract's paths honest; they are not what keeps a command in.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import json
import logging
import posixpath
import re
import secrets
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

from sandbox.base import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_TIMEOUT,
    WORKSPACE,
    ExecResult,
    FileTooLarge,
    PathOutsideWorkspace,
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

log = logging.getLogger("oma.sandbox")
T = TypeVar("T")

SESSION_LABEL = "oma-session"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DRAIN_TIMEOUT = 5.0
_HELPER_TIMEOUT = 60.0
_START_TIMEOUT = 120.0
_INSTALL_TIMEOUT = 1800.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# $1 token, $2 the workspace, $3 cwd ('' for the workspace), $4 flags, then the argv. Flag `n`:
# the service ends every line of output with a newline (Daytona's session logs), so each stream
# is closed with a marker line of ours, after a newline, to strip back off (see `LineFramed`).
WRAPPER = r"""
t=$1 w=$2 d=$3 nl=
case $4 in *n*) nl='\n' ;; esac
shift 4
fail() { printf "${nl}oma-exit:%s:fail %s\n" "$t" "$1" >&2; exit 125; }
r=$w
if [ -n "$d" ]; then
  r=$(realpath -m -- "$d" 2>/dev/null) || r=$(readlink -f -- "$d" 2>/dev/null) || fail missing
  case $r in "$w"|"$w"/*) ;; *) fail outside ;; esac
fi
[ -e "$r" ] || fail missing
[ -d "$r" ] || fail notdir
cd "$r" 2>/dev/null || fail denied
unset OLDPWD
exec </dev/null 3>&2 2>/dev/null
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
out=$(readlink /proc/$$/fd/1 2>/dev/null) err=$(readlink /proc/$$/fd/3 2>/dev/null)
up=" " a=$PPID
while [ -n "$a" ] && [ "$a" -gt 1 ] 2>/dev/null; do
  up="$up$a "
  read -r s < "/proc/$a/stat" 2>/dev/null || break
  set -- ${s##*") "}
  a=$2
done
state=clean
for q in /proc/[0-9]*; do
  pid=${q#/proc/}
  [ "$pid" = $$ ] && continue
  case $up in *" $pid "*) continue ;; esac
  [ -O "$q" ] || continue
  read -r s < "$q/stat" 2>/dev/null || continue
  set -- ${s##*") "}
  [ "$1" = Z ] && continue
  if [ "$2" = $$ ]; then state=dirty; break; fi
  [ -n "$out$err" ] || continue
  case " $(readlink "$q/fd/1" 2>/dev/null) $(readlink "$q/fd/2" 2>/dev/null) " in
    *" ${out:-none} "* | *" ${err:-none} "*) state=dirty; break ;;
  esac
done
[ $state = dirty ] && state="dirty ${out:--} ${err:--}"
[ -n "$nl" ] && printf '\noma-end:%s\n' "$t"
printf "${nl}oma-exit:%s:%s %s %s\n" "$t" "$rc" "$$" "$state" >&3
exit $rc
"""


class Job(Protocol):
    """A command started in the machine."""

    async def wait(self) -> int:
        """Its exit code once it and its output are done; negative when killed by a signal."""

    async def kill(self) -> None:
        """SIGKILL it (the service's own kill); idempotent."""

    async def close(self) -> None:
        """Stop listening to it and release the connection."""


class LineFramed:
    """For a service that ends every line of output with a newline, including a last line that had
    none: the wrapper ends the stream with a newline and `marker` (a line of its own), which this
    takes back off, leaving the command's exact bytes. Holds back only the marker's length."""

    def __init__(self, inner: Sink, marker: bytes) -> None:
        self.inner = inner
        self.marker = b"\n" + marker + b"\n"
        self._held = bytearray()

    def feed(self, data: bytes) -> None:
        self._held += data
        keep = len(self.marker)
        if len(self._held) > keep:
            self.inner.feed(bytes(self._held[:-keep]))
            del self._held[:-keep]

    def finish(self) -> None:
        if self._held.endswith(self.marker):
            del self._held[-len(self.marker) :]
        self.inner.feed(bytes(self._held))
        self._held.clear()


class HostedSandbox(Sandbox):
    """The contract on a hosted service; subclasses implement the service calls."""

    runtime: str
    # The service's output ends every line with a newline (see WRAPPER's flag `n`).
    line_framed_output = False

    def __init__(self, session_id: str, *, root: Path, options: SandboxOptions | None = None) -> None:
        self.session_id = check_session_id(session_id)
        self.root = root  # unused: the workspace lives in the service's machine
        self.options = options or SandboxOptions()
        self.workspace = WORKSPACE  # the real path, once started
        self._started = False
        self._gate = asyncio.Lock()
        self._running: dict[str, Job | None] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._revive_lock = asyncio.Lock()

    # --- what a service implements -----------------------------------------------------------------

    @abc.abstractmethod
    async def _attach(self, *, create: bool = True) -> bool:
        """Find the session's machine (resuming it) or, with `create`, create it. False: there is
        none (and none was created)."""

    @abc.abstractmethod
    async def _launch(self, command: str, streams: Streams) -> Job:
        """Start `command` (a POSIX shell command line) with stdin closed, feeding its output to
        `streams` (1: stdout, 2: stderr)."""

    @abc.abstractmethod
    async def _upload(self, path: str, data: bytes) -> None:
        """Write the file at `path` (an absolute path in the machine, its parent existing)."""

    @abc.abstractmethod
    async def _download(self, path: str) -> bytes: ...

    @abc.abstractmethod
    async def _suspend(self) -> None:
        """Pause or stop the machine, keeping its disk."""

    @abc.abstractmethod
    async def _delete(self) -> None:
        """Delete the machine and its disk (nothing is kept)."""

    async def _close(self) -> None:
        """Release the service's client (called after `_suspend` or `_delete`)."""

    def _describe(self, e: BaseException) -> str:
        return str(e) or type(e).__name__

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._gate:
            if not self._started:
                await self._open()
                self._started = True

    async def _open(self) -> None:
        """Attach to (or create) the machine, find the workspace, install the packages. On failure
        the machine is suspended again and the client released."""
        attached = False
        try:
            await asyncio.wait_for(self._attach(), _START_TIMEOUT)
            attached = True
            code, out, err = await self._helper(
                'mkdir -p -- "$HOME/workspace" && cd -- "$HOME/workspace" && pwd -P', _HELPER_TIMEOUT, revive=False
            )
            workspace = out.decode(errors="replace").strip().splitlines()[-1:] if code == 0 else []
            if not workspace or not workspace[0].startswith("/"):
                detail = (err or out).decode(errors="replace").strip() or f"exit code {code}"
                raise SandboxUnavailable(f"{self.runtime} sandbox for {self.session_id}: no workspace: {detail}")
            self.workspace = workspace[0]
            if self.options.packages:
                await self._install()
        except BaseException as e:
            if attached:
                with contextlib.suppress(Exception):
                    await self._suspend()
            await self._close()
            if isinstance(e, SandboxError) or not isinstance(e, Exception):
                raise
            raise SandboxUnavailable(f"{self.runtime} sandbox for {self.session_id}: {self._describe(e)}") from e

    def _gone(self, e: BaseException) -> bool:
        """Whether `e` says the machine is not running (stopped, paused or deleted behind our back)."""
        return False

    async def _revived(self, work: Callable[[], Awaitable[T]], revive: bool) -> T:
        """`work()`, bringing the machine back first if it was stopped, paused (e.g. by the
        service's own idle timeout) or deleted behind our back (then the workspace starts empty)."""
        try:
            return await work()
        except Exception as e:
            if not revive or not self._started or not self._gone(e):
                raise
            log.warning("%s sandbox %s: the machine is not running (%s); resuming it", self.runtime, self.session_id, e)
        async with self._revive_lock:
            if not await self._alive():
                await self._close()
                await self._open()
        return await work()

    async def _alive(self) -> bool:
        """Whether the machine answers now (another command may have revived it meanwhile)."""
        try:
            code, _, _ = await self._quick("true", _HELPER_TIMEOUT)
        except Exception:
            return False
        return code == 0

    async def _install(self) -> None:
        """The environment's packages, installed into this machine once (a marker file records
        it, so a resumed machine skips it): as root through `sudo -n` where the user may, else as
        the user with the workspace as HOME, like commands (pip then installs for the user; apt
        cannot). To share one install between the environment's sessions, bake the packages into
        the template or snapshot (`oma.image`)."""
        wanted = wanted_packages(self.options.packages)
        digest = hashlib.sha256(json.dumps([wanted, INSTALL_STEPS]).encode()).hexdigest()[:16]
        script = shlex.quote(install_script(wanted, cleanup=False))
        line = (
            f'm="$HOME/.cache/oma/packages-{digest}"; [ -f "$m" ] && exit 0; '
            'if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; '
            f"then sudo -n sh -c {script}; else HOME={shlex.quote(self.workspace)} sh -c {script}; fi </dev/null 2>&1; "
            'rc=$?; [ $rc = 0 ] && mkdir -p "${m%/*}" && touch "$m"; exit $rc'
        )
        code, out, _ = await self._helper(line, _INSTALL_TIMEOUT, revive=False)
        if code != 0:
            raise SandboxError(install_failure(wanted, code, out.decode(errors="replace")))

    async def stop(self) -> None:
        await self._shut(self._suspend)

    async def destroy(self) -> None:
        """Stop, then delete the machine and its workspace."""
        if not self._started:
            try:
                found = await self._attach(create=False)
            except Exception as e:
                log.warning("%s sandbox %s: cannot delete it: %s", self.runtime, self.session_id, self._describe(e))
                found = False
            if not found:
                await self._close()
                return
            self._started = True
        await self._shut(self._delete)

    async def _shut(self, then: Callable[[], Awaitable[None]]) -> None:
        async with self._gate:
            if not self._started:
                return
            self._started = False
            running = dict(self._running)
        try:
            for token, job in running.items():
                with contextlib.suppress(Exception):
                    await self._kill_one(token, None)
                if job is not None:
                    with contextlib.suppress(Exception):
                        await job.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), _DRAIN_TIMEOUT)
            await then()
        except Exception as e:
            log.warning("%s sandbox %s: %s", self.runtime, self.session_id, self._describe(e))
        finally:
            await self._close()

    def _check_started(self) -> None:
        if not self._started:
            raise SandboxUnavailable(f"{self.runtime} sandbox for {self.session_id} is not started")

    # --- exec -------------------------------------------------------------------------------------

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the contract's own deadline, enforced here)
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        self._check_started()
        # Names become `env` arguments: one that starts with '-' or holds '=' would be misread.
        argv, run_env = exec_argv(command, env, name_ok=lambda k: bool(_ENV_NAME.fullmatch(k)))
        out, err = Capture(max_output), Capture(max_output)
        token = secrets.token_hex(12)
        flags = "n" if self.line_framed_output else "-"

        def line() -> str:  # built again if the machine had to be revived (its home may move)
            where = "" if cwd is None else self._remote(cwd)
            base = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": self.workspace}
            assignments = [f"{k}={v}" for k, v in {**base, **run_env}.items()]
            wrapper = ["/bin/sh", "-c", WRAPPER, "oma-exec", token, self.workspace, where, flags]
            return shlex.join(["env", "-i", *assignments, *wrapper, *argv])

        if cwd is not None:
            self._remote(cwd)  # a bad path is refused before anything runs
        outcome = await self._run(line, token, timeout, out, err)
        if outcome.failure is not None:
            raise cwd_error(cwd or WORKSPACE, outcome.failure)
        return ExecResult(
            exit_code=outcome.exit_code,
            stdout=out.text(),
            stderr=err.text(),
            truncated=out.truncated or err.truncated,
            timed_out=outcome.timed_out,
        )

    async def _run(self, line: Callable[[], str], token: str, limit: float, out: Capture, err: Capture) -> Outcome:
        loop = asyncio.get_running_loop()
        survivors = asyncio.Event()

        def on_dirty() -> None:
            loop.call_soon(survivors.set)

        framed = LineFramed(out, f"oma-end:{token}".encode()) if self.line_framed_output else None
        streams = Streams(framed or out, err, token, on_dirty, framed=self.line_framed_output)
        async with self._gate:
            self._check_started()
            self._running[token] = None
            self._idle.clear()
        job: Job | None = None
        cleaned = False
        try:
            job = await self._revived(lambda: self._launch(line(), streams), revive=True)
            if token in self._running:
                self._running[token] = job
            waiter = asyncio.ensure_future(job.wait())
            try:
                # Done when the command and whatever holds its output are gone. Before that: the
                # deadline, or the wrapper reporting survivors (which may hold the output open).
                timed_out = not await first(limit, waiter, survivors)
                killed = timed_out or not waiter.done()
                if killed and self._started:
                    await self._kill_one(token, streams.report)
                if not await first(_DRAIN_TIMEOUT, waiter):
                    log.warning("%s sandbox %s: a command's output is still open after a kill", self.runtime, token)
                    with contextlib.suppress(Exception):
                        await job.kill()
                    await first(_DRAIN_TIMEOUT, waiter)
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(BaseException):
                        await waiter
            streams.finish()
            if framed is not None:
                framed.finish()
            code: int | None = None
            error: BaseException | None = None
            if waiter.done() and not waiter.cancelled():
                error = waiter.exception()
                if error is None:
                    code = waiter.result()
            if code is None:
                if error is not None and not killed and self._started:
                    raise SandboxUnavailable(f"{self.runtime} sandbox {self.session_id}: {self._describe(error)}")
                code = -1
            if code < 0:  # killed by a signal (-1: which one is not known; our kills are SIGKILL)
                code = 128 + (9 if code == -1 else -code)
            report = streams.report
            trusted = report is not None and code == (125 if report.failure is not None else report.exit_code)
            if not killed and self._started and (not trusted or report is None or report.dirty):
                await self._kill_one(token, report if trusted else None)
            cleaned = True
            if trusted and report is not None and report.failure is not None:
                return Outcome(code, False, failure=report.failure)
            return Outcome(128 + 9 if timed_out else code, timed_out)
        finally:
            try:
                if not cleaned and self._started:  # cancelled or failed mid-way: still leave nothing behind
                    with contextlib.suppress(Exception):
                        await self._kill_one(token, None)
                    if job is not None:
                        with contextlib.suppress(Exception):
                            await job.kill()
            finally:
                if job is not None:
                    with contextlib.suppress(Exception):
                        await job.close()
                self._running.pop(token, None)
                if not self._running:
                    self._idle.set()

    async def _kill_one(self, token: str, report: Report | None) -> None:
        """Kill one command's processes: by its report when we have it, else found by its token."""
        pid, pipes = (report.pid, report.pipes) if report is not None else ("", ("", ""))
        pipes = (pipes[0] if pipes[0] != "-" else "", pipes[1] if pipes[1] != "-" else "")
        line = shlex.join(["sh", "-c", KILL_ONE, "oma-kill", token, pid, *pipes])
        try:
            await self._helper(line, _HELPER_TIMEOUT, revive=False)
        except Exception as e:
            log.warning("%s sandbox %s: cannot kill a command: %s", self.runtime, self.session_id, self._describe(e))

    async def _helper(self, line: str, limit: float, *, revive: bool = True) -> tuple[int, bytes, bytes]:
        """Run one of our own short scripts; (exit code, stdout, stderr)."""
        return await self._revived(lambda: self._quick(line, limit), revive)

    async def _quick(self, line: str, limit: float) -> tuple[int, bytes, bytes]:
        out, err = Bytes(), Bytes()
        streams = Streams(out, err, secrets.token_hex(12), lambda: None)
        job = await self._launch(line, streams)
        try:
            code = await asyncio.wait_for(job.wait(), limit)
        except BaseException as e:
            with contextlib.suppress(Exception):
                await job.kill()
            if isinstance(e, TimeoutError):
                raise SandboxError(f"{self.runtime} sandbox {self.session_id}: timed out after {limit:g}s") from None
            raise
        finally:
            with contextlib.suppress(Exception):
                await job.close()
        streams.finish()
        return code, bytes(out.data), bytes(err.data)

    # --- paths and files --------------------------------------------------------------------------

    def _remote(self, path: str) -> str:
        """A contract path as a path in the machine (not normalised)."""
        if not path:
            raise SandboxError("empty path", path=path)
        if "\0" in path:
            raise SandboxError(f"{path!r}: path contains a NUL byte", path=path)
        if path == WORKSPACE or path.startswith(WORKSPACE + "/"):
            return self.workspace + path[len(WORKSPACE) :]
        return path if path.startswith("/") else f"{self.workspace}/{path}"

    async def exec_path(self, path: str) -> str:
        self._check_started()
        resolved = posixpath.normpath(self._remote(path))
        if resolved != self.workspace and not resolved.startswith(self.workspace + "/"):
            raise PathOutsideWorkspace(f"{path}: outside the workspace ({WORKSPACE})", path=path)
        return resolved

    async def _file_op(self, op: str, path: str, arg: str = "") -> bytes:
        self._remote(path)  # a bad path is refused before anything runs

        def line() -> str:
            return shlex.join(["sh", "-c", FILE_OP, "oma-file", op, self._remote(path), arg, self.workspace])

        code, out, err = await self._revived(lambda: self._quick(line(), _HELPER_TIMEOUT), revive=True)
        if code == 0:
            return out
        raise file_op_error(code, path, arg, out, err.decode(errors="replace"))

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self._check_started()
        limit = "" if max_bytes is None else str(max(0, max_bytes))
        _, _, resolved = (await self._file_op("stat", path, limit)).decode("utf-8", "surrogateescape").partition("\n")
        data = await self._files(path, self._download(resolved))
        if max_bytes is not None and len(data) > max_bytes:  # grew since it was measured
            raise FileTooLarge(f"{path} is over the {max_bytes}-byte limit", path=path, size=len(data), limit=max_bytes)
        return data

    async def write_file(self, path: str, data: bytes) -> None:
        self._check_started()
        _, _, resolved = (await self._file_op("write", path)).decode("utf-8", "surrogateescape").partition("\n")
        await self._files(path, self._upload(resolved, data))

    async def _files(self, path: str, work: Awaitable[T]) -> T:
        try:
            return await work
        except SandboxError:
            raise
        except Exception as e:
            raise SandboxError(f"{path}: {self._describe(e)}", path=path) from e
