"""HTTP plumbing shared by every route: request ids, the error envelope, auth, JSON in and out,
and the SDK's query-string conventions (`types[]=`, `created_at[gte]=`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, ValidationError

from core.errors import (
    APIError,
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from core.ids import parse_rfc3339_us
from core.keys import KeyResolver

log = logging.getLogger("oma.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

REQUEST_ID = web.RequestKey("request_id", str)
TENANT = web.RequestKey("tenant_id", str)
KEYS: web.AppKey[KeyResolver] = web.AppKey("keys", KeyResolver)
# Webhooks authenticate with the platform's signature instead of an API key.
PUBLIC_PATHS = frozenset({"/", "/health", "/healthz", "/slack/events", "/lark/events", "/github/webhook"})

# More such paths, registered by whatever mounts them (a workspace adapter's webhook and OAuth pages).
EXTRA_PUBLIC_PATHS: web.AppKey[frozenset[str]] = web.AppKey("extra_public_paths", frozenset)


def new_request_id() -> str:
    # Unique, not secret: a fast PRNG is enough (and avoids a syscall per request).
    return f"req_{random.getrandbits(96):024x}"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def error_response(err: APIError, request_id: str) -> web.Response:
    headers = {"request-id": request_id, **err.headers}
    return json_response(err.body(request_id), status=err.status, headers=headers)


def tenant(request: web.Request) -> str:
    return request[TENANT]


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        if request.path not in PUBLIC_PATHS and request.path not in request.app.get(EXTRA_PUBLIC_PATHS, ()):
            key = _presented_key(request)
            if key is None:
                raise AuthenticationFailed(
                    "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
                )
            tenant_id = await request.app[KEYS].tenant_for(key)
            if tenant_id is None:
                raise AuthenticationFailed("invalid API key")
            request[TENANT] = tenant_id
        response = await handler(request)
    except APIError as err:
        return error_response(err, request_id)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("request body is too large"), request_id)
    except web.HTTPNotFound:
        return error_response(
            NotFound(f"no route for {request.method} {request.path}: this server does not implement it"), request_id
        )
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            MethodNotAllowed(
                f"method {request.method} is not allowed on {request.path}; use {allowed}",
                headers={"Allow": allowed},
            ),
            request_id,
        )
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return error_response(InternalError("internal server error"), request_id)
    if not response.prepared:
        response.headers["request-id"] = request_id
    return response


# --- bodies ------------------------------------------------------------------------------------


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "~"))))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc


def _find_nul(value: Any, path: str) -> str | None:
    """The path of the first string holding U+0000 (PostgreSQL text cannot store it)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where
            found = _find_nul(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_nul(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


async def parse_body(request: web.Request, model: type[M], *, allow_empty: bool = False) -> M:
    data = await read_json(request, allow_empty=allow_empty)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    nul = _find_nul(data, "")
    if nul is not None:
        raise InvalidRequest(f"{nul or 'body'}: text must not contain NUL characters (\\u0000)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(format_validation_error(exc)) from exc


async def expect_empty_body(request: web.Request) -> None:
    """Archive and similar actions: the SDK posts an empty body; `{}` is fine too."""
    data = await read_json(request, allow_empty=True)
    if data != {}:
        raise InvalidRequest("this endpoint takes no request body")


# --- query strings -----------------------------------------------------------------------------


def q_str(query: MultiMapping[str], name: str) -> str | None:
    value = query.get(name)
    return value if value not in (None, "") else None


def q_int(query: MultiMapping[str], name: str, *, default: int | None, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name}: must be between {lo} and {hi}")
    return value


def q_bool(query: MultiMapping[str], name: str, default: bool = False) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise InvalidRequest(f"{name}: expected true or false, got {raw!r}")


def q_list(query: MultiMapping[str], name: str) -> list[str]:
    """`types[]=a&types[]=b` as the SDK sends it; `types=a,b` accepted too."""
    values = list(query.getall(f"{name}[]", []))
    for raw in query.getall(name, []):
        values.extend(v for v in raw.split(",") if v)
    return values


def q_order(query: MultiMapping[str], default: str) -> str:
    value = query.get("order", default)
    if value not in ("asc", "desc"):
        raise InvalidRequest(f"order: must be 'asc' or 'desc', got {value!r}")
    return value


def q_created(query: MultiMapping[str], allowed: tuple[str, ...] = ("gt", "gte", "lt", "lte")) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in allowed:
        raw = query.get(f"created_at[{op}]")
        if raw is None:
            raw = query.get(f"created_at_{op}")
        if raw:
            try:
                out[op] = parse_rfc3339_us(raw)
            except ValueError:
                raise InvalidRequest(f"created_at[{op}]: not an RFC 3339 timestamp: {raw!r}") from None
    return out


def page_body(data: list[Any], next_page: str | None, prev_page: str | None = None, *, bidi: bool = False) -> Any:
    body: dict[str, Any] = {"data": data, "next_page": next_page}
    if bidi:
        body["prev_page"] = prev_page
    return body
