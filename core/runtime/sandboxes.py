"""One sandbox per session, opened on first use and reused across turns; re-attached after a
restart (the runtime keeps the workspace by session id).

The runtime comes from the settings (`SANDBOX_RUNTIME`) unless the environment's metadata names
one (`oma.runtime`, and `oma.image` for container runtimes); networking and packages come from
the environment's config."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.db import Database, environments
from core.environments import PACKAGE_MANAGERS
from sandbox import SandboxOptions, open_sandbox


def options_for(config: dict[str, Any], metadata: dict[str, str], env_id: str, base: SandboxOptions) -> SandboxOptions:
    networking = True
    packages: dict[str, tuple[str, ...]] = {}
    if config.get("type") == "cloud":
        net = config.get("networking") or {}
        # Limited networking with an allow-list needs a filtering proxy we don't have yet: until
        # then a limited environment gets networking only if it lists hosts, and none otherwise.
        networking = net.get("type") != "limited" or bool(net.get("allowed_hosts") or net.get("allow_package_managers"))
        pkgs = config.get("packages") or {}
        packages = {m: tuple(pkgs.get(m) or ()) for m in PACKAGE_MANAGERS if pkgs.get(m)}
    return dataclasses.replace(
        base,
        networking=networking,
        packages=packages,
        environment_id=env_id,
        image=metadata.get("oma.image") or base.image,
    )


class SandboxPool:
    def __init__(self, db: Database, *, runtime: str, root: Path, defaults: SandboxOptions | None = None) -> None:
        self.db = db
        self.runtime = runtime
        self.root = root
        self.defaults = defaults or SandboxOptions()
        self._open: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self.idle_seconds = 300.0

    async def get(self, session_id: str, environment_id: str) -> Any:
        timer = self._idle.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            sandbox = self._open.get(session_id)
            if sandbox is None:
                async with self.db.read() as conn:
                    row = (
                        await conn.execute(
                            select(environments.c.config, environments.c.metadata).where(
                                environments.c.id == environment_id
                            )
                        )
                    ).first()
                config, metadata = (row.config, row.metadata) if row is not None else ({}, {})
                runtime = metadata.get("oma.runtime") or self.runtime
                options = options_for(config, metadata, environment_id, self.defaults)
                sandbox = await open_sandbox(session_id, runtime=runtime, root=self.root, options=options)
                self._open[session_id] = sandbox
            return sandbox

    def idle(self, session_id: str) -> None:
        """The session stopped working: keep its sandbox warm a while for the next turn, then stop it."""
        if session_id not in self._open or session_id in self._idle:
            return
        loop = asyncio.get_running_loop()
        self._idle[session_id] = loop.call_later(self.idle_seconds, lambda: loop.create_task(self.release(session_id)))

    async def release(self, session_id: str) -> None:
        timer = self._idle.pop(session_id, None)
        if timer is not None:
            timer.cancel()
        sandbox = self._open.pop(session_id, None)
        self._locks.pop(session_id, None)
        if sandbox is not None:
            await sandbox.stop()

    async def close(self) -> None:
        for session_id in list(self._open):
            await self.release(session_id)
