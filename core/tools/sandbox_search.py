"""The glob and grep walkers. This file's source runs *inside* the sandbox:

    python3 -I -c <this source> glob ROOT PATTERN LIMIT
    python3 -I -c <this source> grep ROOT PATTERN MAX_CHARS

so it needs only the standard library and must run on Python 3.7+. It prints one
JSON object: {"matches": [...], "total": N, "partial": bool} or {"error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator

SKIP_DIRS = (".git", ".oma", "node_modules")
MAX_ENTRIES = 50_000
MAX_SHOWN_LINE = 500


def translate(pattern: str) -> str:
    """A doublestar glob as a regex over '/'-separated relative paths."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j].replace("\\", "\\\\")
            if body[0] in "!^":
                body = "^" + body[1:]
            out.append("[" + body + "]")
            i = j + 1
        elif c == "{":
            end, alternatives = _braces(pattern, i)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            out.append("(?:" + "|".join(translate(a) for a in alternatives) + ")")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _braces(pattern: str, start: int) -> tuple[int, list[str]]:
    depth, parts, last = 0, [], start + 1
    for j in range(start, len(pattern)):
        c = pattern[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[last:j])
                return j, parts
        elif c == "," and depth == 1:
            parts.append(pattern[last:j])
            last = j + 1
    return -1, []


def _walk(root: str, skip: tuple[str, ...]) -> Iterator[tuple[str, list[str], list[str]]]:
    """(directory, subdirectories, files) under root, sorted, pruned, never through symlinked directories."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        filenames.sort()
        seen += len(dirnames) + len(filenames)
        yield dirpath, dirnames, filenames
        if seen > MAX_ENTRIES:
            raise OverflowError


def glob(root: str, pattern: str, limit: int) -> dict[str, object]:
    if pattern.startswith("/"):
        return {"error": "absolute patterns are not supported; pass the directory as path and a relative pattern"}
    if ".." in pattern.split("/"):
        return {"error": "'..' is not allowed in the pattern; pass the directory as path instead"}
    try:
        rx = re.compile(translate(pattern), re.DOTALL)
    except re.error as e:
        return {"error": f"invalid pattern: {e}"}
    if not os.path.isdir(root):
        return {"error": "not a directory" if os.path.exists(root) else "no such directory"}
    found: list[tuple[float, str]] = []
    partial = False
    skip = tuple(d for d in SKIP_DIRS if d not in pattern)
    try:
        for dirpath, dirnames, filenames in _walk(root, skip):
            rel_dir = os.path.relpath(dirpath, root)
            for name in dirnames + filenames:
                rel = name if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/" + name
                if rx.fullmatch(rel):
                    full = os.path.join(dirpath, name)
                    with contextlib.suppress(OSError):
                        found.append((os.lstat(full).st_mtime, full))
    except OverflowError:
        partial = True
    found.sort(key=lambda m: (-m[0], m[1]))
    return {"matches": [f for _, f in found[:limit]], "total": len(found), "partial": partial}


def grep(root: str, pattern: str, max_chars: int) -> dict[str, object]:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        return {"error": f"invalid regular expression: {e}"}
    files = [root]
    partial = False
    if os.path.isdir(root):
        files = []
        try:
            for dirpath, _, filenames in _walk(root, SKIP_DIRS):
                files.extend(os.path.join(dirpath, f) for f in filenames)
        except OverflowError:
            partial = True
    elif not os.path.isfile(root):
        return {"error": "no such file or directory"}
    matches: list[str] = []
    size = 0
    for path in files:
        if path != root and (os.path.islink(path) or not os.path.isfile(path)):
            continue  # a FIFO would block; a symlink may point anywhere
        try:
            with open(path, "rb") as f:
                if b"\0" in f.read(8192):
                    continue
                f.seek(0)
                for lineno, raw in enumerate(f, 1):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not rx.search(line):
                        continue
                    if len(line) > MAX_SHOWN_LINE:
                        line = line[:MAX_SHOWN_LINE] + " [line truncated]"
                    entry = f"{path}:{lineno}:{line}"
                    size += len(entry) + 1
                    if size > max_chars:
                        return {"matches": matches, "total": len(matches), "partial": True}
                    matches.append(entry)
        except OSError:
            continue
    return {"matches": matches, "total": len(matches), "partial": partial}


def main(argv: list[str]) -> int:
    mode, root, pattern, limit = argv
    root = os.path.normpath(root)
    result = glob(root, pattern, int(limit)) if mode == "glob" else grep(root, pattern, int(limit))
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
