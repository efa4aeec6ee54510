"""Sandbox runtimes: where a session's tools run. `open_sandbox` picks one by name."""

from __future__ import annotations

import importlib
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
        "local-subprocess": "sandbox.local:LocalSandbox",
    }
)
RUNTIMES = frozenset(_RUNTIMES)


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


async def open_sandbox(session_id: str, *, runtime: str, root: Path, options: SandboxOptions | None = None) -> Sandbox:
    """The session's sandbox, started: a new workspace, or the one an earlier process left."""
    sandbox = runtime_factory(runtime)(session_id, root=root, options=options or SandboxOptions())
    await sandbox.start()
    return sandbox
