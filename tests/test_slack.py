"""Slack end to end: a real server (runner on) gets signed deliveries built from the fixtures in
tests/fixtures/slack, the fake model answers, and the real slack_sdk client talks to a fake
Slack Web API (core/fakes/slack_api.py). Every test works in its own workspace (team id) and
channel, so the tests share servers and still see only their own calls."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from adapters import messages as text
from adapters.base import Route, remember_sync
from adapters.slack import SLACK, SlackAdapter
from adapters.slack_format import to_mrkdwn
from core.fakes.model_server import FakeModelServer
from core.fakes.slack_api import FakeSlack, Message, sign
from core.keys import create_key, create_tenant
from tests.servers import LoopThread, ServerThread, database_url, make_settings, wait_for

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
# Real Slack payloads (copied from the project's shared fixtures).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slack"
DEADLINE = 20.0


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# --- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slack(loop: LoopThread) -> Iterator[FakeSlack]:
    server = FakeSlack()
    loop.call(server.start)
    yield server
    loop.call(server.stop)


def slack_settings(url: str, tmp: Path, model: FakeModelServer, slack: FakeSlack, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "runner_enabled": True,
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": model.url,
        "model_max_retries": 0,
        "data_dir": tmp / "data",
        "lease_seconds": 5,
        "slack_bot_token": slack.bot_token,
        "slack_signing_secret": SECRET,
        "slack_api_url": slack.api_url,
        "slack_min_edit_seconds": 0.05,
    }
    values.update(overrides)
    return make_settings(url, **values)


@pytest.fixture(scope="module")
def server(
    backend: str, model: FakeModelServer, slack: FakeSlack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"slack-{backend}")
    with database_url(backend, tmp) as url:
        srv = ServerThread(slack_settings(url, tmp, model, slack)).start()
        yield srv
        srv.stop()


class Workspace:
    """One Slack workspace and channel bound to a fresh tenant, agent and environment."""

    def __init__(self, server: ServerThread, loop: LoopThread, model: FakeModelServer, slack: FakeSlack) -> None:
        self.server, self.loop, self.model, self.slack = server, loop, model, slack
        self.team = "T" + secrets.token_hex(4).upper()
        self.channel = "C" + secrets.token_hex(4).upper()
        self.dm_channel = "D" + secrets.token_hex(4).upper()
        self.user = "U061F7AUR"
        self.first_request = len(model.requests)
        self.first_call = len(slack.calls)

        async def mint() -> tuple[str, str]:
            tenant_id = await create_tenant(server.platform.db, "slack-test")
            return tenant_id, (await create_key(server.platform.db, "t", tenant_id)).key

        self.tenant_id, key = server.call(mint)
        self.client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=30)
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.loop.run(lambda: model._queue.clear())

    def close(self) -> None:
        self.client.close()
        self.http.close()

    @property
    def adapter(self) -> SlackAdapter:
        assert self.server.app is not None
        return self.server.app[SLACK]

    def install(self, **agent: Any) -> str:
        params: dict[str, Any] = {
            "name": "slack-helper",
            "model": "claude-sonnet-5",
            "system": "You help in Slack.",
            "tools": [{"type": "agent_toolset_20260401"}],
        }
        params.update(agent)
        agent_id = self.client.beta.agents.create(**params).id
        env_id = self.client.beta.environments.create(name="slack-box").id
        route = Route(self.tenant_id, agent_id, env_id)
        self.server.call(lambda: self.adapter.worker.store.install(self.team, route))
        return agent_id

    # --- deliveries ----------------------------------------------------------------------------

    def post(self, body: bytes, *, content_type: str, headers: dict[str, str] | None = None) -> httpx.Response:
        signed = {**sign(SECRET, body), "Content-Type": content_type, **(headers or {})}
        return self.http.post("/slack/events", content=body, headers=signed)

    def event(self, body: dict[str, Any], *, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.post(json.dumps(body).encode(), content_type="application/json", headers=headers)

    def mention_body(self, said: str, *, thread_ts: str | None = None) -> dict[str, Any]:
        body = fixture("event_callback.app_mention")
        ts = self.slack.add_message(
            self.channel, f"<@{self.slack.bot_user_id}> {said}", user=self.user, thread_ts=thread_ts
        )
        body["team_id"] = self.team
        body["event_id"] = "Ev" + secrets.token_hex(5).upper()
        body["event_time"] = int(time.time())
        event = body["event"]
        event.update(channel=self.channel, ts=ts, event_ts=ts, text=f"<@{self.slack.bot_user_id}> {said}")
        if thread_ts:
            event["thread_ts"] = thread_ts
        return body

    def dm_body(self, said: str, *, thread_ts: str | None = None) -> dict[str, Any]:
        body = fixture("event_callback.message_im_thread_reply" if thread_ts else "event_callback.message_im")
        ts = self.slack.add_message(self.dm_channel, said, user=self.user, thread_ts=thread_ts)
        body["team_id"] = self.team
        body["event_id"] = "Ev" + secrets.token_hex(5).upper()
        event = body["event"]
        event.update(channel=self.dm_channel, ts=ts, event_ts=ts, text=said, user=self.user)
        if thread_ts:
            event["thread_ts"] = thread_ts
        return body

    def click(self, action_id: str, message: Message, value: str) -> httpx.Response:
        payload = {
            "type": "block_actions",
            "team": {"id": self.team, "domain": "fake"},
            "user": {"id": self.user, "username": "ann", "team_id": self.team},
            "api_app_id": "A123ABC456",
            "token": "legacy",
            "trigger_id": "1.2.3",
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
                "thread_ts": message.thread_ts,
            },
            "channel": {"id": message.channel, "name": "general"},
            "message": message.to_json(),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "oma_approval",
                    "type": "button",
                    "value": value,
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return self.post(body, content_type="application/x-www-form-urlencoded")

    # --- what happened -------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Any]:
        mine = (self.channel, self.dm_channel)
        return [
            c
            for c in self.slack.calls[self.first_call :]
            if (c.params.get("channel") in mine or c.params.get("channel_id") in mine)
            and (method is None or c.method == method)
        ]

    def counts(self) -> Counter[str]:
        return Counter(c.method for c in self.calls())

    def bot_messages(self, thread_ts: str, channel: str | None = None) -> list[Message]:
        return self.slack.bot_messages(channel or self.channel, thread_ts)

    def requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.model.requests[self.first_request :]]

    def sessions(self) -> list[Any]:
        return list(self.client.beta.sessions.list())

    def wait_calls(self, method: str, count: int = 1) -> list[Any]:
        return wait_for(lambda: len(self.calls(method)) >= count and self.calls(method), f"{count} calls of {method}")

    def wait_idle_delivered(self) -> None:
        """Nothing left anywhere for this workspace: no delivery in the inbox, no user event
        waiting for the runner, every session idle, every binding's outbox caught up."""

        async def caught_up() -> bool:
            from sqlalchemy import select

            from core.db import adapter_bindings, adapter_inbox, session_events, sessions

            async with self.server.platform.db.read() as conn:
                inbox = (await conn.execute(select(adapter_inbox.c.id))).all()
                mine = select(sessions.c.id).where(sessions.c.tenant_id == self.tenant_id)
                queued = (
                    await conn.execute(
                        select(session_events.c.seq).where(
                            session_events.c.session_id.in_(mine), session_events.c.processed_at.is_(None)
                        )
                    )
                ).all()
                busy = (
                    await conn.execute(
                        select(sessions.c.id).where(sessions.c.tenant_id == self.tenant_id, sessions.c.status != "idle")
                    )
                ).all()
                behind = (
                    await conn.execute(
                        select(adapter_bindings.c.key)
                        .select_from(adapter_bindings.join(sessions, sessions.c.id == adapter_bindings.c.session_id))
                        .where(
                            adapter_bindings.c.tenant_id == self.tenant_id,
                            adapter_bindings.c.delivered_seq < sessions.c.last_seq,
                        )
                    )
                ).all()
            return not (inbox or queued or busy or behind)

        wait_for(lambda: self.server.call(caught_up), "sessions idle and delivered")


@pytest.fixture
def ws(server: ServerThread, loop: LoopThread, model: FakeModelServer, slack: FakeSlack) -> Iterator[Workspace]:
    workspace = Workspace(server, loop, model, slack)
    yield workspace
    workspace.close()


def script(ws: Workspace, *args: Any, **kwargs: Any) -> Any:
    return ws.loop.run(lambda: ws.model.reply(*args, **kwargs))


def user_texts(request: dict[str, Any]) -> list[str]:
    return [
        block["text"]
        for message in request["messages"]
        if message["role"] == "user"
        for block in message["content"]
        if block.get("type") == "text"
    ]


# --- tests -------------------------------------------------------------------------------------


def test_url_verification_is_answered(ws: Workspace) -> None:
    challenge = fixture("url_verification")
    response = ws.event(challenge)
    assert response.status_code == 200
    assert response.json() == {"challenge": challenge["challenge"]}


def test_mention_streams_the_answer_into_its_thread(ws: Workspace) -> None:
    ws.install()
    script(ws, "A river is **mostly water**, and that is everything.")
    body = ws.mention_body("is it everything a river should be?")
    started = time.monotonic()
    response = ws.event(body)
    took = time.monotonic() - started
    assert response.status_code == 200 and took < 1.0
    thread = body["event"]["ts"]
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    (reply,) = ws.bot_messages(thread)
    assert reply.text == "A river is **mostly water**, and that is everything." and not reply.streaming
    (start,) = ws.calls("chat.startStream")
    assert start.params["thread_ts"] == thread
    assert start.params["recipient_team_id"] == ws.team and start.params["recipient_user_id"] == ws.user
    (status,) = ws.calls("assistant.threads.setStatus")
    assert status.params["thread_ts"] == thread and status.params["status"] == text.STATUS_THINKING
    assert ws.counts() == Counter({"assistant.threads.setStatus": 1, "chat.startStream": 1, "chat.stopStream": 1})
    (request,) = ws.requests()
    assert user_texts(request) == [f"<@{ws.user}>: is it everything a river should be?"]
    (session,) = ws.sessions()
    assert session.metadata["oma.platform"] == "slack"


def test_follow_up_mention_continues_the_same_session(ws: Workspace) -> None:
    ws.install()
    script(ws, "First answer.")
    first = ws.mention_body("first question")
    ws.event(first)
    thread = first["event"]["ts"]
    ws.wait_calls("chat.stopStream")
    script(ws, "Second answer.")
    ws.event(ws.mention_body("and a follow-up", thread_ts=thread))
    ws.wait_calls("chat.stopStream", 2)
    ws.wait_idle_delivered()
    assert len(ws.sessions()) == 1
    assert [m.text for m in ws.bot_messages(thread)] == ["First answer.", "Second answer."]
    second = ws.requests()[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert user_texts(second)[-1] == f"<@{ws.user}>: and a follow-up"
    assert all(c.params["thread_ts"] == thread for c in ws.calls("chat.startStream"))


def test_direct_message_and_its_thread(ws: Workspace) -> None:
    ws.install()
    script(ws, "Loud and clear.")
    body = ws.dm_body("Hello hello can you hear me?")
    ws.event(body)
    thread = body["event"]["ts"]
    ws.wait_calls("chat.stopStream")
    script(ws, "Still here.")
    ws.event(ws.dm_body("When Slack was released?", thread_ts=thread))
    ws.wait_calls("chat.stopStream", 2)
    ws.wait_idle_delivered()
    assert [m.text for m in ws.bot_messages(thread, ws.dm_channel)] == ["Loud and clear.", "Still here."]
    assert len(ws.sessions()) == 1
    (start, _) = ws.calls("chat.startStream")
    assert start.params["channel"] == ws.dm_channel and start.params["thread_ts"] == thread


def test_retries_and_the_message_app_mention_double_produce_nothing_new(ws: Workspace) -> None:
    ws.install()
    script(ws, "Only once.")
    body = ws.dm_body("say it once")
    assert ws.event(body).status_code == 200
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    # Slack's retry: same event_id, with the retry headers.
    retry = ws.event(body, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200
    # The same message delivered again as an app_mention (another event_id, same channel and ts).
    double = copy.deepcopy(body)
    double["event_id"] = "Ev" + secrets.token_hex(5).upper()
    double["event"]["type"] = "app_mention"
    assert ws.event(double).status_code == 200
    ws.wait_idle_delivered()
    (session,) = ws.sessions()
    messages = list(ws.client.beta.sessions.events.list(session.id, types=["user.message"]))
    assert len(messages) == 1
    assert len(ws.requests()) == 1
    assert ws.counts()["chat.startStream"] == 1
    assert len(ws.bot_messages(body["event"]["ts"], ws.dm_channel)) == 1


def test_bad_or_stale_signature_is_401_and_starts_nothing(ws: Workspace) -> None:
    ws.install()
    body = json.dumps(ws.mention_body("forged")).encode()
    forged = {**sign("not-the-secret", body), "Content-Type": "application/json"}
    assert ws.http.post("/slack/events", content=body, headers=forged).status_code == 401
    stale = {**sign(SECRET, body, timestamp=int(time.time()) - 6 * 60), "Content-Type": "application/json"}
    assert ws.http.post("/slack/events", content=body, headers=stale).status_code == 401
    unsigned = ws.http.post("/slack/events", content=body, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401
    # A valid signature over a different body is still a forgery.
    tampered = {**sign(SECRET, body), "Content-Type": "application/json"}
    assert ws.http.post("/slack/events", content=body + b" ", headers=tampered).status_code == 401
    assert ws.sessions() == []
    assert ws.calls() == []


def test_the_bots_own_messages_are_ignored(ws: Workspace) -> None:
    ws.install()
    own = ws.dm_body("an answer the bot posted")
    own["event"]["user"] = ws.slack.bot_user_id
    own["event"]["bot_id"] = ws.slack.bot_id
    assert ws.event(own).status_code == 200
    edited = ws.dm_body("edited")
    edited["event"]["subtype"] = "message_changed"
    assert ws.event(edited).status_code == 200
    # A real message afterwards is answered: the ones before it were ignored, not queued.
    script(ws, "Hi.")
    ws.event(ws.dm_body("hi"))
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    assert len(ws.sessions()) == 1
    assert len(ws.requests()) == 1


@pytest.mark.parametrize("answer", ["approve", "deny"])
def test_always_ask_tool_shows_buttons_and_the_click_decides(ws: Workspace, answer: str) -> None:
    ws.install(
        tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]
    )
    script(ws, "I will run it.", tool_use={"name": "bash", "input": {"command": "echo approved-run"}})
    body = ws.mention_body("run the check")
    ws.event(body)
    thread = body["event"]["ts"]
    prompt = wait_for(
        lambda: next((m for m in ws.bot_messages(thread) if m.blocks and "actions" in str(m.blocks)), None),
        "the approval message",
    )
    actions = next(b for b in prompt.blocks or [] if b["type"] == "actions")
    approve, deny = actions["elements"]
    assert approve["action_id"] == "oma_approve" and deny["action_id"] == "oma_deny"
    assert "echo approved-run" in json.dumps(prompt.blocks)
    (session,) = ws.sessions()
    assert session.status == "idle"
    script(ws, "It ran." if answer == "approve" else "Understood, not running it.")
    chosen = approve if answer == "approve" else deny
    assert ws.click(chosen["action_id"], prompt, chosen["value"]).status_code == 200
    # A second click (or the other button) changes nothing: the first one decided.
    assert ws.click(deny["action_id"], prompt, deny["value"]).status_code == 200
    wait_for(lambda: len(ws.requests()) == 2, "the second model call")
    ws.wait_idle_delivered()
    result = next(e for e in ws.client.beta.sessions.events.list(session.id) if e.type == "agent.tool_result")
    if answer == "approve":
        assert not result.is_error and "approved-run" in result.content[0].text
        assert prompt.text.startswith("✅ Approved")
    else:
        assert result.is_error and f"<@{ws.user}>" in result.content[0].text
        assert prompt.text.startswith("🚫 Denied")
    confirmations = list(ws.client.beta.sessions.events.list(session.id, types=["user.tool_confirmation"]))
    assert len(confirmations) == 1
    final = ws.bot_messages(thread)[-1]
    assert final.text == ("It ran." if answer == "approve" else "Understood, not running it.")


def test_stop_interrupts_and_the_thread_says_so(ws: Workspace) -> None:
    ws.install()
    script(ws, "Starting a long job.", tool_use={"name": "bash", "input": {"command": "sleep 60"}})
    body = ws.mention_body("do the long job")
    ws.event(body)
    thread = body["event"]["ts"]
    wait_for(
        lambda: any(c.params.get("chunks") for c in ws.calls("chat.appendStream")) or ws.calls("chat.startStream"),
        "the reply",
    )
    wait_for(
        lambda: any(ch.get("type") == "task_update" for c in ws.calls() for ch in c.params.get("chunks") or []),
        "the tool's task update",
    )
    ws.event(ws.mention_body("stop", thread_ts=thread))
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    # (The harness calls the model once more after an interrupted tool; that answer is a new reply.)
    reply = ws.bot_messages(thread)[0]
    assert reply.text.startswith("Starting a long job.") and reply.text.endswith(text.STOPPED)
    tasks = [ch for ch in reply.chunks if ch["type"] == "task_update"]
    assert tasks[0]["status"] == "in_progress" and tasks[-1]["status"] == "error"
    assert tasks[0]["title"] == "bash: sleep 60"


def test_without_streaming_it_posts_edits_and_the_stop_button_works(ws: Workspace) -> None:
    ws.install()
    ws.slack.fail("chat.startStream", status=200, error="method_not_supported_for_channel_type")
    script(ws, "Step one: **running** it.", tool_use={"name": "bash", "input": {"command": "sleep 60"}})
    body = ws.mention_body("slow one")
    ws.event(body)
    thread = body["event"]["ts"]
    reply = wait_for(
        lambda: next((m for m in ws.bot_messages(thread) if "oma_stop" in json.dumps(m.blocks or [])), None),
        "a reply with a Stop button",
    )
    assert reply.text == to_mrkdwn("Step one: **running** it.") == "Step one: *running* it."
    assert ws.click("oma_stop", reply, "stop").status_code == 200
    ws.wait_idle_delivered()
    assert "oma_stop" not in json.dumps(reply.blocks)
    assert text.STOPPED in json.dumps(reply.blocks)
    assert "❌ bash: sleep 60" in json.dumps(reply.blocks, ensure_ascii=False)
    counts = ws.counts()
    # One refused attempt to stream; the binding remembers and posts and edits from then on.
    assert counts["chat.startStream"] == 1 and counts["chat.postMessage"] >= 1 and counts["chat.update"] >= 1


def test_rate_limit_retry_after_is_honoured(ws: Workspace) -> None:
    ws.install()
    ws.slack.fail("chat.startStream", status=429, retry_after=1)
    script(ws, "After the wait.")
    body = ws.mention_body("are you rate limited?")
    ws.event(body)
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    limited, accepted = ws.calls("chat.startStream")
    assert limited.status == 429 and accepted.status == 200
    assert accepted.at - limited.at >= 1.0
    assert [m.text for m in ws.bot_messages(body["event"]["ts"])] == ["After the wait."]


def test_a_lost_response_is_settled_without_posting_twice(ws: Workspace) -> None:
    ws.install()
    ws.slack.drop("chat.startStream")
    script(ws, "Exactly one copy.")
    body = ws.mention_body("no doubles please")
    ws.event(body)
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    assert [m.text for m in ws.bot_messages(body["event"]["ts"])] == ["Exactly one copy."]
    assert ws.counts()["chat.startStream"] == 1
    assert ws.counts()["conversations.replies"] >= 1


@pytest.mark.parametrize("trouble", ["response_lost", "stream_gone"])
def test_an_append_in_doubt_is_repaired_not_repeated(ws: Workspace, trouble: str) -> None:
    """An append whose response never came may or may not have landed, and one refused because
    the stream is gone did not: either way the stream is closed and the whole text set with
    chat.update, so the reply reads right."""
    ws.install()
    if trouble == "response_lost":
        ws.slack.drop("chat.appendStream")
    else:
        ws.slack.fail("chat.appendStream", status=200, error="message_not_in_streaming_state")
    script(ws, "Part one.", tool_use={"name": "bash", "input": {"command": "echo checked"}})
    script(ws, "Part two.")
    body = ws.mention_body("two parts please")
    ws.event(body)
    ws.wait_idle_delivered()
    (reply,) = ws.bot_messages(body["event"]["ts"])
    assert reply.text == "Part one.\n\nPart two." and not reply.streaming
    assert "✅ bash: echo checked" in json.dumps(reply.blocks, ensure_ascii=False)
    assert "oma_stop" not in json.dumps(reply.blocks)
    counts = ws.counts()
    assert counts["chat.startStream"] == 1 and counts["chat.appendStream"] == 1 and counts["chat.update"] >= 1
    assert counts["chat.postMessage"] == 0


def test_a_long_answer_is_streamed_in_pieces_slack_accepts(ws: Workspace) -> None:
    ws.install()
    answer = " ".join(f"word{i}" for i in range(5000))  # about 39,000 characters
    script(ws, answer)
    body = ws.mention_body("write a lot")
    ws.event(body)
    ws.wait_idle_delivered()
    (reply,) = ws.bot_messages(body["event"]["ts"])
    assert reply.text == answer
    sizes = [
        sum(len(ch.get("text", "")) for ch in c.params.get("chunks") or [])
        for c in ws.calls()
        if c.method.startswith("chat.") and c.method.endswith("Stream")
    ]
    assert max(sizes) <= 12_000 and ws.counts()["chat.appendStream"] >= 3


def test_first_mention_in_an_existing_thread_gets_its_history(ws: Workspace) -> None:
    ws.install()
    root = ws.slack.add_message(ws.channel, "The deploy failed again", user="U0ALICE01")
    ws.slack.add_message(ws.channel, "Same error as yesterday?", user="U0BOB0001", thread_ts=root)
    script(ws, "Looking at it.")
    ws.event(ws.mention_body("can you check?", thread_ts=root))
    ws.wait_calls("chat.stopStream")
    ws.wait_idle_delivered()
    (request,) = ws.requests()
    history, asked = user_texts(request)
    assert history.startswith(text.HISTORY_HEADER)
    assert "[<@U0ALICE01>] The deploy failed again" in history
    assert "[<@U0BOB0001>] Same error as yesterday?" in history
    assert "can you check?" not in history
    assert asked == f"<@{ws.user}>: can you check?"
    assert ws.counts()["conversations.replies"] == 1
    (reply,) = ws.bot_messages(root)
    assert reply.text == "Looking at it."


def test_model_errors_reach_the_thread_as_a_short_message(ws: Workspace) -> None:
    ws.install()
    ws.loop.run(lambda: ws.model.error(400, "invalid_request_error", "prompt is too long"))
    body = ws.mention_body("this will fail")
    ws.event(body)
    thread = body["event"]["ts"]
    notice = wait_for(lambda: ws.bot_messages(thread), "the error message")[0]
    assert notice.text.startswith("⚠️") and "prompt is too long" in notice.text


def test_no_agent_configured_says_so(ws: Workspace) -> None:
    body = ws.mention_body("anyone there?")  # no installation for this team, no OMA_SLACK_AGENT
    ws.event(body)
    notice = wait_for(lambda: ws.bot_messages(body["event"]["ts"]), "the explanation")[0]
    assert notice.text == text.NOT_CONFIGURED
    assert ws.sessions() == []


def test_crash_between_post_and_cursor_neither_doubles_nor_loses(
    backend: str, model: FakeModelServer, slack: FakeSlack, loop: LoopThread, tmp_path: Path
) -> None:
    """The process dies after Slack accepted the reply but before the outbox recorded it; the next
    process finds the message in the thread and finishes it instead of posting it again."""
    with database_url(backend, tmp_path) as url:
        settings = slack_settings(url, tmp_path, model, slack)
        first = ServerThread(settings).start()
        ws = Workspace(first, loop, model, slack)
        try:
            ws.install()
            script(ws, "Survived the crash.")
            hold = loop.run(lambda: slack.hold("chat.startStream"))
            body = ws.mention_body("crash-test")
            ws.event(body)
            loop.call(lambda: asyncio.wait_for(hold.reached.wait(), DEADLINE))
            first.stop()  # the reply is in Slack; the cursor never moved
            loop.run(hold.release)
            ws.close()
            second = ServerThread(settings).start()
            ws.server = second
            ws.http = httpx.Client(base_url=second.url, timeout=30)
            ws.client = anthropic.Anthropic(base_url=second.url, api_key=ws.client.api_key, max_retries=0)
            ws.wait_calls("chat.stopStream")
            ws.wait_idle_delivered()
            second.stop()
        finally:
            ws.close()
    thread = body["event"]["ts"]
    assert [m.text for m in ws.bot_messages(thread)] == ["Survived the crash."]
    assert ws.counts()["chat.startStream"] == 1


def test_socket_mode_delivers_events_without_a_public_url(
    backend: str, model: FakeModelServer, loop: LoopThread, tmp_path: Path
) -> None:
    socket_slack = FakeSlack()
    loop.call(socket_slack.start)
    try:
        with database_url(backend, tmp_path) as url:
            settings = slack_settings(
                url, tmp_path, model, socket_slack, slack_signing_secret=None, slack_app_token=socket_slack.app_token
            )
            srv = ServerThread(settings).start()
            ws = Workspace(srv, loop, model, socket_slack)
            try:
                ws.install()
                script(ws, "Over the socket.")
                loop.call(lambda: asyncio.wait_for(socket_slack.wait_connected(), DEADLINE))
                body = ws.mention_body("socket?")
                envelope = loop.call(lambda: socket_slack.push(body))
                loop.call(lambda: asyncio.wait_for(socket_slack.wait_ack(envelope), DEADLINE))
                ws.wait_calls("chat.stopStream")
                ws.wait_idle_delivered()
                assert [m.text for m in ws.bot_messages(body["event"]["ts"])] == ["Over the socket."]
                # No HTTP route without a signing secret.
                assert ws.http.post("/slack/events", content=b"{}").status_code == 404
            finally:
                ws.close()
                srv.stop()
    finally:
        loop.call(socket_slack.stop)


# --- units -------------------------------------------------------------------------------------


def test_markdown_to_mrkdwn() -> None:
    assert to_mrkdwn("**bold** and *it* and ~~gone~~") == "*bold* and _it_ and ~gone~"
    assert to_mrkdwn("# Title\n- one\n- two") == "*Title*\n• one\n• two"
    assert to_mrkdwn("[docs](https://x.io/a?b=1) <@U1> a < b & c") == "<https://x.io/a?b=1|docs> <@U1> a &lt; b &amp; c"
    assert to_mrkdwn("```python\nif a < b:\n    x = 2**3\n```") == "```\nif a &lt; b:\n    x = 2**3\n```"
    assert to_mrkdwn("use `**not bold**` here") == "use `**not bold**` here"
    assert to_mrkdwn("| a | b |\n|---|---|\n| 1 | 2 |") == "```\n| a | b |\n|---|---|\n| 1 | 2 |\n```"


def test_dedup_keys_expire(server: ServerThread) -> None:
    db = server.platform.db
    key = "event:" + secrets.token_hex(6)

    def remember(ttl: float) -> Callable[[Any], bool]:
        return lambda conn: remember_sync(conn, "unit", [key, key + ":b"], ttl, postgres=not db.sqlite)

    assert server.call(lambda: db.run_write(remember(60)))
    assert not server.call(lambda: db.run_write(remember(60)))
    expired = "event:" + secrets.token_hex(6)
    assert server.call(lambda: db.run_write(lambda c: remember_sync(c, "unit", [expired], -1, postgres=not db.sqlite)))
    assert server.call(lambda: db.run_write(lambda c: remember_sync(c, "unit", [expired], 60, postgres=not db.sqlite)))


class _Delivery:
    """Stands in for adapters.base.Delivery: the outbox lives in memory."""

    def __init__(self, binding: Any, events: list[Any]) -> None:
        self.binding, self.events = binding, events

    @property
    def outbox(self) -> dict[str, Any]:
        return self.binding.outbox

    async def save(self, outbox: dict[str, Any]) -> None:
        await self.commit(self.binding.delivered_seq, outbox)

    async def commit(self, delivered_seq: int, outbox: dict[str, Any]) -> None:
        self.binding.delivered_seq, self.binding.outbox = delivered_seq, copy.deepcopy(outbox)


def test_updates_within_the_edit_interval_are_coalesced(loop: LoopThread, slack: FakeSlack) -> None:
    from slack_sdk.web.async_client import AsyncWebClient

    from adapters.base import Binding
    from adapters.slack_reply import SlackReplies
    from core.log import StoredEvent

    channel = "C" + secrets.token_hex(4).upper()
    thread = slack.add_message(channel, "go", user="U061F7AUR")
    binding = Binding(
        "slack",
        f"T1:{channel}:{thread}",
        "t",
        "s",
        {"team": "T1", "channel": channel, "thread_ts": thread, "user": "U061F7AUR"},
        0,
        {},
    )
    seq = iter(range(1, 100))

    def message(said: str) -> StoredEvent:
        return StoredEvent(
            "s", next(seq), secrets.token_hex(4), "agent.message", {"content": [{"type": "text", "text": said}]}, 0, 0
        )

    async def scenario() -> list[float | None]:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[])
        replies = SlackReplies(client, min_edit_seconds=30)
        one, two, three = message("one"), message("two"), message("three")
        waits = [await replies.deliver(_Delivery(binding, [one]))]  # creates the stream
        waits.append(await replies.deliver(_Delivery(binding, [two])))  # too soon: waits, sends nothing
        replies._next_edit.clear()  # the interval has passed: both go in one call
        waits.append(await replies.deliver(_Delivery(binding, [two, three])))
        return waits

    first, second, third = loop.call(scenario)
    assert first is None and second is not None and 29 < second <= 30 and third is None
    calls = [c for c in slack.calls if c.params.get("channel") == channel]
    assert [c.method for c in calls] == ["chat.startStream", "chat.appendStream"]
    assert calls[1].params["chunks"] == [
        {"type": "markdown_text", "text": "\n\ntwo"},
        {"type": "markdown_text", "text": "\n\nthree"},
    ]
    assert binding.delivered_seq == 3 and slack.bot_messages(channel, thread)[0].text == "one\n\ntwo\n\nthree"
