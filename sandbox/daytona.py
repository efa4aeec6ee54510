"""The `daytona` runtime: each session's sandbox is a Daytona sandbox, through the official
`daytona` SDK (`pip install 'open-managed-agents[daytona]'`).

The sandbox is created from `options.image` (a Daytona snapshot; default: the organisation's
default snapshot) with the label `oma-session=<session_id>`, all network blocked unless the
environment allows it, and Daytona's auto-stop left on (a stopped sandbox keeps its disk).
`stop()` stops it; the next `start()` of the session finds it by its label and starts it again.

Commands run in Daytona *sessions* (one per concurrent command, reused): a session command
gives stdout and stderr apart and streams them, where `process.exec` merges them. Our own short
scripts (path checks, kills) use `process.exec`: one round trip.

Credentials: `options.credentials["api_key"]` (DAYTONA_API_KEY in the settings, or the vault),
`options.api_url` (DAYTONA_API_URL), `credentials["target"]` (DAYTONA_TARGET, the region).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, Any

from sandbox.base import FileNotFound, SandboxUnavailable
from sandbox.hosted import SESSION_LABEL, HostedSandbox
from sandbox.shell import Streams

try:
    from daytona import (
        AsyncDaytona,
        CreateSandboxFromSnapshotParams,
        DaytonaAuthenticationError,
        DaytonaConfig,
        DaytonaFileNotFoundError,
        DaytonaNotFoundError,
        ListSandboxesQuery,
        SessionExecuteRequest,
    )
except ImportError as e:  # optional: `available()` and `start()` say what is missing
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

if TYPE_CHECKING:
    from daytona import AsyncSandbox

_START_TIMEOUT = 120.0
_EXIT_CODE_WAIT = 5.0
_RESUMABLE = {"stopped", "archived", "paused", "error"}
# What the toolbox proxy answers for a machine that is not running.
_GONE_CODES = {"SANDBOX_NOT_STARTED", "SANDBOX_NOT_FOUND"}


def available() -> str | None:
    if _IMPORT_ERROR is not None:
        return f"the daytona SDK is not installed ({_IMPORT_ERROR}); pip install 'open-managed-agents[daytona]'"
    return None


class _SessionCommand:
    """A command run asynchronously in one of the sandbox's sessions, its logs followed."""

    def __init__(self, owner: DaytonaSandbox, session: str, cmd_id: str, streams: Streams) -> None:
        self.owner = owner
        self.session = session
        self.cmd_id = cmd_id
        self.killed = False
        self.finished = False
        process = owner._box.process
        self.logs = asyncio.ensure_future(
            process.get_session_command_logs_async(
                session,
                cmd_id,
                lambda text: streams.feed(1, text.encode()),
                lambda text: streams.feed(2, text.encode()),
            )
        )

    async def wait(self) -> int:
        await self.logs  # ends with the command
        process = self.owner._box.process
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _EXIT_CODE_WAIT
        while True:
            command = await process.get_session_command(self.session, self.cmd_id)
            if command.exit_code is not None:
                self.finished = True
                return int(command.exit_code)
            if loop.time() > deadline:
                return -1
            await asyncio.sleep(0.02)

    async def kill(self) -> None:
        # Deleting the session kills what runs in it; the session is not reused.
        if not self.killed:
            self.killed = True
            with contextlib.suppress(DaytonaNotFoundError):
                await self.owner._box.process.delete_session(self.session)

    async def close(self) -> None:
        if not self.logs.done():
            self.logs.cancel()
            with contextlib.suppress(BaseException):
                await self.logs
        if self.finished and not self.killed:
            self.owner._sessions.append(self.session)


class DaytonaSandbox(HostedSandbox):
    runtime = "daytona"
    # Session logs end every line with a newline, a last line without one too.
    line_framed_output = True

    _client: AsyncDaytona | None = None
    _sandbox: AsyncSandbox | None = None
    _sessions: list[str]

    def _gone(self, e: BaseException) -> bool:
        if _IMPORT_ERROR is not None:
            return False
        return getattr(e, "code", None) in _GONE_CODES or (
            isinstance(e, DaytonaNotFoundError) and not isinstance(e, DaytonaFileNotFoundError)
        )

    def _describe(self, e: BaseException) -> str:
        if _IMPORT_ERROR is None and isinstance(e, DaytonaAuthenticationError):
            return (
                f"Daytona refused the API key (set DAYTONA_API_KEY in the settings, or a vault "
                f"environment_variable credential named DAYTONA_API_KEY): {e}"
            )
        return super()._describe(e)

    async def _attach(self, *, create: bool = True) -> bool:
        if _IMPORT_ERROR is not None:
            raise SandboxUnavailable(available() or "")
        self._sessions = []
        creds = self.options.credentials
        config: dict[str, Any] = {}
        if creds.get("api_key"):
            config["api_key"] = creds["api_key"]
        if self.options.api_url:
            config["api_url"] = self.options.api_url
        if creds.get("target"):
            config["target"] = creds["target"]
        self._client = client = AsyncDaytona(DaytonaConfig(**config))
        # Read to the end: leaving the SDK's async generator early upsets its tracing context.
        matches = [sb async for sb in client.list(ListSandboxesQuery(labels={SESSION_LABEL: self.session_id}))]
        if matches:
            found = matches[0]
            state = str(getattr(found.state, "value", found.state) or "")
            if state in _RESUMABLE:
                await found.start(timeout=_START_TIMEOUT)
            elif state != "started":
                await found.wait_for_sandbox_start(timeout=_START_TIMEOUT)
            self._sandbox = found
            return True
        if not create:
            return False
        params = CreateSandboxFromSnapshotParams(
            snapshot=self.options.image or None,
            labels={SESSION_LABEL: self.session_id},
            network_block_all=not self.options.networking,
        )
        self._sandbox = await client.create(params, timeout=_START_TIMEOUT)
        return True

    @property
    def _box(self) -> AsyncSandbox:
        if self._sandbox is None:
            raise SandboxUnavailable(f"daytona sandbox for {self.session_id} is not started")
        return self._sandbox

    async def _launch(self, command: str, streams: Streams) -> _SessionCommand:
        process = self._box.process
        session = self._sessions.pop() if self._sessions else None
        if session is None:
            session = f"oma-{secrets.token_hex(8)}"
            await process.create_session(session)
        try:
            started = await process.execute_session_command(
                session, SessionExecuteRequest(command=command, run_async=True)
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await process.delete_session(session)
            raise
        return _SessionCommand(self, session, str(started.cmd_id), streams)

    async def _quick(self, line: str, limit: float) -> tuple[int, bytes, bytes]:
        # One round trip; the output is stdout and stderr together (fine for our scripts, which
        # print their answer on stdout only when they succeed).
        response = await self._box.process.exec(line, timeout=max(1, int(limit)))
        output = (response.result or "").encode()
        code = int(response.exit_code if response.exit_code is not None else -1)
        return code, output, output if code else b""

    async def _upload(self, path: str, data: bytes) -> None:
        await self._box.fs.upload_file(data, path)

    async def _download(self, path: str) -> bytes:
        try:
            return bytes(await self._box.fs.download_file(path))
        except DaytonaNotFoundError as e:
            raise FileNotFound(f"{path}: no such file", path=path) from e

    async def _suspend(self) -> None:
        await self._box.stop(timeout=_START_TIMEOUT)

    async def _delete(self) -> None:
        with contextlib.suppress(DaytonaNotFoundError):
            await self._box.delete()

    async def _close(self) -> None:
        self._sandbox = None
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
