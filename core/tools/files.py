"""The read, write and edit tools: whole-file operations through the sandbox's file API."""

from __future__ import annotations

import base64
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import Field

from core.tools.base import ToolContext, ToolError, ToolInput, ToolOutcome
from sandbox.base import FileNotFound, FileTooLarge

MAX_READ_BYTES = 256 * 1024  # a whole-file read; past it the model must pick a view_range
MAX_RANGE_SOURCE_BYTES = 64 * 1024 * 1024  # a file read with view_range
MAX_EDIT_BYTES = 10 * 1024 * 1024
MAX_IMAGE_BYTES = 5 * 1024 * 1024 // 4 * 3  # the API's limit is 5 MiB of base64
MAX_PDF_BYTES = 20 * 1024 * 1024
_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".pdf": "application/pdf",
}


class ReadInput(ToolInput):
    file_path: str
    view_range: Annotated[list[int], Field(min_length=2, max_length=2)] | None = None


class WriteInput(ToolInput):
    file_path: str
    content: str


class EditInput(ToolInput):
    file_path: str
    old_string: str
    new_string: str
    replace_all: bool | None = None


async def read(args: ReadInput, ctx: ToolContext) -> ToolOutcome:
    path = args.file_path
    media_type = _MEDIA_TYPES.get(PurePosixPath(path).suffix.lower())
    if media_type is not None:
        if args.view_range:
            raise ToolError("view_range is not supported for image and PDF files")
        return await _read_media(path, media_type, ctx)
    limit = MAX_RANGE_SOURCE_BYTES if args.view_range else MAX_READ_BYTES
    try:
        data = await ctx.sandbox.read_file(path, max_bytes=limit)
    except FileTooLarge as e:
        if args.view_range:
            raise ToolError(f"{path} is {e.size} bytes, too large to read; use bash (e.g. sed -n, head, tail)") from e
        raise ToolError(
            f"{path} is {e.size} bytes, over the {limit}-byte limit for reading a whole file; "
            "pass view_range to read part of it, e.g. [1, 500]"
        ) from e
    text = _decode(data, path, "binary files can only be read if they are images or PDFs")
    if not args.view_range:
        return ToolOutcome.text(text if text else f"({path} is empty)")
    return ToolOutcome.text(_select(text, path, args.view_range))


def _select(text: str, path: str, view_range: list[int]) -> str:
    start, end = view_range
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    if start < 1:
        raise ToolError("view_range start_line must be 1 or more (lines are 1-indexed)")
    if end > 0 and end < start:
        raise ToolError(f"view_range end_line {end} is before start_line {start}")
    if start > len(lines):
        raise ToolError(f"view_range starts at line {start} but {path} has {len(lines)} lines")
    selected = "\n".join(lines[start - 1 : end if end > 0 else None])
    if len(selected.encode()) > MAX_READ_BYTES:
        raise ToolError(f"the selected lines are over {MAX_READ_BYTES} bytes; pass a narrower view_range")
    return selected


async def _read_media(path: str, media_type: str, ctx: ToolContext) -> ToolOutcome:
    limit = MAX_PDF_BYTES if media_type == "application/pdf" else MAX_IMAGE_BYTES
    try:
        data = await ctx.sandbox.read_file(path, max_bytes=limit)
    except FileTooLarge as e:
        raise ToolError(f"{path} is {e.size} bytes, over the {limit}-byte limit for {media_type} files") from e
    source = {"type": "base64", "media_type": media_type, "data": base64.standard_b64encode(data).decode("ascii")}
    block: dict[str, Any] = {"type": "document" if media_type == "application/pdf" else "image", "source": source}
    return ToolOutcome([block])


async def write(args: WriteInput, ctx: ToolContext) -> ToolOutcome:
    data = args.content.encode()
    await ctx.sandbox.write_file(args.file_path, data)
    return ToolOutcome.text(f"wrote {len(data)} bytes to {args.file_path}")


async def edit(args: EditInput, ctx: ToolContext) -> ToolOutcome:
    path = args.file_path
    if not args.old_string:
        raise ToolError("old_string must not be empty; use the write tool to create or overwrite a file")
    if args.old_string == args.new_string:
        raise ToolError("old_string and new_string are identical; there is nothing to change")
    try:
        data = await ctx.sandbox.read_file(path, max_bytes=MAX_EDIT_BYTES)
    except FileNotFound as e:
        raise ToolError(f"{path}: no such file; use the write tool to create it") from e
    except FileTooLarge as e:
        raise ToolError(f"{path} is {e.size} bytes, too large for the edit tool; use bash") from e
    text = _decode(data, path, "the edit tool only changes text files")
    count = text.count(args.old_string)
    if count == 0:
        raise ToolError(
            f"old_string was not found in {path}. It must match the file exactly, including whitespace "
            "and indentation; read the file to check"
        )
    if count > 1 and not args.replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {path}; include more surrounding lines to make it unique, "
            "or set replace_all to true to replace every occurrence"
        )
    updated = text.replace(args.old_string, args.new_string, -1 if args.replace_all else 1)
    await ctx.sandbox.write_file(path, updated.encode())
    replaced = count if args.replace_all else 1
    return ToolOutcome.text(f"edited {path} ({replaced} replacement{'s' if replaced != 1 else ''})")


def _decode(data: bytes, path: str, hint: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ToolError(f"{path} is not UTF-8 text; {hint}") from e
