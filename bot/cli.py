"""`oma`: serve the platform, run migrations, mint API keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from bot.config import Settings
from core.migrate import upgrade


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  OMA_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        sys.exit("oma: invalid settings:\n" + "\n".join(lines))


def _migrate(settings: Settings) -> None:
    try:
        upgrade(settings.database_url)
    except Exception as exc:  # a bad URL or an unreachable database: say which, no stack trace
        sys.exit(f"oma: cannot migrate the database ({type(exc).__name__}: {exc})")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    from aiohttp import web

    from bot.app import create_app

    _migrate(settings)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    app = create_app(settings, announce_first_key=True)
    print(f"oma: serving the /v1 API on http://{host}:{port} (database: {_safe_url(settings.database_url)})")
    web.run_app(app, host=host, port=port, print=None, access_log=None)


def _safe_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}://{rest}"


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> None:
    _migrate(settings)
    print("oma: database is at the latest schema")


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> None:
    from core.db import Database
    from core.keys import DEFAULT_TENANT, create_key, create_tenant

    _migrate(settings)

    async def run() -> str:
        db = Database(settings.database_url)
        try:
            tenant_id = await create_tenant(db, args.tenant) if args.tenant else DEFAULT_TENANT
            minted = await create_key(db, args.name, tenant_id)
            return f"{minted.key}\n# key {minted.id} for tenant {minted.tenant_id}; it is not shown again"
        finally:
            await db.close()

    print(asyncio.run(run()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="oma", description="Open Managed Agents")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server (applies migrations first)")
    serve.add_argument("--host", default=None, help="bind address (default: OMA_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: OMA_PORT or 8787)")
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(func=cmd_migrate)
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="mint a new API key and print it once")
    create.add_argument("--name", required=True, help="a label for the key")
    create.add_argument("--tenant", default=None, help="create the key for a new tenant with this name")
    create.set_defaults(func=cmd_keys_create)
    args = parser.parse_args(argv)
    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.func(settings, args)


if __name__ == "__main__":
    main()
