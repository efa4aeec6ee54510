"""One sandbox per session, opened on first use and reused across turns; re-attached after a
restart (the runtime keeps the workspace by session id)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.db import Database, environments
from sandbox import open_sandbox


class SandboxPool:
    def __init__(self, db: Database, *, runtime: str, root: Path) -> None:
        self.db = db
        self.runtime = runtime
        self.root = root
        self._open: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, session_id: str, environment_id: str) -> Any:
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            sandbox = self._open.get(session_id)
            if sandbox is None:
                networking = True
                async with self.db.read() as conn:
                    row = (
                        await conn.execute(select(environments.c.config).where(environments.c.id == environment_id))
                    ).first()
                if row is not None and row.config.get("type") == "cloud":
                    net = row.config.get("networking") or {}
                    networking = net.get("type") != "limited" or bool(net.get("allowed_hosts"))
                sandbox = await open_sandbox(session_id, runtime=self.runtime, root=self.root, networking=networking)
                self._open[session_id] = sandbox
            return sandbox

    async def release(self, session_id: str) -> None:
        sandbox = self._open.pop(session_id, None)
        self._locks.pop(session_id, None)
        if sandbox is not None:
            await sandbox.stop()

    async def close(self) -> None:
        for session_id in list(self._open):
            await self.release(session_id)
