"""`oma`: serve the platform, run migrations, mint API keys, manage the vault's keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bot.config import Settings
from core.errors import OMAError
from core.migrate import upgrade

if TYPE_CHECKING:
    from core.vaults import VaultStore
    from vault.keyring import KeyringSource, SecretBox

VaultWork = Callable[["VaultStore", "SecretBox", "KeyringSource"], Awaitable[None]]


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
    try:
        app = create_app(settings, announce_first_key=True)
        print(f"oma: serving the /v1 API on http://{host}:{port} (database: {_safe_url(settings.database_url)})")
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    except OMAError as exc:  # a bad master key or keyring file: say what to fix, no stack trace
        sys.exit(f"oma: {exc}")


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


def _vault_run(settings: Settings, work: VaultWork) -> None:
    """Run `work(store, box, source)` against the database with the configured keyring."""
    from core.db import Database
    from core.vaults import VaultStore
    from vault.keyring import SecretBox, keyring_source

    _migrate(settings)
    master = settings.master_key.get_secret_value() if settings.master_key else None

    async def run() -> None:
        db = Database(settings.database_url)
        try:
            source = keyring_source(master, settings.data_dir)
            box = SecretBox(source)
            await work(VaultStore(db, box), box, source)
        finally:
            await db.close()

    try:
        asyncio.run(run())
    except OMAError as exc:
        sys.exit(f"oma: {exc}")


def cmd_vault_rotate(settings: Settings, _args: argparse.Namespace) -> None:
    from vault.keyring import KeyringFile

    async def work(store: VaultStore, box: SecretBox, source: KeyringSource) -> None:
        if isinstance(source, KeyringFile):
            keyring = source.current().with_new_active()
            source.save(keyring)
            print(f"oma: added vault key {keyring.active} to {source.path}; it seals from now on")
        count = await store.reencrypt()
        active = box.active_key_id
        print(f"oma: re-encrypted {count} secret(s) with vault key {active}")
        old = [k for k in box.key_ids() if k != active]
        if old:
            print(f"oma: older keys still open anything sealed with them until removed: {', '.join(old)}")
            print("     (`oma vault keys` shows what uses each; `oma vault remove-key KEY_ID` removes one)")
        elif not isinstance(source, KeyringFile):
            print(
                "oma: OMA_MASTER_KEY holds one key. To rotate it: `oma vault generate-key`, set "
                "OMA_MASTER_KEY=<new>,<old> on every process, restart them, run this command again, "
                "then drop <old>."
            )

    _vault_run(settings, work)


def cmd_vault_keys(settings: Settings, _args: argparse.Namespace) -> None:
    async def work(store: VaultStore, _box: SecretBox, source: KeyringSource) -> None:
        keyring = source.current()
        usage = {u.key_id: u.secrets for u in await store.key_usage()}
        print(f"vault keys ({source.description}):")
        for key in keyring.keys:
            active = " (active)" if key.id == keyring.active else ""
            created = f", created {key.created_at}" if key.created_at else ""
            print(f"  {key.id}{active}: seals {usage.pop(key.id, 0)} secret(s){created}")
        for key_id, count in usage.items():
            what = "never sealed (sealed at the next start)" if key_id is None else f"key {key_id} is MISSING"
            print(f"  {count} secret(s): {what}")

    _vault_run(settings, work)


def cmd_vault_remove_key(settings: Settings, args: argparse.Namespace) -> None:
    from vault.keyring import KeyringFile

    async def work(store: VaultStore, _box: SecretBox, source: KeyringSource) -> None:
        keyring = source.current()
        if keyring.get(args.key_id) is None:
            sys.exit(f"oma: the keyring has no key {args.key_id} (it has {', '.join(keyring.ids)})")
        if args.key_id == keyring.active:
            sys.exit(f"oma: {args.key_id} is the active key; rotate first (`oma vault rotate-key`)")
        used = sum(u.secrets for u in await store.key_usage() if u.key_id == args.key_id)
        if used:
            sys.exit(f"oma: {used} secret(s) are still sealed with {args.key_id}; run `oma vault rotate-key` first")
        if not isinstance(source, KeyringFile):
            sys.exit(f"oma: no secret uses {args.key_id} any more; remove it from OMA_MASTER_KEY and restart")
        source.save(keyring.without(args.key_id))
        print(f"oma: removed vault key {args.key_id} from {source.path}")

    _vault_run(settings, work)


def cmd_vault_generate_key(_settings: Settings, _args: argparse.Namespace) -> None:
    from vault.keyring import encode_key, new_key

    print(encode_key(new_key()))


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
    vault = sub.add_parser("vault", help="manage the vault's encryption keys")
    vault_sub = vault.add_subparsers(dest="vault_command", required=True)
    rotate = vault_sub.add_parser(
        "rotate-key", help="add a new key (keyring file) and re-encrypt every stored secret with the active key"
    )
    rotate.set_defaults(func=cmd_vault_rotate)
    vault_sub.add_parser("keys", help="list the vault keys and how many secrets each seals").set_defaults(
        func=cmd_vault_keys
    )
    remove = vault_sub.add_parser("remove-key", help="remove a key that no secret uses any more")
    remove.add_argument("key_id")
    remove.set_defaults(func=cmd_vault_remove_key)
    vault_sub.add_parser("generate-key", help="print a new random key for OMA_MASTER_KEY").set_defaults(
        func=cmd_vault_generate_key
    )
    args = parser.parse_args(argv)
    settings = _settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.func(settings, args)


if __name__ == "__main__":
    main()
