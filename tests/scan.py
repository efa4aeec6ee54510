"""Look for secrets where they must never be: the raw database (every byte of the SQLite files, or a
text dump of every PostgreSQL table), API responses, log output."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx2


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    return Path(url.removeprefix(prefix)) if url.startswith(prefix) else None


async def _postgres_dump(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ]
        assert "vault_credentials" in tables and "session_secrets" in tables, tables
        parts = []
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{table}" t')
            parts.append(f"-- {table}\n" + "\n".join(r["row"] for r in rows))
        return "\n".join(parts)
    finally:
        await conn.close()


def database_bytes(url: str) -> bytes:
    """Everything the database holds, as bytes: the SQLite file with its WAL and shared-memory
    files as they lie on disk, or every row of every PostgreSQL table as text."""
    path = sqlite_path(url)
    if path is not None:
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        data = b"".join(f.read_bytes() for f in files if f.exists())
        assert len(data) > 4096, "the SQLite files are missing"
        return data
    return asyncio.run(_postgres_dump(url)).encode()


def leaks(haystack: bytes | str, secrets: Iterable[str]) -> list[str]:
    data = haystack.encode() if isinstance(haystack, str) else haystack
    return [s for s in secrets if s.encode() in data]


class RecordingTransport(httpx2.BaseTransport):
    """An httpx transport that keeps a copy of every response (headers and body, streams too) as
    it passes, so a test can check all that a client ever received."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.received: list[bytes] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        self.received.append(repr(list(response.headers.raw)).encode())
        response.stream = _Tee(response.stream, self.received)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        self.inner.close()

    def everything(self) -> bytes:
        return b"\n".join(self.received)


class _Tee(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, sink: list[bytes]) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sink.append(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()
