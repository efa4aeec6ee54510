"""HTML to readable text (headings, lists, links and preformatted blocks kept) with html.parser."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "dd", "details", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "header", "hr", "html", "li", "main", "nav", "ol", "p",
        "pre", "section", "summary", "table", "tbody", "thead", "tfoot", "tr", "ul",
        "h1", "h2", "h3", "h4", "h5", "h6",
    }
)  # fmt: skip
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"})


class _Extractor(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.out: list[str] = []
        self.title = ""
        self._in_title = False
        self._skip: list[str] = []
        self._pre = 0
        self._links: list[tuple[str, int]] = []  # (href, position in out where the link text starts)
        self._cells = 0
        self._trailing_newlines = 0

    def _emit(self, text: str) -> None:
        if not text:
            return
        self.out.append(text)
        body = text.rstrip("\n")
        newlines = len(text) - len(body)
        self._trailing_newlines = newlines if body else self._trailing_newlines + newlines

    def _newline(self, count: int) -> None:
        if self.out and self._trailing_newlines < count:
            self._emit("\n" * (count - self._trailing_newlines))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if self._skip:
            if tag in _SKIP and tag not in _VOID:
                self._skip.append(tag)
            return
        if tag in _SKIP:
            self._skip.append(tag)
            return
        if tag in _BLOCK:
            self._newline(2 if tag in ("p", "pre", "table", "blockquote") or tag[0] == "h" else 1)
        if tag == "br":
            self._emit("\n")
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._emit("#" * int(tag[1]) + " ")
        elif tag == "li":
            self._emit("- ")
        elif tag == "pre":
            self._pre += 1
        elif tag == "tr":
            self._cells = 0
        elif tag in ("td", "th"):
            if self._cells:
                self._emit(" | ")
            self._cells += 1
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self._links.append((href, len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = "".join(self.out[start:]).strip()
            if text and href and not href.startswith(("#", "javascript:", "mailto:")):
                self.out[start:] = [f"[{text}]({urljoin(self.base_url, href)})"]
                self._trailing_newlines = 0
        if tag in _BLOCK:
            self._newline(2 if tag in ("p", "pre", "table", "blockquote") or tag[0] == "h" else 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._skip:
            return
        if self._pre:
            self._emit(data)
            return
        text = re.sub(r"\s+", " ", data)
        if not self.out or self.out[-1].endswith(("\n", " ")):
            text = text.lstrip(" ")
        self._emit(text)


def html_to_text(html: str, base_url: str = "") -> tuple[str, str]:
    """(title, text) of an HTML document."""
    parser = _Extractor(base_url)
    parser.feed(html)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.out).split("\n")]
    text = "\n".join(line if line.strip() else "" for line in lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return re.sub(r"\s+", " ", parser.title).strip(), text
