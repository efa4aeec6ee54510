"""The `bubblewrap` runtime: every command runs in its own bubblewrap sandbox, as an unprivileged
host uid (`SANDBOX_UID` unless told otherwise), with private PID, network, IPC and UTS namespaces.

Inside, `/usr` and an allow-list of `/etc` are read-only, `/tmp` is a fresh tmpfs, the session's
workspace (`<root>/<session_id>/workspace` on the host) is `/workspace`, and nothing else of the
host exists. Networking, when the environment allows it, is the host's network (`--share-net`).
Memory, process and CPU limits use a cgroup per session (`sandbox.limits`).

The server must run as root: it drops to the sandbox uid for every command. Run as root without
that drop, the sandbox's root could remount the host's `/usr` read-write. Files are read and
written by the server itself, walking the workspace one component at a time so that no symlink
leads it out (`_WorkspaceFiles`).

Packages (pip, npm) are installed once per environment, inside a sandbox with networking, into
`<root>/_envs/<environment_id>/<digest>`, which every session of that environment mounts read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType

from sandbox import limits as cgroups
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
from sandbox.local import _DRAIN_TIMEOUT, _EOF_GRACE, _closed, _kill_leftovers, _killpg, _Output, _reason

log = logging.getLogger("oma.sandbox")

SANDBOX_UID = 20000
ENV_MOUNT = "/opt/oma-env"
INSTALL_TIMEOUT = 900.0
PACKAGE_MANAGERS = ("pip", "npm")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_TOOLS = ("bwrap", "setpriv", "sh", "prlimit")
# What of the host's /etc a sandbox sees: what programs need to run, resolve names and check TLS
# certificates. Not the rest: it holds password hashes, keys and other services' configs (and
# pip.conf or npmrc may hold registry credentials). Each entry is a bind mount, ~0.15 ms per exec.
_ETC = (
    "alternatives", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf", "ssl", "ld.so.cache",
    "localtime", "os-release", "protocols", "services", "mime.types",
)  # fmt: skip
_MAX_LINKS = 40
_RETRIES = 5  # a path swapped for a symlink between looking and opening: look again
_LOCK_POLL = 0.1


@functools.cache
def _warn_rlimits(uncovered: tuple[str, ...]) -> None:
    log.warning(
        "sandbox runtime 'bubblewrap': no writable cgroup for %s here; using rlimits instead (weaker)",
        ", ".join(uncovered),
    )


def find_tools() -> dict[str, str] | str:
    """The host programs this runtime runs, by name; or why they are not all there."""
    found = {name: shutil.which(name, path=_PATH) for name in _TOOLS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install bubblewrap util-linux)"
    return {name: path for name, path in found.items() if path is not None}


def available(uid: int = SANDBOX_UID) -> str | None:
    """None when a sandbox can run on this machine; otherwise why not."""
    if not os.path.isdir("/proc/self/ns"):
        return "bubblewrap needs Linux namespaces"
    if os.geteuid() != 0:
        return "the bubblewrap runtime must run as root, to run each sandbox as its own unprivileged uid"
    tools = find_tools()
    if isinstance(tools, str):
        return tools
    argv = [*_drop_uid(tools["setpriv"], uid), tools["bwrap"], *_system_mounts(), *_NAMESPACES, "--", "true"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": _PATH})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap could not start: {e}"
    if res.returncode != 0:
        return f"bubblewrap cannot start a sandbox here: {res.stderr.strip() or f'exit code {res.returncode}'}"
    return None


_NAMESPACES = ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session")


def _drop_uid(setpriv: str, uid: int) -> list[str]:
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]


def _system_mounts() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    return args


def _etc_mounts() -> list[str]:
    names = [*_ETC, *sorted(p.name for p in Path("/etc").glob("python3*"))]
    args: list[str] = []
    for name in names:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return [*args, "--symlink", "../proc/self/mounts", "/etc/mtab"]


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """What one bwrap invocation mounts and runs with."""

    workspace: Path | None
    etc: Path
    env_dir: Path | None = None
    env_writable: bool = False
    networking: bool = False


class BubblewrapSandbox(Sandbox):
    runtime = "bubblewrap"

    def __init__(
        self, session_id: str, *, root: Path, options: SandboxOptions | None = None, uid: int = SANDBOX_UID
    ) -> None:
        if uid <= 0:
            raise SandboxError("the sandbox uid must be an unprivileged uid, not root")
        self.session_id = check_session_id(session_id)
        self.options = options or SandboxOptions()
        self.uid = uid
        self.workspace = WORKSPACE
        self._root = Path(root).absolute()
        self._session_dir = self._root / self.session_id
        self._files = _WorkspaceFiles(self._session_dir / "workspace", uid)
        self._limits = cgroups.Limits(
            memory_bytes=self.options.memory_mb * 1024 * 1024 if self.options.memory_mb else None,
            pids=self.options.pids,
            cpus=self.options.cpus,
        )
        self._cgroup: cgroups.SessionCgroup | None = None
        self._prefix: list[str] = []
        self._mounts: list[str] = []
        self._env: dict[str, str] = {}
        self._layout = _Layout(self._files.root, self._session_dir / "etc")
        self._started = False
        self._running: set[asyncio.subprocess.Process] = set()
        self._none_running = asyncio.Event()
        self._none_running.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if os.geteuid() != 0:
            raise SandboxUnavailable("the bubblewrap runtime must run as root (it drops to the sandbox uid)")
        tools = find_tools()
        if isinstance(tools, str):
            raise SandboxUnavailable(f"sandbox runtime 'bubblewrap' is not usable: {tools}")
        try:
            await asyncio.to_thread(self._prepare_dirs)
        except OSError as e:
            raise SandboxUnavailable(f"cannot create the workspace of session {self.session_id}: {_reason(e)}") from e
        self._cgroup = await asyncio.to_thread(self._prepare_cgroup)
        uncovered = self._cgroup.uncovered if self._cgroup else self._limits.wanted()
        if uncovered:
            _warn_rlimits(uncovered)
        self._prefix = [
            *cgroups.join_argv(tools["sh"], self._cgroup.procs_files if self._cgroup else []),
            *cgroups.rlimit_argv(tools["prlimit"], self._limits, uncovered),
            *_drop_uid(tools["setpriv"], self.uid),
            tools["bwrap"],
        ]
        self._mounts = [*_system_mounts(), *_etc_mounts()]
        layout = _Layout(self._files.root, self._session_dir / "etc", networking=self.options.networking)
        check = await self._exec_in(layout, ["true"], WORKSPACE, {"PATH": _PATH}, 30, 4096)
        if check.exit_code != 0:
            raise SandboxUnavailable(f"bubblewrap cannot start the sandbox: {check.stderr.strip() or check.exit_code}")
        env_dir = await self._install_packages()
        self._env = _package_env(env_dir, self.options.packages)
        self._layout = dataclasses.replace(layout, env_dir=env_dir)
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for proc in list(self._running):
            _killpg(proc.pid)
        if self._cgroup is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_running.wait(), _DRAIN_TIMEOUT)
            await asyncio.to_thread(self._cgroup.remove)

    def _prepare_dirs(self) -> None:
        for directory in (self._root, self._session_dir, self._session_dir / "etc"):
            if not directory.exists():
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o711)
        _check_searchable(self._session_dir / "etc", self.uid)
        _write_atomic(self._session_dir / "etc" / "passwd", _passwd(self.uid))
        _write_atomic(self._session_dir / "etc" / "group", _group(self.uid))
        self._files.create()

    def _prepare_cgroup(self) -> cgroups.SessionCgroup | None:
        cgroup = cgroups.SessionCgroup(cgroups.detect(), self._limits, self.session_id)
        try:
            cgroup.create()
        except OSError as e:
            log.warning("sandbox %s: cannot set up cgroup limits (%s); using rlimits", self.session_id, _reason(e))
            return None
        return cgroup

    def _check_started(self) -> None:
        if not self._started:
            raise SandboxUnavailable(f"sandbox for session {self.session_id} is not started (call start())")

    # --- files -----------------------------------------------------------------------------------

    async def exec_path(self, path: str) -> str:
        self._check_started()
        return await asyncio.to_thread(self._files.sandbox_path, path)

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self._check_started()
        return await asyncio.to_thread(self._files.read, path, max_bytes)

    async def write_file(self, path: str, data: bytes) -> None:
        self._check_started()
        await asyncio.to_thread(self._files.write, path, data)

    # --- exec ------------------------------------------------------------------------------------

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
        inner_cwd = await asyncio.to_thread(self._files.directory, cwd or WORKSPACE)
        run_env = {**_base_env(WORKSPACE), **self._env, **(env or {})}
        return await self._exec_in(self._layout, argv, inner_cwd, run_env, timeout, max_output)

    async def _exec_in(
        self, layout: _Layout, argv: list[str], cwd: str, env: dict[str, str], limit: float, max_output: int
    ) -> ExecResult:
        options = self._options(layout, cwd, env)
        res = await self._spawn(options, argv, limit, max_output)
        if _join_failed(res) and self._cgroup is not None:
            # The session's cgroup went away (another sandbox object of this session stopped).
            try:
                await asyncio.to_thread(self._cgroup.create)
            except OSError as e:
                raise SandboxError(f"exec: cannot set up the sandbox's resource limits: {_reason(e)}") from e
            res = await self._spawn(options, argv, limit, max_output)
        if _join_failed(res):
            raise SandboxError("exec: cannot put the command under the sandbox's resource limits")
        return _exec_failure(res, argv[0])

    def _options(self, layout: _Layout, cwd: str, env: Mapping[str, str]) -> list[str]:
        """bwrap's options for one command: given to it through a memfd (`--args`), so that the
        sandbox's `ps` shows no host paths."""
        args = list(self._mounts)
        args += ["--ro-bind", str(layout.etc / "passwd"), "/etc/passwd"]
        args += ["--ro-bind", str(layout.etc / "group"), "/etc/group"]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
        if layout.workspace is not None:
            args += ["--bind", str(layout.workspace), WORKSPACE]
        if layout.env_dir is not None:
            args += ["--bind" if layout.env_writable else "--ro-bind", str(layout.env_dir), ENV_MOUNT]
        # The root is bwrap's own tmpfs (it holds /etc, /var, ...): read-only once everything is mounted.
        args += ["--remount-ro", "/", *_NAMESPACES, "--hostname", "sandbox"]
        if layout.networking:
            args.append("--share-net")
        args += ["--chdir", cwd, "--clearenv"]
        for key, value in env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise SandboxError(f"exec: invalid environment variable {key!r}")
            args += ["--setenv", key, value]
        return args

    async def _spawn(self, options: list[str], argv: list[str], limit: float, max_output: int) -> ExecResult:
        if any("\0" in arg for arg in argv):
            raise SandboxError("exec: the command contains a NUL byte")
        stdout = await _Output.open(max_output)
        try:
            stderr = await _Output.open(max_output)
        except BaseException:
            stdout.close()
            raise
        try:
            args_fd = _args_file(options)  # _run closes it
            command = [*self._prefix, "--args", str(args_fd), "--", *argv]
            return await self._run(command, args_fd, limit, stdout, stderr)
        finally:
            stdout.close()
            stderr.close()

    async def _run(self, argv: list[str], args_fd: int, limit: float, out: _Output, err: _Output) -> ExecResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out.write_fd,
                stderr=err.write_fd,
                cwd="/",
                env={"PATH": _PATH},
                start_new_session=True,
                pass_fds=(args_fd,),
            )
        except (OSError, ValueError) as e:
            raise SandboxError(f"exec: cannot start the sandbox: {e}") from e
        finally:
            os.close(args_fd)
            out.close_write_end()
            err.close_write_end()

        # Killing bwrap takes its whole PID namespace down (--die-with-parent); the local runtime's
        # clean-up also finds anything still holding the output pipes.
        inodes = {out.inode, err.inode}
        self._running.add(proc)
        self._none_running.clear()
        cleaned = False
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), limit)
            except TimeoutError:
                timed_out = True
                await asyncio.to_thread(_kill_leftovers, proc.pid, proc.returncode is None, inodes)
            else:
                _killpg(proc.pid)
                if not await _closed(out, err, _EOF_GRACE):
                    await asyncio.to_thread(_kill_leftovers, proc.pid, False, inodes)
            cleaned = True
            if not await _closed(out, err, _DRAIN_TIMEOUT):
                log.warning("sandbox %s: output pipes still open after killing the command", self.session_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _DRAIN_TIMEOUT)
        finally:
            if not cleaned:
                _kill_leftovers(proc.pid, proc.returncode is None, inodes)
            self._running.discard(proc)
            if not self._running:
                self._none_running.set()

        code = proc.returncode
        exit_code = 128 + signal.SIGKILL if code is None else (128 - code if code < 0 else code)
        return ExecResult(
            exit_code=exit_code,
            stdout=out.capture.text(),
            stderr=err.capture.text(),
            truncated=out.capture.truncated or err.capture.truncated,
            timed_out=timed_out,
        )

    # --- packages --------------------------------------------------------------------------------

    async def _install_packages(self) -> Path | None:
        wanted = {m: tuple(p) for m, p in self.options.packages.items() if p}
        if not wanted:
            return None
        unsupported = sorted(set(wanted) - set(PACKAGE_MANAGERS))
        if unsupported:
            raise SandboxError(
                f"the bubblewrap sandbox cannot install {', '.join(unsupported)} packages: they need root inside "
                "the sandbox, which this runtime never grants. Use pip or npm packages, install the tools on the "
                "host, or use a container runtime"
            )
        for manager, names in wanted.items():
            bad = [n for n in names if not n or n.startswith("-") or "\0" in n]
            if bad:
                raise SandboxError(f"invalid {manager} package name {bad[0]!r}")
        env_id = check_session_id(self.options.environment_id or "_default")
        digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
        env_root = self._root / "_envs" / env_id
        final = env_root / digest
        if (final / ".oma-complete").exists():
            return final
        await asyncio.to_thread(_make_searchable_dirs, self._root, env_root)
        async with _FileLock(env_root / ".lock", INSTALL_TIMEOUT + 60):
            if not (final / ".oma-complete").exists():
                await self._install_into(env_root, final, wanted)
        return final

    async def _install_into(self, env_root: Path, final: Path, wanted: dict[str, tuple[str, ...]]) -> None:
        staging = env_root / f"{final.name}.partial"
        await asyncio.to_thread(_fresh_dir, staging, self.uid)
        layout = _Layout(None, self._session_dir / "etc", staging, env_writable=True, networking=True)
        env = _base_env("/tmp")
        deadline = time.monotonic() + INSTALL_TIMEOUT
        try:
            for manager, names in wanted.items():
                argv = _install_command(manager, names)
                left = max(1.0, deadline - time.monotonic())
                res = await self._exec_in(layout, argv, "/tmp", env, left, DEFAULT_MAX_OUTPUT)
                if res.exit_code != 0 or res.timed_out:
                    raise SandboxError(_install_error(manager, names, res, INSTALL_TIMEOUT))
            await asyncio.to_thread((staging / ".oma-complete").write_text, json.dumps(wanted, sort_keys=True))
            await asyncio.to_thread(staging.rename, final)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)


def _base_env(home: str) -> dict[str, str]:
    env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": home}
    # node trusts only its own CA list: point it at the system's too, where an operator adds the CA
    # of a TLS-intercepting proxy or a private registry.
    if os.path.exists(_CA_BUNDLE):
        env["NODE_EXTRA_CA_CERTS"] = _CA_BUNDLE
    return env


def _install_command(manager: str, names: tuple[str, ...]) -> list[str]:
    if manager == "pip":
        target = f"{ENV_MOUNT}/pip"
        return ["python3", "-m", "pip", "install", "--target", target, "--no-cache-dir", "--disable-pip-version-check",
                "--no-input", "--progress-bar", "off", *names]  # fmt: skip
    return ["npm", "install", "--prefix", f"{ENV_MOUNT}/npm", "--no-audit", "--no-fund", "--no-update-notifier",
            "--loglevel", "error", *names]  # fmt: skip


def _install_error(manager: str, names: tuple[str, ...], res: ExecResult, limit: float) -> str:
    what = f"installing the environment's {manager} packages ({' '.join(names)})"
    if res.timed_out:
        return f"{what} timed out after {limit:g}s"
    if res.exit_code == 127:
        tool = "python3" if manager == "pip" else "npm"
        return f"{what} failed: {tool} is not installed on the host, so the sandbox has none"
    tail = (res.stderr.strip() or res.stdout.strip())[-1500:]
    return f"{what} failed (exit code {res.exit_code}):\n{tail}"


def _package_env(env_dir: Path | None, packages: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    if env_dir is None:
        return {}
    env: dict[str, str] = {}
    bins: list[str] = []
    if packages.get("pip"):
        env["PYTHONPATH"] = f"{ENV_MOUNT}/pip"
        bins.append(f"{ENV_MOUNT}/pip/bin")
    if packages.get("npm"):
        env["NODE_PATH"] = f"{ENV_MOUNT}/npm/node_modules"
        bins.append(f"{ENV_MOUNT}/npm/node_modules/.bin")
    env["PATH"] = ":".join([*bins, _PATH])
    return env


class _FileLock:
    """An exclusive flock, polled so that no worker thread waits out a long install."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd = -1

    async def __aenter__(self) -> None:
        self._fd = await asyncio.to_thread(os.open, self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SandboxError(
                            "timed out waiting for another install of this environment's packages"
                        ) from None
                    await asyncio.sleep(_LOCK_POLL)
        except BaseException:
            os.close(self._fd)
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self._fd)  # releases the lock


def _args_file(args: list[str]) -> int:
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    try:
        os.write(fd, "".join(f"{arg}\0" for arg in args).encode())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _join_failed(res: ExecResult) -> bool:
    return res.exit_code == cgroups.JOIN_EXIT_CODE and res.stderr.startswith(cgroups.JOIN_FAILED)


def _exec_failure(res: ExecResult, program: str) -> ExecResult:
    """bwrap reports a program it cannot exec with exit code 1; the contract says 127 or 126."""
    if res.exit_code != 1 or res.stdout:
        return res
    if res.stderr == f"bwrap: execvp {program}: No such file or directory\n":
        return ExecResult(127, "", f"{program}: command not found\n")
    if res.stderr == f"bwrap: execvp {program}: Permission denied\n":
        return ExecResult(126, "", f"{program}: permission denied\n")
    return res


# --- host directories ------------------------------------------------------------------------------


def _passwd(uid: int) -> str:
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"sandbox:x:{uid}:{uid}:sandbox:{WORKSPACE}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )


def _group(uid: int) -> str:
    return f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n"


def _write_atomic(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    staging.write_text(text)
    staging.chmod(0o644)
    staging.replace(path)


def _check_searchable(path: Path, uid: int) -> None:
    """bwrap resolves its mount sources as the sandbox uid: every directory above them must let it in."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        searchable = st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)
        if not searchable:
            raise SandboxUnavailable(
                f"the sandbox uid {uid} cannot enter {directory}, which holds the sandboxes' workspaces: "
                f"make it searchable (chmod o+x {directory}) or choose another directory"
            )


def _make_searchable_dirs(root: Path, directory: Path) -> None:
    for d in reversed([directory, *directory.parents]):
        if d.is_relative_to(root) and not d.exists():
            d.mkdir(exist_ok=True)
            d.chmod(0o711)


def _fresh_dir(path: Path, uid: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    os.chown(path, uid, uid)
    path.chmod(0o755)


# --- the workspace, seen from the host -------------------------------------------------------------


class _Outside(Exception):
    pass


class _Missing(Exception):
    pass


class _NotADir(Exception):
    pass


@dataclasses.dataclass(slots=True)
class _Found:
    """A resolved path: an open fd of its directory and its last component (None: the directory
    itself). `names` are the directory's components below the workspace root."""

    dir_fd: int
    names: list[str]
    name: str | None

    def inner(self) -> str:
        parts = [*self.names, *([self.name] if self.name else [])]
        return str(PurePosixPath(WORKSPACE, *parts))

    def close(self) -> None:
        os.close(self.dir_fd)


class _WorkspaceFiles:
    """File access to a session's workspace from the (root) server, as the sandbox would see it:
    `..` stops at the workspace root, an absolute symlink is a sandbox path (so `/workspace/...`
    stays inside and anything else is outside), and every component is opened with O_NOFOLLOW
    relative to its directory's fd, so a symlink swapped in mid-walk is never followed out.
    What the server creates is owned by the sandbox uid."""

    def __init__(self, root: Path, uid: int) -> None:
        self.root = root
        self.uid = uid

    def create(self) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        st = self.root.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "the workspace is not a directory")
        if st.st_uid != self.uid:
            # First start, or a workspace left by another runtime or uid: hand all of it over.
            os.chown(self.root, self.uid, self.uid)
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in dirnames + filenames:
                    os.chown(os.path.join(dirpath, name), self.uid, self.uid, follow_symlinks=False)

    # The public operations map the walk's outcomes to the contract's errors, worded like the
    # local runtime's.

    def sandbox_path(self, path: str) -> str:
        found = self._find(path, lexical=True)
        found.close()
        return found.inner()

    def directory(self, path: str) -> str:
        try:
            found = self._find(path)
        except _Missing as e:
            raise FileNotFound(f"{path}: no such directory", path=path) from e
        except _NotADir as e:
            raise SandboxError(f"{path}: not a directory", path=path) from e
        try:
            if found.name is not None:
                st = os.stat(found.name, dir_fd=found.dir_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise SandboxError(f"{path}: not a directory", path=path)
        except FileNotFoundError as e:
            raise FileNotFound(f"{path}: no such directory", path=path) from e
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        finally:
            found.close()
        return found.inner()

    def read(self, path: str, max_bytes: int | None) -> bytes:
        fd = self._open(path, os.O_RDONLY, create=False)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectory(f"{path} is a directory", path=path)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError(f"{path} is not a regular file", path=path)
            if max_bytes is not None and st.st_size > max_bytes:
                raise FileTooLarge(
                    f"{path} is {st.st_size} bytes, over the {max_bytes}-byte limit",
                    path=path,
                    size=st.st_size,
                    limit=max_bytes,
                )
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        finally:
            os.close(fd)
        if max_bytes is not None and len(data) > max_bytes:  # grew since fstat()
            raise FileTooLarge(f"{path} is over the {max_bytes}-byte limit", path=path, size=len(data), limit=max_bytes)
        return data

    def write(self, path: str, data: bytes) -> None:
        fd = self._open(path, os.O_WRONLY | os.O_CREAT, create=True)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError(f"{path} is not a regular file", path=path)
            if st.st_uid != self.uid:
                os.fchown(fd, self.uid, self.uid)
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
        finally:
            os.close(fd)

    def _open(self, path: str, flags: int, *, create: bool) -> int:
        flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for _ in range(_RETRIES):
            try:
                found = self._find(path, create=create)
            except _Missing as e:
                raise FileNotFound(f"{path}: no such file", path=path) from e
            except _NotADir as e:
                if create:
                    raise SandboxError(f"{path}: a parent of this path is a file, not a directory", path=path) from e
                raise FileNotFound(f"{path}: no such file", path=path) from e
            try:
                if found.name is None:
                    raise IsADirectory(f"{path} is a directory", path=path)
                return os.open(found.name, flags, 0o644, dir_fd=found.dir_fd)
            except FileNotFoundError as e:
                raise FileNotFound(f"{path}: no such file", path=path) from e
            except IsADirectoryError as e:
                raise IsADirectory(f"{path} is a directory", path=path) from e
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue  # became a symlink after the walk: walk again, following it
                if e.errno == errno.ENXIO:  # a FIFO nobody reads
                    raise SandboxError(f"{path} is not a regular file", path=path) from e
                raise SandboxError(f"{path}: {_reason(e)}", path=path) from e
            finally:
                found.close()
        raise SandboxError(f"{path}: keeps changing while being opened", path=path)

    def _find(self, path: str, *, create: bool = False, lexical: bool = False) -> _Found:
        """Walk `path` from the workspace root. With `create`, missing directories are made; with
        `lexical`, the part after a missing directory (or a file) is taken as written."""
        try:
            return self._walk(path, create, lexical)
        except OSError as e:
            raise SandboxError(f"{path}: {_reason(e)}", path=path) from e

    def _walk(self, path: str, create: bool, lexical: bool) -> _Found:
        try:
            todo = self._components(path)
        except _Outside:
            raise PathOutsideWorkspace(f"{path}: outside the workspace ({WORKSPACE})", path=path) from None
        _normalise([], todo, path)  # refuses what climbs out as written, before anything is made
        todo.reverse()
        chain: list[tuple[int, str]] = []
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        links = 0
        try:
            while todo:
                name = todo.pop()
                if name == "..":
                    if not chain:
                        raise PathOutsideWorkspace(f"{path}: outside the workspace ({WORKSPACE})", path=path)
                    os.close(chain.pop()[0])
                    continue
                here = chain[-1][0] if chain else root_fd
                names = [n for _, n in chain]
                target = _link_target(name, here)
                if target is not None:
                    links += 1
                    if links > _MAX_LINKS:
                        raise SandboxError(f"{path}: too many levels of symbolic links", path=path)
                    try:
                        parts = self._components(target)
                    except _Outside:
                        raise PathOutsideWorkspace(f"{path}: leads outside the workspace", path=path) from None
                    if target.startswith("/"):
                        for fd, _ in chain:
                            os.close(fd)
                        chain.clear()
                    todo.extend(reversed(parts))
                    continue
                if not todo:
                    return _Found(os.dup(here), names, name)
                try:
                    fd = self._open_dir(name, here, create)
                except (_Missing, _NotADir):
                    if not lexical:
                        raise
                    rest = [name, *reversed(todo)]
                    return _Found(os.dup(here), _normalise(names, rest, path), None)
                chain.append((fd, name))
            here = chain[-1][0] if chain else root_fd
            return _Found(os.dup(here), [n for _, n in chain], None)
        finally:
            for fd, _ in chain:
                os.close(fd)
            os.close(root_fd)

    def _open_dir(self, name: str, here: int, create: bool) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(_RETRIES):
            try:
                return os.open(name, flags, dir_fd=here)
            except FileNotFoundError:
                if not create:
                    raise _Missing from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=here)
                    os.chown(name, self.uid, self.uid, dir_fd=here, follow_symlinks=False)
            except NotADirectoryError:
                raise _NotADir from None
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise _NotADir from None  # a symlink appeared after _link_target looked
        raise _Missing

    @staticmethod
    def _components(path: str) -> list[str]:
        if not path:
            raise SandboxError("empty path", path=path)
        if "\0" in path:
            raise SandboxError(f"{path!r}: path contains a NUL byte", path=path)
        pure = PurePosixPath(path)
        if not pure.is_absolute():
            return list(pure.parts)
        if pure.parts[1:2] != (WORKSPACE.strip("/"),):
            raise _Outside
        return list(pure.parts[2:])


def _link_target(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _normalise(names: list[str], rest: list[str], path: str) -> list[str]:
    out = list(names)
    for part in rest:
        if part == "..":
            if not out:
                raise PathOutsideWorkspace(f"{path}: outside the workspace ({WORKSPACE})", path=path)
            out.pop()
        elif part not in ("", "."):
            out.append(part)
    return out
