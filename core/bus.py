"""Wake-up hints: "session X has more events". Never the data itself: readers go to the log.

In one process the hint is an asyncio.Event per session. Across processes on PostgreSQL, appenders
`pg_notify` inside their transaction (delivered on commit) and every process LISTENs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

CHANNEL = "oma_session_events"
WORK = "*"  # the channel runners wait on: any session got new input


class Bus:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._generation: dict[str, int] = {}
        self._deleted: set[str] = set()
        self._listener: PgListener | None = None
        self._deltas: dict[str, set[asyncio.Queue[dict[str, object]]]] = {}

    def generation(self, key: str) -> int:
        """Read this *before* reading the log, then `wait(key, seen)`: no notify falls in between."""
        return self._generation.get(key, 0)

    async def wait(self, key: str, seen: int, seconds: float | None) -> bool:
        """Wait until `key` is notified after generation `seen`; False on timeout."""
        if self._generation.get(key, 0) != seen:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(future)
        try:
            await asyncio.wait_for(future, seconds)
            return True
        except TimeoutError:
            return False
        finally:
            waiters.discard(future)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]

    def notify(self, key: str, *, deleted: bool = False) -> None:
        self._generation[key] = self._generation.get(key, 0) + 1
        if deleted:
            self._deleted.add(key)
        for future in self._waiters.get(key, ()):
            if not future.done():
                future.set_result(None)

    def is_deleted(self, key: str) -> bool:
        return key in self._deleted

    def forget(self, key: str) -> None:
        """Drop bookkeeping for a key nobody in this process waits on any more."""
        if key not in self._waiters and key not in self._deltas:
            self._generation.pop(key, None)
            self._deleted.discard(key)

    def waiting_keys(self) -> list[str]:
        return list(self._waiters)

    # Stream-only previews (event_start / event_delta): best effort, in this process only, never
    # persisted. A slow reader loses previews, never log events.

    def subscribe_deltas(self, key: str) -> asyncio.Queue[dict[str, object]]:
        queue: asyncio.Queue[dict[str, object]] = asyncio.Queue(maxsize=1000)
        self._deltas.setdefault(key, set()).add(queue)
        return queue

    def unsubscribe_deltas(self, key: str, queue: asyncio.Queue[dict[str, object]]) -> None:
        queues = self._deltas.get(key)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._deltas[key]

    def publish_delta(self, key: str, frame: dict[str, object]) -> None:
        for queue in self._deltas.get(key, ()):
            if not queue.full():
                queue.put_nowait(frame)

    async def listen_postgres(self, dsn: str) -> None:
        self._listener = PgListener(dsn, self)
        await self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None


def notify_payload(session_id: str, *, deleted: bool = False) -> str:
    return f"{session_id}:deleted" if deleted else session_id


class PgListener:
    """One asyncpg connection LISTENing on the channel; reconnects with backoff if it drops."""

    def __init__(self, dsn: str, bus: Bus) -> None:
        self._dsn = dsn
        self._bus = bus
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")
        await asyncio.wait_for(self._ready.wait(), timeout=30)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        session_id, _, flag = payload.partition(":")
        self._bus.notify(session_id, deleted=flag == "deleted")
        self._bus.notify(WORK)

    async def _run(self) -> None:
        import asyncpg

        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn)
                await conn.add_listener(CHANNEL, self._on_notify)
                self._ready.set()
                delay = 0.5
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=closed: ev.set())
                await closed.wait()
                log.warning("postgres LISTEN connection closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening whatever happens; log without the DSN
                log.warning("postgres LISTEN failed (%s); retrying in %.1fs", type(exc).__name__, delay)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            # Whatever we missed while disconnected: wake everyone so they re-read the log.
            for key in self._bus.waiting_keys():
                self._bus.notify(key)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
