"""GitHub end to end: a real server (runner on) gets signed webhook deliveries built from the
fixtures in tests/fixtures/github (copied from shared/fixtures/github), the fake model answers,
the real PyGithub client talks to a fake GitHub REST API (core/fakes/github_api.py), and the
session's sandbox clones from and the platform pushes to a bare git repository served by that
fake over git's smart HTTP. Every test has its own installation and repository, so the tests
share servers and still see only their own calls."""

from __future__ import annotations

import copy
import functools
import json
import secrets
import subprocess
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
from adapters.github import GITHUB, GitHubAdapter, mention_pattern, verify_signature
from core.credentials import CredentialCreate, VaultCreate
from core.fakes.github_api import FakeGitHub, sign
from core.fakes.model_server import FakeModelServer
from core.keys import create_key, create_tenant
from tests.servers import LoopThread, ServerThread, database_url, make_settings, wait_for

SECRET = "It's a Secret to Everybody"
BOT = "oma-agent"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "github"
DEADLINE = 30.0
README = "# Hello-World\n\nHello Wrold! This is a committ.\n"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# GitHub runs clone and push git commands: give waits longer.
wait_for = functools.partial(wait_for, timeout=DEADLINE)


# --- servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def github(loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGitHub]:
    server = FakeGitHub(root=tmp_path_factory.mktemp("github-remote"))
    loop.call(server.start)
    yield server
    loop.call(server.stop)


def github_settings(url: str, tmp: Path, model: FakeModelServer, github: FakeGitHub, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "runner_enabled": True,
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": model.url,
        "model_max_retries": 0,
        "data_dir": tmp / "data",
        "lease_seconds": 5,
        "github_app_id": str(github.app_id),
        "github_private_key": github.private_key_pem,
        "github_webhook_secret": SECRET,
        "github_api_url": github.api_url,
        "github_bot_login": BOT,
        "github_min_edit_seconds": 0.05,
        "github_write_interval_seconds": 0,
        # The tests look into the workspace on the host (the token must not be there).
        "sandbox_runtime": "local-subprocess",
    }
    values.update(overrides)
    return make_settings(url, **values)


@pytest.fixture(scope="module")
def server(
    backend: str, model: FakeModelServer, github: FakeGitHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp(f"github-{backend}")
    with database_url(backend, tmp) as url:
        srv = ServerThread(github_settings(url, tmp, model, github)).start()
        yield srv
        srv.stop()


class Workspace:
    """One App installation with one repository (and issue #1), bound to a fresh tenant."""

    def __init__(self, server: ServerThread, loop: LoopThread, model: FakeModelServer, github: FakeGitHub) -> None:
        self.server, self.loop, self.model, self.github = server, loop, model, github
        self.installation = 10_000 + secrets.randbelow(10**8)
        self.owner = "Codertocat"
        self.name = "Hello-World-" + secrets.token_hex(4)
        self.repo = github.add_repo(self.owner, self.name, {"README.md": README}, default_branch="master")
        self.full = self.repo.full_name
        github.add_issue(
            self.full,
            1,
            "Spelling error in the README file",
            "It looks like you accidently spelled 'commit' with two 't's.",
        )
        self.first_request = len(model.requests)
        self.first_call = len(github.calls)

        async def mint() -> tuple[str, str]:
            tenant_id = await create_tenant(server.platform.db, "github-test")
            return tenant_id, (await create_key(server.platform.db, "t", tenant_id)).key

        self.tenant_id, self.key = server.call(mint)
        key = self.key
        self.client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=30)
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.loop.run(lambda: model._queue.clear())

    def close(self) -> None:
        self.client.close()
        self.http.close()

    @property
    def adapter(self) -> GitHubAdapter:
        assert self.server.app is not None
        return self.server.app[GITHUB]

    def install(self) -> str:
        agent_id = self.client.beta.agents.create(
            name="github-helper",
            model="claude-sonnet-5",
            system="You work on GitHub issues.",
            tools=[{"type": "agent_toolset_20260401"}],
        ).id
        env_id = self.client.beta.environments.create(name="github-box").id
        route = Route(self.tenant_id, agent_id, env_id)
        self.server.call(lambda: self.adapter.worker.store.install(str(self.installation), route))
        return agent_id

    # --- deliveries ----------------------------------------------------------------------------

    def _repository(self, body: dict[str, Any]) -> None:
        repo = body["repository"]
        repo.update(
            id=self.repo.id,
            name=self.name,
            full_name=self.full,
            clone_url=self.github.clone_url(self.full),
            default_branch="master",
        )
        body["installation"] = {"id": self.installation, "node_id": "x"}

    def assigned(self) -> dict[str, Any]:
        body = fixture("issues.assigned.with-installation")
        self._repository(body)
        body["assignee"]["login"] = BOT
        body["issue"]["assignees"] = [body["assignee"]]
        return body

    def comment(self, said: str, *, number: int = 1, on_pull: bool = False) -> dict[str, Any]:
        body = fixture("issue_comment.created.on-pull-request" if on_pull else "issue_comment.created")
        self._repository(body)
        stored = self.github.add_comment(self.full, number, said, login="Codertocat")
        body["comment"].update(id=stored.id, body=said)
        body["issue"]["number"] = number
        return body

    def review_comment(self, said: str, *, number: int) -> dict[str, Any]:
        body = fixture("pull_request_review_comment.created")
        self._repository(body)
        stored = self.github.add_review_comment(self.full, said, login="Codertocat")
        body["comment"].update(id=stored.id, body=said)
        body["pull_request"]["number"] = number
        return body

    def deliver(self, event: str, body: dict[str, Any], *, delivery: str | None = None) -> httpx.Response:
        raw = json.dumps(body).encode()
        headers = {
            **sign(SECRET, raw),
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or secrets.token_hex(16),
            "User-Agent": "GitHub-Hookshot/test",
        }
        return self.http.post("/github/webhook", content=raw, headers=headers)

    # --- what happened -------------------------------------------------------------------------

    def calls(self) -> list[Any]:
        mine = (f"/repos/{self.full}", f"/git/{self.full}.git", f"/app/installations/{self.installation}/")
        return [c for c in self.github.calls[self.first_call :] if c.path.startswith(mine)]

    def counts(self) -> Counter[str]:
        prefix = f"/repos/{self.full}"
        return Counter(c.key.replace(prefix, "") for c in self.calls())

    def issue(self, number: int = 1) -> Any:
        return self.github.repos[self.full].issues[number]

    def bot_comments(self, number: int = 1) -> list[Any]:
        return [c for c in self.issue(number).comments if c.bot]

    def requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.model.requests[self.first_request :]]

    def sessions(self) -> list[Any]:
        return list(self.client.beta.sessions.list())

    def wait_idle_delivered(self) -> None:
        """Nothing left for this installation: no delivery in the inbox, no user event waiting for
        the runner, every session idle (or ended), every binding's outbox caught up."""

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
                rows = (
                    await conn.execute(
                        select(sessions.c.status, sessions.c.last_seq, adapter_bindings.c.delivered_seq)
                        .select_from(adapter_bindings.join(sessions, sessions.c.id == adapter_bindings.c.session_id))
                        .where(adapter_bindings.c.tenant_id == self.tenant_id)
                    )
                ).all()
            settled = all(r.status in ("idle", "terminated") and r.delivered_seq == r.last_seq for r in rows)
            return bool(rows) and not inbox and not queued and settled

        wait_for(lambda: self.server.call(caught_up), "sessions idle and delivered")


@pytest.fixture
def ws(server: ServerThread, loop: LoopThread, model: FakeModelServer, github: FakeGitHub) -> Iterator[Workspace]:
    workspace = Workspace(server, loop, model, github)
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


FIX = "sed -i 's/Wrold/World/' README.md && git commit -qam 'Fix the typo in the README'"


# --- tests -------------------------------------------------------------------------------------


def test_assignment_reacts_works_and_opens_a_draft_pull_request(ws: Workspace) -> None:
    ws.install()
    script(ws, "I'll fix the typo.", tool_use={"name": "bash", "input": {"command": f"cd {ws.name} && {FIX}"}})
    script(ws, "Fixed the typo in README.md.")
    started = time.monotonic()
    response = ws.deliver("issues", ws.assigned())
    assert response.status_code == 202 and time.monotonic() - started < 1.0
    ws.wait_idle_delivered()

    assert ws.issue().reactions == ["eyes"]
    progress, final = ws.bot_comments()
    assert progress.edits >= 1
    assert text.GH_PROGRESS_DONE in progress.body
    assert f"- [x] `bash` `cd {ws.name} && sed -i" in progress.body
    assert final.body.split("\n", 1)[1].startswith("Fixed the typo in README.md.")
    assert text.GH_PULL_OPENED.format(number=2) in final.body

    # The agent's commit, pushed to a branch of the remote, and a draft pull request linked to the issue.
    pushed = ws.github.branch(ws.full, "oma/issue-1")
    assert pushed and ws.github.log(ws.full, "oma/issue-1")[0] == "Fix the typo in the README"
    assert "Hello World!" in ws.github.show(ws.full, "oma/issue-1", "README.md")
    assert "Wrold" in ws.github.show(ws.full, "master", "README.md")
    pull = ws.github.repos[ws.full].pulls[2]
    assert pull.draft and pull.head == "oma/issue-1" and pull.base == "master"
    assert pull.body.startswith("Closes #1.")

    counts = ws.counts()
    assert counts["POST /issues/1/reactions"] == 1
    assert counts["POST /issues/1/comments"] == 2
    assert counts[f"PATCH /issues/comments/{progress.id}"] == progress.edits
    assert counts["POST /pulls"] == 1
    assert counts["GET /issues/1/comments"] == 1  # the discussion so far, for the first turn
    assert counts["POST /git/" + ws.full + ".git/git-receive-pack"] == 1

    # The clone used a read-only token for this repository, the push a write token; neither was
    # left in the workspace.
    clone = next(c for c in ws.calls() if c.path.endswith("git-upload-pack"))
    push = next(c for c in ws.calls() if c.path.endswith("git-receive-pack"))
    assert ws.github.grants[clone.token].permissions == {"contents": "read"}
    assert ws.github.grants[push.token].permissions == {"contents": "write"}
    assert ws.github.grants[push.token].repository_ids == [ws.repo.id]
    (session,) = ws.sessions()
    workspace = ws.server.settings.data_dir / "sandboxes" / session.id / "workspace"
    config = (workspace / ws.name / ".git" / "config").read_text()
    assert "extraheader" not in config.lower() and ws.github.clone_url(ws.full) in config
    for path in workspace.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert clone.token.encode() not in data and push.token.encode() not in data, path

    (first, _) = ws.requests()
    context, asked = user_texts(first)
    assert f"`{ws.name}/`" in context and "draft pull request" in context
    assert asked.startswith(f"@Codertocat assigned you issue #1 in {ws.full}: Spelling error in the README file")
    assert session.metadata["oma.platform"] == "github"
    assert session.title == f"{ws.full}#1: Spelling error in the README file"


def test_redelivery_produces_nothing_new(ws: Workspace) -> None:
    ws.install()
    script(ws, "Looked at it: nothing to change.")
    body = ws.assigned()
    delivery = secrets.token_hex(16)
    assert ws.deliver("issues", body, delivery=delivery).status_code == 202
    ws.wait_idle_delivered()
    before = ws.counts()
    again = ws.deliver("issues", body, delivery=delivery)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    ws.wait_idle_delivered()
    assert ws.counts() == before
    assert len(ws.sessions()) == 1 and len(ws.requests()) == 1
    (final,) = ws.bot_comments()
    assert "nothing to change" in final.body


def test_follow_up_mention_continues_the_same_session(ws: Workspace) -> None:
    ws.install()
    script(ws, "First answer.")
    ws.deliver("issues", ws.assigned())
    ws.wait_idle_delivered()
    script(ws, "Second answer.")
    comment = ws.comment(f"@{BOT} and what about the other typo?")
    assert ws.deliver("issue_comment", comment).status_code == 202
    wait_for(lambda: len(ws.bot_comments()) == 2, "the second answer")
    ws.wait_idle_delivered()
    assert len(ws.sessions()) == 1
    assert [c.body.split("\n", 1)[1] for c in ws.bot_comments()] == ["First answer.", "Second answer."]
    second = ws.requests()[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert user_texts(second)[-1] == (
        f"@Codertocat on issue #1 in {ws.full} (Spelling error in the README file): and what about the other typo?"
    )
    stored = next(c for c in ws.issue().comments if c.id == comment["comment"]["id"])
    assert stored.reactions == ["eyes"]
    assert ws.counts()[f"POST /issues/comments/{stored.id}/reactions"] == 1


def test_bad_signature_is_401_and_starts_nothing(ws: Workspace) -> None:
    ws.install()
    raw = json.dumps(ws.assigned()).encode()
    delivery = secrets.token_hex(16)
    base = {"Content-Type": "application/json", "X-GitHub-Event": "issues", "X-GitHub-Delivery": delivery}
    forged = {**base, **sign("not-the-secret", raw)}
    assert ws.http.post("/github/webhook", content=raw, headers=forged).status_code == 401
    assert ws.http.post("/github/webhook", content=raw, headers=base).status_code == 401
    tampered = {**base, **sign(SECRET, raw)}
    assert ws.http.post("/github/webhook", content=raw + b" ", headers=tampered).status_code == 401
    sha1 = {**base, "X-Hub-Signature": sign(SECRET, raw)["X-Hub-Signature-256"].replace("sha256", "sha1")}
    assert ws.http.post("/github/webhook", content=raw, headers=sha1).status_code == 401
    assert ws.sessions() == []
    assert ws.calls() == []
    # The same delivery, signed, is taken: the forgeries did not use up its id.
    script(ws, "Now it is signed.")
    assert ws.deliver("issues", json.loads(raw), delivery=delivery).status_code == 202
    ws.wait_idle_delivered()
    assert len(ws.sessions()) == 1


def test_the_bots_own_comments_and_unrelated_events_are_ignored(ws: Workspace) -> None:
    ws.install()
    own = ws.comment(f"@{BOT} I looked into it.")
    own["comment"]["user"] = {"login": f"{BOT}[bot]", "type": "Bot", "id": 1}
    own["comment"]["performed_via_github_app"] = {"id": ws.github.app_id, "slug": BOT}
    assert ws.deliver("issue_comment", own).json()["ignored"] is True
    unmentioned = ws.comment("Just a note, nobody is called.")
    assert ws.deliver("issue_comment", unmentioned).json()["ignored"] is True
    other = ws.assigned()
    other["assignee"]["login"] = "someone-else"
    assert ws.deliver("issues", other).json()["ignored"] is True
    assert ws.deliver("issues", fixture("issues.opened")).json()["ignored"] is True  # no installation
    assert ws.deliver("ping", {"zen": "Keep it logically awesome."}).status_code == 200
    assert ws.sessions() == [] and ws.calls() == []


def test_mention_on_a_pull_request_pushes_to_its_branch(ws: Workspace) -> None:
    ws.install()
    # The pull request's branch: a branch of the same repository.
    subprocess.run(["git", "--git-dir", str(ws.repo.path), "branch", "changes", "master"], check=True)
    ws.github.add_pull(ws.full, 2, "Update the README with new information.", head="changes")
    script(ws, tool_use={"name": "bash", "input": {"command": f"cd {ws.name} && git branch --show-current && {FIX}"}})
    script(ws, "Done: the typo is fixed on this branch.")
    review = ws.review_comment(f"@{BOT} please fix the typo here", number=2)
    assert ws.deliver("pull_request_review_comment", review).status_code == 202
    ws.wait_idle_delivered()
    assert ws.github.repos[ws.full].review_comments[review["comment"]["id"]].reactions == ["eyes"]
    assert ws.github.log(ws.full, "changes")[0] == "Fix the typo in the README"
    assert ws.github.branch(ws.full, "master") != ws.github.branch(ws.full, "changes")
    assert list(ws.github.repos[ws.full].pulls) == [2]  # no new pull request
    progress, final = ws.bot_comments(2)
    assert "`bash`" in progress.body
    assert text.GH_PUSHED.format(count=1, branch="changes") in final.body
    (session,) = ws.sessions()
    resource = ws.http.get(f"/v1/sessions/{session.id}", headers={"x-api-key": ws.key}).json()
    assert resource["resources"][0]["checkout"] == {"type": "branch", "name": "changes"}
    assert "authorization_token" not in json.dumps(resource)
    results = ws.http.get(f"/v1/sessions/{session.id}/events", headers={"x-api-key": ws.key}).json()
    (result,) = [e for e in results["data"] if e["type"] == "agent.tool_result"]
    assert result["content"][0]["text"].startswith("changes")


def test_a_lost_comment_response_is_settled_without_posting_twice(ws: Workspace) -> None:
    ws.install()
    ws.github.drop("POST", f"/repos/{ws.full}/issues/1/comments")
    script(ws, "Exactly one copy.")
    ws.deliver("issues", ws.assigned())
    ws.wait_idle_delivered()
    (final,) = ws.bot_comments()
    assert final.body.endswith("Exactly one copy.")
    counts = ws.counts()
    assert counts["POST /issues/1/comments"] == 1
    assert counts["GET /issues/1/comments"] >= 2  # the history, then the look-up that settled it


def test_model_errors_reach_the_issue_briefly(ws: Workspace) -> None:
    ws.install()
    ws.loop.run(lambda: ws.model.error(400, "invalid_request_error", "prompt is too long"))
    ws.deliver("issues", ws.assigned())
    notice = wait_for(lambda: ws.bot_comments(), "the error comment")[0]
    assert "⚠️" in notice.body and "prompt is too long" in notice.body
    ws.wait_idle_delivered()
    assert len(ws.bot_comments()) == 1


def test_no_agent_configured_says_so(ws: Workspace) -> None:
    ws.deliver("issues", ws.assigned())  # no installation route, no OMA_GITHUB_AGENT
    notice = wait_for(lambda: ws.bot_comments(), "the explanation")[0]
    assert notice.body == text.GH_NOT_CONFIGURED
    assert ws.sessions() == []


def test_app_credentials_from_the_vault(
    backend: str, model: FakeModelServer, github: FakeGitHub, loop: LoopThread, tmp_path: Path
) -> None:
    """OMA_GITHUB_VAULT instead of GITHUB_APP_ID, GITHUB_PRIVATE_KEY and GITHUB_WEBHOOK_SECRET: they
    come from a `github_app` credential, sealed in the vault."""
    none = {"github_app_id": None, "github_private_key": None, "github_webhook_secret": None}
    with database_url(backend, tmp_path) as url:
        first = ServerThread(github_settings(url, tmp_path, model, github, **none)).start()
        try:

            async def seal() -> str:
                platform = first.platform
                tenant_id = await create_tenant(platform.db, "github-admin")
                vault = await platform.vaults.create(tenant_id, VaultCreate(display_name="GitHub App"))
                auth = {"type": "github_app", "app_id": str(github.app_id), "private_key": github.private_key_pem}
                auth["webhook_secret"] = SECRET
                await platform.vaults.create_credential(
                    tenant_id, vault["id"], CredentialCreate.model_validate({"auth": auth})
                )
                return str(vault["id"])

            vault_id = first.call(seal)
            assert first.app is not None and GITHUB not in first.app  # nothing configured: no adapter
        finally:
            first.stop()
        second = ServerThread(github_settings(url, tmp_path, model, github, github_vault=vault_id, **none)).start()
        ws = Workspace(second, loop, model, github)
        try:
            assert ws.adapter.settings.app_id == str(github.app_id)
            ws.install()
            script(ws, "Configured from the vault.")
            assert ws.deliver("issues", ws.assigned()).status_code == 202
            ws.wait_idle_delivered()
            (final,) = ws.bot_comments()
            assert final.body.endswith("Configured from the vault.")
            raw = json.dumps(ws.assigned()).encode()
            forged = {**sign("not-the-secret", raw), "X-GitHub-Event": "issues", "X-GitHub-Delivery": "x"}
            assert ws.http.post("/github/webhook", content=raw, headers=forged).status_code == 401
        finally:
            ws.close()
            second.stop()


# --- units -------------------------------------------------------------------------------------


def test_signature_and_mentions() -> None:
    body = b'{"action":"created"}'
    assert verify_signature(SECRET, body, sign(SECRET, body)["X-Hub-Signature-256"])
    assert not verify_signature(SECRET, body, None)
    assert not verify_signature(SECRET, body, "sha256=" + "0" * 64)
    pattern = mention_pattern("oma-agent[bot]")
    assert pattern is not None
    assert pattern.search("hey @oma-agent, look") and pattern.search("@OMA-AGENT[bot] look")
    assert not pattern.search("mail me at x@oma-agent.dev") and not pattern.search("@oma-agent-2 hi")
    assert copy.deepcopy(fixture("issues.opened"))["action"] == "opened"
