"""Lark/Feishu end to end: a real server (runner on) gets callbacks built from the fixtures in
shared/fixtures/lark (encrypted and plain, signed as Lark signs them), the fake model answers,
and the real lark-oapi client talks to a fake Lark open API (core/fakes/lark_api.py). Every test
works in its own tenant and chat, so the tests share servers and still see only their own calls."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from adapters import messages as text
from adapters.base import Route
from adapters.lark import LARK, LarkAdapter, decrypt, message_text, signature_ok
from adapters.lark_reply import ELEMENT_ID, render
from core.credentials import CredentialCreate, VaultCreate
from core.fakes.lark_api import Call, FakeLark, Message, encrypt, sign
from core.fakes.model_server import FakeModelServer
from core.keys import create_key, create_tenant
from tests.servers import LoopThread, ServerThread, database_url, make_settings, wait_for

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lark"  # copied from the shared fixtures
ENCRYPT_KEY = "kl9yCIusJwVZ4DDjzd1XnbeFD2P5dPsA"
# The verification token the fixtures' events carry.
TOKEN = "rvaYgkND1GOiu5MM0E1rncYC6PLtF7JV"
USER = "ou_84aad35d084aa403a838cf73ee18467"
DEADLINE = 20.0


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# --- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lark(loop: LoopThread) -> Iterator[FakeLark]:
    server = FakeLark()
    loop.call(server.start)
    yield server
    loop.call(server.stop)


def lark_settings(url: str, tmp: Path, model: FakeModelServer, lark: FakeLark, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "runner_enabled": True,
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": model.url,
        "model_max_retries": 0,
        "data_dir": tmp / "data",
        "lease_seconds": 5,
        "lark_app_id": lark.app_id,
        "lark_app_secret": lark.app_secret,
        "lark_encrypt_key": ENCRYPT_KEY,
        "lark_verification_token": TOKEN,
        "lark_domain": lark.url,
        "lark_min_edit_seconds": 0.05,
    }
    values.update(overrides)
    return make_settings(url, **values)


@pytest.fixture(scope="module")
def server(
    backend: str, model: FakeModelServer, lark: FakeLark, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"lark-{backend}")
    with database_url(backend, tmp) as url:
        srv = ServerThread(lark_settings(url, tmp, model, lark)).start()
        yield srv
        srv.stop()


class Workspace:
    """One Lark tenant and chat bound to a fresh API tenant, agent and environment."""

    def __init__(self, server: ServerThread, loop: LoopThread, model: FakeModelServer, lark: FakeLark) -> None:
        self.server, self.loop, self.model, self.lark = server, loop, model, lark
        self.tenant = secrets.token_hex(8)
        self.chat = "oc_" + secrets.token_hex(12)
        self.first_request = len(model.requests)
        self.first_call = len(lark.calls)

        async def mint() -> tuple[str, str]:
            tenant_id = await create_tenant(server.platform.db, "lark-test")
            return tenant_id, (await create_key(server.platform.db, "t", tenant_id)).key

        self.tenant_id, key = server.call(mint)
        self.client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=30)
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.loop.run(lambda: model._queue.clear())

    def close(self) -> None:
        self.client.close()
        self.http.close()

    @property
    def adapter(self) -> LarkAdapter:
        assert self.server.app is not None
        return self.server.app[LARK]

    def install(self, **agent: Any) -> str:
        params: dict[str, Any] = {
            "name": "lark-helper",
            "model": "claude-sonnet-5",
            "system": "You help in Lark.",
            "tools": [{"type": "agent_toolset_20260401"}],
        }
        params.update(agent)
        agent_id = self.client.beta.agents.create(**params).id
        env_id = self.client.beta.environments.create(name="lark-box").id
        route = Route(self.tenant_id, agent_id, env_id)
        self.server.call(lambda: self.adapter.worker.store.install(self.tenant, route))
        return agent_id

    # --- deliveries ----------------------------------------------------------------------------

    def post(self, body: bytes, headers: dict[str, str] | None = None, *, signed: bool = True) -> httpx.Response:
        sent = {"Content-Type": "application/json", **(sign(ENCRYPT_KEY, body) if signed else {}), **(headers or {})}
        return self.http.post("/lark/events", content=body, headers=sent)

    def event(self, payload: dict[str, Any], *, encrypted: bool = True) -> httpx.Response:
        plain = json.dumps(payload)
        body = json.dumps({"encrypt": encrypt(ENCRYPT_KEY, plain)}) if encrypted else plain
        return self.post(body.encode())

    def _envelope(self, name: str, message: Message, content: dict[str, Any]) -> dict[str, Any]:
        body = fixture(name)
        body["header"].update(event_id=secrets.token_hex(16), tenant_key=self.tenant, create_time=str(time.time_ns()))
        body["event"]["sender"]["tenant_key"] = self.tenant
        fields = body["event"]["message"]
        for key in ("root_id", "parent_id", "thread_id"):
            fields.pop(key, None)
            if getattr(message, key):
                fields[key] = getattr(message, key)
        fields.update(message_id=message.message_id, chat_id=self.chat, content=json.dumps(content))
        return body

    def mention(self, said: str, *, root: str | None = None, also: bool = False) -> dict[str, Any]:
        """A group message @-mentioning the bot (and, with `also`, Tom from the fixture)."""
        said = f"@_user_1 {said}" + (" with @_user_2" if also else "")
        message = self.lark.add_message(self.chat, said, sender=USER, root_id=root)
        body = self._envelope("im.message.receive_v1.group_mention", message, {"text": said})
        tom = body["event"]["message"]["mentions"][0]
        bot = {**copy.deepcopy(tom), "key": "@_user_1", "name": self.lark.bot_name}
        bot["id"] = {"open_id": self.lark.bot_open_id, "union_id": "on_bot", "user_id": ""}
        body["event"]["message"]["mentions"] = [bot, {**tom, "key": "@_user_2"}] if also else [bot]
        return body

    def direct(self, said: str, *, root: str | None = None) -> dict[str, Any]:
        message = self.lark.add_message(self.chat, said, sender=USER, root_id=root)
        return self._envelope("im.message.receive_v1.p2p", message, {"text": said})

    # --- what happened -------------------------------------------------------------------------

    def calls(self, name: str | None = None) -> list[Call]:
        mine = {m.message_id for m in self.lark.messages.values() if m.chat_id == self.chat}
        cards = {m.card_id for m in self.lark.messages.values() if m.chat_id == self.chat and m.card_id}
        created = {
            c.card_id
            for c in self.lark.cards.values()
            if c.sent_as in mine or c.card_id in cards or self.chat in json.dumps(c.data)
        }
        return [
            c
            for c in self.lark.calls[self.first_call :]
            if (c.params.get("message_id") in mine or c.params.get("card_id") in (cards | created))
            and (name is None or c.name == name)
        ]

    def counts(self) -> Counter[str]:
        return Counter(c.name for c in self.calls())

    def replies(self, root: str) -> list[Message]:
        return self.lark.bot_messages(root)

    def requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.model.requests[self.first_request :]]

    def sessions(self) -> list[Any]:
        return list(self.client.beta.sessions.list())

    def wait_calls(self, name: str, count: int = 1) -> list[Call]:
        return wait_for(lambda: len(self.calls(name)) >= count and self.calls(name), f"{count} calls of {name}")

    def wait_answered(self, root: str, count: int = 1) -> list[Message]:
        """`count` finished cards (or messages) of the bot in the thread, then everything idle
        and delivered."""

        def finished() -> list[Message] | None:
            replies = self.replies(root)
            if len(replies) < count:
                return None
            cards = [self.lark.card_of(m) for m in replies]
            done = all(c is None or not c.streaming for c in cards)
            return replies if done and all(self.lark.shown(m) != text.LARK_THINKING for m in replies) else None

        replies = wait_for(finished, f"{count} finished replies")
        self.wait_idle_delivered()
        return replies

    def wait_idle_delivered(self) -> None:
        """Every session of this workspace idle, and every binding's outbox caught up."""

        async def caught_up() -> bool:
            from sqlalchemy import select

            from core.db import adapter_bindings, adapter_inbox, sessions

            async with self.server.platform.db.read() as conn:
                inbox = (await conn.execute(select(adapter_inbox.c.id))).all()
                rows = (
                    await conn.execute(
                        select(sessions.c.status, sessions.c.last_seq, adapter_bindings.c.delivered_seq)
                        .select_from(adapter_bindings.join(sessions, sessions.c.id == adapter_bindings.c.session_id))
                        .where(adapter_bindings.c.tenant_id == self.tenant_id)
                    )
                ).all()
            return not inbox and all(r.status == "idle" and r.delivered_seq == r.last_seq for r in rows)

        wait_for(lambda: self.server.call(caught_up), "sessions idle and delivered")


@pytest.fixture
def ws(server: ServerThread, loop: LoopThread, model: FakeModelServer, lark: FakeLark) -> Iterator[Workspace]:
    workspace = Workspace(server, loop, model, lark)
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


def sequences(ws: Workspace, card_id: str) -> list[int]:
    return [
        int(c.body["sequence"])
        for c in ws.lark.calls
        if c.params.get("card_id") == card_id and c.status == 200 and "sequence" in c.body
    ]


# --- tests -------------------------------------------------------------------------------------


def test_url_verification_is_answered(ws: Workspace) -> None:
    challenge = {**fixture("url_verification"), "token": TOKEN}
    plain = ws.post(json.dumps(challenge).encode(), signed=False)
    assert plain.status_code == 200 and plain.json() == {"challenge": "ajls384kdjx98XX"}
    sealed = json.dumps({"encrypt": encrypt(ENCRYPT_KEY, json.dumps(challenge))}).encode()
    assert ws.post(sealed, signed=False).json() == {"challenge": "ajls384kdjx98XX"}
    # The docs' example carries the placeholder token "xxxxxx": not ours.
    assert ws.post(json.dumps(fixture("url_verification")).encode(), signed=False).status_code == 401


def test_mention_streams_a_card_into_its_thread(ws: Workspace) -> None:
    ws.install()
    reply = script(ws, "A river is **mostly water**, and that is everything.", hold=True)
    body = ws.mention("is it everything a river should be?", also=True)
    root = body["event"]["message"]["message_id"]
    started = time.monotonic()
    response = ws.event(body)
    took = time.monotonic() - started
    assert response.status_code == 200 and response.json() == {"msg": "success"} and took < 1.0
    # The card is in the thread, showing that the agent thinks, before the model has answered.
    (card_message,) = wait_for(lambda: ws.replies(root), "the card")
    card = ws.lark.card_of(card_message)
    assert card is not None and card.streaming and card.text == text.LARK_THINKING
    ws.loop.run(lambda: reply.hold.release())
    ws.wait_calls("cardkit.v1.card.settings")
    ws.wait_idle_delivered()
    assert card.text == "A river is **mostly water**, and that is everything." and not card.streaming
    assert card.summary == "A river is **mostly water**, and that is everything."
    (sent,) = ws.calls("im.v1.message.reply")
    assert sent.params["message_id"] == root and sent.body["reply_in_thread"] is True
    assert json.loads(sent.body["content"]) == {"type": "card", "data": {"card_id": card.card_id}}
    assert card_message.root_id == root and card_message.thread_id
    updates = ws.calls("cardkit.v1.card_element.content")
    assert updates and all(c.params["element_id"] == ELEMENT_ID for c in updates)
    assert sequences(ws, card.card_id) == sorted(set(sequences(ws, card.card_id)))
    assert ws.counts()["cardkit.v1.card.settings"] == 1
    (request,) = ws.requests()
    # The bot's own placeholder is gone; Tom's became his name.
    assert user_texts(request) == [f"<at id={USER}></at>: is it everything a river should be? with @Tom"]
    (session,) = ws.sessions()
    assert session.metadata["oma.platform"] == "lark"
    assert session.metadata["oma.conversation"] == f"{ws.tenant}:{ws.chat}:{root}"


def test_follow_up_in_the_thread_continues_the_session(ws: Workspace) -> None:
    ws.install()
    script(ws, "First answer.")
    first = ws.mention("first question")
    root = first["event"]["message"]["message_id"]
    ws.event(first)
    ws.wait_answered(root)
    script(ws, "Second answer.", tool_use={"name": "bash", "input": {"command": "echo checked"}})
    script(ws, "Checked.")
    assert ws.event(ws.mention("and a follow-up", root=root), encrypted=False).status_code == 200
    wait_for(lambda: len(ws.requests()) == 3, "the follow-up's model calls")
    ws.wait_answered(root, 2)
    assert len(ws.sessions()) == 1
    cards = [ws.lark.card_of(m) for m in ws.replies(root)]
    assert [c.text if c else None for c in cards] == [
        "First answer.",
        "Second answer.\n\n✅ `bash` echo checked\n\nChecked.",
    ]
    assert all(c is not None and not c.streaming for c in cards)
    second = ws.requests()[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert user_texts(second)[-1] == f"<at id={USER}></at>: and a follow-up"


def test_direct_messages_and_their_thread(ws: Workspace) -> None:
    ws.install()
    script(ws, "Loud and clear.")
    first = ws.direct("Hello hello can you hear me?")
    root = first["event"]["message"]["message_id"]
    ws.event(first)
    ws.wait_answered(root)
    script(ws, "Still here.")
    ws.event(ws.direct("are you still there?", root=root))  # no mention needed in p2p
    ws.wait_answered(root, 2)
    assert [ws.lark.shown(m) for m in ws.replies(root)] == ["Loud and clear.", "Still here."]
    assert len(ws.sessions()) == 1
    # A new message outside the thread is a new conversation.
    script(ws, "A new thread.")
    other = ws.direct("something else")
    ws.event(other)
    ws.wait_answered(other["event"]["message"]["message_id"])
    assert len(ws.sessions()) == 2


def test_redelivery_bad_signature_and_wrong_token_produce_nothing(ws: Workspace) -> None:
    ws.install()
    script(ws, "Only once.")
    body = ws.mention("say it once")
    root = body["event"]["message"]["message_id"]
    assert ws.event(body).status_code == 200
    ws.wait_answered(root)
    # Lark's retry (the same event), and the same message pushed under another event id.
    assert ws.event(body).status_code == 200
    again = copy.deepcopy(body)
    again["header"]["event_id"] = secrets.token_hex(16)
    assert ws.event(again, encrypted=False).status_code == 200

    forged = ws.mention("forged")
    raw = json.dumps({"encrypt": encrypt(ENCRYPT_KEY, json.dumps(forged))}).encode()
    bad = {**sign("not-the-encrypt-key", raw), "Content-Type": "application/json"}
    assert ws.http.post("/lark/events", content=raw, headers=bad).status_code == 401
    stale = {**sign(ENCRYPT_KEY, raw, timestamp=int(time.time()) - 6 * 60), "Content-Type": "application/json"}
    assert ws.http.post("/lark/events", content=raw, headers=stale).status_code == 401
    assert ws.post(raw, signed=False).status_code == 401
    assert ws.post(raw, sign(ENCRYPT_KEY, raw + b" ")).status_code == 401  # signed over another body
    wrong = copy.deepcopy(forged)
    wrong["header"]["token"] = "not-the-verification-token"
    assert ws.event(wrong).status_code == 401
    assert ws.event(wrong, encrypted=False).status_code == 401
    # A group message that does not mention the bot is not for it.
    unmentioned = ws.mention("not for you")
    unmentioned["event"]["message"]["mentions"] = []
    assert ws.event(unmentioned).status_code == 200
    ws.wait_idle_delivered()

    (session,) = ws.sessions()
    messages = list(ws.client.beta.sessions.events.list(session.id, types=["user.message"]))
    assert len(messages) == 1
    assert len(ws.requests()) == 1
    assert ws.counts()["im.v1.message.reply"] == 1
    assert len(ws.replies(root)) == 1
    for other in (forged, unmentioned):
        assert ws.replies(other["event"]["message"]["message_id"]) == []


def test_without_cardkit_it_replies_and_patches_a_card(ws: Workspace) -> None:
    ws.install()
    ws.lark.fail("cardkit.v1.card.create", status=400, code=99991672, retry_after=None)
    reply = script(ws, "Patched **in place**.", hold=True)
    body = ws.mention("no cardkit here")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (message,) = wait_for(lambda: ws.replies(root), "the card")
    assert message.msg_type == "interactive" and message.card_id is None
    assert ws.lark.shown(message) == text.LARK_THINKING
    ws.loop.run(lambda: reply.hold.release())
    wait_for(lambda: ws.lark.shown(message) == "Patched **in place**.", "the patched answer")
    ws.wait_idle_delivered()
    assert message.edits >= 1 and json.loads(message.content)["config"]["update_multi"] is True
    # The binding remembers: the next turn goes straight to patched cards.
    script(ws, "Again.")
    ws.event(ws.mention("again", root=root))
    ws.wait_answered(root, 2)
    assert ws.lark.shown(ws.replies(root)[1]) == "Again."
    assert len([c for c in ws.lark.calls_of("cardkit.v1.card.create") if c.code == 99991672]) >= 1


def test_rate_limit_is_honoured(ws: Workspace) -> None:
    ws.install()
    ws.lark.fail("im.v1.message.reply", status=429, code=99991400, retry_after=1)
    script(ws, "After the wait.")
    body = ws.mention("are you rate limited?")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    ws.wait_answered(root)
    limited, accepted = ws.calls("im.v1.message.reply")
    assert limited.status == 429 and accepted.status == 200
    assert accepted.at - limited.at >= 1.0
    assert [ws.lark.shown(m) for m in ws.replies(root)] == ["After the wait."]


def test_updates_are_coalesced(ws: Workspace) -> None:
    ws.install()
    replies = ws.adapter.replies
    replies.min_edit_seconds = 1.0
    try:
        for n in range(4):
            script(ws, f"Step {n}.", tool_use={"name": "bash", "input": {"command": f"echo {n}"}})
        script(ws, "All four done.")
        body = ws.mention("four quick steps")
        root = body["event"]["message"]["message_id"]
        ws.event(body)
        (message,) = ws.wait_answered(root)
    finally:
        replies.min_edit_seconds = 0.05
    card = ws.lark.card_of(message)
    assert card is not None and card.text.endswith("✅ `bash` echo 3\n\nAll four done.")
    updates = [c.at for c in ws.calls("cardkit.v1.card_element.content")]
    # Eight tool events and five messages, in at most a few updates a second apart (the last
    # one, at the end of the turn, is not held back).
    assert len(updates) < 8
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(updates[:-1]))


def test_a_lost_reply_is_not_posted_twice(ws: Workspace) -> None:
    ws.install()
    ws.lark.drop("im.v1.message.reply")
    script(ws, "Exactly one copy.")
    body = ws.mention("no doubles please")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    ws.wait_answered(root)
    assert [ws.lark.shown(m) for m in ws.replies(root)] == ["Exactly one copy."]
    first, second = ws.calls("im.v1.message.reply")
    assert first.body["uuid"] == second.body["uuid"]
    assert [c.name for c in ws.lark.calls[ws.first_call :]].count("cardkit.v1.card.create") == 1


def test_model_errors_reach_the_thread_briefly(ws: Workspace) -> None:
    ws.install()
    ws.loop.run(lambda: ws.model.error(400, "invalid_request_error", "prompt is too long"))
    body = ws.mention("this will fail")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (message,) = wait_for(lambda: ws.replies(root), "the card")
    shown = wait_for(lambda: "⚠️" in ws.lark.shown(message) and ws.lark.shown(message), "the error")
    assert "prompt is too long" in shown and len(shown) < 400


def test_no_agent_configured_says_so(ws: Workspace) -> None:
    body = ws.mention("anyone there?")  # no installation for this tenant, no OMA_LARK_AGENT
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (notice,) = wait_for(lambda: ws.replies(root), "the explanation")
    assert ws.lark.shown(notice) == text.LARK_NOT_CONFIGURED
    assert ws.sessions() == []


def test_stop_interrupts_and_the_card_says_so(ws: Workspace) -> None:
    ws.install()
    script(ws, "Starting a long job.", tool_use={"name": "bash", "input": {"command": "sleep 60"}})
    body = ws.mention("do the long job")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (message,) = wait_for(lambda: ws.replies(root), "the card")
    wait_for(lambda: "⏳ `bash` sleep 60" in ws.lark.shown(message), "the running step")
    ws.event(ws.mention("stop", root=root))
    (first,) = ws.wait_answered(root)
    shown = ws.lark.shown(first)
    assert shown.startswith("Starting a long job.\n\n❌ `bash` sleep 60") and shown.endswith(text.STOPPED)
    session = ws.sessions()[0]
    interrupts = list(ws.client.beta.sessions.events.list(session.id, types=["user.interrupt"]))
    assert len(interrupts) == 1 and len(ws.requests()) == 1


def test_a_tool_that_needs_approval_says_how_to_give_it(ws: Workspace) -> None:
    ws.install(
        tools=[{"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}]
    )
    script(ws, "I will run it.", tool_use={"name": "bash", "input": {"command": "echo approved-run"}})
    body = ws.mention("run the check")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (message,) = ws.wait_answered(root)
    shown = ws.lark.shown(message)
    assert "◻️ `bash` echo approved-run" in shown
    assert shown.endswith(text.LARK_APPROVAL_ELSEWHERE.format(tool="bash"))
    (session,) = ws.sessions()
    idle = list(ws.client.beta.sessions.events.list(session.id, types=["session.status_idle"]))
    assert session.status == "idle" and idle[-1].stop_reason.type == "requires_action"


def test_a_custom_tool_waits_for_the_api_client(ws: Workspace) -> None:
    lookup = {"type": "custom", "name": "lookup", "description": "Looks things up.", "input_schema": {"type": "object"}}
    ws.install(tools=[lookup])
    script(ws, "Looking it up.", tool_use={"name": "lookup", "input": {"query": "rivers"}})
    body = ws.mention("look it up")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (message,) = ws.wait_answered(root)
    shown = ws.lark.shown(message)
    assert "◻️ `lookup` rivers" in shown and shown.endswith(text.CUSTOM_TOOL_WAITING.format(tool="lookup"))


def test_a_card_whose_streaming_lark_closed_is_reopened(ws: Workspace) -> None:
    ws.install()
    reply = script(ws, "A long story, finally told.", hold=True)
    body = ws.mention("tell me a long story")
    root = body["event"]["message"]["message_id"]
    ws.event(body)
    (message,) = wait_for(lambda: ws.replies(root), "the card")
    # As after 10 minutes: Lark closed the card's streaming mode on its own.
    ws.lark.fail("cardkit.v1.card_element.content", status=400, code=200850, retry_after=None)
    ws.loop.run(lambda: reply.hold.release())
    ws.wait_answered(root)
    card = ws.lark.card_of(message)
    assert card is not None and card.text == "A long story, finally told." and not card.streaming
    settings = [json.loads(c.body["settings"])["config"] for c in ws.calls("cardkit.v1.card.settings")]
    assert [config["streaming_mode"] for config in settings] == [True, False]
    assert sequences(ws, card.card_id) == sorted(set(sequences(ws, card.card_id)))


def test_first_mention_in_an_existing_thread_gets_its_history(ws: Workspace) -> None:
    ws.install()
    root = ws.lark.add_message(ws.chat, "The deploy failed again", sender="ou_alice")
    ws.lark.add_message(ws.chat, "Same error as yesterday?", sender="ou_bob", root_id=root.message_id)
    script(ws, "Looking at it.")
    ws.event(ws.mention("can you check?", root=root.message_id))
    ws.wait_answered(root.message_id)
    (request,) = ws.requests()
    history, asked = user_texts(request)
    assert history.startswith(text.LARK_HISTORY_HEADER)
    assert "[<at id=ou_alice></at>] The deploy failed again" in history
    assert "[<at id=ou_bob></at>] Same error as yesterday?" in history
    assert "can you check?" not in history
    assert asked == f"<at id={USER}></at>: can you check?"


def test_the_tenant_token_is_cached_and_refreshed(ws: Workspace) -> None:
    ws.install()
    script(ws, "One.")
    first = ws.mention("one")
    ws.event(first)
    ws.wait_answered(first["event"]["message"]["message_id"])
    issued = ws.lark.counts()["auth.v3.tenant_access_token.internal"]
    ws.lark.revoke_tokens()  # e.g. the app secret was reset and the old token is dead
    script(ws, "Two.")
    body = ws.mention("two")
    ws.event(body)
    ws.wait_answered(body["event"]["message"]["message_id"])
    assert ws.lark.counts()["auth.v3.tenant_access_token.internal"] == issued + 1
    assert [ws.lark.shown(m) for m in ws.replies(body["event"]["message"]["message_id"])] == ["Two."]


def test_crash_between_reply_and_cursor_neither_doubles_nor_loses(
    backend: str, model: FakeModelServer, lark: FakeLark, loop: LoopThread, tmp_path: Path
) -> None:
    """The process dies after Lark made the card's message but before the outbox recorded it; the
    next process sends the same card with the same uuid, gets that message back, and finishes it."""
    with database_url(backend, tmp_path) as url:
        settings = lark_settings(url, tmp_path, model, lark)
        first = ServerThread(settings).start()
        ws = Workspace(first, loop, model, lark)
        try:
            ws.install()
            script(ws, "Survived the crash.")
            hold = loop.run(lambda: lark.hold("im.v1.message.reply"))
            body = ws.mention("crash-test")
            root = body["event"]["message"]["message_id"]
            ws.event(body)
            loop.call(lambda: asyncio.wait_for(hold.reached.wait(), DEADLINE))
            first.stop()  # the message is in Lark; the cursor never moved
            loop.run(hold.release)
            ws.close()
            second = ServerThread(settings).start()
            ws.server = second
            ws.http = httpx.Client(base_url=second.url, timeout=30)
            ws.client = anthropic.Anthropic(base_url=second.url, api_key=ws.client.api_key, max_retries=0)
            ws.wait_answered(root)
            second.stop()
        finally:
            ws.close()
    (message,) = ws.replies(root)
    assert ws.lark.shown(message) == "Survived the crash."
    sent = ws.calls("im.v1.message.reply")
    assert len(sent) == 2 and sent[0].body["uuid"] == sent[1].body["uuid"]
    assert [c.name for c in lark.calls[ws.first_call :]].count("cardkit.v1.card.create") == 1


def test_app_secrets_from_the_vault(
    backend: str, model: FakeModelServer, lark: FakeLark, loop: LoopThread, tmp_path: Path
) -> None:
    """OMA_LARK_VAULT instead of LARK_APP_ID and the secrets: the app id, secret, encrypt key and
    verification token come from a `lark` credential, sealed in the vault."""
    none = {"lark_app_id": None, "lark_app_secret": None, "lark_encrypt_key": None, "lark_verification_token": None}
    with database_url(backend, tmp_path) as url:
        first = ServerThread(lark_settings(url, tmp_path, model, lark, **none)).start()
        try:

            async def seal() -> str:
                platform = first.platform
                tenant_id = await create_tenant(platform.db, "lark-admin")
                vault = await platform.vaults.create(tenant_id, VaultCreate(display_name="Lark app"))
                auth = {"type": "lark", "app_id": lark.app_id, "app_secret": lark.app_secret}
                auth.update(encrypt_key=ENCRYPT_KEY, verification_token=TOKEN, domain="feishu")
                await platform.vaults.create_credential(
                    tenant_id, vault["id"], CredentialCreate.model_validate({"auth": auth})
                )
                return str(vault["id"])

            vault_id = first.call(seal)
        finally:
            first.stop()
        second = ServerThread(lark_settings(url, tmp_path, model, lark, lark_vault=vault_id, **none)).start()
        ws = Workspace(second, loop, model, lark)
        try:
            assert ws.adapter.settings.app_id == lark.app_id and ws.adapter.settings.encrypt_key == ENCRYPT_KEY
            ws.install()
            script(ws, "Configured from the vault.")
            body = ws.mention("where are your secrets?")
            assert ws.event(body).status_code == 200
            (reply,) = ws.wait_answered(body["event"]["message"]["message_id"])
            assert ws.lark.shown(reply) == "Configured from the vault."
            forged = ws.mention("forged")
            raw = json.dumps({"encrypt": encrypt(ENCRYPT_KEY, json.dumps(forged))}).encode()
            assert ws.post(raw, sign("not-the-key", raw)).status_code == 401
        finally:
            ws.close()
            second.stop()


def test_long_connection_delivers_events_without_a_public_url(
    backend: str, model: FakeModelServer, loop: LoopThread, tmp_path: Path
) -> None:
    socket_lark = FakeLark()
    loop.call(socket_lark.start)
    try:
        with database_url(backend, tmp_path) as url:
            settings = lark_settings(
                url,
                tmp_path,
                model,
                socket_lark,
                lark_encrypt_key=None,
                lark_verification_token=None,
                lark_long_connection=True,
            )
            srv = ServerThread(settings).start()
            ws = Workspace(srv, loop, model, socket_lark)
            try:
                ws.install()
                script(ws, "Over the long connection.")
                loop.call(lambda: asyncio.wait_for(socket_lark.wait_connected(), DEADLINE))
                body = ws.mention("socket?")
                frame = loop.call(lambda: socket_lark.push(body))
                ack = loop.call(lambda: asyncio.wait_for(socket_lark.wait_ack(frame), DEADLINE))
                assert ack["code"] == 200
                root = body["event"]["message"]["message_id"]
                ws.wait_answered(root)
                assert [ws.lark.shown(m) for m in ws.replies(root)] == ["Over the long connection."]
                # The same event again over the socket: acknowledged, and nothing new.
                again = loop.call(lambda: socket_lark.push(body))
                assert loop.call(lambda: asyncio.wait_for(socket_lark.wait_ack(again), DEADLINE))["code"] == 200
                ws.wait_idle_delivered()
                assert len(ws.requests()) == 1
                # No HTTP route without an encrypt key or verification token.
                assert ws.http.post("/lark/events", content=b"{}").status_code == 404
            finally:
                ws.close()
                srv.stop()
    finally:
        loop.call(socket_lark.stop)


# --- units -------------------------------------------------------------------------------------


def test_the_docs_encryption_test_vector() -> None:
    vector = fixture("encrypted.docs_test_vector")
    assert decrypt("test key", vector["encrypt"]) == "hello world"
    assert decrypt("test key", encrypt("test key", "hello world")) == "hello world"


def test_signatures_are_checked_with_a_window() -> None:
    body = b'{"encrypt":"abc"}'
    headers = sign("k", body, timestamp=1_700_000_000, nonce="n1")
    assert signature_ok("k", headers, body, window=300, now=1_700_000_100)
    assert not signature_ok("k", headers, body, window=300, now=1_700_000_301)
    assert not signature_ok("other", headers, body, window=300, now=1_700_000_100)
    assert not signature_ok("k", {**headers, "X-Lark-Request-Nonce": "n2"}, body, window=300, now=1_700_000_100)
    assert not signature_ok("k", {}, body, window=300)


def test_a_long_answer_is_clipped_to_what_a_card_holds() -> None:
    turn = {"start": 1, "parts": [{"k": "text", "text": "é" * 40_000 + " the end"}], "interrupted": False}
    shown = render(turn, final=True)
    assert len(shown.encode()) <= 24_100 and shown.startswith(text.LARK_CLIPPED) and shown.endswith("the end")


def test_mention_placeholders() -> None:
    message = fixture("im.message.receive_v1.group_mention")["event"]["message"]
    tom = message["mentions"][0]["id"]["open_id"]
    assert message_text(message, tom) == "hello"  # Tom is the bot here: his placeholder goes
    assert message_text(message, "ou_someone_else") == "@Tom hello"
    post = {
        "message_type": "post",
        "content": json.dumps(
            {
                "title": "Deploy",
                "content": [[{"tag": "at", "user_id": "@_user_1"}, {"tag": "text", "text": " check "}]],
            }
        ),
        "mentions": message["mentions"],
    }
    assert message_text(post, tom) == "Deploy\ncheck"
