"""Memory, process and CPU limits for a session's sandbox: a cgroup per session where the kernel
lets us write one (v1 per controller, or v2), rlimits (`prlimit`) for what is left.

The session's processes join its cgroup before they exec the sandbox: `join_argv` prefixes the
command with a tiny `sh` that writes its own pid into each `cgroup.procs`, so nothing the command
forks can start outside the limits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
# Printed by the join prefix when a cgroup could not be joined; the exit code is 125.
JOIN_FAILED = "oma-sandbox: cannot join cgroup"
JOIN_EXIT_CODE = 125
_JOIN_SCRIPT = (
    'while [ "$1" != -- ]; do'
    f' {{ echo $$ >"$1"; }} 2>/dev/null || {{ echo "{JOIN_FAILED} $1" >&2; exit {JOIN_EXIT_CODE}; }}; shift;'
    ' done; shift; exec "$@"'
)


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int | None = None
    pids: int | None = None
    cpus: float | None = None

    def wanted(self) -> tuple[str, ...]:
        values = {"memory": self.memory_bytes, "pids": self.pids, "cpu": self.cpus}
        return tuple(c for c in CONTROLLERS if values[c] is not None)


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where each controller can be used: a v1 hierarchy per controller, or the v2 root."""

    v1: Mapping[str, Path]
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()

    def place(self, controller: str) -> str | None:
        if controller in self.v1:
            return "v1"
        if self.v2 is not None and controller in self.v2_controllers:
            return "v2"
        return None


def detect(mounts: Path = Path("/proc/self/mounts")) -> CgroupLayout:
    """The writable cgroup hierarchies; an empty layout when there are none (e.g. in a container)."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return CgroupLayout({})
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        where, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if "rw" not in options or not os.access(where, os.W_OK):
            continue
        if fstype == "cgroup":
            for controller in CONTROLLERS:
                if controller in options:
                    v1.setdefault(controller, where)
        elif fstype == "cgroup2":
            v2 = where
    v2_controllers: frozenset[str] = frozenset()
    if v2 is not None:
        with contextlib.suppress(OSError):
            v2_controllers = frozenset((v2 / "cgroup.controllers").read_text().split()) - set(v1)
    return CgroupLayout(v1, v2, v2_controllers)


class SessionCgroup:
    """The cgroups one session's processes run in: `<hierarchy>/<parent>/<name>`.

    `create` makes them and writes the limits (idempotent); `procs_files` are what the join prefix
    writes to; `uncovered` lists the wanted limits no cgroup can enforce here.
    """

    def __init__(self, layout: CgroupLayout, limits: Limits, name: str, *, parent: str = "oma") -> None:
        self.layout = layout
        self.limits = limits
        self.name = name
        self.parent = parent
        wanted = limits.wanted()
        self._v1 = tuple(c for c in wanted if layout.place(c) == "v1")
        self._v2 = tuple(c for c in wanted if layout.place(c) == "v2")
        self.uncovered = tuple(c for c in wanted if layout.place(c) is None)

    @property
    def directories(self) -> list[Path]:
        dirs = [self.layout.v1[c] / self.parent / self.name for c in self._v1]
        if self._v2 and self.layout.v2 is not None:
            dirs.append(self.layout.v2 / self.parent / self.name)
        return dirs

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.directories]

    def create(self) -> None:
        """Raises OSError when a cgroup cannot be made or a limit cannot be written."""
        for controller in self._v1:
            group = self.layout.v1[controller] / self.parent / self.name
            group.mkdir(parents=True, exist_ok=True)
            _write_v1(controller, group, self.limits)
        if self._v2 and self.layout.v2 is not None:
            enable = " ".join(f"+{c}" for c in self._v2)
            parent = self.layout.v2 / self.parent
            parent.mkdir(exist_ok=True)
            _write(self.layout.v2 / "cgroup.subtree_control", enable)
            _write(parent / "cgroup.subtree_control", enable)
            group = parent / self.name
            group.mkdir(exist_ok=True)
            _write_v2(self._v2, group, self.limits)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return found

    def remove(self, wait: float = 2.0) -> None:
        """Best effort. Killed processes leave their cgroup a moment after they are reaped (EBUSY
        meanwhile): retry for up to `wait` seconds, then leave it; a later start reuses it."""
        deadline = time.monotonic() + wait
        for directory in self.directories:
            while True:
                try:
                    directory.rmdir()
                except OSError as e:
                    if e.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.01)
                        continue
                break


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _write_v1(controller: str, group: Path, limits: Limits) -> None:
    if controller == "memory" and limits.memory_bytes is not None:
        value = str(limits.memory_bytes)
        memsw = group / "memory.memsw.limit_in_bytes"
        # Swap counts too when the kernel accounts it; memsw must stay >= the memory limit, so the
        # order of the two writes depends on whether the limit goes up or down.
        try:
            _write(group / "memory.limit_in_bytes", value)
            if memsw.exists():
                _write(memsw, value)
        except OSError as e:
            if e.errno != errno.EINVAL or not memsw.exists():
                raise
            _write(memsw, value)
            _write(group / "memory.limit_in_bytes", value)
    elif controller == "pids" and limits.pids is not None:
        _write(group / "pids.max", str(limits.pids))
    elif controller == "cpu" and limits.cpus is not None:
        _write(group / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(group / "cpu.cfs_quota_us", str(max(1000, round(limits.cpus * CPU_PERIOD_US))))


def _write_v2(controllers: tuple[str, ...], group: Path, limits: Limits) -> None:
    if "memory" in controllers and limits.memory_bytes is not None:
        _write(group / "memory.max", str(limits.memory_bytes))
        with contextlib.suppress(FileNotFoundError):
            _write(group / "memory.swap.max", "0")
    if "pids" in controllers and limits.pids is not None:
        _write(group / "pids.max", str(limits.pids))
    if "cpu" in controllers and limits.cpus is not None:
        _write(group / "cpu.max", f"{max(1000, round(limits.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")


def join_argv(sh: str, procs_files: list[str]) -> list[str]:
    """A command prefix that joins `procs_files` and then execs the rest of the argv."""
    if not procs_files:
        return []
    return [sh, "-c", _JOIN_SCRIPT, "oma-join", *procs_files, "--"]


def rlimit_argv(prlimit: str, limits: Limits, uncovered: tuple[str, ...]) -> list[str]:
    """The fallback for limits no cgroup enforces. Weaker: memory is per process (address space,
    so runtimes that reserve a lot of it up front, like node, may refuse to start) and the process
    count is per user, shared by every sandbox running as that uid; CPU has no rlimit equivalent."""
    args = []
    if "memory" in uncovered and limits.memory_bytes is not None:
        args.append(f"--as={limits.memory_bytes}")
    if "pids" in uncovered and limits.pids is not None:
        args.append(f"--nproc={limits.pids}")
    return [prlimit, *args, "--"] if args else []
