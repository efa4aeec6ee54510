"""Sandbox runtimes: where a session's tools run. `open_sandbox` picks one by name."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import cast

from sandbox.base import (
    WORKSPACE,
    ExecResult,
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    PathOutsideWorkspace,
    Sandbox,
    SandboxError,
    SandboxFactory,
    SandboxOptions,
    SandboxUnavailable,
)

__all__ = [
    "RUNTIMES",
    "WORKSPACE",
    "ExecResult",
    "FileNotFound",
    "FileTooLarge",
    "IsADirectory",
    "PathOutsideWorkspace",
    "Sandbox",
    "SandboxError",
    "SandboxOptions",
    "SandboxUnavailable",
    "open_sandbox",
    "runtime_factory",
]

# Runtime name -> "module:factory". Imported on first use, so a runtime's SDK (docker, e2b, ...)
# is needed only by deployments that choose it.
_RUNTIMES: Mapping[str, str] = MappingProxyType(
    {
        "docker": "sandbox.docker:DockerSandbox",
        "local-subprocess": "sandbox.local:LocalSandbox",
        "bubblewrap": "sandbox.bubblewrap:BubblewrapSandbox",
        "e2b": "sandbox.e2b:E2BSandbox",
        "daytona": "sandbox.daytona:DaytonaSandbox",
    }
)
RUNTIMES = frozenset(_RUNTIMES)
logger = logging.getLogger("oma.sandbox")


def runtime_factory(runtime: str) -> SandboxFactory:
    target = _RUNTIMES.get(runtime)
    if target is None:
        known = ", ".join(sorted(_RUNTIMES))
        raise SandboxUnavailable(f"unknown sandbox runtime {runtime!r}; known runtimes: {known}")
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SandboxUnavailable(f"sandbox runtime {runtime!r} is not installed: {e}") from e
    return cast(SandboxFactory, getattr(module, name))


AUTO = "auto"


@functools.cache
def auto_runtime(root: Path) -> str:
    """`bubblewrap` where it can isolate on this machine, else `local-subprocess` (which warns
    loudly that it does not). Decided once per process; blocking, so call it from a thread."""
    from sandbox.bubblewrap import available

    reason = available()
    if reason is None:
        # The sandbox uid must be able to reach the workspaces under `root`.
        closed = next((p for p in (root, *root.parents) if p.exists() and not os.stat(p).st_mode & 0o001), None)
        if closed is None:
            return "bubblewrap"
        reason = f"{closed} is not searchable by other users, so sandboxes could not reach {root}"
    logger.warning("sandbox runtime: bubblewrap is not usable here (%s); falling back to local-subprocess", reason)
    return "local-subprocess"


async def open_sandbox(session_id: str, *, runtime: str, root: Path, options: SandboxOptions | None = None) -> Sandbox:
    """The session's sandbox, started: a new workspace, or the one an earlier process left."""
    if runtime == AUTO:
        runtime = await asyncio.to_thread(auto_runtime, root)
    sandbox = runtime_factory(runtime)(session_id, root=root, options=options or SandboxOptions())
    await sandbox.start()
    return sandbox
