"""A fake of the GitHub REST API for a GitHub App, and of git's smart HTTP, that the real
`PyGithub` client and the real `git` talk to unchanged, plus what a test needs to push webhook
deliveries in: request signing.

    async with FakeGitHub(root=tmp) as gh:
        gh.add_repo("octo", "hello", {"README.md": "hi\\n"})      # a bare repository, served over HTTP
        gh.add_issue("octo/hello", 1, "Fix the typo")
        GithubIntegration(auth=AppAuth(gh.app_id, gh.private_key_pem), base_url=gh.api_url)
        gh.fail("POST", "/repos/octo/hello/issues/1/comments", status=502)   # not applied
        gh.drop("POST", "/repos/octo/hello/pulls")                         # applied, connection cut
        gh.counts()["PATCH /repos/octo/hello/issues/comments/1000001"]     # requests per path

Installation tokens are minted only for a JWT signed with the App's key (`private_key_pem`);
every other call needs a live token, and git needs one with `contents` access to the repository
(`write` to push). Repositories are bare git repositories under `root`, cloned from
`clone_url(full_name)`. `python -m core.fakes.github_api --port 0` serves it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def sign(secret: str, body: bytes) -> dict[str, str]:
    """The signature header GitHub sends with a delivery: HMAC-SHA256 of the raw body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}"}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float
    status: int = 200
    # The installation token used (None: a JWT, or anonymous).
    token: str | None = None

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(slots=True)
class Grant:
    token: str
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repository_ids: list[int] | None


@dataclass(slots=True)
class Comment:
    id: int
    body: str
    login: str
    bot: bool
    created_at: float
    updated_at: float
    edits: int = 0
    reactions: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Issue:
    number: int
    title: str
    body: str
    login: str
    comments: list[Comment] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Pull:
    number: int
    title: str
    body: str
    head: str
    base: str
    draft: bool
    login: str
    head_repo: str = ""


@dataclass(slots=True)
class Repo:
    owner: str
    name: str
    id: int
    default_branch: str
    path: Path
    issues: dict[int, Issue] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    review_comments: dict[int, Comment] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(slots=True)
class Failure:
    status: int
    headers: dict[str, str]


_PERMISSION = {"issues": "issues", "pulls": "pull_requests", "contents": "contents"}


class FakeGitHub:
    def __init__(
        self,
        *,
        root: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: int = 424242,
        app_slug: str = "oma-agent",
        token_seconds: float = 3600.0,
    ) -> None:
        self.host, self.port = host, port
        self.app_id, self.app_slug = app_id, app_slug
        self.token_seconds = token_seconds
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-github-")
            root = Path(self._tmp.name)
        self.root = Path(root)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode()
        self._public_key = key.public_key()
        self.calls: list[Call] = []
        self.repos: dict[str, Repo] = {}
        self.grants: dict[str, Grant] = {}
        self._ids = itertools.count(1_000_001)
        self._failures: dict[str, deque[Failure]] = {}
        self._drops: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # --- addresses -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake GitHub API is not started")
        return self._url

    @property
    def api_url(self) -> str:
        """The REST API base URL: `Github(base_url=...)`, GITHUB_API_URL."""
        return self.url

    @property
    def bot_login(self) -> str:
        """Who the App's comments are by."""
        return f"{self.app_slug}[bot]"

    def clone_url(self, full_name: str) -> str:
        return f"{self.url}/git/{full_name}.git"

    # --- the world -----------------------------------------------------------------------------

    def add_repo(self, owner: str, name: str, files: dict[str, str], *, default_branch: str = "main") -> Repo:
        """A repository whose default branch has one commit with `files` (runs git: call it
        outside the server's event loop)."""
        path = self.root / owner / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["git", "init", "--quiet", "--bare", "-b", default_branch, str(path)])
        with tempfile.TemporaryDirectory(prefix="fake-github-work-") as work:
            _run(["git", "init", "--quiet", "-b", default_branch, work])
            for rel, text in files.items():
                target = Path(work) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            _run(["git", "-C", work, "add", "-A"])
            _run(
                [
                    "git",
                    "-C",
                    work,
                    "-c",
                    "user.name=Octocat",
                    "-c",
                    "user.email=o@example.com",
                    "commit",
                    "-qm",
                    "init",
                ]
            )
            _run(["git", "-C", work, "push", "--quiet", str(path), f"{default_branch}:{default_branch}"])
        repo = Repo(owner, name, next(self._ids), default_branch, path)
        self.repos[repo.full_name] = repo
        return repo

    def add_issue(self, full_name: str, number: int, title: str, body: str = "", *, login: str = "octocat") -> Issue:
        issue = Issue(number, title, body, login)
        self.repos[full_name].issues[number] = issue
        return issue

    def add_comment(self, full_name: str, number: int, body: str, *, login: str = "octocat") -> Comment:
        now = time.time()
        comment = Comment(next(self._ids), body, login, False, now, now)
        self.repos[full_name].issues[number].comments.append(comment)
        return comment

    def add_pull(self, full_name: str, number: int, title: str, *, head: str, base: str | None = None) -> Pull:
        """A pull request (and its issue) from `head`, a branch that must exist in the repository."""
        repo = self.repos[full_name]
        pull = Pull(number, title, "", head, base or repo.default_branch, False, "octocat", full_name)
        repo.pulls[number] = pull
        repo.issues.setdefault(number, Issue(number, title, "", "octocat"))
        return pull

    def add_review_comment(self, full_name: str, body: str, *, login: str = "octocat") -> Comment:
        now = time.time()
        comment = Comment(next(self._ids), body, login, False, now, now)
        self.repos[full_name].review_comments[comment.id] = comment
        return comment

    def branch(self, full_name: str, branch: str) -> str | None:
        """The commit `branch` points at, or None."""
        result = subprocess.run(
            [
                "git",
                "--git-dir",
                str(self.repos[full_name].path),
                "rev-parse",
                "--verify",
                "--quiet",
                f"refs/heads/{branch}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() or None

    def show(self, full_name: str, rev: str, path: str) -> str:
        return _run(["git", "--git-dir", str(self.repos[full_name].path), "show", f"{rev}:{path}"])

    def log(self, full_name: str, rev: str) -> list[str]:
        """Commit subjects, newest first."""
        return _run(["git", "--git-dir", str(self.repos[full_name].path), "log", "--format=%s", rev]).splitlines()

    # --- scripting and reading -----------------------------------------------------------------

    def fail(
        self, method: str, path: str, *, status: int = 502, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """The next `times` calls of `method path` fail without effect."""
        for _ in range(times):
            self._failures.setdefault(f"{method} {path}", deque()).append(Failure(status, headers or {}))

    def drop(self, method: str, path: str, times: int = 1) -> None:
        """The next calls of `method path` are applied, then the connection is cut with no response."""
        self._drops[f"{method} {path}"] += times

    def counts(self) -> Counter[str]:
        return Counter(call.key for call in self.calls)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FakeGitHub:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/git/{owner}/{name}.git/{rest:.*}", self._git)
        app.router.add_route("*", "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self._url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> FakeGitHub:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- authentication ------------------------------------------------------------------------

    def _app_jwt(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return False
        try:
            claims = jwt.decode(
                header[7:], self._public_key, algorithms=["RS256"], options={"require": ["exp", "iat", "iss"]}
            )
        except jwt.PyJWTError:
            return False
        return str(claims.get("iss")) == str(self.app_id)

    def _grant(self, header: str) -> Grant | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                value = base64.b64decode(value).decode().partition(":")[2]
        elif scheme.lower() not in ("token", "bearer"):
            return None
        grant = self.grants.get(value)
        if grant is None or grant.expires_at <= time.time():
            return None
        return grant

    @staticmethod
    def _allows(grant: Grant, repo: Repo, permission: str, write: bool) -> bool:
        if grant.repository_ids is not None and repo.id not in grant.repository_ids:
            return False
        if not grant.permissions:
            return True
        level = grant.permissions.get(permission)
        return level == "write" or (level == "read" and not write)

    # --- the REST API --------------------------------------------------------------------------

    async def _record(self, call: Call) -> None:
        self.calls.append(call)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        call = Call(request.method, path, dict(request.query), body, time.monotonic())
        key = call.key
        failures = self._failures.get(key)
        if failures:
            failure = failures.popleft()
            call.status = failure.status
            await self._record(call)
            return _json({"message": "scripted failure"}, failure.status, failure.headers)
        response = self._route(request, call, body)
        call.status = response.status
        await self._record(call)
        if self._drops[key] > 0:
            self._drops[key] -= 1
            if request.transport is not None:
                request.transport.close()  # applied, but the client never hears back
        return response

    def _route(self, request: web.Request, call: Call, body: Any) -> web.Response:
        parts = call.path.strip("/").split("/")
        if parts[:2] == ["app", "installations"] and len(parts) == 4 and parts[3] == "access_tokens":
            if request.method != "POST":
                return _json({"message": "Not Found"}, 404)
            if not self._app_jwt(request):
                return _json({"message": "A JSON web token could not be decoded"}, 401)
            return self._mint(int(parts[2]), body or {})
        grant = self._grant(request.headers.get("Authorization", ""))
        if grant is None:
            return _json({"message": "Bad credentials"}, 401)
        call.token = grant.token
        if len(parts) < 3 or parts[0] != "repos":
            return _json({"message": "Not Found"}, 404)
        repo = self.repos.get(f"{parts[1]}/{parts[2]}")
        if repo is None:
            return _json({"message": "Not Found"}, 404)
        rest = parts[3:]
        area = rest[0] if rest else "contents"
        if not self._allows(grant, repo, _PERMISSION.get(area, "metadata"), request.method != "GET"):
            return _json({"message": "Resource not accessible by integration"}, 403)
        return self._repo_route(request.method, repo, rest, call.query, body or {})

    def _mint(self, installation_id: int, body: dict[str, Any]) -> web.Response:
        token = "ghs_" + secrets.token_urlsafe(27)
        grant = Grant(
            token,
            installation_id,
            time.time() + self.token_seconds,
            dict(body.get("permissions") or {}),
            list(body["repository_ids"]) if body.get("repository_ids") else None,
        )
        self.grants[token] = grant
        return _json(
            {
                "token": token,
                "expires_at": _iso(grant.expires_at),
                "permissions": grant.permissions or {"issues": "write", "pull_requests": "write", "contents": "write"},
                "repository_selection": "selected" if grant.repository_ids else "all",
            },
            201,
        )

    def _repo_route(
        self, method: str, repo: Repo, rest: list[str], query: dict[str, str], body: dict[str, Any]
    ) -> web.Response:
        match (method, rest):
            case ("GET", []):
                return _json(self._repo_json(repo))
            case ("GET", ["pulls"]):
                head = query.get("head", "")
                state = query.get("state", "open")
                listed = [
                    p
                    for p in repo.pulls.values()
                    if (not head or f"{repo.owner}:{p.head}" == head) and state in ("all", "open")
                ]
                return _json([self._pull_json(repo, p) for p in listed])
            case ("GET", ["pulls", number]) if number.isdigit():
                pull = repo.pulls.get(int(number))
                return _json(self._pull_json(repo, pull)) if pull else _json({"message": "Not Found"}, 404)
            case ("POST", ["pulls"]):
                return self._create_pull(repo, body)
            case ("GET", ["issues", number, "comments"]) if number.isdigit():
                issue = repo.issues.get(int(number))
                if issue is None:
                    return _json({"message": "Not Found"}, 404)
                since = query.get("since")
                shown = [c for c in issue.comments if not since or _iso(c.updated_at) >= since]
                return _json([self._comment_json(repo, issue.number, c) for c in shown])
            case ("POST", ["issues", number, "comments"]) if number.isdigit():
                issue = repo.issues.get(int(number))
                if issue is None:
                    return _json({"message": "Not Found"}, 404)
                if not str(body.get("body") or "").strip():
                    return _json({"message": "Validation Failed"}, 422)
                now = time.time()
                comment = Comment(next(self._ids), str(body["body"]), self.bot_login, True, now, now)
                issue.comments.append(comment)
                return _json(self._comment_json(repo, issue.number, comment), 201)
            case ("GET" | "PATCH", ["issues", "comments", cid]) if cid.isdigit():
                located = self._find_comment(repo, int(cid))
                if located is None:
                    return _json({"message": "Not Found"}, 404)
                issue_number, comment = located
                if method == "PATCH":
                    if not comment.bot:
                        return _json({"message": "Resource not accessible by integration"}, 403)
                    comment.body = str(body.get("body") or "")
                    comment.updated_at = time.time()
                    comment.edits += 1
                return _json(self._comment_json(repo, issue_number, comment))
            case ("POST", ["issues", number, "reactions"]) if number.isdigit():
                issue = repo.issues.get(int(number))
                return self._react(issue.reactions if issue else None, body)
            case ("POST", ["issues", "comments", cid, "reactions"]) if cid.isdigit():
                located = self._find_comment(repo, int(cid))
                return self._react(located[1].reactions if located else None, body)
            case ("POST", ["pulls", "comments", cid, "reactions"]) if cid.isdigit():
                review = repo.review_comments.get(int(cid))
                return self._react(review.reactions if review else None, body)
        return _json({"message": "Not Found"}, 404)

    def _react(self, reactions: list[str] | None, body: dict[str, Any]) -> web.Response:
        if reactions is None:
            return _json({"message": "Not Found"}, 404)
        content = str(body.get("content") or "")
        existing = content in reactions
        if not existing:
            reactions.append(content)
        reaction = {"id": 1, "content": content, "user": self._bot_user(), "created_at": _iso(time.time())}
        return _json(reaction, 200 if existing else 201)

    def _create_pull(self, repo: Repo, body: dict[str, Any]) -> web.Response:
        head, base = str(body.get("head") or ""), str(body.get("base") or "")
        head_branch = head.split(":", 1)[-1]
        if not self.branch(repo.full_name, head_branch) or not self.branch(repo.full_name, base):
            return _json(
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                },
                422,
            )
        if any(p.head == head_branch for p in repo.pulls.values()):
            message = f"A pull request already exists for {repo.owner}:{head_branch}."
            return _json(
                {
                    "message": "Validation Failed",
                    "errors": [{"resource": "PullRequest", "code": "custom", "message": message}],
                },
                422,
            )
        number = max([0, *repo.issues, *repo.pulls]) + 1
        pull = Pull(
            number,
            str(body.get("title") or ""),
            str(body.get("body") or ""),
            head_branch,
            base,
            bool(body.get("draft")),
            self.bot_login,
            repo.full_name,
        )
        repo.pulls[number] = pull
        repo.issues[number] = Issue(number, pull.title, pull.body, self.bot_login)
        return _json(self._pull_json(repo, pull), 201)

    def _find_comment(self, repo: Repo, comment_id: int) -> tuple[int, Comment] | None:
        for issue in repo.issues.values():
            for comment in issue.comments:
                if comment.id == comment_id:
                    return issue.number, comment
        return None

    # --- JSON shapes (the fields PyGithub reads) -----------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {"login": self.bot_login, "id": self.app_id, "type": "Bot"}

    def _repo_json(self, repo: Repo) -> dict[str, Any]:
        return {
            "id": repo.id,
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": {"login": repo.owner, "id": 1, "type": "User"},
            "private": False,
            "default_branch": repo.default_branch,
            "url": f"{self.api_url}/repos/{repo.full_name}",
            "html_url": f"{self.url}/{repo.full_name}",
            "clone_url": self.clone_url(repo.full_name),
        }

    def _pull_json(self, repo: Repo, pull: Pull) -> dict[str, Any]:
        head_repo = self.repos.get(pull.head_repo or repo.full_name, repo)
        return {
            "id": pull.number + 9_000_000,
            "number": pull.number,
            "state": "open",
            "title": pull.title,
            "body": pull.body,
            "draft": pull.draft,
            "user": {"login": pull.login, "id": 2, "type": "User"},
            "url": f"{self.api_url}/repos/{repo.full_name}/pulls/{pull.number}",
            "html_url": f"{self.url}/{repo.full_name}/pull/{pull.number}",
            "head": {
                "ref": pull.head,
                "sha": self.branch(head_repo.full_name, pull.head) or "",
                "label": f"{head_repo.owner}:{pull.head}",
                "repo": self._repo_json(head_repo),
            },
            "base": {
                "ref": pull.base,
                "sha": self.branch(repo.full_name, pull.base) or "",
                "repo": self._repo_json(repo),
            },
        }

    def _comment_json(self, repo: Repo, number: int, comment: Comment) -> dict[str, Any]:
        user = self._bot_user() if comment.bot else {"login": comment.login, "id": 3, "type": "User"}
        body: dict[str, Any] = {
            "id": comment.id,
            "body": comment.body,
            "user": user,
            "url": f"{self.api_url}/repos/{repo.full_name}/issues/comments/{comment.id}",
            "html_url": f"{self.url}/{repo.full_name}/issues/{number}#issuecomment-{comment.id}",
            "issue_url": f"{self.api_url}/repos/{repo.full_name}/issues/{number}",
            "created_at": _iso(comment.created_at),
            "updated_at": _iso(comment.updated_at),
        }
        if comment.bot:
            body["performed_via_github_app"] = {"id": self.app_id, "slug": self.app_slug}
        return body

    # --- git's smart HTTP (git http-backend) ---------------------------------------------------

    async def _git(self, request: web.Request) -> web.StreamResponse:
        owner, name, rest = request.match_info["owner"], request.match_info["name"], request.match_info["rest"]
        call = Call(request.method, request.path, dict(request.query), None, time.monotonic())
        repo = self.repos.get(f"{owner}/{name}")
        if repo is None:
            call.status = 404
            await self._record(call)
            return web.Response(status=404, text="Repository not found")
        service = request.query.get("service") or rest.rsplit("/", 1)[-1]
        grant = self._grant(request.headers.get("Authorization", ""))
        push = service == "git-receive-pack"
        if grant is None or not self._allows(grant, repo, "contents", push):
            call.status = 401 if grant is None else 403
            await self._record(call)
            return web.Response(status=call.status, text="denied", headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
        call.token = grant.token
        body = await request.read()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{owner}/{name}.git/{rest}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        }
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        out, _err = await proc.communicate(body)
        head, sep, payload = out.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name_, _, value = line.partition(":")
            if name_.lower() == "status":
                status = int(value.strip().split()[0])
            elif name_:
                headers[name_.strip()] = value.strip()
        call.status = status
        await self._record(call)
        return web.Response(status=status, body=payload, headers=headers)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _run(argv: list[str]) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir(), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout


async def _serve(server: FakeGitHub) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"listening {server.url}", flush=True)
        print(server.private_key_pem, flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.fakes.github_api", description="A fake GitHub REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--app-id", type=int, default=424242)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(FakeGitHub(host=args.host, port=args.port, app_id=args.app_id)))


if __name__ == "__main__":
    main(sys.argv[1:])
