"""The built-in agent_toolset_20260401 tools, run through a real local-subprocess sandbox; web_fetch
against a real local HTTP server."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from core import schemas
from core.agents import resolve_tool
from core.tools import BUILTIN_TOOLS, READ_ONLY_TOOLS, ToolOutcome, enabled_tools, run_tool
from core.tools.run import _HANDLERS
from core.tools.web import _matches
from sandbox import Sandbox, open_sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    sb = await open_sandbox("sesn_tools", runtime="local-subprocess", root=tmp_path / "sandboxes")
    yield sb
    await sb.stop()


@pytest.fixture
def ws(sandbox: Sandbox) -> Path:
    return Path(sandbox.workspace)


async def call(sandbox: Sandbox, name: str, tool_input: Any, **kwargs: Any) -> ToolOutcome:
    return await run_tool(name, tool_input, sandbox=sandbox, **kwargs)


def text_of(outcome: ToolOutcome) -> str:
    assert len(outcome.content) == 1 and outcome.content[0]["type"] == "text"
    text = outcome.content[0]["text"]
    assert isinstance(text, str) and text  # the API rejects empty text blocks
    return text


async def ok(sandbox: Sandbox, name: str, tool_input: Any, **kwargs: Any) -> str:
    outcome = await call(sandbox, name, tool_input, **kwargs)
    assert not outcome.is_error, outcome.content
    return text_of(outcome)


async def error(sandbox: Sandbox, name: str, tool_input: Any, **kwargs: Any) -> str:
    outcome = await call(sandbox, name, tool_input, **kwargs)
    assert outcome.is_error, outcome.content
    return text_of(outcome)


# --- run_tool ------------------------------------------------------------------------------------


async def test_bad_input_is_an_error_outcome(sandbox: Sandbox) -> None:
    assert "Unknown tool 'nope'" in await error(sandbox, "nope", {})
    assert "expected a JSON object" in await error(sandbox, "read", ["x"])
    message = await error(sandbox, "read", {"path": "x"})
    assert "file_path: Field required" in message and "path: Extra inputs are not permitted" in message
    assert "file_path" in await error(sandbox, "read", {"file_path": 7})
    assert "view_range" in await error(sandbox, "read", {"file_path": "x", "view_range": [1]})
    assert "timeout_ms" in await error(sandbox, "bash", {"command": "true", "timeout_ms": -1})


async def test_sandbox_failures_are_error_outcomes(sandbox: Sandbox) -> None:
    await sandbox.stop()
    assert "not started" in await error(sandbox, "bash", {"command": "true"})
    assert "not started" in await error(sandbox, "read", {"file_path": "x"})


# --- bash ----------------------------------------------------------------------------------------


async def test_bash_runs_a_command(sandbox: Sandbox, ws: Path) -> None:
    assert await ok(sandbox, "bash", {"command": "echo hello; pwd"}) == f"hello\n{ws}"


async def test_bash_merges_stderr_and_reports_the_exit_code(sandbox: Sandbox) -> None:
    text = await error(sandbox, "bash", {"command": "echo out; echo err >&2; exit 3"})
    assert text == "out\nerr\n[exit code 3]"


async def test_bash_without_output(sandbox: Sandbox) -> None:
    assert await ok(sandbox, "bash", {"command": "true"}) == "(no output)"


async def test_bash_keeps_directory_and_exports_between_calls(sandbox: Sandbox, ws: Path) -> None:
    await ok(sandbox, "bash", {"command": "mkdir -p src/app && cd src/app && export GREETING='hi there'"})
    assert await ok(sandbox, "bash", {"command": 'pwd; echo "$GREETING"'}) == f"{ws}/src/app\nhi there"
    # Even a failing command saves its state.
    await error(sandbox, "bash", {"command": "cd ..; false"})
    assert await ok(sandbox, "bash", {"command": "pwd"}) == f"{ws}/src"
    # The shell's state is hidden from git.
    assert (ws / ".oma" / ".gitignore").read_text() == "*\n"


async def test_bash_restart_forgets_the_state(sandbox: Sandbox, ws: Path) -> None:
    await ok(sandbox, "bash", {"command": "mkdir d && cd d && export X=1"})
    assert await ok(sandbox, "bash", {"restart": True}) == "bash session restarted"
    assert await ok(sandbox, "bash", {"command": 'pwd; echo "X=$X"'}) == f"{ws}\nX="
    assert await ok(sandbox, "bash", {"restart": True, "command": "echo fresh"}) == "fresh"


async def test_bash_needs_a_command(sandbox: Sandbox) -> None:
    assert "command is required" in await error(sandbox, "bash", {})
    assert "command is required" in await error(sandbox, "bash", {"command": ""})


async def test_bash_syntax_errors_point_at_the_right_line(sandbox: Sandbox) -> None:
    text = await error(sandbox, "bash", {"command": "echo ok\nif then"})
    assert "line 2: syntax error" in text


async def test_bash_timeout_kills_the_command(sandbox: Sandbox) -> None:
    text = await error(sandbox, "bash", {"command": "echo before; sleep 60", "timeout_ms": 300})
    assert text.startswith("before\n")
    assert "timed out after 0.3s" in text


async def test_bash_default_timeout_comes_from_run_tool(sandbox: Sandbox) -> None:
    assert "timed out after 0.3s" in await error(sandbox, "bash", {"command": "sleep 60"}, timeout=0.3)


async def test_bash_long_output_is_cut_in_the_middle(sandbox: Sandbox) -> None:
    text = await ok(sandbox, "bash", {"command": "echo FIRST; seq 1 100000; echo LAST"})
    assert text.startswith("FIRST\n1\n2\n")
    assert text.endswith("100000\nLAST")
    assert "bytes of output omitted" in text
    assert len(text) < 31_000


async def test_bash_does_not_see_server_secrets(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-oma-test")
    assert "sk-secret-oma-test" not in await ok(sandbox, "bash", {"command": "env"})


# --- read ----------------------------------------------------------------------------------------


async def test_read_returns_the_text(sandbox: Sandbox, ws: Path) -> None:
    (ws / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    assert await ok(sandbox, "read", {"file_path": "a.txt"}) == "one\ntwo\nthree\nfour\n"
    assert await ok(sandbox, "read", {"file_path": "/workspace/a.txt"}) == "one\ntwo\nthree\nfour\n"
    assert await ok(sandbox, "read", {"file_path": str(ws / "a.txt")}) == "one\ntwo\nthree\nfour\n"


@pytest.mark.parametrize(
    ("view_range", "expected"),
    [([2, 3], "two\nthree"), ([3, 0], "three\nfour"), ([1, -1], "one\ntwo\nthree\nfour"), ([4, 10], "four")],
)
async def test_read_view_range(sandbox: Sandbox, ws: Path, view_range: list[int], expected: str) -> None:
    (ws / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    assert await ok(sandbox, "read", {"file_path": "a.txt", "view_range": view_range}) == expected


@pytest.mark.parametrize(
    ("view_range", "message"),
    [([0, 2], "must be 1 or more"), ([3, 2], "before start_line"), ([9, 0], "has 4 lines")],
)
async def test_read_bad_view_range(sandbox: Sandbox, ws: Path, view_range: list[int], message: str) -> None:
    (ws / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    assert message in await error(sandbox, "read", {"file_path": "a.txt", "view_range": view_range})


async def test_read_errors(sandbox: Sandbox, ws: Path) -> None:
    (ws / "dir").mkdir()
    (ws / "blob.bin").write_bytes(b"\xff\xfe\x00binary")
    assert "missing.txt: no such file" in await error(sandbox, "read", {"file_path": "missing.txt"})
    assert "is a directory" in await error(sandbox, "read", {"file_path": "dir"})
    assert "outside the workspace" in await error(sandbox, "read", {"file_path": "../../etc/passwd"})
    assert "not UTF-8 text" in await error(sandbox, "read", {"file_path": "blob.bin"})


async def test_read_empty_file(sandbox: Sandbox, ws: Path) -> None:
    (ws / "empty.txt").write_text("")
    assert await ok(sandbox, "read", {"file_path": "empty.txt"}) == "(empty.txt is empty)"


async def test_read_large_file_needs_a_view_range(sandbox: Sandbox, ws: Path) -> None:
    (ws / "big.log").write_text("".join(f"line {i}\n" for i in range(1, 50_001)))
    assert "view_range" in await error(sandbox, "read", {"file_path": "big.log"})
    assert await ok(sandbox, "read", {"file_path": "big.log", "view_range": [49_999, 0]}) == "line 49999\nline 50000"


async def test_read_image_returns_an_image_block(sandbox: Sandbox, ws: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    (ws / "pic.PNG").write_bytes(png)
    outcome = await call(sandbox, "read", {"file_path": "pic.PNG"})
    assert not outcome.is_error
    [block] = outcome.content
    assert block["type"] == "image"
    assert block["source"]["media_type"] == "image/png"
    assert base64.b64decode(block["source"]["data"]) == png
    assert "view_range" in await error(sandbox, "read", {"file_path": "pic.PNG", "view_range": [1, 2]})


# --- write ---------------------------------------------------------------------------------------


async def test_write_creates_and_overwrites(sandbox: Sandbox, ws: Path) -> None:
    assert await ok(sandbox, "write", {"file_path": "new/dir/f.py", "content": "print('é')\n"}) == (
        "wrote 12 bytes to new/dir/f.py"
    )
    assert (ws / "new" / "dir" / "f.py").read_text() == "print('é')\n"
    await ok(sandbox, "write", {"file_path": "/workspace/new/dir/f.py", "content": "x = 1\n"})
    assert (ws / "new" / "dir" / "f.py").read_text() == "x = 1\n"
    await ok(sandbox, "write", {"file_path": "blank.txt", "content": ""})
    assert (ws / "blank.txt").read_bytes() == b""


async def test_write_errors(sandbox: Sandbox, ws: Path) -> None:
    (ws / "dir").mkdir()
    assert "outside the workspace" in await error(sandbox, "write", {"file_path": "../x.txt", "content": "x"})
    assert not (ws.parent / "x.txt").exists()
    assert "is a directory" in await error(sandbox, "write", {"file_path": "dir", "content": "x"})
    assert "content" in await error(sandbox, "write", {"file_path": "a.txt"})


# --- edit ----------------------------------------------------------------------------------------


async def test_edit_replaces_a_unique_match(sandbox: Sandbox, ws: Path) -> None:
    (ws / "m.py").write_text("def f():\n    return 1\n\ndef g():\n    return 2\n")
    text = await ok(sandbox, "edit", {"file_path": "m.py", "old_string": "return 1", "new_string": "return 10"})
    assert text == "edited m.py (1 replacement)"
    assert (ws / "m.py").read_text() == "def f():\n    return 10\n\ndef g():\n    return 2\n"


async def test_edit_ambiguous_match_needs_replace_all(sandbox: Sandbox, ws: Path) -> None:
    (ws / "m.py").write_text("a = 1\nb = 1\nc = 1\n")
    message = await error(sandbox, "edit", {"file_path": "m.py", "old_string": "= 1", "new_string": "= 2"})
    assert "occurs 3 times" in message and "replace_all" in message
    assert (ws / "m.py").read_text() == "a = 1\nb = 1\nc = 1\n"
    edit = {"file_path": "m.py", "old_string": "= 1", "new_string": "= 2", "replace_all": True}
    assert await ok(sandbox, "edit", edit) == "edited m.py (3 replacements)"
    assert (ws / "m.py").read_text() == "a = 2\nb = 2\nc = 2\n"


async def test_edit_errors(sandbox: Sandbox, ws: Path) -> None:
    (ws / "m.py").write_text("x = 1\n")
    (ws / "blob.bin").write_bytes(b"\xff\x00")

    async def edit_error(path: str, old: str, new: str) -> str:
        return await error(sandbox, "edit", {"file_path": path, "old_string": old, "new_string": new})

    assert "not found in m.py" in await edit_error("m.py", "y = 1", "y = 2")
    assert "must not be empty" in await edit_error("m.py", "", "y")
    assert "identical" in await edit_error("m.py", "x", "x")
    assert "no such file; use the write tool" in await edit_error("nope.py", "a", "b")
    assert "not UTF-8 text" in await edit_error("blob.bin", "a", "b")
    assert "outside the workspace" in await edit_error("../m.py", "a", "b")
    assert (ws / "m.py").read_text() == "x = 1\n"


# --- glob ----------------------------------------------------------------------------------------


def make_tree(ws: Path, files: dict[str, int]) -> None:
    """Create files with the given modification times (seconds since the epoch)."""
    for rel, mtime in files.items():
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"contents of {rel}\n")
        os.utime(path, (mtime, mtime))


async def test_glob_returns_matches_newest_first(sandbox: Sandbox, ws: Path) -> None:
    make_tree(ws, {"old.py": 1000, "src/new.py": 3000, "src/pkg/mid.py": 2000, "README.md": 4000})
    text = await ok(sandbox, "glob", {"pattern": "**/*.py"})
    assert text.splitlines() == [f"{ws}/src/new.py", f"{ws}/src/pkg/mid.py", f"{ws}/old.py"]
    assert await ok(sandbox, "glob", {"pattern": "*.py"}) == f"{ws}/old.py"
    assert await ok(sandbox, "glob", {"pattern": "*.py", "path": "src"}) == f"{ws}/src/new.py"
    assert await ok(sandbox, "glob", {"pattern": "**/*.{md,py}", "path": "/workspace/src/pkg"}) == (
        f"{ws}/src/pkg/mid.py"
    )
    assert (await ok(sandbox, "glob", {"pattern": "**/[nm]*.py"})).splitlines() == [
        f"{ws}/src/new.py",
        f"{ws}/src/pkg/mid.py",
    ]


async def test_glob_skips_git_and_node_modules_unless_named(sandbox: Sandbox, ws: Path) -> None:
    make_tree(ws, {"a.js": 1000, "node_modules/lib/index.js": 2000, ".git/hooks/x.js": 3000})
    assert await ok(sandbox, "glob", {"pattern": "**/*.js"}) == f"{ws}/a.js"
    assert await ok(sandbox, "glob", {"pattern": "node_modules/**/*.js"}) == f"{ws}/node_modules/lib/index.js"


async def test_glob_no_matches_and_errors(sandbox: Sandbox, ws: Path) -> None:
    assert await ok(sandbox, "glob", {"pattern": "**/*.rs"}) == "no matches"
    assert "absolute patterns" in await error(sandbox, "glob", {"pattern": "/etc/*"})
    assert "'..'" in await error(sandbox, "glob", {"pattern": "../*"})
    assert "missing: no such directory" in await error(sandbox, "glob", {"pattern": "*", "path": "missing"})
    assert "outside the workspace" in await error(sandbox, "glob", {"pattern": "*", "path": "/etc"})


async def test_glob_caps_the_number_of_results(sandbox: Sandbox, ws: Path) -> None:
    make_tree(ws, {f"f{i:03}.txt": 1000 + i for i in range(250)})
    lines = (await ok(sandbox, "glob", {"pattern": "*.txt"})).splitlines()
    assert lines[0] == f"{ws}/f249.txt"
    assert len(lines) == 201
    assert "showing the 200 newest of 250 matches" in lines[-1]


# --- grep ----------------------------------------------------------------------------------------


async def test_grep_returns_path_line_text(sandbox: Sandbox, ws: Path) -> None:
    (ws / "src").mkdir()
    (ws / "src" / "a.py").write_text("import os\n\ndef main():\n    os.exit(0)\n")
    (ws / "b.txt").write_text("nothing\nos here\n")
    text = await ok(sandbox, "grep", {"pattern": r"\bos\b"})
    assert text.splitlines() == [
        f"{ws}/b.txt:2:os here",
        f"{ws}/src/a.py:1:import os",
        f"{ws}/src/a.py:4:    os.exit(0)",
    ]
    assert await ok(sandbox, "grep", {"pattern": "^def ", "path": "src"}) == f"{ws}/src/a.py:3:def main():"
    assert await ok(sandbox, "grep", {"pattern": "os", "path": "/workspace/b.txt"}) == f"{ws}/b.txt:2:os here"


async def test_grep_skips_binary_files_and_git(sandbox: Sandbox, ws: Path) -> None:
    (ws / "blob.bin").write_bytes(b"needle\x00\x01")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("needle\n")
    (ws / "doc.md").write_text("a needle\n")
    assert await ok(sandbox, "grep", {"pattern": "needle"}) == f"{ws}/doc.md:1:a needle"


async def test_grep_no_matches_and_errors(sandbox: Sandbox, ws: Path) -> None:
    (ws / "a.txt").write_text("hello\n")
    assert await ok(sandbox, "grep", {"pattern": "absent"}) == "no matches"
    assert "invalid regular expression" in await error(sandbox, "grep", {"pattern": "(unclosed"})
    assert "nope: no such file or directory" in await error(sandbox, "grep", {"pattern": "x", "path": "nope"})
    assert "outside the workspace" in await error(sandbox, "grep", {"pattern": "x", "path": "/etc"})


async def test_grep_output_is_capped(sandbox: Sandbox, ws: Path) -> None:
    (ws / "many.txt").write_text("".join(f"match number {i}\n" for i in range(10_000)))
    text = await ok(sandbox, "grep", {"pattern": "match"})
    assert len(text) < 31_000
    assert text.endswith("[output truncated; narrow the pattern or path]")


# --- web_fetch -----------------------------------------------------------------------------------

PAGE = """<!doctype html><html><head><title>Test page</title><style>body{color:red}</style>
<script>alert("no")</script></head><body><h1>Heading</h1><p>Some <b>bold</b> text and
<a href="/docs">the docs</a>.</p><ul><li>first</li><li>second</li></ul></body></html>"""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def respond(make: Callable[[web.Request], web.StreamResponse]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return make(request)

    return handler


def redirect(location: Callable[[web.Request], str]) -> Callable[[web.Request], web.StreamResponse]:
    return lambda request: web.Response(status=302, headers={"Location": location(request)})


@pytest.fixture
async def site() -> AsyncIterator[str]:
    routes: dict[str, Callable[[web.Request], web.StreamResponse]] = {
        "/page": lambda r: web.Response(text=PAGE, content_type="text/html"),
        "/plain": lambda r: web.Response(text="just text"),
        "/json": lambda r: web.json_response({"answer": 42}),
        "/big": lambda r: web.Response(text="x" * 50_000),
        "/binary": lambda r: web.Response(body=b"\x00\x01\x02", content_type="image/png"),
        "/missing": lambda r: web.Response(status=404, text="nothing here"),
        "/redirect": redirect(lambda r: "/page"),
        "/loop": redirect(lambda r: "/loop"),
        "/away": redirect(lambda r: f"http://localhost:{r.url.port}/page"),
    }
    app = web.Application()
    for path, make in routes.items():
        app.router.add_get(path, respond(make))
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def fetch(sandbox: Sandbox, url: str, **kwargs: Any) -> ToolOutcome:
    kwargs.setdefault("allow_private_addresses", True)
    return await call(sandbox, "web_fetch", {"url": url}, **kwargs)


async def test_web_fetch_turns_html_into_text(sandbox: Sandbox, site: str) -> None:
    outcome = await fetch(sandbox, f"{site}/page")
    assert not outcome.is_error
    text = text_of(outcome)
    assert text.startswith(f"URL: {site}/page\nContent-Type: text/html\nTitle: Test page\n\n")
    assert "# Heading" in text
    assert f"Some bold text and [the docs]({site}/docs)." in text
    assert "- first\n- second" in text
    assert "alert" not in text and "color:red" not in text


async def test_web_fetch_text_and_json(sandbox: Sandbox, site: str) -> None:
    assert text_of(await fetch(sandbox, f"{site}/plain")).endswith("\n\njust text")
    assert text_of(await fetch(sandbox, f"{site}/json")).endswith('\n\n{"answer": 42}')


async def test_web_fetch_uses_a_given_session(sandbox: Sandbox, site: str) -> None:
    async with aiohttp.ClientSession() as http:
        assert "just text" in text_of(await fetch(sandbox, f"{site}/plain", http=http))
        assert not http.closed


async def test_web_fetch_follows_redirects(sandbox: Sandbox, site: str) -> None:
    text = text_of(await fetch(sandbox, f"{site}/redirect"))
    assert text.startswith(f"URL: {site}/page\n")
    outcome = await fetch(sandbox, f"{site}/loop")
    assert outcome.is_error and "too many redirects" in text_of(outcome)


async def test_web_fetch_errors(sandbox: Sandbox, site: str) -> None:
    missing = await fetch(sandbox, f"{site}/missing")
    assert missing.is_error
    assert text_of(missing) == f"web_fetch: HTTP 404 Not Found fetching {site}/missing\nnothing here"
    binary = await fetch(sandbox, f"{site}/binary")
    assert binary.is_error and "image/png" in text_of(binary)
    for url in ("ftp://example.com/x", "not a url", "/relative"):
        bad = await fetch(sandbox, url)
        assert bad.is_error and "http:// and https://" in text_of(bad)
    closed = await fetch(sandbox, "http://127.0.0.1:1/")
    assert closed.is_error and "failed" in text_of(closed)


async def test_web_fetch_truncates_to_max_content_tokens(sandbox: Sandbox, site: str) -> None:
    text = text_of(await fetch(sandbox, f"{site}/big", config={"max_content_tokens": 100}))
    assert text.endswith("x" * 400 + "\n[content truncated at 400 characters]")


async def test_web_fetch_honours_allowed_and_blocked_domains(sandbox: Sandbox, site: str) -> None:
    allowed = {"allowed_domains": ["127.0.0.1"]}
    assert not (await fetch(sandbox, f"{site}/page", config=allowed)).is_error
    # A redirect to a host outside allowed_domains is refused before it is followed.
    away = await fetch(sandbox, f"{site}/away", config=allowed)
    assert away.is_error and "localhost is not in this agent's web_fetch allowed_domains" in text_of(away)
    elsewhere = await fetch(sandbox, f"{site}/page", config={"allowed_domains": ["example.com"]})
    assert elsewhere.is_error and "allowed_domains (example.com)" in text_of(elsewhere)
    blocked = await fetch(sandbox, f"{site}/page", config={"blocked_domains": ["127.0.0.1"]})
    assert blocked.is_error and "blocked_domains" in text_of(blocked)


async def test_web_fetch_refuses_private_addresses_by_default(sandbox: Sandbox, site: str) -> None:
    outcome = await call(sandbox, "web_fetch", {"url": f"{site}/page"})
    assert outcome.is_error and "private or local address" in text_of(outcome)


def test_domain_rules() -> None:
    assert _matches("example.com", "example.com", "/")
    assert _matches("example.com", "docs.example.com", "/a")
    assert not _matches("example.com", "badexample.com", "/")
    assert _matches("*.Example.com", "api.example.com", "/")
    assert _matches("https://example.com", "example.com", "/")
    assert _matches("example.com/docs", "example.com", "/docs/intro")
    assert not _matches("example.com/docs", "example.com", "/docsearch")
    assert not _matches("example.com/docs", "example.com", "/blog")


# --- enabled_tools -------------------------------------------------------------------------------


def resolved(toolset: dict[str, Any]) -> list[dict[str, Any]]:
    """An agent's `tools` as core.agents stores them."""
    return [resolve_tool(schemas.AgentToolset.model_validate({"type": "agent_toolset_20260401", **toolset}))]


def test_enabled_tools_defaults_to_every_builtin_tool() -> None:
    specs = enabled_tools(resolved({}))
    assert [s.name for s in specs] == ["bash", "edit", "read", "write", "glob", "grep", "web_fetch"]
    assert {s.permission_policy for s in specs} == {"always_allow"}
    assert set(BUILTIN_TOOLS) == {s.name for s in specs} | {"web_search"}  # offered with a search backend
    assert {"read", "glob", "grep", "web_search"} == READ_ONLY_TOOLS
    with_search = enabled_tools(resolved({}), available=frozenset({"web_search"}))
    assert [s.name for s in with_search][-2:] == ["web_fetch", "web_search"]


def test_enabled_tools_applies_configs_over_the_default() -> None:
    tools = resolved(
        {
            "default_config": {"enabled": False, "permission_policy": {"type": "always_ask"}},
            "configs": [
                {"name": "read", "enabled": True},
                {"name": "bash", "enabled": True, "permission_policy": {"type": "auto"}},
                {"name": "web_fetch", "enabled": True, "allowed_domains": ["example.com"]},
                {"name": "web_search", "enabled": True},
                {"name": "grep", "enabled": False},
            ],
        }
    )
    specs = {s.name: s for s in enabled_tools(tools)}
    assert list(specs) == ["bash", "read", "web_fetch"]  # web_search needs a search backend
    searching = {s.name for s in enabled_tools(tools, available=frozenset({"web_search"}))}
    assert searching == {"bash", "read", "web_fetch", "web_search"}
    assert specs["bash"].permission_policy == "auto"
    assert specs["read"].permission_policy == "always_ask"
    assert specs["web_fetch"].config == {"allowed_domains": ["example.com"]}


def test_enabled_tools_disabling_one_tool() -> None:
    names = [s.name for s in enabled_tools(resolved({"configs": [{"name": "bash", "enabled": False}]}))]
    assert names == ["edit", "read", "write", "glob", "grep", "web_fetch"]


def test_enabled_tools_ignores_custom_and_mcp_tools() -> None:
    custom = {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}
    mcp = {"type": "mcp_toolset", "mcp_server_name": "s", "default_config": {}, "configs": []}
    assert enabled_tools([custom, mcp]) == []


def test_tool_specs_match_the_input_models() -> None:
    for spec in enabled_tools(resolved({})):
        model, _ = _HANDLERS[spec.name]
        schema = spec.input_schema
        assert set(schema["properties"]) == set(model.model_fields), spec.name
        assert set(schema["required"]) == {n for n, f in model.model_fields.items() if f.is_required()}, spec.name
        assert spec.to_api() == {"name": spec.name, "description": spec.description, "input_schema": schema}
        assert 100 < len(spec.description) < 1000
    # Each call returns its own copy: a caller changing a schema must not change the next one.
    first = enabled_tools(resolved({}))[0]
    first.input_schema["properties"].clear()
    assert enabled_tools(resolved({}))[0].input_schema["properties"]
