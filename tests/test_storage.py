"""Storage conformance: the same tests against the real database on SQLite and on PostgreSQL.

Every test builds its own tenant (and so its own agents, environments and sessions) through the
real stores; the database is shared by the whole run and never truncated.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, inspect, select, text, update

from bot.app import vault_keyring
from core import log, schemas
from core.bus import WORK, Bus
from core.db import Database, agent_versions, metadata, session_events, session_secrets, sessions
from core.errors import Conflict, NotFound
from core.fanout import Feeds
from core.keys import create_tenant
from core.migrate import current_head, upgrade
from core.pagination import Page
from core.platform import Platform
from tests.servers import database_url, make_settings

# How long a test waits for something that should happen promptly before failing (never a sleep).
WAIT = 30.0


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated(db_url: str) -> str:
    """The run's database with every migration applied (upgrade is idempotent)."""
    upgrade(db_url)
    return db_url


@pytest.fixture
async def platform(migrated: str) -> AsyncIterator[Platform]:
    # The vault keys the test server on this database uses, so that it can open what we seal.
    p = Platform.build(migrated, bootstrap_key=None, keyring=vault_keyring(make_settings(migrated)))
    try:
        yield p
    finally:
        await p.close()


@dataclass
class World:
    """One tenant with an agent and an environment: what a session needs."""

    platform: Platform
    tenant: str
    agent_id: str
    env_id: str

    async def session(self, **fields: Any) -> dict[str, Any]:
        req = schemas.SessionCreate(agent=self.agent_id, environment_id=self.env_id, **fields)
        return await self.platform.sessions.create(self.tenant, req)

    async def session_id(self, **fields: Any) -> str:
        return str((await self.session(**fields))["id"])


async def make_world(p: Platform) -> World:
    tenant = await create_tenant(p.db, "storage-test")
    agent = await p.agents.create(tenant, schemas.AgentCreate(model="claude-sonnet-5", name="storage"))
    env = await p.environments.create(tenant, schemas.EnvironmentCreate(name="storage-env"))
    return World(p, tenant, agent["id"], env["id"])


@pytest.fixture
async def world(platform: Platform) -> World:
    return await make_world(platform)


def events(n: int, kind: str = "agent.message", **payload: Any) -> list[log.NewEvent]:
    return [log.NewEvent(type=kind, payload={"n": i, **payload}) for i in range(n)]


async def append(
    db: Database, session_id: str, new: list[log.NewEvent], *, status: str | None = None
) -> list[log.StoredEvent]:
    """Append in a transaction of its own, as every writer in the product does."""
    async with db.write() as conn:
        return await log.append(conn, session_id, new, status=status, postgres=not db.sqlite)


async def read_all(db: Database, session_id: str) -> list[log.StoredEvent]:
    async with db.read() as conn:
        return await log.read_all(conn, session_id)


async def last_seq(db: Database, session_id: str) -> int | None:
    async with db.read() as conn:
        return await log.last_seq(conn, session_id)


async def session_row(db: Database, session_id: str) -> Any:
    async with db.read() as conn:
        return (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


def user_message(text_: str) -> schemas.UserMessage:
    return schemas.UserMessage(type="user.message", content=[schemas.TextBlock(type="text", text=text_)])


# --- migrations --------------------------------------------------------------------------------


def test_migrations_apply_twice_on_a_fresh_database_and_record_head(backend: str, tmp_path: Path) -> None:
    async def state(url: str) -> tuple[set[str], list[str]]:
        db = Database(url)
        try:
            async with db.read() as conn:
                tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
                versions = []
                if "alembic_version" in tables:
                    versions = [r[0] for r in await conn.execute(text("SELECT version_num FROM alembic_version"))]
                return tables, versions
        finally:
            await db.close()

    head = current_head()
    assert head is not None
    with database_url(backend, tmp_path) as url:
        assert asyncio.run(state(url)) == (set(), [])
        upgrade(url)
        first = asyncio.run(state(url))
        upgrade(url)  # a second run (every `oma serve` start) is a no-op
        second = asyncio.run(state(url))
    assert first == second
    tables, versions = second
    assert versions == [head]
    assert tables == {*metadata.tables, "alembic_version"}


async def test_migrated_schema_matches_the_schema_module(migrated: str) -> None:
    """The tables the migrations build are the tables core/db.py describes (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def diff(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    db = Database(migrated)
    try:
        async with db.read() as conn:
            changes = await conn.run_sync(diff)
    finally:
        await db.close()
    assert changes == []


# --- the log: append, seqs, transactions -------------------------------------------------------


async def test_append_assigns_gapless_seqs_and_event_ids(world: World) -> None:
    db = world.platform.db
    sid = await world.session_id()
    first = await append(db, sid, events(3))
    second = await append(db, sid, events(2))
    stored = first + second
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
    assert all(e.id.startswith("sevt_") and e.session_id == sid for e in stored)
    assert len({e.id for e in stored}) == 5
    in_db = await read_all(db, sid)
    assert [(e.seq, e.id, e.type, e.payload) for e in in_db] == [(e.seq, e.id, e.type, e.payload) for e in stored]
    assert await last_seq(db, sid) == 5
    async with db.read() as conn:
        assert await log.count(conn, sid) == 5


async def test_append_keeps_a_given_event_id_and_an_empty_append_is_a_no_op(world: World) -> None:
    db = world.platform.db
    sid = await world.session_id()
    given = "sevt_" + secrets.token_hex(8)
    [stored] = await append(db, sid, [log.NewEvent(type="agent.message", payload={}, id=given)])
    assert (stored.id, stored.seq) == (given, 1)
    assert await append(db, sid, []) == []
    assert await last_seq(db, sid) == 1


async def test_append_to_a_missing_session_raises_not_found(platform: Platform) -> None:
    with pytest.raises(NotFound):
        await append(platform.db, "sesn_" + "0" * 26, events(1))


async def test_payloads_round_trip_exactly(world: World) -> None:
    db = world.platform.db
    sid = await world.session_id()
    payload = {
        "content": [{"type": "text", "text": 'héllo ✓ 日本語 🙂 "quoted" \\ back\nslash'}],
        "nested": {"list": [1, 2.5, None, True, False, "x"], "empty": {}, "none": None},
        "big": 2**62,
        "negative": -17,
    }
    await append(db, sid, [log.NewEvent(type="agent.message", payload=payload)])
    [stored] = await read_all(db, sid)
    assert stored.payload == payload


async def test_payload_strings_with_nul_characters_round_trip(world: World) -> None:
    """Tool output (say `cat` of a binary file) can hold U+0000; the log must store what it is given."""
    db = world.platform.db
    sid = await world.session_id()
    payload = {"content": [{"type": "text", "text": "before\x00after"}], "stdout": "\x00\x01\x02"}
    await append(db, sid, [log.NewEvent(type="agent.tool_result", payload=payload)])
    [stored] = await read_all(db, sid)
    assert stored.payload == payload


async def test_fifty_concurrent_appenders_get_exactly_seqs_one_to_total(world: World) -> None:
    db = world.platform.db
    sid = await world.session_id()
    sizes = [i % 3 + 1 for i in range(50)]

    async def appender(writer: int, size: int) -> list[log.StoredEvent]:
        return await append(db, sid, events(size, writer=writer))

    results = await asyncio.gather(*(appender(w, n) for w, n in enumerate(sizes)))
    total = sum(sizes)
    returned = sorted(e.seq for batch in results for e in batch)
    assert returned == list(range(1, total + 1))
    for batch in results:  # one transaction's events are consecutive and in order
        seqs = [e.seq for e in batch]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    in_db = await read_all(db, sid)
    assert [e.seq for e in in_db] == list(range(1, total + 1))
    by_seq = {e.seq: e.id for batch in results for e in batch}
    assert {e.seq: e.id for e in in_db} == by_seq
    assert await last_seq(db, sid) == total


async def test_two_processes_appending_to_one_session_stay_gapless(world: World, migrated: str) -> None:
    """Two platforms on one database (as two `bot` processes would be) contend for one session."""
    other = Platform.build(migrated, bootstrap_key=None)
    try:
        sid = await world.session_id()
        platforms = [world.platform, other]

        async def writer(i: int) -> int:
            p = platforms[i % 2]
            if i % 3 == 0:  # through the store: reads the session row, then appends
                await p.sessions.send_events(world.tenant, sid, [user_message(f"m{i}"), user_message(f"n{i}")])
            else:
                await append(p.db, sid, events(2, writer=i))
            return 2

        total = sum(await asyncio.gather(*(writer(i) for i in range(30))))
        assert [e.seq for e in await read_all(world.platform.db, sid)] == list(range(1, total + 1))
        assert await last_seq(other.db, sid) == total
    finally:
        await other.close()


async def test_a_rolled_back_append_leaves_no_event_and_no_gap(world: World) -> None:
    db = world.platform.db
    sid = await world.session_id()
    await append(db, sid, events(2))
    doomed: list[log.StoredEvent] = []
    with pytest.raises(Boom):
        async with db.write() as conn:
            doomed = await log.append(conn, sid, events(3), status="running", postgres=not db.sqlite)
            assert [e.seq for e in doomed] == [3, 4, 5]
            raise Boom
    assert [e.seq for e in await read_all(db, sid)] == [1, 2]
    assert await last_seq(db, sid) == 2
    assert (await session_row(db, sid)).status == "idle"
    async with db.read() as conn:
        assert await log.find_ids(conn, sid, [e.id for e in doomed], ["agent.message"]) == set()
    [nxt] = await append(db, sid, events(1))
    assert nxt.seq == 3
    assert [e.seq for e in await read_all(db, sid)] == [1, 2, 3]


async def test_concurrent_appenders_some_rolling_back_leave_no_gap(world: World) -> None:
    db = world.platform.db
    sid = await world.session_id()

    async def appender(writer: int) -> int:
        try:
            async with db.write() as conn:
                await log.append(conn, sid, events(2, writer=writer), postgres=not db.sqlite)
                if writer % 4 == 0:
                    raise Boom
        except Boom:
            return 0
        return 2

    committed = sum(await asyncio.gather(*(appender(w) for w in range(40))))
    assert committed == 60
    in_db = await read_all(db, sid)
    assert [e.seq for e in in_db] == list(range(1, committed + 1))
    assert all(e.payload["writer"] % 4 != 0 for e in in_db)
    assert await last_seq(db, sid) == committed


# --- reading the log ---------------------------------------------------------------------------


async def test_read_after_paginates_by_seq_within_one_session(world: World) -> None:
    db = world.platform.db
    sid, other = await world.session_id(), await world.session_id()
    for _ in range(5):  # interleave two sessions' appends
        await append(db, sid, events(5, session="mine"))
        await append(db, other, events(3, session="other"))
    pages: list[list[int]] = []
    after = 0
    async with db.read() as conn:
        while True:
            page = await log.read_after(conn, sid, after, limit=10)
            if not page:
                break
            assert all(e.session_id == sid and e.payload["session"] == "mine" for e in page)
            pages.append([e.seq for e in page])
            after = page[-1].seq
        assert await log.read_after(conn, sid, 25) == []
        assert [e.seq for e in await log.read_after(conn, sid, 23)] == [24, 25]
        assert [e.seq for e in await log.read_after(conn, other, 0)] == list(range(1, 16))
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]


async def test_queued_events_wait_until_marked_processed(world: World) -> None:
    db = world.platform.db
    sid, other = await world.session_id(), await world.session_id()
    stored = await append(
        db,
        sid,
        [
            log.NewEvent(type="user.message", payload={"content": []}, queued=True),
            log.NewEvent(type="agent.message", payload={"content": []}),
            log.NewEvent(type="user.interrupt", payload={}, queued=True),
        ],
    )
    [other_queued] = await append(db, other, [log.NewEvent(type="user.message", queued=True)])
    assert [e.processed_at is None for e in stored] == [True, False, True]
    assert stored[0].render()["processed_at"] is None
    assert isinstance(stored[1].render()["processed_at"], str)
    assert [e.processed_at is None for e in await read_all(db, sid)] == [True, False, True]

    async with db.write() as conn:
        await log.mark_processed(conn, sid, [1])
        await log.mark_processed(conn, sid, [])
    after = await read_all(db, sid)
    assert isinstance(after[0].processed_at, int) and after[0].processed_at >= stored[0].created_at
    assert after[1].processed_at == stored[1].processed_at
    assert after[2].processed_at is None
    # mark_processed is scoped to its session: the other session's seq 1 is still queued.
    [still_queued] = await read_all(db, other)
    assert (still_queued.id, still_queued.processed_at) == (other_queued.id, None)


async def test_user_events_sent_through_the_store_are_queued(world: World) -> None:
    p = world.platform
    sid = await world.session_id()
    rendered = await p.sessions.send_events(world.tenant, sid, [user_message("hi")])
    assert rendered[0]["processed_at"] is None and rendered[0]["id"].startswith("sevt_")
    [stored] = await read_all(p.db, sid)
    assert (stored.type, stored.processed_at, stored.payload["content"][0]["text"]) == ("user.message", None, "hi")


async def test_find_ids_is_scoped_to_session_and_type(world: World) -> None:
    db = world.platform.db
    sid, other = await world.session_id(), await world.session_id()
    use, msg = await append(
        db, sid, [log.NewEvent(type="agent.tool_use", payload={}), log.NewEvent(type="agent.message", payload={})]
    )
    [foreign] = await append(db, other, [log.NewEvent(type="agent.tool_use", payload={})])
    async with db.read() as conn:
        found = await log.find_ids(conn, sid, [use.id, msg.id, foreign.id, "sevt_missing"], ["agent.tool_use"])
        assert found == {use.id}
        assert await log.find_ids(conn, sid, [], ["agent.tool_use"]) == set()


async def test_status_written_with_append_commits_with_it(world: World) -> None:
    p = world.platform
    db = p.db
    sid = await world.session_id()
    async with db.write() as conn:
        await log.append(conn, sid, events(1, "session.status_running"), status="running", postgres=not db.sqlite)
        inside = (await conn.execute(select(sessions.c.status, sessions.c.last_seq).where(sessions.c.id == sid))).one()
        assert tuple(inside) == ("running", 1)
        # Another connection sees neither the event nor the status before the commit.
        async with db.read() as outside:
            seen = (
                await outside.execute(select(sessions.c.status, sessions.c.last_seq).where(sessions.c.id == sid))
            ).one()
            assert tuple(seen) == ("idle", 0)
            assert await log.read_all(outside, sid) == []
    got = await p.sessions.get(world.tenant, sid)
    assert got["status"] == "running"
    assert (await session_row(db, sid)).last_seq == 1
    [event] = await read_all(db, sid)
    assert event.type == "session.status_running"
    # Appending without a status leaves the cached status alone.
    await append(db, sid, events(1))
    assert (await p.sessions.get(world.tenant, sid))["status"] == "running"
    await append(db, sid, events(1, "session.status_idle"), status="idle")
    assert (await p.sessions.get(world.tenant, sid))["status"] == "idle"


async def blocked_behind(db: Database, holder: Any, task: asyncio.Task[Any]) -> None:
    """Return once `task` waits for the transaction on `holder` (or has finished).

    On SQLite one process's writers queue on the Database's write lock, so a task started inside a
    write transaction can only run after it. On PostgreSQL, poll until the server reports the task's
    connection blocked by ours: that is a wait on a lock, not a sleep.
    """
    if db.sqlite:
        return
    pid = (await holder.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    blocked = text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))")
    async with asyncio.timeout(WAIT):
        while not task.done():
            async with db.read() as watcher:
                if (await watcher.execute(blocked, {"pid": pid})).scalar_one():
                    return


@pytest.mark.parametrize(
    ("status", "action"),
    [("running", "update_agent"), ("running", "archive"), ("terminated", "send_events")],
)
async def test_a_status_change_committing_first_is_seen_by_a_concurrent_check(
    world: World, status: str, action: str
) -> None:
    """A store that checks the session's status before writing must see a status change that commits
    while it waits: no agent change or archive of a running session, no event after termination."""
    p = world.platform
    sid = await world.session_id()
    actions: dict[str, Callable[[], Awaitable[Any]]] = {
        "update_agent": lambda: p.sessions.update(
            world.tenant, sid, schemas.SessionUpdate(agent=schemas.SessionAgentUpdate(tools=[]))
        ),
        "archive": lambda: p.sessions.archive(world.tenant, sid),
        "send_events": lambda: p.sessions.send_events(world.tenant, sid, [user_message("too late")]),
    }
    async with p.db.write() as conn:
        await log.append(conn, sid, events(1, f"session.status_{status}"), status=status, postgres=not p.db.sqlite)
        task = asyncio.create_task(actions[action]())
        await blocked_behind(p.db, conn, task)
    with pytest.raises(Conflict):
        await asyncio.wait_for(task, WAIT)
    row = await session_row(p.db, sid)
    assert (row.status, row.archived_at, row.last_seq) == (status, None, 1)
    assert [e.type for e in await read_all(p.db, sid)] == [f"session.status_{status}"]


async def test_session_delete_removes_its_events_and_secrets_only(world: World) -> None:
    p = world.platform
    token = "ghp_" + secrets.token_hex(16)
    repo = schemas.GitHubRepositoryResource(
        type="github_repository", url="https://github.com/acme/widgets", authorization_token=token
    )
    doomed = await world.session_id(initial_events=[user_message("first")], resources=[repo])
    kept = await world.session_id(initial_events=[user_message("stay")])
    await p.sessions.send_events(world.tenant, doomed, [user_message("second")])
    await append(p.db, doomed, events(10))
    assert len(await read_all(p.db, doomed)) == 12

    deleted = await p.sessions.delete(world.tenant, doomed)
    assert deleted == {"id": doomed, "type": "session_deleted"}
    async with p.db.read() as conn:
        assert await log.count(conn, doomed) == 0
        left = await conn.execute(
            select(func.count()).select_from(session_events).where(session_events.c.session_id == doomed)
        )
        assert left.scalar_one() == 0
        secrets_left = await conn.execute(
            select(func.count()).select_from(session_secrets).where(session_secrets.c.session_id == doomed)
        )
        assert secrets_left.scalar_one() == 0
    assert await session_row(p.db, doomed) is None
    with pytest.raises(NotFound):
        await p.sessions.get(world.tenant, doomed)
    assert [e.payload["content"][0]["text"] for e in await read_all(p.db, kept)] == ["stay"]
    # A new session can never see the deleted one's seqs: its log starts again at 1.
    fresh = await world.session_id()
    assert [e.seq for e in await append(p.db, fresh, events(1))] == [1]


# --- agents ------------------------------------------------------------------------------------


async def test_every_agent_version_is_kept_and_stale_versions_conflict(world: World) -> None:
    p = world.platform
    agent_id, tenant = world.agent_id, world.tenant
    for version in (1, 2, 3):
        updated = await p.agents.update(
            tenant, agent_id, schemas.AgentUpdate(version=version, system=f"v{version + 1}")
        )
        assert updated["version"] == version + 1
    assert (await p.agents.get(tenant, agent_id))["version"] == 4
    for version in (1, 2, 3, 4):
        got = await p.agents.get(tenant, agent_id, version)
        assert got["version"] == version
        assert got["system"] == (None if version == 1 else f"v{version}")
    rows, _page = await p.agents.versions(tenant, agent_id, limit=10, page=None)
    assert [r["version"] for r in rows] == [4, 3, 2, 1]
    async with p.db.read() as conn:
        kept = await conn.execute(
            select(agent_versions.c.version).where(agent_versions.c.agent_id == agent_id).order_by("version")
        )
        assert [r.version for r in kept] == [1, 2, 3, 4]

    with pytest.raises(Conflict):
        await p.agents.update(tenant, agent_id, schemas.AgentUpdate(version=2, system="stale"))
    assert (await p.agents.get(tenant, agent_id))["system"] == "v4"
    with pytest.raises(NotFound):
        await p.agents.get(tenant, agent_id, 5)


async def test_concurrent_agent_updates_on_one_version_let_exactly_one_win(world: World, migrated: str) -> None:
    other = Platform.build(migrated, bootstrap_key=None)
    try:
        stores = [world.platform.agents, other.agents]

        async def attempt(i: int) -> bool:
            try:
                await stores[i % 2].update(world.tenant, world.agent_id, schemas.AgentUpdate(version=1, system=f"w{i}"))
            except Conflict:
                return False
            return True

        wins = await asyncio.gather(*(attempt(i) for i in range(8)))
    finally:
        await other.close()
    assert sum(wins) == 1
    rows, _page = await world.platform.agents.versions(world.tenant, world.agent_id, limit=10, page=None)
    assert [r["version"] for r in rows] == [2, 1]


# --- tenants -----------------------------------------------------------------------------------


async def test_another_tenant_sees_nothing(platform: Platform) -> None:
    p = platform
    mine, theirs = await make_world(p), await make_world(p)
    sid = await mine.session_id(initial_events=[user_message("private")])
    t = theirs.tenant

    attempts: list[Callable[[], Awaitable[Any]]] = [
        lambda: p.agents.get(t, mine.agent_id),
        lambda: p.agents.get(t, mine.agent_id, 1),
        lambda: p.agents.update(t, mine.agent_id, schemas.AgentUpdate(system="x")),
        lambda: p.agents.archive(t, mine.agent_id),
        lambda: p.agents.versions(t, mine.agent_id, limit=10, page=None),
        lambda: p.environments.get(t, mine.env_id),
        lambda: p.environments.update(t, mine.env_id, schemas.EnvironmentUpdate(name="x")),
        lambda: p.environments.delete(t, mine.env_id),
        lambda: p.sessions.get(t, sid),
        lambda: p.sessions.update(t, sid, schemas.SessionUpdate(title="x")),
        lambda: p.sessions.archive(t, sid),
        lambda: p.sessions.delete(t, sid),
        lambda: p.sessions.send_events(t, sid, [user_message("intrude")]),
        lambda: p.sessions.stream_start(t, sid),
        lambda: p.sessions.list_events(t, sid, limit=10, page=None, order="asc", types=[], created={}),
        # Their own environment with my agent, and my environment with their agent.
        lambda: p.sessions.create(t, schemas.SessionCreate(agent=mine.agent_id, environment_id=theirs.env_id)),
        lambda: p.sessions.create(t, schemas.SessionCreate(agent=theirs.agent_id, environment_id=mine.env_id)),
    ]
    for attempt in attempts:
        with pytest.raises(NotFound):
            await attempt()

    listed = await list_sessions(p, t, page=None, order="desc", limit=100)
    assert listed.rows == []
    agents, _ = await p.agents.list_page(
        t, limit=100, page=None, include_archived=True, created_gte=None, created_lte=None
    )
    assert [a["id"] for a in agents] == [theirs.agent_id]
    envs, _ = await p.environments.list_page(t, limit=100, page=None, include_archived=True)
    assert [e["id"] for e in envs] == [theirs.env_id]
    # Nothing of mine changed.
    assert (await p.agents.get(mine.tenant, mine.agent_id))["version"] == 1
    assert (await p.sessions.get(mine.tenant, sid))["archived_at"] is None
    assert [e.type for e in await read_all(p.db, sid)] == ["user.message"]


# --- keyset pagination -------------------------------------------------------------------------


async def list_sessions(p: Platform, tenant: str, *, page: str | None, order: str, limit: int) -> Page:
    return await p.sessions.list_page(
        tenant,
        limit=limit,
        page=page,
        order=order,
        include_archived=True,
        agent_id=None,
        agent_version=None,
        statuses=[],
        created={},
        unmatched=False,
    )


async def walk_both_ways(fetch: Callable[[str | None], Awaitable[Page]], key: str) -> list[list[Any]]:
    """Follow next tokens to the end, then prev tokens back to the start; return the pages."""
    forward: list[list[Any]] = []
    page = await fetch(None)
    assert page.prev_page is None
    while True:
        forward.append([r[key] for r in page.rows])
        if page.next_page is None:
            break
        page = await fetch(page.next_page)
        assert page.prev_page is not None
    backward: list[list[Any]] = [[r[key] for r in page.rows]]
    while page.prev_page is not None:
        page = await fetch(page.prev_page)
        assert page.next_page is not None
        backward.append([r[key] for r in page.rows])
    backward.reverse()
    assert backward == forward, "prev pages must retrace the next pages exactly"
    return forward


@pytest.mark.parametrize("limit", [1, 5, 6, 36, 100])
async def test_session_keyset_pagination_returns_every_row_once_both_ways(world: World, limit: int) -> None:
    p = world.platform
    ids = [await world.session_id() for _ in range(36)]
    # Ties on created_at (three sessions per timestamp) so the id tie-breaker is exercised at page edges.
    base = 1_700_000_000_000_000
    created = {sid: base + i // 3 for i, sid in enumerate(ids)}
    async with p.db.write() as conn:
        for sid, at in created.items():
            await conn.execute(update(sessions).where(sessions.c.id == sid).values(created_at=at))
    for order in ("desc", "asc"):
        expected = sorted(ids, key=lambda s: (created[s], s), reverse=order == "desc")

        async def fetch(token: str | None, order: str = order) -> Page:
            return await list_sessions(p, world.tenant, page=token, order=order, limit=limit)

        pages = await walk_both_ways(fetch, "id")
        flat = [sid for page in pages for sid in page]
        assert flat == expected
        assert all(len(page) == limit for page in pages[:-1])
        assert len(pages) == max(1, -(-36 // limit))


async def test_event_list_keyset_pagination_both_ways(world: World) -> None:
    p = world.platform
    sid = await world.session_id()
    for _ in range(4):
        await append(p.db, sid, events(6))  # seqs 1..24
    for order, expected in (("asc", list(range(1, 25))), ("desc", list(range(24, 0, -1)))):
        ids_by_seq = {e.id: e.seq for e in await read_all(p.db, sid)}

        async def fetch(token: str | None, order: str = order) -> Page:
            return await p.sessions.list_events(
                world.tenant, sid, limit=5, page=token, order=order, types=[], created={}
            )

        pages = await walk_both_ways(fetch, "id")
        assert [ids_by_seq[i] for page in pages for i in page] == expected


# --- fan-out -----------------------------------------------------------------------------------


async def follow(
    feeds: Feeds,
    bus: Bus,
    session_id: str,
    start: int,
    until: int,
    *,
    progress: Callable[[int], None] | None = None,
    hold: asyncio.Event | None = None,
) -> list[int]:
    """What an SSE stream does: wake on the bus, read the feed by seq, until seq `until` is seen."""
    feeds.follow(session_id, start)
    got: list[int] = []
    position = start
    try:
        if hold is not None:
            await asyncio.wait_for(hold.wait(), WAIT)
        while position < until:
            seen = bus.generation(session_id)
            batch = await feeds.after(session_id, position)
            if batch:
                got.extend(e.seq for e in batch)
                position = batch[-1].seq
                if progress is not None:
                    progress(position)
                continue
            assert await bus.wait(session_id, seen, WAIT)
    finally:
        feeds.unfollow(session_id)
    return got


async def test_feeds_deliver_each_event_once_to_fast_slow_and_late_followers(world: World) -> None:
    p = world.platform
    db = p.db
    bus = Bus()
    feeds = Feeds(db, bus)
    sid = await world.session_id()
    total, phase_one = 800, 600

    fast_reached = asyncio.Event()
    release_slow = asyncio.Event()

    def on_fast(position: int) -> None:
        if position >= phase_one:
            fast_reached.set()

    fast = asyncio.create_task(follow(feeds, bus, sid, 0, total, progress=on_fast))
    other_fast = asyncio.create_task(follow(feeds, bus, sid, 0, total))
    slow = asyncio.create_task(follow(feeds, bus, sid, 0, total, hold=release_slow))

    async def produce(upto: int) -> None:
        while (await last_seq(db, sid) or 0) < upto:
            await append(db, sid, events(8))
            bus.notify(sid)

    await produce(phase_one)
    await asyncio.wait_for(fast_reached.wait(), WAIT)
    # The shared tail no longer reaches back to the slow follower's position.
    tail = feeds._feeds[sid].tail
    assert tail and tail[0].seq > 1
    late_start = await p.sessions.stream_start(world.tenant, sid)
    late = asyncio.create_task(follow(feeds, bus, sid, late_start, total))
    release_slow.set()
    await produce(total)

    got_fast, got_other, got_slow, got_late = await asyncio.wait_for(asyncio.gather(fast, other_fast, slow, late), WAIT)
    everything = list(range(1, total + 1))
    assert got_fast == everything
    assert got_other == everything
    assert got_slow == everything
    assert got_late == list(range(late_start + 1, total + 1))
    assert sid not in feeds._feeds  # the last unfollow drops the shared feed


async def test_feeds_follower_joining_behind_the_tail_reads_the_log(world: World) -> None:
    """A reconnecting reader resumes by seq: from 0 while others follow from the end."""
    p = world.platform
    bus = Bus()
    feeds = Feeds(p.db, bus)
    sid = await world.session_id()
    for _ in range(12):
        await append(p.db, sid, events(100))  # 1200: more than the cached tail and than one log read
    start = await p.sessions.stream_start(world.tenant, sid)
    ahead = asyncio.create_task(follow(feeds, bus, sid, start, 1210))
    behind = asyncio.create_task(follow(feeds, bus, sid, 0, 1210))
    middle = asyncio.create_task(follow(feeds, bus, sid, 600, 1210))
    await append(p.db, sid, events(10))
    bus.notify(sid)
    got_ahead, got_behind, got_middle = await asyncio.wait_for(asyncio.gather(ahead, behind, middle), WAIT)
    assert got_ahead == list(range(1201, 1211))
    assert got_behind == list(range(1, 1211))
    assert got_middle == list(range(601, 1211))


async def test_bus_forgets_a_session_once_its_last_follower_leaves(world: World) -> None:
    """Streams end (final event, client gone, session deleted); per-session bookkeeping must not
    outlive them, or a long-running process keeps one entry for every session it ever streamed."""
    p = world.platform
    bus = Bus()
    feeds = Feeds(p.db, bus)
    sid = await world.session_id()
    await append(p.db, sid, events(3))
    bus.notify(sid)
    got = await asyncio.wait_for(asyncio.gather(follow(feeds, bus, sid, 0, 3), follow(feeds, bus, sid, 0, 3)), WAIT)
    assert got == [[1, 2, 3], [1, 2, 3]]
    assert sid not in feeds._feeds
    assert sid not in bus._waiters
    assert sid not in bus._generation


async def test_postgres_notify_wakes_a_follower_in_another_process(world: World, backend: str, migrated: str) -> None:
    """Across processes the bus is LISTEN/NOTIFY: the appender never touches the reader's bus."""
    if backend != "postgres":
        pytest.skip("LISTEN/NOTIFY is the PostgreSQL cross-process bus")
    reader = Platform.build(migrated, bootstrap_key=None)
    await reader.start()
    try:
        sid = await world.session_id()
        work_seen = reader.bus.generation(WORK)
        follower = asyncio.create_task(follow(reader.feeds, reader.bus, sid, 0, 30))
        for _ in range(3):
            await append(world.platform.db, sid, events(10))  # pg_notify in the transaction
        assert await asyncio.wait_for(follower, WAIT) == list(range(1, 31))
        assert await reader.bus.wait(WORK, work_seen, WAIT)
    finally:
        await reader.close()


# --- secrets -----------------------------------------------------------------------------------


async def test_github_token_lives_only_in_session_secrets(world: World) -> None:
    p = world.platform
    token = "ghp_" + secrets.token_hex(20)
    repo = schemas.GitHubRepositoryResource(
        type="github_repository",
        url="https://github.com/acme/widgets.git",
        authorization_token=token,
        checkout=schemas.BranchCheckout(type="branch", name="main"),
    )
    created = await world.session(resources=[repo], initial_events=[user_message("clone it")])
    sid = created["id"]
    [resource] = created["resources"]
    assert resource["type"] == "github_repository" and resource["mount_path"] == "/workspace/widgets"
    assert "authorization_token" not in resource

    rendered = [
        created,
        await p.sessions.get(world.tenant, sid),
        (await list_sessions(p, world.tenant, page=None, order="desc", limit=10)).rows,
        (await p.sessions.list_events(world.tenant, sid, limit=10, page=None, order="asc", types=[], created={})).rows,
    ]
    assert token not in orjson.dumps(rendered).decode()

    async with p.db.read() as conn:
        # Raw rows, as the database returns them: no table but session_secrets holds the token.
        for table in metadata.sorted_tables:
            if table is session_secrets:
                continue
            rows = (await conn.execute(text(f"SELECT * FROM {table.name}"))).all()
            assert token not in repr(rows), f"the github token is stored in {table.name}"
        raw = (await conn.execute(text("SELECT * FROM sessions WHERE id = :id"), {"id": sid})).one()
        assert token not in repr(tuple(raw))
        kept = (await conn.execute(select(session_secrets).where(session_secrets.c.session_id == sid))).all()
    # Sealed by the vault (tests/test_vault.py has the rest); it opens to the token.
    assert [r.resource_id for r in kept] == [resource["id"]] and token not in kept[0].secret
    assert await p.vaults.session_secret(world.tenant, sid, resource["id"]) == token
