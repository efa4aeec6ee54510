"""GitHub: the agent as a GitHub App. Assign it an issue, @-mention it in an issue or pull request
comment (or a review comment), or add the trigger label, and it works on the repository and
answers there.

Inbound is `POST /github/webhook`: the `X-Hub-Signature-256` HMAC is checked in constant time, the
delivery is translated into an `Inbound` and handed to `Ingress.accept` (dedup by
`X-GitHub-Delivery`, and by comment id; inbox; one transaction) before GitHub gets its answer, so
the ack takes milliseconds. The worker then reacts 👀 on what triggered it, creates the session with
the repository as a `github_repository` resource (a token minted for it, read-only and for that one
repository), and appends the user message. Outbound is `adapters.github_reply`.

Bindings are per issue or pull request: `installation:repository id:number`. PyGithub is
synchronous: every call runs in a worker thread. Installation tokens are minted from the App's JWT
and cached until five minutes before they expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import orjson
import requests
from aiohttp import web
from github import Auth, Github, GithubException, GithubIntegration
from sqlalchemy import select

from adapters import messages as text
from adapters.base import AdapterWorker, Delivery, Inbound, Route, WorkerSettings
from core.credentials import CredentialKind
from core.db import vaults
from core.platform import Platform
from core.runtime.sandboxes import SandboxPool

log = logging.getLogger("oma.adapters.github")

T = TypeVar("T")

GITHUB_WEBHOOK_PATH = "/github/webhook"
GITHUB_ENVIRONMENT_NAME = "github"
# GitHub never retries on its own; a redelivery (by hand or API, up to 3 days back) keeps its id.
DEDUP_TTL_SECONDS = 7 * 24 * 3600
TOKEN_MARGIN_SECONDS = 300.0
HISTORY_LIMIT = 100
MAX_BODY = 20_000


@dataclass(frozen=True)
class GitHubSettings:
    app_id: str = ""
    private_key: str = ""
    webhook_secret: str = ""
    api_url: str = "https://api.github.com"
    # The account whose assignment or @-mention triggers the agent (a machine user, or the App's
    # `<slug>[bot]`); its comments, and the App's, are never taken as prompts.
    bot_login: str = ""
    # Who answers: an agent id, and an environment id (unset: one named "github", created on first use).
    agent: str | None = None
    environment: str | None = None
    # Adding this label to an issue or pull request triggers the agent too.
    trigger_label: str | None = None
    # The progress comment is edited at most this often.
    min_edit_seconds: float = 2.0
    # PyGithub's pause between writes (GitHub asks for one second to avoid secondary rate limits).
    write_interval_seconds: float = 1.0
    branch_prefix: str = "oma/"
    # A vault id: its `github_app` credential supplies the App's id, private key and webhook
    # secret, read at start-up (a webhook secret set here is used when the credential has none).
    vault: str | None = None
    timeout_seconds: int = 15


class Throttled(Exception):
    """GitHub's rate limit: nothing was applied; try again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class Unknown(Exception):
    """The call may or may not have been applied (connection lost, timeout, 5xx)."""


class Rejected(Exception):
    """GitHub refused the call (4xx): trying again unchanged will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.encode())


def _retry_after(exc: GithubException) -> float | None:
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if "retry-after" in headers:
        try:
            return max(1.0, float(headers["retry-after"]))
        except ValueError:
            return 60.0
    message = str((exc.data or {}).get("message", "") if isinstance(exc.data, dict) else exc.data).lower()
    if exc.status == 429 or headers.get("x-ratelimit-remaining") == "0" or "rate limit" in message:
        try:
            return min(3600.0, max(1.0, float(headers.get("x-ratelimit-reset", 0)) - time.time()))
        except ValueError:
            return 60.0
    return None


def classify(exc: Exception) -> Exception:
    """A PyGithub or transport failure as Throttled, Unknown or Rejected."""
    if isinstance(exc, GithubException):
        wait = _retry_after(exc) if exc.status in (403, 429) else None
        if wait is not None:
            return Throttled(wait)
        if exc.status >= 500:
            return Unknown(f"{exc.status}")
        data = exc.data if isinstance(exc.data, dict) else {}
        return Rejected(exc.status, str(data.get("message") or exc.data))
    if isinstance(exc, requests.RequestException | OSError | TimeoutError):
        return Unknown(repr(exc))
    return exc


class _Tokens:
    """Installation tokens minted from the App's JWT, cached per (installation, repository,
    permissions) until `margin` seconds before they expire. Thread-safe: PyGithub calls it from
    worker threads."""

    def __init__(self, integration: GithubIntegration, margin: float = TOKEN_MARGIN_SECONDS) -> None:
        self._integration = integration
        self._margin = margin
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int | None, tuple[tuple[str, str], ...]], tuple[str, float]] = {}

    def get(
        self, installation_id: int, repository_id: int | None = None, permissions: dict[str, str] | None = None
    ) -> str:
        key = (installation_id, repository_id, tuple(sorted((permissions or {}).items())))
        with self._lock:
            found = self._cache.get(key)
            if found is not None and found[1] - self._margin > time.time():
                return found[0]
            body: dict[str, Any] = {"permissions": dict(permissions or {})}
            if repository_id is not None:
                body["repository_ids"] = [repository_id]
            _, data = self._integration.requester.requestJsonAndCheck(
                "POST", f"/app/installations/{installation_id}/access_tokens", input=body
            )
            expires = datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00")).timestamp()
            self._cache[key] = (str(data["token"]), expires)
            return str(data["token"])


class _InstallationAuth(Auth.Auth):
    """PyGithub authentication with the cached token of one installation."""

    def __init__(self, tokens: _Tokens, installation_id: int) -> None:
        self._tokens = tokens
        self._installation_id = installation_id

    @property
    def token_type(self) -> str:
        return "token"

    @property
    def token(self) -> str:
        return self._tokens.get(self._installation_id)


class GitHubApp:
    """The App's identity on one GitHub (github.com or an Enterprise server): tokens and clients."""

    def __init__(self, settings: GitHubSettings) -> None:
        self.settings = settings
        self._integration: GithubIntegration | None = None
        self._tokens: _Tokens | None = None
        self._clients: dict[int, Github] = {}
        self._lock = threading.Lock()

    @property
    def tokens(self) -> _Tokens:
        with self._lock:
            if self._tokens is None:
                if not self.settings.app_id or not self.settings.private_key:
                    raise Rejected(503, "the GitHub App's id and private key are not configured")
                self._integration = GithubIntegration(
                    auth=Auth.AppAuth(self.settings.app_id, self.settings.private_key),
                    base_url=self.settings.api_url,
                    timeout=self.settings.timeout_seconds,
                    retry=None,
                    seconds_between_requests=None,
                    seconds_between_writes=None,
                )
                self._tokens = _Tokens(self._integration)
            return self._tokens

    def client(self, installation_id: int) -> Github:
        tokens = self.tokens
        with self._lock:
            found = self._clients.get(installation_id)
            if found is None:
                found = self._clients[installation_id] = Github(
                    auth=_InstallationAuth(tokens, installation_id),
                    base_url=self.settings.api_url,
                    timeout=self.settings.timeout_seconds,
                    # No automatic retries: a retried post whose first response was lost would
                    # post twice. The outbox retries, knowing what is safe to repeat.
                    retry=None,
                    seconds_between_requests=None,
                    seconds_between_writes=self.settings.write_interval_seconds or None,
                    lazy=True,
                )
            return found

    async def call(self, fn: Callable[[], T]) -> T:
        """One blocking PyGithub call in a worker thread, its failure classified."""
        try:
            return await asyncio.to_thread(fn)
        except Exception as exc:
            raise classify(exc) from exc

    async def token(self, installation_id: int, repository_id: int | None, permissions: dict[str, str]) -> str:
        return await self.call(lambda: self.tokens.get(installation_id, repository_id, permissions))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        if self._integration is not None:
            self._integration.close()


def mention_pattern(login: str) -> re.Pattern[str] | None:
    names = {login, login.removesuffix("[bot]")} - {""}
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w@/-])@(?:{alternatives})(?![\w-])", re.IGNORECASE)


def _clip(value: str, size: int) -> str:
    return value if len(value) <= size else value[: size - 1] + "…"


class GitHubAdapter:
    platform: ClassVar[str] = "github"
    dedup_ttl_seconds: ClassVar[float] = DEDUP_TTL_SECONDS

    def __init__(
        self,
        platform: Platform,
        settings: GitHubSettings,
        *,
        sandboxes: Callable[[], SandboxPool],
        worker_settings: WorkerSettings | None = None,
    ) -> None:
        from adapters.github_reply import GitHubReplies

        self.settings = settings
        self.core = platform
        self.app = GitHubApp(settings)
        self.sandboxes = sandboxes
        self.mention = mention_pattern(settings.bot_login)
        self.replies = GitHubReplies(self)
        self.worker = AdapterWorker(
            platform,
            self,
            default_route=self.default_route,
            session_fields=self.session_fields,
            acknowledge=self.acknowledge,
            settings=worker_settings,
        )

    async def start(self) -> None:
        if self.settings.vault is not None:
            self.settings = await self._from_vault(self.settings.vault)
            self.app = GitHubApp(self.settings)
        await self.worker.start()

    async def _from_vault(self, vault_id: str) -> GitHubSettings:
        """The App's credentials from the vault's `github_app` credential (fails the start-up if absent)."""
        async with self.core.db.read() as conn:
            found = await conn.execute(select(vaults.c.tenant_id).where(vaults.c.id == vault_id))
            tenant_id = found.scalar_one_or_none()
        credential = None
        if tenant_id is not None:
            credential = await self.core.vaults.workspace_credential(tenant_id, vault_id, CredentialKind.GITHUB_APP)
        if credential is None:
            raise ValueError(f"OMA_GITHUB_VAULT: vault {vault_id} has no active github_app credential")
        return replace(
            self.settings,
            app_id=str(credential["app_id"]),
            private_key=str(credential["private_key"]).strip().replace("\\n", "\n"),
            webhook_secret=str(credential.get("webhook_secret") or self.settings.webhook_secret),
        )

    async def stop(self) -> None:
        await self.worker.stop()
        await asyncio.to_thread(self.app.close)

    # --- routing -------------------------------------------------------------------------------

    async def default_route(self) -> Route | None:
        if not self.settings.agent:
            return None
        route = await self.worker.store.configured_route(
            self.settings.agent, self.settings.environment, GITHUB_ENVIRONMENT_NAME
        )
        if route is None:
            log.warning("github: OMA_GITHUB_AGENT %s does not exist", self.settings.agent)
        return route

    # --- inbound -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """POST /github/webhook: verified, translated and queued before GitHub gets its answer."""
        body = await request.read()
        if not self.settings.webhook_secret:  # e.g. a vault credential without one: nothing to check with
            return web.json_response({"ok": False, "error": "no webhook secret is configured"}, status=503)
        if not verify_signature(self.settings.webhook_secret, body, request.headers.get("X-Hub-Signature-256")):
            return web.json_response({"ok": False, "error": "invalid signature"}, status=401)
        event = request.headers.get("X-GitHub-Event", "")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if event == "ping":
            return web.json_response({"ok": True})
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return web.json_response({"ok": False, "error": "the body is not JSON (use content type json)"}, status=400)
        inbound = self.translate(event, payload, delivery) if isinstance(payload, dict) else None
        if inbound is None:
            return web.json_response({"ok": True, "ignored": True})
        accepted = await self.worker.ingress.accept(inbound)
        return web.json_response({"ok": True, "duplicate": not accepted}, status=202 if accepted else 200)

    def _own(self, user: dict[str, Any] | None, via_app: dict[str, Any] | None) -> bool:
        login = str((user or {}).get("login") or "").lower()
        own = {self.settings.bot_login.lower(), self.settings.bot_login.lower().removesuffix("[bot]") + "[bot]"}
        return login in own or str((via_app or {}).get("id") or "") == str(self.settings.app_id)

    def _mentioned(self, body: str | None) -> str | None:
        """The text with the mention removed, when it mentions the bot; None otherwise."""
        if not body or self.mention is None or not self.mention.search(body):
            return None
        return self.mention.sub("", body).strip()

    def translate(self, event: str, payload: dict[str, Any], delivery: str) -> Inbound | None:
        installation = (payload.get("installation") or {}).get("id")
        repo = payload.get("repository") or {}
        if not installation or not repo.get("id"):
            return None
        action = payload.get("action")
        sender = (payload.get("sender") or {}).get("login") or "someone"
        found: tuple[dict[str, Any], str, dict[str, Any], int | None] | None = None
        if event == "issues":
            found = self._issue_trigger(action, payload, sender)
        elif event == "issue_comment" and action == "created":
            found = self._comment_trigger(payload, sender)
        elif event == "pull_request_review_comment" and action == "created":
            found = self._review_comment_trigger(payload, sender)
        if found is None:
            return None
        thread, said, react, comment_id = found
        pull = "pull_request" in thread or event == "pull_request_review_comment"
        number = int(thread["number"])
        key = f"{installation}:{repo['id']}:{number}"
        address = {
            "installation": int(installation),
            "repo": str(repo["full_name"]),
            "repo_id": int(repo["id"]),
            "number": number,
            "pull": pull,
            "title": _clip(str(thread.get("title") or ""), 256),
            "clone_url": str(repo.get("clone_url") or ""),
            "default_branch": str(repo.get("default_branch") or "main"),
            "requester": sender,
        }
        dedup = [f"delivery:{delivery}"] if delivery else []
        if comment_id is not None:
            dedup.append(f"comment:{repo['id']}:{comment_id}")
        context = {"react": react, "skip_comment": comment_id}
        if said.lower().strip(" .!") in text.STOP_WORDS:
            return Inbound(
                key,
                address,
                [{"type": "user.interrupt"}],
                tuple(dedup),
                start=False,
                workspace=str(installation),
                context=context,
            )
        message = {"type": "user.message", "content": [{"type": "text", "text": said}]}
        return Inbound(key, address, [message], tuple(dedup), start=True, workspace=str(installation), context=context)

    def _kind(self, thread: dict[str, Any]) -> str:
        return text.GH_KIND_PULL if "pull_request" in thread or "head" in thread else text.GH_KIND_ISSUE

    def _issue_trigger(
        self, action: str | None, payload: dict[str, Any], sender: str
    ) -> tuple[dict[str, Any], str, dict[str, Any], int | None] | None:
        issue = payload.get("issue") or {}
        if not issue or self._own(payload.get("sender"), None):
            return None
        values = {
            "sender": sender,
            "kind": self._kind(issue),
            "number": issue.get("number"),
            "repo": (payload.get("repository") or {}).get("full_name"),
            "title": issue.get("title") or "",
            "body": _clip(str(issue.get("body") or ""), MAX_BODY),
        }
        react = {"type": "issue", "number": issue.get("number")}
        login = str((payload.get("assignee") or {}).get("login") or "")
        label = str((payload.get("label") or {}).get("name") or "")
        if action == "assigned" and self.settings.bot_login and login.lower() == self.settings.bot_login.lower():
            return issue, text.GH_ASSIGNED.format(**values), react, None
        trigger = self.settings.trigger_label
        if action == "labeled" and trigger and label.lower() == trigger.lower():
            return issue, text.GH_LABELED.format(label=label, **values), react, None
        if action == "opened" and self._mentioned(issue.get("body")) is not None:
            return issue, text.GH_OPENED.format(**values), react, None
        return None

    def _comment_trigger(
        self, payload: dict[str, Any], sender: str
    ) -> tuple[dict[str, Any], str, dict[str, Any], int | None] | None:
        comment, issue = payload.get("comment") or {}, payload.get("issue") or {}
        if not comment or not issue or self._own(comment.get("user"), comment.get("performed_via_github_app")):
            return None
        said = self._mentioned(comment.get("body"))
        if said is None:
            return None
        if said.lower().strip(" .!") in text.STOP_WORDS:
            return issue, said, {"type": "comment", "id": comment["id"], "number": issue["number"]}, int(comment["id"])
        message = text.GH_COMMENT.format(
            sender=sender,
            kind=self._kind(issue),
            number=issue.get("number"),
            repo=(payload.get("repository") or {}).get("full_name"),
            title=issue.get("title") or "",
            text=_clip(said, MAX_BODY),
        )
        return issue, message, {"type": "comment", "id": comment["id"], "number": issue["number"]}, int(comment["id"])

    def _review_comment_trigger(
        self, payload: dict[str, Any], sender: str
    ) -> tuple[dict[str, Any], str, dict[str, Any], int | None] | None:
        comment, pull = payload.get("comment") or {}, payload.get("pull_request") or {}
        if not comment or not pull or self._own(comment.get("user"), comment.get("performed_via_github_app")):
            return None
        said = self._mentioned(comment.get("body"))
        if said is None:
            return None
        react = {"type": "review_comment", "id": comment["id"], "number": pull["number"]}
        if said.lower().strip(" .!") in text.STOP_WORDS:
            return pull, said, react, int(comment["id"])
        message = text.GH_REVIEW_COMMENT.format(
            sender=sender,
            path=comment.get("path") or "",
            number=pull.get("number"),
            repo=(payload.get("repository") or {}).get("full_name"),
            title=pull.get("title") or "",
            hunk=_clip(str(comment.get("diff_hunk") or ""), 4000),
            text=_clip(said, MAX_BODY),
        )
        return pull, message, react, int(comment["id"])

    # --- worker hooks --------------------------------------------------------------------------

    async def acknowledge(self, inbound: Inbound) -> None:
        """👀 on the issue or comment that triggered the agent (GitHub keeps one per user and kind)."""
        react = (inbound.context or {}).get("react") or {}
        address = inbound.address
        gh = self.app.client(address["installation"])

        def call() -> None:
            repo = gh.get_repo(address["repo"])
            if react.get("type") == "comment":
                repo.get_issue(int(react["number"])).get_comment(int(react["id"])).create_reaction("eyes")
            elif react.get("type") == "review_comment":
                repo.get_pull(int(react["number"])).get_review_comment(int(react["id"])).create_reaction("eyes")
            else:
                repo.get_issue(int(address["number"])).create_reaction("eyes")

        await self.app.call(call)

    async def session_fields(self, inbound: Inbound) -> dict[str, Any]:
        """The repository as the session's `github_repository` resource, with a token for it that
        can only read its contents; and a title."""
        address = inbound.address
        installation, repo_id = int(address["installation"]), int(address["repo_id"])
        checkout: dict[str, Any] = {"type": "branch", "name": address["default_branch"]}
        if address.get("pull"):
            gh = self.app.client(installation)

            def head() -> tuple[str, str, int | None]:
                pull = gh.get_repo(address["repo"]).get_pull(int(address["number"]))
                head_repo = pull.head.repo
                return pull.head.ref, pull.head.sha, head_repo.id if head_repo is not None else None

            ref, sha, head_repo_id = await self.app.call(head)
            checkout = {"type": "branch", "name": ref} if head_repo_id == repo_id else {"type": "commit", "sha": sha}
        token = await self.app.token(installation, repo_id, {"contents": "read"})
        name = str(address["repo"]).rsplit("/", 1)[-1]
        return {
            "title": _clip(f"{address['repo']}#{address['number']}: {address.get('title', '')}", 1024),
            "resources": [
                {
                    "type": "github_repository",
                    "url": address["clone_url"],
                    "authorization_token": token,
                    "checkout": checkout,
                    "mount_path": f"/workspace/{name}",
                }
            ],
        }

    # --- Adapter -------------------------------------------------------------------------------

    async def history(self, inbound: Inbound) -> list[str]:
        """Where the repository is and what happens to commits, then the discussion so far."""
        address = inbound.address
        name = str(address["repo"]).rsplit("/", 1)[-1]
        lines = [
            text.GH_CHECKOUT.format(
                repo=address["repo"],
                directory=name,
                mount_path=f"/workspace/{name}",
                checkout=text.GH_CHECKOUT_BRANCH.format(branch=address["default_branch"])
                if not address.get("pull")
                else "the pull request's head",
                after=text.GH_AFTER_PULL if address.get("pull") else text.GH_AFTER_ISSUE,
            )
        ]
        skip = (inbound.context or {}).get("skip_comment")
        gh = self.app.client(int(address["installation"]))

        def read() -> list[str]:
            issue = gh.get_repo(address["repo"]).get_issue(int(address["number"]))
            shown: list[str] = []
            for comment in issue.get_comments():
                if comment.id == skip:
                    continue
                author = comment.user.login if comment.user is not None else "someone"
                if self._own({"login": author}, None):
                    author = "you"
                shown.append(text.GH_HISTORY_LINE.format(author=author, text=_clip(comment.body or "", 4000)))
                if len(shown) >= HISTORY_LIMIT:
                    break
            return shown

        try:
            earlier = await self.app.call(read)
        except Exception as exc:  # the conversation goes on without the history
            log.warning("github: could not read the comments of %s: %r", inbound.binding_key, exc)
            earlier = []
        if earlier:
            kind = text.GH_KIND_PULL if address.get("pull") else text.GH_KIND_ISSUE
            lines.append(text.GH_HISTORY_HEADER.format(kind=kind) + "\n" + "\n".join(earlier))
        return lines

    async def refuse(self, inbound: Inbound, reason: str) -> None:
        address = inbound.address
        gh = self.app.client(int(address["installation"]))
        try:
            await self.app.call(
                lambda: (
                    gh.get_repo(address["repo"])
                    .get_issue(int(address["number"]))
                    .create_comment(text.GH_NOT_CONFIGURED)
                )
            )
        except Exception as exc:
            log.warning("github: could not tell %s why nothing happens (%s): %r", inbound.binding_key, reason, exc)

    async def deliver(self, delivery: Delivery) -> float | None:
        return await self.replies.deliver(delivery)


GITHUB: web.AppKey[GitHubAdapter] = web.AppKey("github", GitHubAdapter)

__all__ = ["GITHUB", "GITHUB_WEBHOOK_PATH", "GitHubAdapter", "GitHubSettings"]
