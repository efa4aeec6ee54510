"""Shell scripts and output plumbing shared by the runtimes that run commands in a remote or
containerised system through an exec API (docker, e2b, daytona), where all we can do is start a
command and read its output: the scripts do the rest inside the sandbox, with POSIX sh and
/proc only, so they work in any image (busybox included).

Every command runs under a wrapper that reports, on stderr, in a line carrying a random token
(removed from the output by `Streams`), its exit code and whether processes it started are still
alive; `KILL_ONE` then kills exactly that command's processes, and `FILE_OP` resolves and checks
paths (symlinks included) before a file is read or written.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.base import WORKSPACE, FileNotFound, FileTooLarge, IsADirectory, PathOutsideWorkspace, SandboxError

# One command's processes while others run: $1 token, $2 wrapper pid, $3 $4 its output pipes
# ('' when unknown: then the wrapper is found by the token on its command line). Kills the
# wrapper's session and process group, their descendants and whoever holds the output pipes.
KILL_ONE = r"""
t=$1 root=$2 out=$3 err=$4
if [ -z "$root" ]; then
  for q in /proc/[0-9]*; do
    [ -O "$q" ] || continue
    case " $(tr '\0' ' ' < "$q/cmdline" 2>/dev/null) " in *" oma-exec $t "*) root=${q#/proc/}; break ;; esac
  done
  [ -n "$root" ] || exit 0
  out=$(readlink "/proc/$root/fd/1" 2>/dev/null)
  err=$(readlink "/proc/$root/fd/3" 2>/dev/null)
fi
round=0
while [ $round -lt 10 ]; do
  round=$((round + 1))
  table= kin=" "
  for q in /proc/[0-9]*; do
    pid=${q#/proc/}
    [ "$pid" = $$ ] && continue
    [ -O "$q" ] || continue
    read -r s < "$q/stat" 2>/dev/null || continue
    set -- ${s##*") "}
    [ "$1" = Z ] && continue
    if [ "$pid" = "$root" ] || [ "$3" = "$root" ] || [ "$4" = "$root" ]; then
      kin="$kin$pid "
    elif [ -n "$out$err" ]; then
      case " $(readlink "$q/fd/1" 2>/dev/null) $(readlink "$q/fd/2" 2>/dev/null) " in
        *" $out "* | *" $err "*) kin="$kin$pid " ;;
        *) table="$table $pid:$2" ;;
      esac
    else
      table="$table $pid:$2"
    fi
  done
  grown=1
  while [ -n "$grown" ]; do
    grown=
    for e in $table; do
      case "$kin" in *" ${e%%:*} "*) continue ;; *" ${e#*:} "*) kin="$kin${e%%:*} "; grown=1 ;; esac
    done
  done
  [ "$kin" = " " ] && exit 0
  kill -9 $kin 2>/dev/null
done
"""

# File operations: $1 op (path|read|stat|write), $2 absolute path, $3 read limit, $4 the workspace
# (default /workspace). Exit codes 80-86 (see FILE_ERRORS); `read` prints the bytes, `stat` the
# size of a regular file, a newline and its resolved path (for a transfer by another API), `write`
# the mode of an existing file, a newline and the resolved path, having created the parent
# directories.
FILE_OP = r"""
resolve() {  # like `realpath -m`, which busybox lacks: resolve the part that exists, keep the rest
  r=$(realpath -m -- "$1" 2>/dev/null) && return
  h=$1 rest=
  while [ -n "$h" ] && [ ! -e "$h" ] && [ ! -L "$h" ]; do rest=/${h##*/}$rest; h=${h%/*}; done
  h=$(readlink -f -- "${h:-/}" 2>/dev/null) || return 1
  case $rest in */.. | */../*) return 1 ;; esac
  r=${h%/}$rest
}
op=$1 w=${4:-/workspace}
resolve "$2" || exit 81
case $r in "$w"|"$w"/*) ;; *) exit 80 ;; esac
case $op in
path) printf '%s' "$r" ;;
read|stat)
  [ -d "$r" ] && exit 82
  [ -e "$r" ] || exit 81
  [ -f "$r" ] || exit 83
  [ -r "$r" ] || { echo "permission denied" >&2; exit 86; }
  if [ -n "$3" ]; then
    size=$(stat -c %s -- "$r" 2>/dev/null || wc -c < "$r") || exit 86
    [ "$size" -gt "$3" ] && { printf '%s' "$size"; exit 84; }
    [ "$op" = stat ] && { printf '%s\n%s' "$size" "$r"; exit 0; }
    exec head -c $(($3 + 1)) -- "$r"
  fi
  [ "$op" = stat ] && { printf '%s\n%s' "$(stat -c %s -- "$r" 2>/dev/null || wc -c < "$r")" "$r"; exit 0; }
  exec cat -- "$r" ;;
write)
  [ -d "$r" ] && exit 82
  { [ -e "$r" ] || [ -L "$r" ]; } && [ ! -f "$r" ] && exit 83
  parent=${r%/*}
  if ! mkdir -p -- "${parent:-/}" 2>/dev/null; then
    h=$parent
    while [ -n "$h" ] && [ ! -e "$h" ]; do h=${h%/*}; done
    [ -d "${h:-/}" ] || exit 85
    echo "cannot create the parent directory" >&2
    exit 86
  fi
  [ -d "${parent:-/}" ] || exit 85
  mode=
  [ -f "$r" ] && mode=$(stat -c %a -- "$r" 2>/dev/null)
  printf '%s\n%s' "$mode" "$r" ;;
esac
"""


class Capture:
    """Keeps the first and last halves of at most `limit` bytes; memory stays bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._head_limit = self.limit - self.limit // 2
        self._tail_limit = self.limit // 2
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]

    def text(self) -> str:
        if not self.truncated:
            return (self._head + self._tail).decode("utf-8", "replace")
        head = self._head.decode("utf-8", "replace")
        tail = self._tail.decode("utf-8", "replace")
        return f"{head}\n[... {self.total - self.limit} bytes of output omitted ...]\n{tail}"


class Sink(Protocol):
    def feed(self, data: bytes) -> None: ...


class Bytes:
    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, data: bytes) -> None:
        self.data += data


class Streams:
    """Splits an exec's multiplexed output into two sinks and takes the wrapper's report lines out
    of stderr (holding back the end of stderr until it is known not to start one). The command can
    see the token and print a report line too: only the last one counts, and only if the engine's
    exit code agrees with it."""

    def __init__(self, out: Sink, err: Sink, token: str, on_dirty: Callable[[], None], *, framed: bool = False) -> None:
        self.out = out
        self.err = err
        # The wrapper put a newline of its own before the report line (see sandbox/hosted.py).
        self._framed = framed
        self.report: Report | None = None
        self._marker = f"oma-exit:{token}:".encode()
        self._held = bytearray()
        self._on_dirty = on_dirty

    def feed(self, stream: int, data: bytes) -> None:
        if stream == 1:
            self.out.feed(data)
            return
        if stream != 2:
            return
        self._held += data
        while (start := self._held.find(self._marker)) >= 0:
            end = self._held.find(b"\n", start)
            if end < 0:
                return  # the rest of the line is still on its way
            before = self._held[:start]
            if self._framed and before.endswith(b"\n"):
                del before[-1:]
            self.err.feed(bytes(before))
            self.report = Report.parse(self._held[start + len(self._marker) : end].decode(errors="replace"))
            del self._held[: end + 1]
            if self.report.dirty:
                self._on_dirty()
        keep = len(self._marker)
        if len(self._held) > keep:
            self.err.feed(bytes(self._held[:-keep]))
            del self._held[:-keep]

    def finish(self) -> None:
        self.err.feed(bytes(self._held))
        self._held.clear()


@dataclass(frozen=True)
class Report:
    """The wrapper's last line: `<exit code> <pid> clean`, `<exit code> <pid> dirty <stdout pipe>
    <stderr pipe>` (processes of the sandbox user are still alive), or `fail <reason>` (bad cwd)."""

    exit_code: int | None = None
    failure: str | None = None
    dirty: bool = True
    pid: str = ""
    pipes: tuple[str, str] = ("", "")

    @classmethod
    def parse(cls, line: str) -> Report:
        fields = line.split()
        if fields[:1] == ["fail"]:
            return cls(failure=fields[1] if len(fields) > 1 else "missing", dirty=False)
        if len(fields) < 3 or not fields[0].isdigit():
            return cls()
        pipes = (*fields[4:6], "", "")
        return cls(exit_code=int(fields[0]), dirty=fields[2] != "clean", pid=fields[1], pipes=(pipes[0], pipes[1]))


# The file script's exit codes, as local.py words them.
FILE_ERRORS: Mapping[int, tuple[type[SandboxError], str]] = {
    80: (PathOutsideWorkspace, "{path}: outside the workspace (/workspace)"),
    81: (FileNotFound, "{path}: no such file"),
    82: (IsADirectory, "{path} is a directory"),
    83: (SandboxError, "{path} is not a regular file"),
    85: (SandboxError, "{path}: a parent of this path is a file, not a directory"),
}


async def first(limit: float, reader: asyncio.Future[Any], event: asyncio.Event | None = None) -> bool:
    """Wait up to `limit` seconds for `reader` to finish or `event` to be set; True if one did."""
    waiters: set[asyncio.Future[Any]] = {reader}
    flag = None
    if event is not None:
        flag = asyncio.ensure_future(event.wait())
        waiters.add(flag)
    try:
        done, _ = await asyncio.wait(waiters, timeout=max(0.0, limit), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if flag is not None:
            flag.cancel()
    return bool(done)


def cwd_error(path: str, failure: str) -> SandboxError:
    """The wrapper's `fail <reason>` for a bad `cwd`, as the contract's error."""
    if failure == "outside":
        return PathOutsideWorkspace(f"{path}: outside the workspace ({WORKSPACE})", path=path)
    if failure == "missing":
        return FileNotFound(f"{path}: no such directory", path=path)
    if failure == "notdir":
        return SandboxError(f"{path}: not a directory", path=path)
    return SandboxError(f"{path}: permission denied", path=path)


# --- an environment's packages ------------------------------------------------------------------

PACKAGE_ORDER = ("apt", "pip", "npm", "gem", "cargo", "go")
PACKAGE_NAME = re.compile(r"[A-Za-z0-9@._~^*<>=!,:/+\[\] -]{1,256}")
INSTALL_PRELUDE = r"""
export DEBIAN_FRONTEND=noninteractive
updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "oma: apt-get is not in the image" >&2; return 1; }
  if [ -z "$updated" ]; then apt-get update -q || return 1; updated=1; fi
  apt-get install -y -q --no-install-recommends "$@"
}
need() { command -v "$1" >/dev/null 2>&1 || apt_install "$2"; }
"""
INSTALL_STEPS = {
    "apt": "apt_install {pkgs}",
    "pip": "need pip3 python3-pip && PIP_BREAK_SYSTEM_PACKAGES=1 pip3 install --no-cache-dir {pkgs}",
    "npm": "need npm npm && npm install --global {pkgs}",
    "gem": "need gem ruby && gem install --no-document {pkgs}",
    "cargo": "need cargo cargo && CARGO_HOME=/usr/local cargo install {pkgs}",
    "go": "need go golang-go && GOBIN=/usr/local/bin GOPATH=/tmp/go GOCACHE=/tmp/go-cache go install {pkgs}",
}
INSTALL_CLEANUP = "rm -rf /var/lib/apt/lists/* /root/.cache /root/.npm /usr/local/registry /usr/local/git /tmp/* || :"


def wanted_packages(packages: Mapping[str, Sequence[str]]) -> list[tuple[str, tuple[str, ...]]]:
    """The environment's packages by manager, checked, in install order; SandboxError if a manager
    is unknown or a name could be taken for an option."""
    wanted = {m: tuple(p) for m, p in packages.items() if p}
    for manager, names in wanted.items():
        if manager not in INSTALL_STEPS:
            raise SandboxError(f"packages: unknown package manager {manager!r}")
        for name in names:
            if not PACKAGE_NAME.fullmatch(name) or name.startswith("-"):
                raise SandboxError(f"packages.{manager}: invalid package name {name!r}")
    return sorted(wanted.items(), key=lambda item: PACKAGE_ORDER.index(item[0]))


def install_script(wanted: list[tuple[str, tuple[str, ...]]], *, cleanup: bool = True) -> str:
    """A script that installs `wanted` as root; `cleanup` empties the package caches and /tmp
    afterwards (right for an image being built, not for a machine in use)."""
    lines = ["set -u", INSTALL_PRELUDE]
    for manager, names in wanted:
        if manager == "go":
            names = tuple(n if "@" in n else f"{n}@latest" for n in names)
        pkgs = " ".join(quote(n) for n in names)
        code = 10 + PACKAGE_ORDER.index(manager)
        lines.append("echo " + quote(f"oma: installing {manager} packages: " + " ".join(names)))
        failed = f'{{ echo "oma: {manager} failed with exit code $?" >&2; exit {code}; }}'
        lines.append(f"{INSTALL_STEPS[manager].format(pkgs=pkgs)} || {failed}")
    if cleanup:
        lines.append(INSTALL_CLEANUP)
    return "\n".join(lines)


def install_failure(wanted: list[tuple[str, tuple[str, ...]]], status: int, logs: str) -> str:
    failed = next((m for m in PACKAGE_ORDER if status == 10 + PACKAGE_ORDER.index(m)), None)
    names = dict(wanted).get(failed or "", ())
    what = f"installing the environment's {failed} packages ({' '.join(names)})" if failed else "installing packages"
    found = re.search(r"oma: \w+ failed with exit code (\d+)", logs)
    tail = "\n".join(line for line in logs.splitlines()[-12:] if not line.startswith("oma: "))
    return f"{what} failed (exit code {found.group(1) if found else status}):\n{tail}"


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class Outcome:
    """How a wrapped command ended: its exit code, whether it hit the deadline, and the wrapper's
    refusal of the cwd (`outside`, `missing`, `notdir`, `denied`), if it refused it."""

    exit_code: int
    timed_out: bool
    failure: str | None = None


def exec_argv(
    command: list[str] | str, env: dict[str, str] | None, *, name_ok: Callable[[str], bool]
) -> tuple[list[str], dict[str, str]]:
    """`exec`'s command as an argv (a string runs under `bash -c`) and its environment, checked:
    SandboxError for an empty command, a NUL byte, or a variable name `name_ok` refuses."""
    argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
    if not argv or not argv[0]:
        raise SandboxError("exec: empty command")
    run_env = dict(env or {})
    if any("\0" in a for a in argv) or any("\0" in v or not name_ok(k) for k, v in run_env.items()):
        raise SandboxError(f"exec: cannot start {argv[0]!r}: NUL byte in an argument, or a bad variable name")
    return argv, run_env


def file_op_error(code: int, path: str, limit: str, out: bytes, err: str) -> SandboxError:
    """The error for FILE_OP's exit `code` (not 0) on `path`: `out` is its stdout (the size, for
    84), `err` its stderr, `limit` the read limit it was given."""
    if code in FILE_ERRORS:
        error, message = FILE_ERRORS[code]
        return error(message.format(path=path), path=path)
    if code == 84:
        size, cap = int(out.strip() or b"0"), int(limit)
        return FileTooLarge(f"{path} is {size} bytes, over the {cap}-byte limit", path=path, size=size, limit=cap)
    detail = err.strip().splitlines()[-1:] or [f"exit code {code}"]
    return SandboxError(f"{path}: {detail[0]}", path=path)
