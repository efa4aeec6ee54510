"""The platform's services wired together: what the API, adapters and the runner share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from core.agents import AgentStore
from core.bus import Bus
from core.db import Database
from core.environments import EnvironmentStore
from core.fanout import Feeds
from core.keys import KeyResolver
from core.sessions import SessionStore
from core.vaults import VaultStore
from vault.keyring import KeyringSource, SecretBox


@dataclass
class Platform:
    db: Database
    bus: Bus
    keys: KeyResolver
    agents: AgentStore
    environments: EnvironmentStore
    sessions: SessionStore
    feeds: Feeds
    vaults: VaultStore
    stream_ping_seconds: float = 15.0
    # The in-process runner, when this process runs sessions (see bot/app.py).
    runner: Any = None
    # Set on shutdown: open streams end at once instead of at their next heartbeat.
    closing: bool = False

    def begin_shutdown(self) -> None:
        self.closing = True
        for key in self.bus.waiting_keys():
            self.bus.notify(key)

    @classmethod
    def build(
        cls,
        database_url: str,
        *,
        bootstrap_key: str | None,
        stream_ping_seconds: float = 15.0,
        keyring: KeyringSource | None = None,
    ) -> Platform:
        """Without a `keyring`, anything that must seal or open a secret fails with VaultLocked."""
        db = Database(database_url)
        bus = Bus()
        agents = AgentStore(db)
        environments = EnvironmentStore(db)
        vaults = VaultStore(db, SecretBox(keyring) if keyring is not None else None)
        return cls(
            db=db,
            bus=bus,
            keys=KeyResolver(db, bootstrap_key),
            agents=agents,
            environments=environments,
            sessions=SessionStore(db, bus, agents, environments, vaults),
            feeds=Feeds(db, bus),
            vaults=vaults,
            stream_ping_seconds=stream_ping_seconds,
        )

    async def start(self) -> None:
        if not self.db.sqlite:
            await self.bus.listen_postgres(postgres_dsn(self.db.url))

    async def close(self) -> None:
        await self.bus.close()
        await self.db.close()


def postgres_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


PLATFORM: web.AppKey[Platform] = web.AppKey("platform", Platform)
