"""Opaque page tokens and keyset pagination shared by every list endpoint.

A token carries the direction, the order and the key of the row it continues from, so a page is
stable while rows are inserted and the SDK's `page=` round-trip needs nothing else.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from core.errors import InvalidRequest

Order = Literal["asc", "desc"]
Direction = Literal["next", "prev"]


@dataclass(frozen=True, slots=True)
class Cursor:
    direction: Direction
    order: Order
    key: tuple[Any, ...]

    def encode(self) -> str:
        raw = orjson.dumps({"d": self.direction, "o": self.order, "k": list(self.key)})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, key_len: int) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = orjson.loads(raw)
            direction, order, key = data["d"], data["o"], tuple(data["k"])
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest("page: not a page token returned by this API") from exc
        if direction not in ("next", "prev") or order not in ("asc", "desc") or len(key) != key_len:
            raise InvalidRequest("page: not a page token returned by this API")
        return cls(direction, order, key)


INT64 = 2**63


def _check_key_types(key: tuple[Any, ...], columns: Sequence[ColumnElement[Any]]) -> None:
    # A token that decodes but was not made by us must not reach SQL with the wrong types.
    for value, column in zip(key, columns, strict=True):
        expected = column.type.python_type
        if expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise InvalidRequest("page: not a page token returned by this API")


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Any]
    next_page: str | None
    prev_page: str | None


async def keyset_page(
    conn: AsyncConnection,
    query: Select[Any],
    key_columns: Sequence[ColumnElement[Any]],
    *,
    order: Order,
    limit: int,
    page: str | None,
) -> Page:
    """Run `query` one page at a time, ordered by `key_columns` (which must be unique together)."""
    cursor = Cursor.decode(page, len(key_columns)) if page else None
    if cursor is not None:
        _check_key_types(cursor.key, key_columns)
    if cursor is not None:
        order = cursor.order
    backwards = cursor is not None and cursor.direction == "prev"
    ascending = (order == "asc") != backwards
    key = tuple_(*key_columns) if len(key_columns) > 1 else key_columns[0]
    if cursor is not None:
        bound = tuple_(*cursor.key) if len(key_columns) > 1 else cursor.key[0]
        query = query.where(key > bound if ascending else key < bound)
    ordering = [c.asc() if ascending else c.desc() for c in key_columns]
    rows = list((await conn.execute(query.order_by(*ordering).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]

    def token(direction: Direction, row: Any) -> str:
        return Cursor(direction, order, tuple(getattr(row, str(c.key)) for c in key_columns)).encode()

    if backwards:
        rows.reverse()
        prev_page = token("prev", rows[0]) if more and rows else None
        next_page = token("next", rows[-1]) if rows else None
    else:
        next_page = token("next", rows[-1]) if more and rows else None
        prev_page = token("prev", rows[0]) if cursor is not None and rows else None
    return Page(rows, next_page, prev_page)
