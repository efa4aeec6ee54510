"""Markdown (what models write) to Slack's mrkdwn (what `chat.postMessage`/`chat.update` render).

Code blocks and inline code pass through untouched; Slack's own tokens (`<@U123>`, `<#C1>`,
`<!here>`, `<https://x|label>`) survive; other `&`, `<`, `>` are escaped as Slack requires.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_SLACK_TOKEN = re.compile(r"<(?:[@#!][^<>\s][^<>]*|(?:https?|mailto):[^<>\s]+)>")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_BOLD_MARK = "\x01"
_KEEP = "\x02{}\x03"
_KEPT = re.compile("\x02(\\d+)\x03")


def to_mrkdwn(markdown: str) -> str:
    kept: list[str] = []

    def keep(text: str) -> str:
        kept.append(text)
        return _KEEP.format(len(kept) - 1)

    text = _FENCE.sub(lambda m: keep("```\n" + _escape_all(m.group(2).rstrip("\n")) + "\n```"), markdown)
    text = _tables(text, keep)
    text = _INLINE_CODE.sub(lambda m: keep(_escape_all(m.group(0))), text)
    text = _SLACK_TOKEN.sub(lambda m: keep(m.group(0)), text)
    text = _IMAGE.sub(lambda m: keep(f"<{m.group(2)}|{_escape(m.group(1) or m.group(2))}>"), text)
    text = _LINK.sub(lambda m: keep(f"<{m.group(2)}|{_escape(m.group(1))}>"), text)
    text = _escape(text)
    text = _RULE.sub("──────────", text)
    text = _HEADING.sub(lambda m: f"{_BOLD_MARK}{m.group(1)}{_BOLD_MARK}", text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(1) or m.group(2)}{_BOLD_MARK}", text)
    text = _BULLET.sub(lambda m: f"{m.group(1)}• ", text)
    text = _ITALIC.sub(lambda m: f"_{m.group(1)}_", text)
    text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    text = text.replace(_BOLD_MARK, "*")
    while _KEPT.search(text):
        text = _KEPT.sub(lambda m: kept[int(m.group(1))], text)
    return text


def _escape_all(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape(text: str) -> str:
    # Quote markers (">" at a line start) stay: Slack renders them as block quotes.
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return re.sub(r"(?<!^)(?<!\n)>", "&gt;", text)


def _tables(text: str, keep: Callable[[str], str]) -> str:
    """Markdown tables have no mrkdwn form: they are shown as preformatted text."""
    lines = text.split("\n")
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if len(block) >= 2 and re.match(r"^\s*\|?\s*:?-{2,}", block[1]):
            out.append(keep("```\n" + _escape_all("\n".join(block)) + "\n```"))
        else:
            out.extend(block)
        block.clear()

    for line in lines:
        if line.strip().startswith("|") and line.strip().endswith("|"):
            block.append(line)
            continue
        flush()
        out.append(line)
    flush()
    return "\n".join(out)
