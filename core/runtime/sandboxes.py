"""One sandbox per session, opened on first use and reused across turns; re-attached after a
restart (the runtime keeps the workspace by session id). On first use the session's
`github_repository` resources are cloned into it (core/runtime/repositories.py).

The runtime comes from the settings (`SANDBOX_RUNTIME`) unless the environment's metadata names
one (`oma.runtime`, and `oma.image` for container runtimes); networking and packages come from
the environment's config."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from core.db import Database, environments, sessions
from core.environments import PACKAGE_MANAGERS
from core.runtime import repositories
from sandbox import SandboxOptions, open_sandbox

log = logging.getLogger("oma.sandboxes")


class SessionSecrets(Protocol):
    """Where a session's repository tokens and hosted-runtime keys are opened (the vault)."""

    async def session_secret(self, tenant_id: str, session_id: str, resource_id: str) -> str | None: ...

    async def environment_secret(self, tenant_id: str, vault_ids: Sequence[str], name: str) -> str | None: ...


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


@dataclasses.dataclass(frozen=True)
class HostedService:
    """Where a hosted runtime (e2b, daytona) is reached: its API URL (None: the SDK's default) and
    credentials ({"api_key": ...} and the like; see the runtime's module). A session's key comes
    from an `environment_variable` credential named `key_name` (E2B_API_KEY, ...) in its vaults or
    the tenant's default vaults, before the settings' one."""

    api_url: str | None = None
    credentials: Mapping[str, str] = dataclasses.field(default_factory=dict)
    key_name: str | None = None


class SandboxPool:
    def __init__(
        self,
        db: Database,
        *,
        runtime: str,
        root: Path,
        defaults: SandboxOptions | None = None,
        secrets: SessionSecrets | None = None,
        hosted: Mapping[str, HostedService] | None = None,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.root = root
        self.defaults = defaults or SandboxOptions()
        self.hosted = dict(hosted or {})
        # Opens the sessions' repository tokens; None: repositories are cloned without one.
        self.secrets = secrets
        self._open: dict[str, Any] = {}
        # Sessions whose resources were mounted (or tried) since their sandbox was opened.
        self._mounted: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._idle: dict[str, asyncio.TimerHandle] = {}
        self.idle_seconds = 300.0

    async def get(self, session_id: str, environment_id: str, *, mount: bool = True) -> Any:
        """The session's sandbox, started. With `mount` (what the session's tools use), its
        resources are cloned first if this is the first use; without (a look from outside, e.g.
        for the agent's commits), the sandbox is left as it is."""
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
                service = self.hosted.get(runtime)
                if service is not None:
                    credentials = dict(service.credentials)
                    key = await self._vault_key(session_id, service)
                    if key:
                        credentials["api_key"] = key
                    options = dataclasses.replace(options, api_url=service.api_url, credentials=credentials)
                sandbox = await open_sandbox(session_id, runtime=runtime, root=self.root, options=options)
                self._open[session_id] = sandbox
            if mount and session_id not in self._mounted:
                self._mounted.add(session_id)
                await self._mount(session_id, sandbox)
            return sandbox

    async def _vault_key(self, session_id: str, service: HostedService) -> str | None:
        if self.secrets is None or not service.key_name:
            return None
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(sessions.c.tenant_id, sessions.c.vault_ids).where(sessions.c.id == session_id)
                )
            ).first()
        if row is None:
            return None
        return await self.secrets.environment_secret(row.tenant_id, list(row.vault_ids or []), service.key_name)

    async def _mount(self, session_id: str, sandbox: Any) -> None:
        """Clone the session's repositories that are not in the workspace yet. A failure is logged
        and leaves the repository out (the agent finds it missing); it is tried again the next
        time the sandbox is opened."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(sessions.c.tenant_id, sessions.c.resources, sessions.c.agent).where(
                        sessions.c.id == session_id
                    )
                )
            ).first()
        if row is None:
            return
        author = str((row.agent or {}).get("name") or repositories.DEFAULT_AUTHOR)
        for repo in repositories.repositories(row.resources):
            try:
                if await repositories.is_cloned(sandbox, repo):
                    continue
                token = None
                if self.secrets is not None:
                    token = await self.secrets.session_secret(row.tenant_id, session_id, repo.id)
                await repositories.clone(sandbox, repo, token, author=author)
            except Exception as exc:
                log.warning("session %s: could not clone %s into %s: %s", session_id, repo.url, repo.mount_path, exc)

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
        self._mounted.discard(session_id)
        if sandbox is not None:
            await sandbox.stop()

    async def close(self) -> None:
        for session_id in list(self._open):
            await self.release(session_id)
