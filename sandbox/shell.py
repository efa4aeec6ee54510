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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.base import WORKSPACE, FileNotFound, IsADirectory, PathOutsideWorkspace, SandboxError

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

    def __init__(self, out: Sink, err: Sink, token: str, on_dirty: Callable[[], None]) -> None:
        self.out = out
        self.err = err
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
            self.err.feed(bytes(self._held[:start]))
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
