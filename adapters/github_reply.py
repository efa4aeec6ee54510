"""Session events to GitHub, exactly once: the GitHub side of the reply outbox.

Per turn (from one idle to the next): one progress comment, created at the first tool call and
edited in place as the agent works (a checklist of its tool calls under a status line); at the
end of the turn the agent's commits are pushed and proposed as a draft pull request (or pushed to
the pull request the conversation is on), then the answer is posted as a comment, with a line
about the commits. Model errors are posted as one short comment.

Exactly once. Every comment the outbox creates carries a hidden marker derived from the session and
the event that caused it (`<!-- oma:… -->`). Before creating one, the outbox records it as
`pending`; a pending comment found at the start of a delivery (a crash, or a response that never
came) is looked up among the issue's comments by its marker and adopted, or forgotten so that it is
made again. A pending pull request is looked up by its branch. Edits and pushes are idempotent and
simply made again.
"""

from __future__ import annotations

import copy
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from github import GithubException

from adapters import messages as text
from adapters.base import Delivery
from adapters.github import Rejected, Throttled, Unknown
from core.log import StoredEvent
from core.runtime import repositories
from sandbox.base import SandboxError

if TYPE_CHECKING:
    from adapters.github import GitHubAdapter, GitHubApp, GitHubSettings

log = logging.getLogger("oma.adapters.github")

MAX_COMMENT = 60_000
TASKS_SHOWN = 30
CREATED_KEPT = 100


def _new_turn() -> dict[str, Any]:
    return {
        "tasks": [],
        "texts": [],
        # The text after the last tool call: the answer.
        "tail": [],
        "asks": [],
        "progress": None,
        "marker": None,
        "dirty": False,
        "error": False,
        "interrupted": False,
        "git": None,
    }


def _clip(value: str, size: int) -> str:
    return value if len(value) <= size else value[: size - 1] + "…"


def _summary(tool_input: Any) -> str:
    if isinstance(tool_input, dict):
        for key in ("command", "path", "file_path", "pattern", "url", "query"):
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                return _clip(" ".join(value.split()), 80).replace("`", "'")
    return ""


def _message_text(event: StoredEvent) -> str:
    return "\n\n".join(b.get("text", "") for b in event.payload.get("content", []) if b.get("type") == "text")


def _ends_turn(event: StoredEvent) -> bool:
    return event.type in ("session.status_idle", "session.status_terminated")


def render_progress(turn: dict[str, Any], status: str) -> str:
    lines = [status, ""]
    tasks = turn["tasks"]
    hidden = len(tasks) - TASKS_SHOWN
    if hidden > 0:
        lines.append(text.GH_TASKS_HIDDEN.format(count=hidden))
    for task in tasks[-TASKS_SHOWN:]:
        lines.append(
            text.GH_TASK.format(
                mark=" " if task["status"] == "in_progress" else "x",
                icon=text.GH_TASK_FAILED_ICON if task["status"] == "error" else "",
                tool=task["tool"],
                summary=f"`{task['summary']}`" if task["summary"] else "",
            ).rstrip()
        )
    return "\n".join(lines)


class _Pass:
    """One delivery pass: the outbox state being built and the last seq whose effects it holds."""

    def __init__(self, d: Delivery) -> None:
        self.d = d
        self.st: dict[str, Any] = copy.deepcopy(d.outbox)
        self.done = d.binding.delivered_seq
        self.address = d.binding.address
        self.session_id = d.binding.session_id

    @property
    def turn(self) -> dict[str, Any]:
        turn = self.st.get("turn")
        if turn is None:
            turn = self.st["turn"] = _new_turn()
        return turn

    def marker(self, seq: int, kind: str) -> str:
        return f"oma:{self.session_id}:{seq}:{kind}"

    async def checkpoint(self) -> None:
        if self.done != self.d.binding.delivered_seq or self.st != self.d.outbox:
            await self.d.commit(self.done, self.st)


class GitHubReplies:
    """`Adapter.deliver` for GitHub."""

    def __init__(self, adapter: GitHubAdapter) -> None:
        self.adapter = adapter
        self._next_edit: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    @property
    def app(self) -> GitHubApp:
        return self.adapter.app

    @property
    def settings(self) -> GitHubSettings:
        return self.adapter.settings

    def _issue(self, p: _Pass) -> Any:
        gh = self.app.client(int(p.address["installation"]))
        return gh.get_repo(p.address["repo"]).get_issue(int(p.address["number"]))

    # --- the delivery pass ---------------------------------------------------------------------

    async def deliver(self, d: Delivery) -> float | None:
        p = _Pass(d)
        key = d.binding.key
        try:
            if p.st.get("pending"):
                await self._settle(p)
                return 0.0  # then read again from the settled cursor
            ends = any(_ends_turn(e) for e in d.events)
            if not ends and p.turn["progress"]:
                wait = self._next_edit.get(key, 0.0) - time.monotonic()
                if wait > 0:  # coalesce: whatever else arrives meanwhile goes in the same edit
                    return wait
            await self._run(p)
        except Throttled as exc:
            return max(exc.retry_after, 0.05)
        except Unknown as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("github: a call for %s had an unknown outcome (%s); settling it", key, exc)
            return float(min(30, 2 ** (failures - 1)))
        except Rejected as exc:
            # GitHub refuses what these events need (issue gone, App uninstalled, …): nothing will
            # change that, so they are given up instead of retried forever.
            log.warning("github: %s refused: %s; skipping", key, exc)
            p.st["pending"] = None
            p.done = d.events[-1].seq if d.events else p.done
            await p.checkpoint()
            return None
        self._failures.pop(key, None)
        return None

    async def _run(self, p: _Pass) -> None:
        for event in p.d.events:
            turn = p.turn
            if event.type == "agent.message":
                said = _message_text(event).strip()
                if said:
                    turn["texts"].append(said)
                    turn["tail"].append(said)
            elif event.type in ("agent.tool_use", "agent.mcp_tool_use"):
                turn["tail"] = []
                name = str(event.payload.get("name", "tool"))
                if event.payload.get("evaluated_permission") == "ask":
                    turn["asks"].append(name)
                else:
                    turn["tasks"].append(
                        {
                            "id": event.id,
                            "tool": name,
                            "summary": _summary(event.payload.get("input")),
                            "status": "in_progress",
                        }
                    )
                    turn["marker"] = turn["marker"] or p.marker(event.seq, "progress")
                    turn["dirty"] = True
            elif event.type == "agent.tool_result":
                for task in turn["tasks"]:
                    if task["id"] == event.payload.get("tool_use_id"):
                        task["status"] = "error" if event.payload.get("is_error") else "complete"
                        turn["dirty"] = True
            elif event.type == "session.error":
                await self._error(p, event)
            elif event.type == "user.interrupt":
                turn["interrupted"] = True
            elif _ends_turn(event):
                await self._end_turn(p, event)
            p.done = event.seq
        turn = p.turn
        if turn["dirty"] and turn["tasks"]:
            await self._show_progress(p, text.GH_PROGRESS_WORKING)
        await p.checkpoint()

    # --- comments ------------------------------------------------------------------------------

    async def _show_progress(self, p: _Pass, status: str) -> None:
        turn = p.turn
        body = render_progress(turn, status)
        if turn["progress"] is None:
            turn["progress"] = await self._comment(p, turn["marker"] or p.marker(p.done, "progress"), body)
        else:
            comment_id = int(turn["progress"])
            issue = self._issue(p)
            marked = f"<!-- {turn['marker']} -->\n{body}"
            await self.app.call(lambda: issue.get_comment(comment_id).edit(marked))
        turn["dirty"] = False
        self._next_edit[p.d.binding.key] = time.monotonic() + self.settings.min_edit_seconds

    async def _comment(self, p: _Pass, marker: str, body: str) -> int:
        """Create a comment exactly once: recorded as pending first, so that a crash or a lost
        response is settled by finding the comment's marker instead of posting it again."""
        created: dict[str, int] = p.st.setdefault("created", {})
        if marker in created:
            return created[marker]
        p.st["pending"] = {"op": "comment", "marker": marker, "since": time.time() - 120}
        await p.checkpoint()
        issue = self._issue(p)
        marked = f"<!-- {marker} -->\n{_clip(body, MAX_COMMENT)}"
        try:
            comment = await self.app.call(lambda: issue.create_comment(marked))
        except (Throttled, Rejected):
            p.st["pending"] = None  # GitHub applied nothing
            await p.checkpoint()
            raise
        created[marker] = int(comment.id)
        while len(created) > CREATED_KEPT:
            created.pop(next(iter(created)))
        p.st["pending"] = None
        return int(comment.id)

    async def _error(self, p: _Pass, event: StoredEvent) -> None:
        error = event.payload.get("error") or {}
        retry = (error.get("retry_status") or {}).get("type")
        if retry == "retrying":
            return
        if retry == "exhausted":
            line = text.RETRIES_EXHAUSTED
        else:
            template = text.ERROR_BY_TYPE.get(str(error.get("type")), text.ERROR_GENERIC)
            line = template.format(message=_clip(str(error.get("message") or ""), 300))
        p.turn["error"] = True
        await self._comment(p, p.marker(event.seq, "error"), text.ERROR.format(message=line))

    # --- the end of a turn ---------------------------------------------------------------------

    async def _end_turn(self, p: _Pass, event: StoredEvent) -> None:
        turn = p.turn
        stop = event.payload.get("stop_reason") or {}
        waiting = event.type == "session.status_idle" and stop.get("type") == "requires_action"
        if waiting:
            status = text.GH_PROGRESS_WAITING
        elif turn["error"]:
            status = text.GH_PROGRESS_FAILED
        elif turn["interrupted"]:
            status = text.GH_PROGRESS_STOPPED
        else:
            status = text.GH_PROGRESS_DONE
        if turn["tasks"]:
            await self._show_progress(p, status)
        if turn["git"] is None:
            # Only a turn that ran tools can have committed anything (and only then is the sandbox up).
            turn["git"] = await self._publish(p) if turn["tasks"] and not waiting else ""
            await p.checkpoint()
        parts: list[str] = []
        answer = "\n\n".join(turn["tail"] or turn["texts"])
        if answer:
            parts.append(answer)
        elif turn["tasks"] and not turn["error"] and not turn["interrupted"] and not waiting:
            parts.append(text.GH_NO_ANSWER)
        if waiting and turn["asks"]:
            parts.append(
                text.GH_APPROVAL_UNSUPPORTED.format(tools=", ".join(f"`{n}`" for n in dict.fromkeys(turn["asks"])))
            )
        if turn["git"]:
            parts.append(turn["git"])
        if parts:
            await self._comment(p, p.marker(event.seq, "final"), "\n\n".join(parts))
        p.st["turn"] = _new_turn()

    async def _publish(self, p: _Pass) -> str:
        """Push the agent's new commits; open (or update) the draft pull request. Returns the line
        for the answer ("" when there was nothing to push)."""
        binding = p.d.binding
        session = await self.adapter.core.sessions.get(binding.tenant_id, binding.session_id)
        found = repositories.repositories(session.get("resources"))
        if not found:
            return ""
        repo, address = found[0], p.address
        state: dict[str, Any] = p.st.setdefault("git", {})
        pool = self.adapter.sandboxes()
        try:
            sandbox = await pool.get(binding.session_id, session["environment_id"], mount=False)
            head = await repositories.head(sandbox, repo)
            if head is None or head == state.get("pushed"):
                return ""
            base = f"refs/remotes/origin/{repo.branch}" if repo.branch else (repo.commit or "HEAD")
            ahead = await repositories.commits_ahead(sandbox, repo, base)
            if ahead == 0:
                return ""
            if address.get("pull"):
                if not repo.branch:
                    return text.GH_PUSH_FAILED.format(detail="the pull request's branch is in another repository")
                branch, force = repo.branch, False
            else:
                branch, force = f"{self.settings.branch_prefix}issue-{address['number']}", True
            token = await self.app.token(int(address["installation"]), int(address["repo_id"]), {"contents": "write"})
            await repositories.push(sandbox, repo, branch, token, force=force)
        except repositories.GitError as exc:
            return text.GH_PUSH_FAILED.format(detail=_clip(exc.detail, 300))
        except SandboxError as exc:
            return text.GH_PUSH_FAILED.format(detail=_clip(exc.message, 300))
        finally:
            pool.idle(binding.session_id)
        state.update(pushed=head, branch=branch)
        if address.get("pull"):
            return text.GH_PUSHED.format(count=ahead, branch=branch)
        if state.get("pull"):
            return text.GH_PULL_UPDATED.format(number=state["pull"]["number"])
        try:
            pull = await self._open_pull(p, branch, repo.branch or str(address["default_branch"]))
        except Rejected as exc:
            return text.GH_PULL_FAILED.format(branch=branch, detail=_clip(exc.message, 300))
        return text.GH_PULL_OPENED.format(number=pull["number"])

    async def _open_pull(self, p: _Pass, branch: str, base: str) -> dict[str, Any]:
        address = p.address
        gh = self.app.client(int(address["installation"]))
        repo = gh.get_repo(address["repo"])
        title = text.GH_PULL_TITLE.format(title=address.get("title") or branch)
        body = text.GH_PULL_BODY.format(
            number=address["number"], bot=self.settings.bot_login, requester=address.get("requester", "someone")
        )

        def create() -> Any:
            try:
                return repo.create_pull(base=base, head=branch, title=title, body=body, draft=True)
            except GithubException as exc:
                if exc.status == 422 and "draft" in str(exc.data).lower():  # drafts unavailable here
                    return repo.create_pull(base=base, head=branch, title=title, body=body, draft=False)
                raise

        p.st["pending"] = {"op": "pull", "branch": branch}
        await p.checkpoint()
        try:
            created = await self.app.call(create)
        except Rejected:
            found = await self._find_pull(p, branch)  # already open (made before a lost response)
            if found is None:
                p.st["pending"] = None
                await p.checkpoint()
                raise
            p.st["pending"] = None
            p.st.setdefault("git", {})["pull"] = found
            return found
        pull = {"number": int(created.number), "url": str(created.html_url)}
        p.st["pending"] = None
        p.st.setdefault("git", {})["pull"] = pull
        return pull

    async def _find_pull(self, p: _Pass, branch: str) -> dict[str, Any] | None:
        address = p.address
        gh = self.app.client(int(address["installation"]))
        owner = str(address["repo"]).split("/", 1)[0]

        def find() -> dict[str, Any] | None:
            for pull in gh.get_repo(address["repo"]).get_pulls(state="all", head=f"{owner}:{branch}"):
                return {"number": int(pull.number), "url": str(pull.html_url)}
            return None

        return await self.app.call(find)

    # --- settling what a crash left in doubt ---------------------------------------------------

    async def _settle(self, p: _Pass) -> None:
        pending = p.st["pending"]
        if pending["op"] == "pull":
            found = await self._find_pull(p, pending["branch"])
            if found is not None:
                p.st.setdefault("git", {})["pull"] = found
        else:
            issue = self._issue(p)
            marker = f"<!-- {pending['marker']} -->"
            since = datetime.fromtimestamp(float(pending["since"]), UTC)

            def find() -> int | None:
                for comment in issue.get_comments(since=since):
                    if (comment.body or "").startswith(marker):
                        return int(comment.id)
                return None

            comment_id = await self.app.call(find)
            if comment_id is not None:
                p.st.setdefault("created", {})[pending["marker"]] = comment_id
        p.st["pending"] = None
        await p.checkpoint()
