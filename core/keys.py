"""Tenants and API keys. Keys are shown once and stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select

from core.db import Database, api_keys, tenants
from core.ids import new_id, now_us

DEFAULT_TENANT = "tenant_default"
KEY_PREFIX = "oma_"
_CACHE_SECONDS = 30.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MintedKey:
    id: str
    tenant_id: str
    name: str
    key: str


async def ensure_tenant(db: Database, tenant_id: str = DEFAULT_TENANT, name: str = "default") -> str:
    async with db.write() as conn:
        found = await conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id))
        if found.scalar_one_or_none() is None:
            await conn.execute(tenants.insert().values(id=tenant_id, name=name, created_at=now_us()))
    return tenant_id


async def create_tenant(db: Database, name: str) -> str:
    tenant_id = new_id("tenant")
    async with db.write() as conn:
        await conn.execute(tenants.insert().values(id=tenant_id, name=name, created_at=now_us()))
    return tenant_id


async def create_key(db: Database, name: str, tenant_id: str = DEFAULT_TENANT) -> MintedKey:
    if tenant_id == DEFAULT_TENANT:
        await ensure_tenant(db)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = new_id("key")
    async with db.write() as conn:
        await conn.execute(
            api_keys.insert().values(
                id=key_id,
                tenant_id=tenant_id,
                name=name,
                key_hash=hash_key(key),
                hint=key[-4:],
                created_at=now_us(),
            )
        )
    return MintedKey(key_id, tenant_id, name, key)


async def count_keys(db: Database) -> int:
    async with db.read() as conn:
        rows = await conn.execute(select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1))
        return len(rows.all())


class KeyResolver:
    """Maps a presented key to its tenant, with a short in-memory cache (a hash lookup per request
    would otherwise be the most frequent query of all)."""

    def __init__(self, db: Database, bootstrap_key: str | None) -> None:
        self._db = db
        self._bootstrap_hash = hash_key(bootstrap_key) if bootstrap_key else None
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def tenant_for(self, key: str) -> str | None:
        digest = hash_key(key)
        if self._bootstrap_hash is not None and hmac.compare_digest(digest, self._bootstrap_hash):
            return DEFAULT_TENANT
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._db.read() as conn:
            result = await conn.execute(
                select(api_keys.c.tenant_id).where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
            )
            tenant_id = result.scalar_one_or_none()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (tenant_id, now + _CACHE_SECONDS)
        return tenant_id
