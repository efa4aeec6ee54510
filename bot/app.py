"""The aiohttp application: the /v1 API on top of the platform services."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from adapters.slack import SLACK, SLACK_EVENTS_PATH, SlackAdapter, SlackSettings
from bot.config import Settings
from core.api import events, resources, vaults
from core.api.http import EXTRA_PUBLIC_PATHS, KEYS, api_middleware, json_response
from core.harness.turn import HarnessSettings
from core.keys import DEFAULT_TENANT, count_keys, create_key, ensure_tenant
from core.platform import PLATFORM, Platform
from core.providers import Endpoint, ProviderConfig, Providers
from core.runtime import Runner, RunnerSettings
from core.runtime.sandboxes import HostedService, SandboxPool
from core.tools.web_search import SearchBackend
from vault.keyring import KeyringFile, KeyringSource, keyring_source

if TYPE_CHECKING:
    from adapters.github import GitHubAdapter
    from adapters.lark import LarkAdapter
    from adapters.linear import LinearAdapter

log = logging.getLogger("oma")


async def health(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def root(_request: web.Request) -> web.Response:
    return json_response({"name": "open-managed-agents", "api": "/v1"})


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def provider_config(settings: Settings) -> ProviderConfig:
    return ProviderConfig(
        anthropic=Endpoint(settings.anthropic_base_url, _secret(settings.anthropic_api_key)),
        openai=Endpoint(settings.openai_base_url, _secret(settings.openai_api_key)),
        openrouter=Endpoint(settings.openrouter_base_url, _secret(settings.openrouter_api_key)),
        compatible={
            name: Endpoint(endpoint.base_url, _secret(endpoint.api_key))
            for name, endpoint in settings.openai_compatible.items()
        },
    )


def search_backend(settings: Settings) -> SearchBackend | None:
    """web_search's backend: the SearXNG instance, else Brave Search, else none (not offered)."""
    if settings.web_search_url:
        key = settings.web_search_api_key.get_secret_value() if settings.web_search_api_key else None
        return SearchBackend("searxng", settings.web_search_url, key)
    if settings.brave_search_api_key:
        return SearchBackend("brave", settings.brave_search_url, settings.brave_search_api_key.get_secret_value())
    return None


def hosted_runtimes(settings: Settings) -> dict[str, HostedService]:
    """Where the hosted sandbox runtimes are reached, and with which credentials."""

    def fields(**values: str | SecretStr | None) -> dict[str, str]:
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in values.items() if v}

    return {
        "e2b": HostedService(
            settings.e2b_api_url,
            fields(api_key=settings.e2b_api_key, domain=settings.e2b_domain, sandbox_url=settings.e2b_sandbox_url),
            key_name="E2B_API_KEY",
        ),
        "daytona": HostedService(
            settings.daytona_api_url,
            fields(api_key=settings.daytona_api_key, target=settings.daytona_target),
            key_name="DAYTONA_API_KEY",
        ),
    }


def sandbox_pool(settings: Settings, platform: Platform) -> SandboxPool:
    """Sessions' sandboxes; repository tokens are opened from the vault."""
    root = settings.data_dir / "sandboxes"
    return SandboxPool(
        platform.db,
        runtime=settings.sandbox_runtime,
        root=root,
        secrets=platform.vaults,
        hosted=hosted_runtimes(settings),
    )


def build_runner(settings: Settings, platform: Platform, http: aiohttp.ClientSession) -> Runner:
    return Runner(
        db=platform.db,
        bus=platform.bus,
        providers=Providers(provider_config(settings)),
        sandboxes=sandbox_pool(settings, platform),
        harness_settings=HarnessSettings(
            max_retries=settings.model_max_retries,
            retry_base_seconds=settings.model_retry_base_seconds,
            tool_timeout_seconds=settings.tool_timeout_seconds,
            compact_at_tokens=settings.compact_at_tokens,
            web_fetch_allow_private=settings.web_fetch_allow_private,
            web_search=search_backend(settings),
        ),
        settings=RunnerSettings(concurrency=settings.runner_concurrency, lease_seconds=settings.lease_seconds),
        http=http,
        vaults=platform.vaults,
    )


def vault_keyring(settings: Settings) -> KeyringSource:
    """OMA_MASTER_KEY, or the keyring file in the data dir (created on first start)."""
    source = keyring_source(_secret(settings.master_key), settings.data_dir)
    if isinstance(source, KeyringFile) and not settings.database_url.startswith("sqlite"):
        log.warning(
            "OMA_MASTER_KEY is not set, so the vault's keys are in %s; every process sharing this "
            "PostgreSQL database needs the same keys: set OMA_MASTER_KEY in production",
            source.path,
        )
    return source


def mount_slack(app: web.Application, settings: Settings, platform: Platform) -> SlackAdapter | None:
    """The Slack adapter, when SLACK_BOT_TOKEN is set: events at POST /slack/events (with a
    signing secret) and/or Socket Mode (with an app token)."""
    if settings.slack_bot_token is None:
        return None
    slack = SlackAdapter(
        platform,
        SlackSettings(
            bot_token=settings.slack_bot_token.get_secret_value(),
            signing_secret=_secret(settings.slack_signing_secret),
            app_token=_secret(settings.slack_app_token),
            api_url=settings.slack_api_url,
            agent=settings.slack_agent,
            environment=settings.slack_environment,
            streaming=settings.slack_streaming,
            min_edit_seconds=settings.slack_min_edit_seconds,
        ),
    )
    app[SLACK] = slack
    if settings.slack_signing_secret is not None:
        app.router.add_post(SLACK_EVENTS_PATH, slack.handle)
    return slack


def mount_lark(app: web.Application, settings: Settings, platform: Platform) -> LarkAdapter | None:
    """The Lark/Feishu adapter, when LARK_APP_ID (or OMA_LARK_VAULT) is set: callbacks at POST
    /lark/events (with an encrypt key or verification token) and/or the long connection.
    lark-oapi takes seconds to import, so it is imported only here."""
    if settings.lark_app_id is None and settings.lark_vault is None:
        return None
    from adapters.lark import LARK, LARK_EVENTS_PATH, LarkAdapter, LarkSettings

    lark = LarkAdapter(
        platform,
        LarkSettings(
            app_id=settings.lark_app_id or "",
            app_secret=_secret(settings.lark_app_secret) or "",
            encrypt_key=_secret(settings.lark_encrypt_key),
            verification_token=_secret(settings.lark_verification_token),
            domain=settings.lark_domain,
            long_connection=settings.lark_long_connection,
            vault=settings.lark_vault,
            agent=settings.lark_agent,
            environment=settings.lark_environment,
            streaming=settings.lark_streaming,
            min_edit_seconds=settings.lark_min_edit_seconds,
        ),
    )
    app[LARK] = lark
    secrets = settings.lark_encrypt_key or settings.lark_verification_token
    if secrets is not None or (settings.lark_vault is not None and not settings.lark_long_connection):
        app.router.add_post(LARK_EVENTS_PATH, lark.handle)
    return lark


def mount_linear(app: web.Application, settings: Settings, platform: Platform) -> LinearAdapter | None:
    """The Linear adapter, when LINEAR_WEBHOOK_SECRET is set: webhooks at POST /linear/webhook,
    and the OAuth install at /linear/install with an OAuth app's client id and secret."""
    if settings.linear_webhook_secret is None:
        return None
    # Imported only when configured: the GraphQL client is not needed otherwise.
    from adapters.linear import LINEAR, LinearAdapter, LinearSettings

    linear = LinearAdapter(
        platform,
        LinearSettings(
            webhook_secret=settings.linear_webhook_secret.get_secret_value(),
            api_key=_secret(settings.linear_api_key),
            access_token=_secret(settings.linear_access_token),
            api_url=settings.linear_api_url,
            agent=settings.linear_agent,
            environment=settings.linear_environment,
            client_id=settings.linear_client_id,
            client_secret=_secret(settings.linear_client_secret),
            authorize_url=settings.linear_authorize_url,
            public_url=settings.public_url,
            session_url=settings.linear_session_url,
        ),
    )
    app[LINEAR] = linear
    app[EXTRA_PUBLIC_PATHS] = app.get(EXTRA_PUBLIC_PATHS, frozenset()) | linear.public_paths
    app.router.add_routes(linear.routes())
    return linear


def mount_github(app: web.Application, settings: Settings, platform: Platform) -> GitHubAdapter | None:
    """The GitHub adapter, when the GitHub App is configured (or OMA_GITHUB_VAULT names its
    credential): webhooks at POST /github/webhook."""
    configured = settings.github_app_id is not None and settings.github_private_key is not None
    if not configured and settings.github_vault is None:
        return None
    # Imported only when configured: PyGithub takes about a second to import, which every restart
    # (and so crash recovery) would otherwise pay.
    from adapters.github import GITHUB, GITHUB_WEBHOOK_PATH, GitHubAdapter, GitHubSettings

    own: list[SandboxPool] = []

    def sandboxes() -> SandboxPool:
        # The runner's pool when this process runs sessions; otherwise one of its own.
        if platform.runner is not None:
            return platform.runner.sandboxes
        if not own:
            own.append(sandbox_pool(settings, platform))
        return own[0]

    github = GitHubAdapter(
        platform,
        GitHubSettings(
            app_id=settings.github_app_id or "",
            private_key=_secret(settings.github_private_key) or "",
            webhook_secret=_secret(settings.github_webhook_secret) or "",
            vault=settings.github_vault,
            api_url=settings.github_api_url,
            bot_login=settings.github_bot_login or "",
            agent=settings.github_agent,
            environment=settings.github_environment,
            trigger_label=settings.github_trigger_label,
            min_edit_seconds=settings.github_min_edit_seconds,
            write_interval_seconds=settings.github_write_interval_seconds,
        ),
        sandboxes=sandboxes,
    )
    app[GITHUB] = github
    app.router.add_post(GITHUB_WEBHOOK_PATH, github.handle)
    return github


def create_app(settings: Settings, *, announce_first_key: bool = False) -> web.Application:
    app = web.Application(middlewares=[api_middleware], client_max_size=settings.max_body_bytes)
    platform = Platform.build(
        settings.database_url,
        bootstrap_key=settings.api_key.get_secret_value() if settings.api_key else None,
        stream_ping_seconds=settings.stream_ping_seconds,
        keyring=vault_keyring(settings),
    )
    app[PLATFORM] = platform
    app[KEYS] = platform.keys
    app.router.add_get("/", root)
    app.router.add_get("/health", health)
    app.router.add_routes(resources.routes)
    app.router.add_routes(events.routes)
    app.router.add_routes(vaults.routes)
    slack = mount_slack(app, settings, platform)
    github = mount_github(app, settings, platform)
    linear = mount_linear(app, settings, platform)
    lark = mount_lark(app, settings, platform)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await ensure_tenant(platform.db, DEFAULT_TENANT)
        # Seals secrets stored before the vault; fails fast on a wrong master key.
        await platform.vaults.startup()
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
        if slack is not None:
            await slack.start()
        if github is not None:
            await github.start()
        if linear is not None:
            await linear.start()
        if lark is not None:
            await lark.start()
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        runner = None
        if settings.runner_enabled:
            runner = platform.runner = build_runner(settings, platform, http)
            await runner.start()
        yield
        if slack is not None:
            await slack.stop()
        if github is not None:
            await github.stop()
        if linear is not None:
            await linear.stop()
        if lark is not None:
            await lark.stop()
        if runner is not None:
            await runner.stop()
            await runner.sandboxes.close()
            await runner.providers.close()
        await http.close()
        await platform.close()

    async def on_shutdown(_app: web.Application) -> None:
        platform.begin_shutdown()

    app.on_shutdown.append(on_shutdown)
    app.cleanup_ctx.append(lifecycle)
    return app
