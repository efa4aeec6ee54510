"""A session's `github_repository` resources, cloned into its sandbox when the sandbox is first used.

The repository's token is sent as an HTTP header of the one git command that needs it, through
git's environment (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`): never on the command line, never in the
repository's `.git/config`, never in a file of the workspace, so nothing the agent runs afterwards
can read it. Only http(s) remotes are allowed, and credential helpers are off for these commands.

The same helpers serve whoever pushes the agent's commits afterwards (a workspace adapter), with a
token of its own.
"""

from __future__ import annotations

import base64
import logging
import posixpath
import secrets
from dataclasses import dataclass
from typing import Any

from sandbox.base import ExecResult, Sandbox

log = logging.getLogger("oma.repositories")

CLONE_TIMEOUT = 600.0
GIT_TIMEOUT = 120.0
# Author of the agent's commits when the session's agent has no name to lend.
DEFAULT_AUTHOR = "agent"
AUTHOR_EMAIL = "agent@users.noreply.oma.invalid"


class GitError(Exception):
    """A git command failed. `detail` is git's own message (it never contains the token)."""

    def __init__(self, action: str, detail: str) -> None:
        super().__init__(f"{action}: {detail}")
        self.action = action
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Repository:
    """A `github_repository` resource as the session stores it."""

    id: str
    url: str
    mount_path: str
    branch: str | None = None
    commit: str | None = None

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> Repository:
        checkout = resource.get("checkout") or {}
        return cls(
            id=str(resource["id"]),
            url=str(resource["url"]),
            mount_path=str(resource["mount_path"]),
            branch=checkout.get("name") if checkout.get("type") == "branch" else None,
            commit=checkout.get("sha") if checkout.get("type") == "commit" else None,
        )


def repositories(resources: list[dict[str, Any]] | None) -> list[Repository]:
    return [Repository.from_resource(r) for r in resources or [] if r.get("type") == "github_repository"]


def git_env(token: str | None) -> dict[str, str]:
    """Environment for one git command against an http(s) remote, authenticated with `token`."""
    env = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ALLOW_PROTOCOL": "http:https",
        # No credential helper may store (or be asked for) anything.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
    }
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update(
            {
                "GIT_CONFIG_COUNT": "2",
                "GIT_CONFIG_KEY_1": "http.extraHeader",
                "GIT_CONFIG_VALUE_1": f"AUTHORIZATION: basic {basic}",
            }
        )
    return env


def _check_url(url: str) -> None:
    if not url.startswith(("https://", "http://")):
        raise GitError("clone", f"only http(s) repository URLs are supported, not {url.split(':', 1)[0]}:")


async def git(
    sandbox: Sandbox,
    args: list[str],
    *,
    token: str | None = None,
    cwd: str | None = None,
    timeout: float = GIT_TIMEOUT,  # noqa: ASYNC109 (passed into the sandbox)
) -> ExecResult:
    return await sandbox.exec(["git", *args], cwd=cwd, env=git_env(token), timeout=timeout, max_output=20_000)


def _failure(result: ExecResult) -> str:
    text = (result.stderr or result.stdout).strip()
    if result.timed_out:
        text = f"timed out. {text}"
    return text[-1000:] or f"exit code {result.exit_code}"


async def is_cloned(sandbox: Sandbox, repo: Repository) -> bool:
    path = await sandbox.exec_path(repo.mount_path)
    result = await sandbox.exec(["test", "-e", posixpath.join(path, ".git")], timeout=30)
    return result.exit_code == 0


async def clone(sandbox: Sandbox, repo: Repository, token: str | None, *, author: str = DEFAULT_AUTHOR) -> None:
    """Clone `repo` at its mount path (its branch or commit), unless it is there already. The
    clone goes to a temporary directory first, so an interrupted clone never looks finished."""
    _check_url(repo.url)
    if await is_cloned(sandbox, repo):
        return
    target = await sandbox.exec_path(repo.mount_path)
    parent, name = posixpath.split(target.rstrip("/"))
    staging = posixpath.join(parent, f".{name}.cloning-{secrets.token_hex(4)}")
    await sandbox.exec(["mkdir", "-p", "--", parent], timeout=30)
    args = ["clone", "--quiet"]
    if repo.branch:
        args += ["--branch", repo.branch]
    elif repo.commit:
        args += ["--no-checkout"]
    result = await git(sandbox, [*args, "--", repo.url, staging], token=token, timeout=CLONE_TIMEOUT)
    try:
        if result.exit_code != 0:
            raise GitError("clone", _failure(result))
        if repo.commit:
            await _checkout_commit(sandbox, staging, repo.commit, token)
        for key, value in (("user.name", author), ("user.email", AUTHOR_EMAIL)):
            await git(sandbox, ["-C", staging, "config", key, value])
        moved = await sandbox.exec(["mv", "-T", "--", staging, target], timeout=60)
        if moved.exit_code != 0:
            raise GitError("clone", _failure(moved))
    finally:
        await sandbox.exec(["rm", "-rf", "--", staging], timeout=60)


async def _checkout_commit(sandbox: Sandbox, path: str, sha: str, token: str | None) -> None:
    result = await git(sandbox, ["-C", path, "checkout", "--quiet", "--detach", sha])
    if result.exit_code == 0:
        return
    # Not reachable from the branches (e.g. a pull request's head): fetch it by id.
    fetched = await git(sandbox, ["-C", path, "fetch", "--quiet", "origin", sha], token=token, timeout=CLONE_TIMEOUT)
    if fetched.exit_code != 0:
        raise GitError("fetch", _failure(fetched))
    result = await git(sandbox, ["-C", path, "checkout", "--quiet", "--detach", "FETCH_HEAD"])
    if result.exit_code != 0:
        raise GitError("checkout", _failure(result))


async def head(sandbox: Sandbox, repo: Repository) -> str | None:
    """The commit checked out now, or None when the repository is not (yet) in the workspace."""
    path = await sandbox.exec_path(repo.mount_path)
    result = await git(sandbox, ["-C", path, "rev-parse", "--verify", "--quiet", "HEAD"], timeout=30)
    if result.exit_code != 0:
        return None
    return result.stdout.strip() or None


async def commits_ahead(sandbox: Sandbox, repo: Repository, base: str) -> int:
    """How many commits HEAD has that `base` (a ref or commit in the clone) has not."""
    path = await sandbox.exec_path(repo.mount_path)
    result = await git(sandbox, ["-C", path, "rev-list", "--count", f"{base}..HEAD"], timeout=60)
    if result.exit_code != 0:
        raise GitError("rev-list", _failure(result))
    return int(result.stdout.strip() or 0)


async def push(sandbox: Sandbox, repo: Repository, branch: str, token: str | None, *, force: bool) -> None:
    """Push HEAD to `branch` of the repository's remote URL (not `origin`'s config: the URL of the
    resource), authenticated for this one command."""
    _check_url(repo.url)
    path = await sandbox.exec_path(repo.mount_path)
    args = ["-C", path, "push", "--quiet", "--porcelain"]
    if force:
        args.append("--force")
    result = await git(sandbox, [*args, repo.url, f"HEAD:refs/heads/{branch}"], token=token, timeout=CLONE_TIMEOUT)
    if result.exit_code != 0:
        raise GitError("push", _failure(result))
