"""Escape attempts against every isolating runtime this machine has (bubblewrap, docker).

Each attempt runs for real inside the sandbox; every resource attack is bounded in count and in
time, so that a broken isolation fails the test instead of hurting the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox import (
    FileNotFound,
    PathOutsideWorkspace,
    Sandbox,
    SandboxError,
    SandboxOptions,
    runtime_factory,
)
from sandbox import limits as cgroups
from tests.test_sandbox_conformance import (
    OpenSandbox,
    no_processes_left,
    release,
    sleep_marker,
    unavailable,
    unique_session,
)

# e2b and daytona isolate in the service's own machines (VMs, containers); here they run against
# local fakes of the services, which do not, so escape tests would test the fakes.
ISOLATING_RUNTIMES = ["bubblewrap", "docker"]
REPO = Path(__file__).resolve().parents[1]
LIMITED: dict[str, Any] = {"networking": False, "memory_mb": 256, "pids": 64, "cpus": 0.5}


def _params() -> list[Any]:
    here = [name for name in ISOLATING_RUNTIMES if unavailable(name) is None]
    if here:
        return here
    reasons = "; ".join(f"{name}: {unavailable(name)}" for name in ISOLATING_RUNTIMES)
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"no isolating runtime here ({reasons})"))]


@pytest.fixture(scope="session", params=_params())
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="oma-sandboxes-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def open_sb(runtime: str, sandbox_root: Path) -> AsyncIterator[OpenSandbox]:
    opened: list[Sandbox] = []

    async def open_(label: str = "main", **options: Any) -> Sandbox:
        session_id = unique_session(label)
        sb = runtime_factory(runtime)(session_id, root=sandbox_root, options=SandboxOptions(**{**LIMITED, **options}))
        opened.append(sb)
        await sb.start()
        return sb

    yield open_
    await release(opened)


@pytest.fixture
async def sb(open_sb: OpenSandbox) -> Sandbox:
    return await open_sb()


@pytest.fixture
def bubblewrap_only(runtime: str) -> None:
    if runtime != "bubblewrap":
        pytest.skip("checks bubblewrap's own set-up")


async def probe(sb: Sandbox, script: str, *args: str) -> Any:
    """Run a Python script inside the sandbox and return the JSON it prints."""
    res = await sb.exec(["python3", "-c", script, *args], timeout=30)
    assert res.exit_code == 0 and not res.timed_out, res
    return json.loads(res.stdout)


TRY_PATHS = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            out[path] = "listed: " + ",".join(os.listdir(path))
        else:
            with open(path, "rb") as f:
                out[path] = "read: " + f.read(200).decode("latin-1")
    except OSError as e:
        out[path] = "refused: " + type(e).__name__
print(json.dumps(out))
"""

TRY_WRITES = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "x") as f:
            f.write("escaped")
        out[path] = "written"
    except OSError as e:
        out[path] = "refused: " + type(e).__name__
print(json.dumps(out))
"""


# --- filesystem ---------------------------------------------------------------------------------------


def look(path: str) -> str:
    """What TRY_PATHS prints for `path`, seen from the host."""
    try:
        if os.path.isdir(path):
            return "listed: " + ",".join(os.listdir(path))
        with open(path, "rb") as f:
            return "read: " + f.read(200).decode("latin-1")
    except OSError as e:
        return "refused: " + type(e).__name__


async def test_host_files_are_out_of_reach(open_sb: OpenSandbox, sandbox_root: Path, tmp_path: Path) -> None:
    secret = f"SECRET-{secrets.token_hex(8)}"
    database = sandbox_root / "oma.db"  # next to the workspaces, in a directory the sandbox uid can enter
    database.write_text(secret)
    private_db = tmp_path / "oma.db"
    private_db.write_text(secret)
    victim = await open_sb("victim")
    await victim.write_file("victim.txt", secret.encode())
    victim_dir = sandbox_root / victim.session_id

    sb = await open_sb()
    host_only = [str(REPO), str(REPO / "pyproject.toml"), str(database), str(private_db), str(sandbox_root)]
    host_only += [str(victim_dir), str(victim_dir / "workspace" / "victim.txt")]
    # These exist in a container image too: there they must not be the host's.
    system = ["/etc/shadow", "/etc/gshadow", "/root", "/home", "/var/lib/postgresql"]
    seen = await probe(sb, TRY_PATHS, *host_only, *system)
    assert secret not in json.dumps(seen)
    for path in host_only:
        assert seen[path].startswith("refused"), f"{path}: {seen[path]}"
    for path in system:
        host_view = await asyncio.to_thread(look, path)
        same = seen[path] == host_view and host_view not in ("listed: ", "read: ")
        assert seen[path].startswith("refused") or not same, f"{path}: {seen[path]}"
    for path in (str(database), "/etc/shadow", str(REPO / "pyproject.toml")):
        with pytest.raises(PathOutsideWorkspace):
            await sb.read_file(path)


async def test_bubblewrap_etc_holds_no_host_secrets(bubblewrap_only: None, sb: Sandbox) -> None:
    listing = (await sb.exec("ls -A /etc")).stdout.split()
    for name in ("shadow", "gshadow", "sudoers", "ssh", "pip.conf", "npmrc", "postgresql", "machine-id"):
        assert name not in listing
    host_passwd = await asyncio.to_thread(Path("/etc/passwd").read_text)
    host_users = {line.split(":")[0] for line in host_passwd.splitlines() if line}
    seen_users = {line.split(":")[0] for line in (await sb.exec(["cat", "/etc/passwd"])).stdout.splitlines()}
    assert not (seen_users & host_users) - {"root", "nobody"}


async def test_nothing_outside_the_workspace_is_writable(sb: Sandbox, sandbox_root: Path) -> None:
    name = f"oma-escape-{secrets.token_hex(6)}"
    host_targets = [f"/usr/{name}", f"/etc/{name}", str(REPO / name), str(sandbox_root / name), f"/{name}"]
    written = await probe(sb, TRY_WRITES, *host_targets, f"/tmp/{name}")
    for path in host_targets:
        assert written[path].startswith("refused"), f"{path}: {written[path]}"
    assert written[f"/tmp/{name}"] == "written"  # the sandbox's own /tmp ...
    for path in [*host_targets, f"/tmp/{name}"]:
        assert not await asyncio.to_thread(os.path.exists, path)  # ... and none of it is the host's

    res = await sb.exec(f"mount -o remount,rw,bind /usr; mount -t tmpfs none /usr; touch /usr/{name}")
    assert res.exit_code != 0 and not await asyncio.to_thread(os.path.exists, f"/usr/{name}")
    assert (await sb.exec(["unshare", "-Ur", "true"])).exit_code != 0  # no user namespace to get root in


async def test_commands_run_unprivileged(sb: Sandbox) -> None:
    status = await probe(
        sb,
        "import json, os; s = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l); print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'cap': s['CapEff'],"
        " 'bnd': s['CapBnd']}))",
    )
    assert status["uid"] != 0 and status["euid"] != 0
    assert int(status["cap"], 16) == 0


# --- processes ------------------------------------------------------------------------------------


LIST_PROCESSES = """
import json, os
found = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            found[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
        except OSError:
            pass
print(json.dumps(found))
"""


async def test_host_processes_are_invisible(sb: Sandbox) -> None:
    seen = await probe(sb, LIST_PROCESSES)
    assert 0 < len(seen) < 10, seen
    assert not any("pytest" in cmdline for cmdline in seen.values()), seen
    assert str(os.getpid()) not in seen or "pytest" not in seen[str(os.getpid())]
    assert (await sb.exec(f"kill -0 {os.getpid()}")).exit_code != 0
    await sb.exec("kill -9 -1")  # whatever it reaches is the sandbox's own
    assert psutil.pid_exists(os.getpid())


async def test_a_timed_out_or_finished_command_leaves_nothing_behind(sb: Sandbox) -> None:
    # Daemons with no pipe to the caller, reparented away from the command: only a PID namespace
    # (or container) that dies with the command catches these.
    marker = sleep_marker()
    daemons = f"(setsid nohup sleep {marker} </dev/null >/dev/null 2>&1 &); nohup sleep {marker} >/dev/null 2>&1 &"
    res = await sb.exec(f"{daemons} sleep {marker}", timeout=0.5)
    assert res.timed_out
    assert await no_processes_left(marker) == []
    res = await sb.exec(f"{daemons} echo done")
    assert (res.stdout, res.timed_out) == ("done\n", False)
    assert await no_processes_left(marker) == []


# --- network ---------------------------------------------------------------------------------------

TRY_CONNECT = """
import json, socket, sys, time
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    started = time.monotonic()
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out[target] = "connected"
    except OSError as e:
        out[target] = "failed: " + type(e).__name__
try:
    socket.getaddrinfo("pypi.org", 443)
    out["dns"] = "resolved"
except OSError as e:
    out["dns"] = "failed: " + type(e).__name__
out["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
print(json.dumps(out))
"""


async def registry_ip() -> str:
    try:
        infos = await asyncio.wait_for(asyncio.to_thread(socket.getaddrinfo, "pypi.org", 443, socket.AF_INET), 5)
        return str(infos[0][4][0])
    except (OSError, TimeoutError):
        return "151.101.0.223"  # one of pypi.org's addresses


async def test_no_network_when_networking_is_off(sb: Sandbox) -> None:
    connections: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        seen = await probe(sb, TRY_CONNECT, f"127.0.0.1:{port}", f"{await registry_ip()}:443")
        assert time.monotonic() - started < 20
    finally:
        server.close()
        await server.wait_closed()
    assert connections == []
    assert seen[f"127.0.0.1:{port}"].startswith("failed")
    assert all(v.startswith("failed") for k, v in seen.items() if k != "interfaces"), seen
    assert seen["interfaces"] == ["lo"]


# --- resources ------------------------------------------------------------------------------------

FORK_BOMB = """
import os, sys, time
children = 0
try:
    for _ in range(int(sys.argv[1])):
        if os.fork() == 0:
            time.sleep(30)  # MARKER
            os._exit(0)
        children += 1
    print("forked", children)
except OSError as e:
    print("stopped", children, type(e).__name__)
"""


async def fork_bomb_is_bounded(sb: Sandbox, pids: int) -> None:
    marker = sleep_marker()
    started = time.monotonic()
    res = await sb.exec(["python3", "-c", FORK_BOMB.replace("MARKER", marker), "400"], timeout=30)
    assert time.monotonic() - started < 25
    outcome = res.stdout.split()
    assert outcome[:1] == ["stopped"], res
    assert int(outcome[1]) < pids
    assert await no_processes_left(marker) == []
    assert (await asyncio.to_thread(subprocess.run, ["true"], check=False)).returncode == 0  # the host still forks


async def memory_is_bounded(sb: Sandbox) -> None:
    started = time.monotonic()
    res = await sb.exec(["python3", "-c", "b = b'x' * (2 * 1024**3); print(len(b))"], timeout=30)
    assert time.monotonic() - started < 25
    assert res.exit_code == 137 or "MemoryError" in res.stderr, res
    assert res.stdout == ""
    # Limits that are bounds, not a straitjacket: 64 MB is fine.
    assert (await sb.exec(["python3", "-c", "b = b'x' * (64 * 1024**2); print(len(b))"])).stdout == "67108864\n"


async def test_fork_bombs_are_bounded(sb: Sandbox) -> None:
    await fork_bomb_is_bounded(sb, LIMITED["pids"])


async def test_memory_is_bounded(sb: Sandbox) -> None:
    await memory_is_bounded(sb)
    assert psutil.virtual_memory().available > 512 * 1024**2


async def test_cpu_is_bounded(runtime: str, sb: Sandbox) -> None:
    if runtime == "bubblewrap" and cgroups.detect().place("cpu") is None:
        pytest.skip("no writable cpu cgroup here, and rlimits cannot cap CPU bandwidth")
    busy = "import os, time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\nt = os.times()\n"
    res = await sb.exec(["python3", "-c", busy + "print(t.user + t.system)"], timeout=30)
    assert res.exit_code == 0, res
    assert float(res.stdout) < 1.5 * LIMITED["cpus"] + 0.25  # 0.5 CPU: about 0.75 s of CPU in 1.5 s


async def test_bubblewrap_falls_back_to_rlimits_without_cgroups(
    bubblewrap_only: None, open_sb: OpenSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "detect", lambda: cgroups.CgroupLayout({}))
    sb = await open_sb("rlimits")
    await memory_is_bounded(sb)
    # RLIMIT_NPROC counts every process of the sandbox uid on the host, this test's included.
    await fork_bomb_is_bounded(sb, LIMITED["pids"])


async def test_bubblewrap_limits_are_in_the_sessions_cgroups(bubblewrap_only: None, sb: Sandbox) -> None:
    layout = cgroups.detect()
    files = {
        "memory": ("memory.limit_in_bytes", str(256 * 1024**2)),
        "pids": ("pids.max", "64"),
        "cpu": ("cpu.cfs_quota_us", "50000"),
    }
    checked = 0
    for controller, (name, value) in files.items():
        if layout.place(controller) == "v1":
            assert (layout.v1[controller] / "oma" / sb.session_id / name).read_text().strip() == value
            checked += 1
    if not checked:
        pytest.skip("no cgroup v1 controllers here")
    res = await sb.exec(["cat", "/proc/self/cgroup"])
    assert sb.session_id not in res.stdout  # a cgroup namespace: the sandbox does not see the host's tree
    await sb.stop()
    assert not any((layout.v1[c] / "oma" / sb.session_id).exists() for c in layout.v1 if c in files)


# --- the server's file access --------------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_symlink_to_shadow_is_not_followed(sb: Sandbox) -> None:
    shadow_before = await asyncio.to_thread(digest, Path("/etc/shadow"))
    res = await sb.exec("ln -s /etc/shadow shadow && ln -s /etc etc && ln -s / root && ln -s ../../../etc/shadow rel")
    assert res.exit_code == 0, res.stderr
    for path in ("shadow", "etc/shadow", "root/etc/shadow", "rel", "/workspace/root/etc/shadow"):
        with pytest.raises(PathOutsideWorkspace):
            await sb.read_file(path)
        with pytest.raises(PathOutsideWorkspace):
            await sb.write_file(path, b"root::0:0:::::\n")
    assert await asyncio.to_thread(digest, Path("/etc/shadow")) == shadow_before


FLIPPER = """
import os, sys, time
decoy = sys.argv[1]
os.makedirs("real", exist_ok=True)
with open("real/secret", "w") as f:
    f.write("inside")
os.symlink("real", "d")
open("started", "w").close()
flips = 0
while not os.path.exists("stop"):
    os.symlink(decoy if flips % 2 else "real", "d.new")
    os.replace("d.new", "d")  # atomic: "d" is always there, as a link inside or a link out
    flips += 1
print(flips)
"""


async def test_swapping_symlinks_during_file_access_never_escapes(sb: Sandbox, sandbox_root: Path) -> None:
    # The decoy is a host directory the server could reach if it followed a host path.
    decoy = sandbox_root / "decoy"
    decoy.mkdir()
    (decoy / "secret").write_text("HOST SECRET")
    flipper = asyncio.create_task(sb.exec(["python3", "-c", FLIPPER, str(decoy)], timeout=30))
    deadline = time.monotonic() + 10
    while not await _exists(sb, "started"):
        assert time.monotonic() < deadline and not flipper.done(), "the flipper never started"
        await asyncio.sleep(0.01)
    # Until both outcomes were seen a few times (the race is on), within bounds of count and time.
    reads = refusals = attempts = 0
    deadline = time.monotonic() + 15
    while attempts < 1000 and time.monotonic() < deadline and min(reads, refusals) < 5:
        attempts += 1
        try:
            assert await sb.read_file("d/secret") == b"inside"
            reads += 1
        except (PathOutsideWorkspace, FileNotFound, SandboxError):
            refusals += 1
        with contextlib.suppress(PathOutsideWorkspace, FileNotFound, SandboxError):
            await sb.write_file("d/secret", b"inside")
        assert not flipper.done(), await flipper
    await sb.write_file("stop", b"")
    res = await asyncio.wait_for(flipper, 30)
    assert res.exit_code == 0, res
    assert await asyncio.to_thread((decoy / "secret").read_text) == "HOST SECRET"
    assert reads and refusals, (reads, refusals)


async def _exists(sb: Sandbox, path: str) -> bool:
    try:
        await sb.read_file(path)
    except FileNotFound:
        return False
    return True


async def test_bubblewrap_files_belong_to_the_sandbox_uid(
    bubblewrap_only: None, sb: Sandbox, sandbox_root: Path
) -> None:
    from sandbox.bubblewrap import SANDBOX_UID

    await sb.write_file("new/dir/f.txt", b"x")
    await sb.exec("mkdir made && echo y > made/g.txt")
    ws = sandbox_root / sb.session_id / "workspace"
    for path in (ws, ws / "new", ws / "new" / "dir", ws / "new" / "dir" / "f.txt", ws / "made" / "g.txt"):
        assert path.stat().st_uid == SANDBOX_UID, path
    # The server rewrites a file the sandbox made; it stays the sandbox's.
    await sb.write_file("made/g.txt", b"z")
    assert (ws / "made" / "g.txt").stat().st_uid == SANDBOX_UID
    assert (await sb.exec("echo more >> made/g.txt")).exit_code == 0


# --- limits.py without the kernel -----------------------------------------------------------------


def test_cgroup_v2_limits_are_written(tmp_path: Path) -> None:
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\nproc /proc proc rw 0 0\n")
    layout = cgroups.detect(mounts)
    assert (layout.v1, layout.v2) == ({}, root)
    group = cgroups.SessionCgroup(layout, cgroups.Limits(256 * 1024**2, 64, 0.5), "sesn_x")
    assert group.uncovered == ()
    group.create()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (root / "oma" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    session = root / "oma" / "sesn_x"
    assert (session / "memory.max").read_text() == str(256 * 1024**2)
    assert (session / "pids.max").read_text() == "64"
    assert (session / "cpu.max").read_text() == "50000 100000"
    assert group.procs_files == [str(session / "cgroup.procs")]


def test_cgroup_v1_limits_are_written_and_the_rest_falls_back(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    lines = []
    for controller in ("memory", "cpu,cpuacct"):
        where = tmp_path / controller
        where.mkdir()
        lines.append(f"cgroup {where} cgroup rw,nosuid,{controller} 0 0")
    mounts.write_text("\n".join(lines) + "\n")
    layout = cgroups.detect(mounts)
    assert set(layout.v1) == {"memory", "cpu"} and layout.v2 is None
    limits = cgroups.Limits(128 * 1024**2, 32, 1.5)
    group = cgroups.SessionCgroup(layout, limits, "sesn_y")
    group.create()
    assert (tmp_path / "memory" / "oma" / "sesn_y" / "memory.limit_in_bytes").read_text() == str(128 * 1024**2)
    assert (tmp_path / "cpu,cpuacct" / "oma" / "sesn_y" / "cpu.cfs_quota_us").read_text() == "150000"
    assert group.uncovered == ("pids",)
    assert cgroups.rlimit_argv("prlimit", limits, group.uncovered) == ["prlimit", "--nproc=32", "--"]
    assert cgroups.rlimit_argv("prlimit", limits, ()) == []


def test_the_join_prefix_joins_before_exec_or_fails_loudly(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    argv = [*cgroups.join_argv("sh", [str(procs)]), "sh", "-c", "echo $$"]
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and procs.read_text().strip() == res.stdout.strip()  # same process, exec'd
    missing = str(tmp_path / "gone" / "cgroup.procs")
    res = subprocess.run([*cgroups.join_argv("sh", [missing]), "echo", "ran"], capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (cgroups.JOIN_EXIT_CODE, "")
    assert res.stderr.startswith(cgroups.JOIN_FAILED)
    assert cgroups.join_argv("sh", []) == []
