"""The aiohttp application: the /v1 API on top of the platform services."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from bot.config import Settings
from core.api import events, resources
from core.api.http import KEYS, api_middleware, json_response
from core.keys import DEFAULT_TENANT, count_keys, create_key, ensure_tenant
from core.platform import PLATFORM, Platform

log = logging.getLogger("oma")


async def health(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def root(_request: web.Request) -> web.Response:
    return json_response({"name": "open-managed-agents", "api": "/v1"})


def create_app(settings: Settings, *, announce_first_key: bool = False) -> web.Application:
    app = web.Application(middlewares=[api_middleware], client_max_size=settings.max_body_bytes)
    platform = Platform.build(
        settings.database_url,
        bootstrap_key=settings.api_key.get_secret_value() if settings.api_key else None,
        stream_ping_seconds=settings.stream_ping_seconds,
    )
    app[PLATFORM] = platform
    app[KEYS] = platform.keys
    app.router.add_get("/", root)
    app.router.add_get("/health", health)
    app.router.add_routes(resources.routes)
    app.router.add_routes(events.routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await ensure_tenant(platform.db, DEFAULT_TENANT)
        if announce_first_key and settings.api_key is None and await count_keys(platform.db) == 0:
            minted = await create_key(platform.db, "first key")
            # Shown once, on the console of whoever started the server; never logged.
            sys.stdout.write(
                "\nNo API key existed, so one was created. Keep it; it is not shown again:\n\n"
                f"    {minted.key}\n\n"
                "Use it as ANTHROPIC_API_KEY (or `Authorization: Bearer ...`).\n"
                "More keys: `oma keys create --name NAME`.\n\n"
            )
            sys.stdout.flush()
        await platform.start()
        yield
        await platform.close()

    app.cleanup_ctx.append(lifecycle)
    return app
