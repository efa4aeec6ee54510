"""Shared log readers for live streams: one log read per wake-up per session, however many
connections follow that session in this process. Readers that fall behind the cached tail read
the log themselves, so nobody ever misses or repeats an event."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core import log
from core.bus import Bus
from core.db import Database

_TAIL = 512


@dataclass
class _Feed:
    read_upto: int
    generation: int = -1
    tail: list[log.StoredEvent] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    followers: int = 0


class Feeds:
    def __init__(self, db: Database, bus: Bus) -> None:
        self._db = db
        self._bus = bus
        self._feeds: dict[str, _Feed] = {}

    def follow(self, session_id: str, start_seq: int) -> None:
        feed = self._feeds.get(session_id)
        if feed is None:
            feed = self._feeds[session_id] = _Feed(read_upto=start_seq)
        feed.followers += 1

    def unfollow(self, session_id: str) -> None:
        feed = self._feeds.get(session_id)
        if feed is None:
            return
        feed.followers -= 1
        if feed.followers <= 0:
            del self._feeds[session_id]
            self._bus.forget(session_id)

    async def after(self, session_id: str, seq: int, *, refresh: bool = False) -> list[log.StoredEvent]:
        """Events of the session with seq > `seq`, from the shared tail when it covers them."""
        feed = self._feeds[session_id]
        async with feed.lock:
            generation = self._bus.generation(session_id)
            if refresh or generation != feed.generation:
                upto = feed.read_upto
                fresh = await self._db.run_read(lambda c: log.read_after_sync(c, session_id, upto))
                feed.generation = generation
                if fresh:
                    feed.read_upto = fresh[-1].seq
                    feed.tail.extend(fresh)
                    del feed.tail[:-_TAIL]
                    if len(fresh) == 1000:
                        feed.generation = -1  # more remain: the next call reads again
        tail = feed.tail
        if tail and tail[0].seq <= seq + 1:
            # The log is gapless and read in order, so the tail's seqs are consecutive.
            return tail[seq + 1 - tail[0].seq :]
        if not tail and feed.read_upto <= seq:
            return []
        return await self._db.run_read(lambda c: log.read_after_sync(c, session_id, seq))
