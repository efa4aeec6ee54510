"""The docker runtime's own promises, on a real engine: isolation, limits, re-attach, cleanup.

The shared contract is in test_sandbox_conformance.py and test_sandbox_escape.py. Set up an engine
and the image with `export "$(scripts/docker-sandbox-setup /tmp/oma-docker)"`.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxError, SandboxOptions, SandboxUnavailable, open_sandbox
from sandbox.docker import DEFAULT_IMAGE, DockerSandbox, available

docker = pytest.importorskip("docker", reason="the docker Python package is not installed")

_UNAVAILABLE = available()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"no docker sandbox here: {_UNAVAILABLE}")

OpenDocker = Callable[..., Awaitable[DockerSandbox]]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = docker.from_env()
    yield c
    c.close()


@pytest.fixture
def images(client: Any) -> Iterator[list[str]]:
    """Image repositories to remove after the test, once its sandboxes are gone (request this
    fixture before `open_docker`, which is then torn down first)."""
    repositories: list[str] = []
    yield repositories
    for repository in repositories:
        for image in client.images.list(name=repository):
            client.images.remove(image.id, force=True)


@pytest.fixture
async def open_docker(tmp_path: Path, client: Any) -> AsyncIterator[OpenDocker]:
    """Opens sandboxes of test-unique sessions; removes every container and volume they made."""
    opened: list[DockerSandbox] = []
    ids: dict[str, str] = {}

    async def open_(label: str = "main", *, start: bool = True, **options: Any) -> DockerSandbox:
        session_id = ids.setdefault(label, f"sesn_dkr_{label}_{secrets.token_hex(4)}")
        sb = DockerSandbox(session_id, root=tmp_path, options=SandboxOptions(**options))
        opened.append(sb)
        if start:
            await sb.start()
        return sb

    yield open_
    for sb in opened:
        await sb.destroy()
    left = await asyncio.to_thread(leftovers, client, set(ids.values()))
    assert left == [], f"left behind: {left}"


def leftovers(client: Any, sessions: set[str]) -> list[str]:
    containers = [c.name for c in client.containers.list(all=True, filters={"label": "oma.runtime=docker"})]
    volumes = [v.name for v in client.volumes.list(filters={"label": "oma.runtime=docker"})]
    return [name for name in containers + volumes if any(s in name for s in sessions)]


def container(client: Any, sb: DockerSandbox) -> Any:
    return client.containers.get(sb.container_name)


def processes(client: Any, sb: DockerSandbox, marker: str) -> list[str]:
    """The container's live processes whose command line has `marker` (seen from the engine)."""
    top = container(client, sb).top(ps_args="-o pid,stat,args")
    return [" ".join(row) for row in top.get("Processes") or [] if marker in row[2] and not row[1].startswith("Z")]


async def no_processes_left(client: Any, sb: DockerSandbox, marker: str, within: float = 5.0) -> list[str]:
    deadline = time.monotonic() + within
    while True:
        left = await asyncio.to_thread(processes, client, sb, marker)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.02)


def sleep_marker() -> str:
    return f"100.{secrets.randbelow(10**9)}"


async def read_first(sb: DockerSandbox, *paths: str) -> str:
    """The first of `paths` that exists in the sandbox (cgroup v1 and v2 name files differently)."""
    res = await sb.exec(["sh", "-c", 'for f; do [ -r "$f" ] && { cat "$f"; exit 0; }; done; exit 1', "sh", *paths])
    assert res.exit_code == 0, f"none of {paths} is readable"
    return res.stdout.strip()


# --- isolation ------------------------------------------------------------------------------------


async def test_commands_run_unprivileged_on_a_read_only_root(open_docker: OpenDocker) -> None:
    sb = await open_docker()
    res = await sb.exec("id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
    assert res.stdout.split() == ["1000", "1000", "CapEff:", "0000000000000000", "NoNewPrivs:", "1"]
    res = await sb.exec("touch /usr/oma-x")
    assert res.exit_code != 0 and "Read-only file system" in res.stderr
    assert (await sb.exec("echo scratch > /tmp/x && cat /tmp/x")).stdout == "scratch\n"
    # The idle process belongs to another user: a command's `kill -9 -1` cannot stop the sandbox.
    assert (await sb.exec("kill -9 -1; echo still here")).exit_code == 137
    assert (await sb.exec(["echo", "alive"])).stdout == "alive\n"


def registry_address() -> str | None:
    try:
        return str(socket.getaddrinfo("deb.debian.org", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError:
        return None


async def test_no_network_means_only_loopback(open_docker: OpenDocker) -> None:
    offline = await open_docker("offline", networking=False)
    assert (await offline.exec("ls /sys/class/net")).stdout.split() == ["lo"]
    online = await open_docker("online", networking=True)
    assert "eth0" in (await online.exec("ls /sys/class/net")).stdout.split()
    address = await asyncio.to_thread(registry_address)
    if address is None:
        return
    connect = ["python3", "-c", f"import socket; socket.create_connection(({address!r}, 80), timeout=5); print('ok')"]
    res = await offline.exec(connect)
    assert res.exit_code != 0 and "Network is unreachable" in res.stderr
    assert (await online.exec(connect)).stdout == "ok\n"


async def test_limits_are_the_containers_cgroup_limits(open_docker: OpenDocker) -> None:
    sb = await open_docker(memory_mb=256, pids=64, cpus=0.5)
    memory = await read_first(sb, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
    assert memory == str(256 * 1024**2)
    assert await read_first(sb, "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max") == "64"
    cpu = await read_first(sb, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max")
    assert cpu.split()[0] == "50000"


async def test_a_big_allocation_is_killed_and_the_sandbox_lives_on(open_docker: OpenDocker) -> None:
    sb = await open_docker(memory_mb=128)
    res = await sb.exec(["python3", "-c", "b = b'x' * (512 << 20); print('allocated')"], timeout=60)
    assert res.exit_code == 137 and "allocated" not in res.stdout
    assert (await sb.exec(["echo", "alive"])).stdout == "alive\n"


async def test_too_many_processes_fail_to_fork(open_docker: OpenDocker) -> None:
    sb = await open_docker(pids=32)
    res = await sb.exec("for i in $(seq 64); do sleep 30 & done; wait", timeout=3)
    assert "Resource temporarily unavailable" in res.stderr
    assert (await sb.exec(["echo", "alive"])).stdout == "alive\n"  # the leftovers were killed


# --- commands' processes ----------------------------------------------------------------------------


async def test_a_timeout_leaves_no_process_in_the_container(open_docker: OpenDocker, client: Any) -> None:
    sb = await open_docker()
    marker = sleep_marker()
    res = await sb.exec(f"sleep {marker} & setsid sleep {marker} & sleep {marker}", timeout=0.5)
    assert res.timed_out and res.exit_code == 137
    assert await no_processes_left(client, sb, marker) == []


async def test_a_timeout_kills_only_its_own_command(open_docker: OpenDocker, client: Any) -> None:
    sb = await open_docker()
    marker = sleep_marker()
    other = asyncio.create_task(sb.exec("sleep 1.5; echo survived"))
    res = await sb.exec(f"sleep {marker} & setsid sleep {marker} & sleep {marker}", timeout=0.5)
    assert res.timed_out
    assert await no_processes_left(client, sb, marker) == []
    assert (await other).stdout == "survived\n"


async def test_leftovers_of_one_command_die_while_another_runs(open_docker: OpenDocker, client: Any) -> None:
    sb = await open_docker()
    marker = sleep_marker()
    other = asyncio.create_task(sb.exec("sleep 1.5; echo survived"))
    res = await sb.exec(f"sleep {marker} & setsid sleep {marker} & echo started")
    assert (res.stdout, res.exit_code) == ("started\n", 0)
    assert await no_processes_left(client, sb, marker) == []
    assert (await other).stdout == "survived\n"


async def test_when_the_killer_cannot_start_the_container_is_restarted(
    open_docker: OpenDocker, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = await open_docker()
    await sb.write_file("keep.txt", b"kept")
    started_at = container(client, sb).attrs["State"]["StartedAt"]

    async def no_pids_left(self: DockerSandbox, command: list[str]) -> None:
        raise SandboxUnavailable("exit code 126 OCI runtime exec failed: resource temporarily unavailable")

    monkeypatch.setattr(DockerSandbox, "_helper", no_pids_left)
    marker = sleep_marker()
    res = await sb.exec(f"sleep {marker}", timeout=0.5)
    assert res.timed_out
    assert container(client, sb).attrs["State"]["StartedAt"] != started_at
    assert await no_processes_left(client, sb, marker) == []
    monkeypatch.undo()
    assert (await sb.exec(["cat", "keep.txt"])).stdout == "kept"


# --- lifecycle ----------------------------------------------------------------------------------------


async def test_a_new_object_re_attaches_to_the_same_container(open_docker: OpenDocker, client: Any) -> None:
    first = await open_docker()
    await first.write_file("notes.txt", b"remember me")
    container_id = container(client, first).id
    # A restart of our process: the old object is simply gone, its container still running a command.
    marker = sleep_marker()
    api = client.api
    exec_id = api.exec_create(first.container_name, ["sleep", marker], user="1000:1000")["Id"]
    api.exec_start(exec_id, detach=True)
    assert await asyncio.to_thread(processes, client, first, marker) != []

    again = await open_docker()
    assert container(client, again).id == container_id
    assert await again.read_file("notes.txt") == b"remember me"
    assert await no_processes_left(client, again, marker) == []  # what the old process ran is gone


async def test_a_container_stopped_or_removed_behind_our_back_comes_back(open_docker: OpenDocker, client: Any) -> None:
    sb = await open_docker()
    await sb.write_file("keep.txt", b"kept")
    container(client, sb).stop(timeout=0)
    assert (await sb.exec(["cat", "keep.txt"])).stdout == "kept"
    container(client, sb).remove(force=True)
    assert (await sb.exec(["cat", "keep.txt"])).stdout == "kept"


async def test_stop_keeps_the_container_and_workspace(open_docker: OpenDocker, client: Any) -> None:
    sb = await open_docker()
    await sb.write_file("keep.txt", b"kept")
    await sb.stop()
    assert container(client, sb).status == "exited"
    assert client.volumes.get(sb.volume_name) is not None
    again = await open_docker()
    assert container(client, again).status == "running"
    assert await again.read_file("keep.txt") == b"kept"


async def test_changed_limits_recreate_the_container_but_keep_the_workspace(
    open_docker: OpenDocker, client: Any
) -> None:
    sb = await open_docker(memory_mb=256)
    await sb.write_file("keep.txt", b"kept")
    first_id = container(client, sb).id
    await sb.stop()
    again = await open_docker(memory_mb=512)
    assert container(client, again).id != first_id
    assert await again.read_file("keep.txt") == b"kept"
    memory = await read_first(again, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
    assert memory == str(512 * 1024**2)


async def test_destroy_removes_the_container_and_volume(open_docker: OpenDocker, client: Any) -> None:
    kept = await open_docker("kept")
    await kept.write_file("x.txt", b"x")
    await kept.destroy(keep_workspace=True)
    with pytest.raises(docker.errors.NotFound):
        container(client, kept)
    assert client.volumes.get(kept.volume_name) is not None
    assert await (await open_docker("kept")).read_file("x.txt") == b"x"

    gone = await open_docker("gone")
    await gone.destroy()
    assert await asyncio.to_thread(leftovers, client, {gone.session_id}) == []


async def test_files_written_belong_to_the_sandbox_user(open_docker: OpenDocker) -> None:
    sb = await open_docker()
    await sb.write_file("dir/new.txt", b"x")
    assert (await sb.exec(["stat", "-c", "%u:%g %a", "dir", "dir/new.txt"])).stdout == "1000:1000 755\n1000:1000 644\n"
    assert (await sb.exec("chmod 700 dir/new.txt")).exit_code == 0
    await sb.write_file("dir/new.txt", b"rewritten")  # keeps the file's mode, like a write in place
    assert (await sb.exec(["stat", "-c", "%a", "dir/new.txt"])).stdout == "700\n"


async def test_an_image_without_a_workspace_directory_still_gets_a_writable_one(
    images: list[str], open_docker: OpenDocker, client: Any
) -> None:
    name = f"oma-test-noworkspace-{secrets.token_hex(4)}"
    images.append(name)
    maker = client.containers.run(DEFAULT_IMAGE, ["rmdir", "/workspace"], user="0:0", detach=True)
    try:
        assert maker.wait(timeout=60)["StatusCode"] == 0
        maker.commit(name, "latest")
    finally:
        maker.remove(force=True)
    sb = await open_docker(image=name)
    await sb.write_file("hello.txt", b"hi")
    assert (await sb.exec("cat hello.txt; touch made-by-exec")).stdout == "hi"


async def test_the_registry_opens_docker_sandboxes(tmp_path: Path) -> None:
    sb = await open_sandbox(f"sesn_dkr_registry_{secrets.token_hex(4)}", runtime="docker", root=tmp_path)
    assert isinstance(sb, DockerSandbox)
    try:
        assert (await sb.exec(["echo", "hi"])).stdout == "hi\n"
    finally:
        await sb.destroy()


def test_available_names_what_is_missing() -> None:
    assert available() is None
    reason = available("oma-no-such-image:none")
    assert reason is not None and "scripts/docker-sandbox-setup" in reason


# --- packages ---------------------------------------------------------------------------------------


async def test_bad_package_names_are_refused(open_docker: OpenDocker) -> None:
    with pytest.raises(SandboxError, match="invalid package name"):
        await open_docker(packages={"apt": ("--allow-unauthenticated",)}, environment_id="env_bad")


@pytest.mark.slow
async def test_apt_packages_are_installed_once_into_an_environment_image(
    images: list[str], open_docker: OpenDocker, client: Any
) -> None:
    environment = f"env_dkr_apt_{secrets.token_hex(3)}"
    repository = f"oma-env-{environment.replace('_', '-')}"
    images.extend([repository, f"{repository}-x"])
    try:
        first = await open_docker("first", packages={"apt": ("jq",)}, environment_id=environment)
    except SandboxError as e:
        if "Temporary failure resolving" in e.message or "Could not resolve" in e.message:
            pytest.skip("the Debian mirror is not reachable from containers")
        raise
    assert (await first.exec("echo '{\"a\": 7}' | jq .a")).stdout == "7\n"
    [image] = client.images.list(name=repository)
    started = time.monotonic()
    second = await open_docker("second", packages={"apt": ("jq",)}, environment_id=environment)
    assert time.monotonic() - started < 5  # no second install
    assert container(client, second).image.id == image.id
    builders = {"name": f"oma-build-{environment.replace('_', '-')}"}
    assert client.containers.list(all=True, filters=builders) == []

    expected = r"installing the environment's apt packages \(oma-no-such-pkg\)"
    with pytest.raises(SandboxError, match=expected) as broken:
        await open_docker("broken", packages={"apt": ("oma-no-such-pkg",)}, environment_id=environment + "_x")
    assert "exit code" in broken.value.message and "Unable to locate package" in broken.value.message
    assert client.images.list(name=f"{repository}-x") == []
    assert client.containers.list(all=True, filters=builders) == []
