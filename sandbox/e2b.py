"""The `e2b` runtime: each session's sandbox is an E2B sandbox (a Firecracker microVM), through
the official `e2b` SDK (`pip install 'open-managed-agents[e2b]'`).

The sandbox is created from `options.image` (an E2B template; default `base`) with the metadata
`oma-session=<session_id>`, internet access as the environment allows, and a lifecycle that
pauses it (rather than killing it) when its timeout runs out. `stop()` pauses it too; the next
`start()` of the session finds it by its metadata and resumes it, workspace and all.

Credentials: `options.credentials["api_key"]` (from E2B_API_KEY in the settings, or the vault),
`options.api_url` for a self-hosted control plane; `credentials` may also carry `domain` and
`sandbox_url` (E2B_DOMAIN, E2B_SANDBOX_URL). None of them is visible to commands.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from sandbox.base import FileNotFound, SandboxUnavailable
from sandbox.hosted import SESSION_LABEL, HostedSandbox
from sandbox.shell import Streams

try:
    from e2b import (
        AsyncSandbox,
        AuthenticationException,
        CommandExitException,
        NotFoundException,
        SandboxNotFoundException,
        SandboxNotRunningException,
        SandboxQuery,
        SandboxState,
    )
except ImportError as e:  # optional: `available()` and `start()` say what is missing
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

if TYPE_CHECKING:
    from e2b import AsyncCommandHandle

DEFAULT_TEMPLATE = "base"
# How long a sandbox may sit unused before E2B pauses it (our own idle stop comes first).
SANDBOX_TIMEOUT = 3600


def available() -> str | None:
    if _IMPORT_ERROR is not None:
        return f"the e2b SDK is not installed ({_IMPORT_ERROR}); pip install 'open-managed-agents[e2b]'"
    return None


class _Command:
    def __init__(self, handle: AsyncCommandHandle) -> None:
        self.handle = handle

    async def wait(self) -> int:
        try:
            result = await self.handle.wait()
        except CommandExitException as e:
            return _exit_code(e.exit_code, e.error)
        return _exit_code(result.exit_code, result.error)

    async def kill(self) -> None:
        await self.handle.kill()

    async def close(self) -> None:
        await self.handle.disconnect()


def _exit_code(code: int, error: str | None) -> int:
    # envd reports a process killed by a signal as exit code -1 with `error` "signal: killed".
    if code >= 0:
        return code
    signals = {"killed": 9, "terminated": 15, "interrupt": 2, "aborted": 6, "segmentation fault": 11}
    return -signals.get((error or "").removeprefix("signal: ").strip().lower(), 1)


class E2BSandbox(HostedSandbox):
    runtime = "e2b"

    _sandbox: AsyncSandbox | None = None
    _extended = 0.0  # when the service's timeout was last set (monotonic)

    def _connection(self) -> dict[str, Any]:
        creds = self.options.credentials
        opts: dict[str, Any] = {}
        if creds.get("api_key"):
            opts["api_key"] = creds["api_key"]
        if self.options.api_url:
            opts["api_url"] = self.options.api_url
        for key in ("domain", "sandbox_url"):
            if creds.get(key):
                opts[key] = creds[key]
        # A plain-http endpoint (a self-hosted or local E2B) speaks HTTP/1.1, not h2 with TLS.
        urls = [opts.get("api_url") or "", opts.get("sandbox_url") or ""]
        if any(url.startswith("http://") for url in urls):
            opts["http_version"] = "1.1"
        return opts

    def _gone(self, e: BaseException) -> bool:
        return _IMPORT_ERROR is None and isinstance(e, SandboxNotRunningException | SandboxNotFoundException)

    def _describe(self, e: BaseException) -> str:
        if _IMPORT_ERROR is None and isinstance(e, AuthenticationException):
            return (
                f"E2B refused the API key (set E2B_API_KEY in the settings, or a vault "
                f"environment_variable credential named E2B_API_KEY): {e}"
            )
        return super()._describe(e)

    async def _attach(self, *, create: bool = True) -> bool:
        if _IMPORT_ERROR is not None:
            raise SandboxUnavailable(available() or "")
        opts = self._connection()
        query = SandboxQuery(
            metadata={SESSION_LABEL: self.session_id}, state=[SandboxState.RUNNING, SandboxState.PAUSED]
        )
        found = await AsyncSandbox.list(query=query, limit=1, **opts).next_items()
        if found:
            self._sandbox = await AsyncSandbox.connect(found[0].sandbox_id, timeout=SANDBOX_TIMEOUT, **opts)
            self._extended = time.monotonic()
            return True
        if not create:
            return False
        self._sandbox = await AsyncSandbox.create(
            template=self.options.image or DEFAULT_TEMPLATE,
            timeout=SANDBOX_TIMEOUT,
            metadata={SESSION_LABEL: self.session_id},
            allow_internet_access=self.options.networking,
            lifecycle={"on_timeout": "pause"},
            idempotency_key=str(uuid.uuid4()),
            **opts,
        )
        self._extended = time.monotonic()
        return True

    @property
    def _box(self) -> AsyncSandbox:
        if self._sandbox is None:
            raise SandboxUnavailable(f"e2b sandbox for {self.session_id} is not started")
        return self._sandbox

    async def _launch(self, command: str, streams: Streams) -> _Command:
        box = self._box
        if time.monotonic() - self._extended > SANDBOX_TIMEOUT / 2:
            # A session that works for longer than the timeout must not be paused mid-command.
            await box.set_timeout(SANDBOX_TIMEOUT)
            self._extended = time.monotonic()
        handle = await box.commands.run(
            command,
            background=True,
            timeout=0,  # our own deadline applies (the wrapper is killed, then the stream ends)
            on_stdout=lambda text: streams.feed(1, text.encode()),
            on_stderr=lambda text: streams.feed(2, text.encode()),
        )
        return _Command(handle)

    async def _upload(self, path: str, data: bytes) -> None:
        await self._box.files.write(path, data)

    async def _download(self, path: str) -> bytes:
        try:
            return bytes(await self._box.files.read(path, format="bytes"))
        except NotFoundException as e:
            raise FileNotFound(f"{path}: no such file", path=path) from e

    async def _suspend(self) -> None:
        await self._box.pause()

    async def _delete(self) -> None:
        with contextlib.suppress(NotFoundException):
            await self._box.kill()

    async def _close(self) -> None:
        self._sandbox = None
