"""The sandbox contract: where a session's tools run.

One sandbox per session. Its workspace is a directory that outlives the sandbox object: it is
reused across turns and found again after a process restart (same session id, same workspace).

Paths given to `read_file`, `write_file` and `exec(cwd=...)` are paths inside the sandbox:
`/workspace` is the workspace root and a relative path resolves against it. `workspace` says how
the workspace appears to commands run by `exec` (`/workspace` in isolated runtimes) and
`exec_path` translates any sandbox path that way.

`exec` runs one command to completion. Processes it leaves running when it exits (or when it is
killed on timeout) are killed too, so nothing outlives the call and no output pipe stays open.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from core.errors import OMAError

WORKSPACE = "/workspace"
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_OUTPUT = 100_000
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class SandboxError(OMAError):
    """Base of every sandbox failure. `path` is the path as the caller gave it, when one is involved."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class FileNotFound(SandboxError):
    pass


class PathOutsideWorkspace(SandboxError):
    pass


class IsADirectory(SandboxError):
    pass


class FileTooLarge(SandboxError):
    def __init__(self, message: str, *, path: str | None = None, size: int, limit: int) -> None:
        super().__init__(message, path=path)
        self.size = size
        self.limit = limit


class SandboxUnavailable(SandboxError):
    """The runtime is unknown, cannot start, or the sandbox is not started (or already stopped)."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    """`exit_code` follows the shell: 128+N when killed by signal N, 127 when the program is missing.

    `stdout` and `stderr` each keep at most `max_output` bytes (decoded as UTF-8 with
    replacement); when more was written, `truncated` is set and the middle is replaced by a marker
    line, so both the start and the end of the output survive.
    """

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False
    timed_out: bool = False


class Sandbox(abc.ABC):
    runtime: str
    session_id: str
    workspace: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Create or re-attach the session's workspace. Idempotent."""

    @abc.abstractmethod
    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (a sandbox-side deadline, not a caller's)
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        """Run `command` (an argv list, or a string for `bash -c`) with stdin closed.

        `cwd` defaults to the workspace; `env` is added to the sandbox's minimal environment.
        A non-zero exit or a timeout is reported in the result, not raised.
        """

    @abc.abstractmethod
    async def exec_path(self, path: str) -> str:
        """`path` (a sandbox path) as commands run by `exec` see it, e.g. to pass it as an argument."""

    @abc.abstractmethod
    async def read_file(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The file's bytes; FileTooLarge when it is bigger than `max_bytes`."""

    @abc.abstractmethod
    async def write_file(self, path: str, data: bytes) -> None:
        """Create or overwrite the file, creating missing parent directories."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Kill running commands and release resources. The workspace is kept."""

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """How a session's sandbox is set up: from the environment's config and the settings."""

    networking: bool = True
    # Container image (docker), template (e2b) or image/snapshot (daytona); None: the runtime's default.
    image: str | None = None
    memory_mb: int | None = 1024
    pids: int | None = 256
    cpus: float | None = 1.0
    # The environment's packages by manager ("pip", "npm", "apt", ...), installed once per
    # environment (keyed by `environment_id`) and reused by its sessions.
    packages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    environment_id: str | None = None
    # Hosted runtimes: API base URL and credentials (from settings or the vault), e.g.
    # {"api_key": "..."}; never exposed inside the sandbox.
    api_url: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict)


class SandboxFactory(Protocol):
    def __call__(self, session_id: str, *, root: Path, options: SandboxOptions) -> Sandbox: ...


def check_session_id(session_id: str) -> str:
    # The id names a directory on the host, so it must not be able to climb out of `root`.
    if not _SESSION_ID.fullmatch(session_id):
        raise SandboxError(f"invalid session id {session_id!r}: use 1-128 of [A-Za-z0-9_-]")
    return session_id
