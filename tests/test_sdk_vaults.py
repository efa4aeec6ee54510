"""Vaults and credentials driven by the official anthropic SDK, every response checked strictly
against the SDK's own types; secrets are write-only."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import anthropic
import pytest
from anthropic._models import BaseModel as SDKModel
from anthropic.pagination import SyncPageCursor
from anthropic.types.beta.beta_managed_agents_deleted_vault import BetaManagedAgentsDeletedVault
from anthropic.types.beta.beta_managed_agents_session import BetaManagedAgentsSession
from anthropic.types.beta.beta_managed_agents_vault import BetaManagedAgentsVault
from anthropic.types.beta.vaults import (
    BetaManagedAgentsCredential,
    BetaManagedAgentsCredentialValidation,
    BetaManagedAgentsDeletedCredential,
    BetaManagedAgentsEnvironmentVariableAuthResponse,
    BetaManagedAgentsMCPOAuthAuthResponse,
    BetaManagedAgentsStaticBearerAuthResponse,
)
from pydantic import Field

from core.keys import create_key, create_tenant
from tests.servers import ServerThread
from tests.strict import check

# --- this platform's credential kinds, as documented (README: Secrets and bring-your-own-key) ---


class AnthropicKeyAuth(SDKModel):
    type: Literal["anthropic_api_key"]
    base_url: str | None = None


class OpenAIKeyAuth(SDKModel):
    type: Literal["openai_api_key"]
    base_url: str | None = None


class OpenAICompatibleAuth(SDKModel):
    type: Literal["openai_compatible"]
    provider: str
    base_url: str


class SlackAuth(SDKModel):
    type: Literal["slack"]
    team_id: str | None = None


class GitHubAppAuth(SDKModel):
    type: Literal["github_app"]
    app_id: str
    installation_id: str | None = None


class LinearAuth(SDKModel):
    type: Literal["linear"]
    organization_id: str | None = None


class LarkAuth(SDKModel):
    type: Literal["lark"]
    app_id: str
    domain: Literal["lark", "feishu"]


ExtendedAuth = Annotated[
    BetaManagedAgentsMCPOAuthAuthResponse
    | BetaManagedAgentsStaticBearerAuthResponse
    | BetaManagedAgentsEnvironmentVariableAuthResponse
    | AnthropicKeyAuth
    | OpenAIKeyAuth
    | OpenAICompatibleAuth
    | SlackAuth
    | GitHubAppAuth
    | LinearAuth
    | LarkAuth,
    Field(discriminator="type"),
]


class ExtendedCredential(BetaManagedAgentsCredential):
    """The SDK's credential with the `auth` union widened by this platform's kinds."""

    auth: ExtendedAuth  # type: ignore[assignment]


def token(prefix: str) -> str:
    return prefix + secrets.token_hex(20)


def future(days: int = 1) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.fixture
def vault_id(client: anthropic.Anthropic) -> str:
    return client.beta.vaults.create(display_name="Alice").id


def error_of(call: Callable[[], Any], kind: type[anthropic.APIStatusError]) -> anthropic.APIStatusError:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


def message(err: anthropic.APIStatusError) -> str:
    return str(err.body["error"]["message"])  # type: ignore[index]


# --- vaults ------------------------------------------------------------------------------------


def test_vault_create_retrieve_update_and_list(client: anthropic.Anthropic) -> None:
    raw = client.beta.vaults.with_raw_response.create(display_name="Alice", metadata={"external_user_id": "usr_1"})
    vault = check(BetaManagedAgentsVault, raw.http_response.json())
    assert vault.id.startswith("vlt_") and vault.type == "vault"
    assert vault.display_name == "Alice" and vault.metadata == {"external_user_id": "usr_1"}
    assert vault.archived_at is None and vault.created_at == vault.updated_at
    assert raw.parse().id == vault.id

    got = check(BetaManagedAgentsVault, client.beta.vaults.with_raw_response.retrieve(vault.id).http_response.json())
    assert got == vault
    raw = client.beta.vaults.with_raw_response.update(
        vault.id, display_name="Alice B.", metadata={"external_user_id": None, "tier": "gold"}
    )
    updated = check(BetaManagedAgentsVault, raw.http_response.json())
    assert updated.display_name == "Alice B." and updated.metadata == {"tier": "gold"}
    assert updated.updated_at > vault.updated_at
    err = error_of(lambda: client.beta.vaults.update(vault.id, display_name=None), anthropic.BadRequestError)
    assert "display_name cannot be cleared" in err.message

    others = [client.beta.vaults.create(display_name=f"v{i}").id for i in range(2)]
    raw = client.beta.vaults.with_raw_response.list(limit=2)
    first = check(SyncPageCursor[BetaManagedAgentsVault], raw.http_response.json())
    assert [v.id for v in first.data] == others[::-1] and first.next_page
    assert [v.id for v in client.beta.vaults.list(limit=2)] == [*others[::-1], vault.id]


def test_vault_archive_and_delete(client: anthropic.Anthropic) -> None:
    vault = client.beta.vaults.create(display_name="Bob")
    credential = client.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "token": token("tok_"), "mcp_server_url": "https://mcp.example.com"}
    )
    raw = client.beta.vaults.with_raw_response.archive(vault.id)
    archived = check(BetaManagedAgentsVault, raw.http_response.json())
    assert archived.archived_at is not None
    assert client.beta.vaults.archive(vault.id).archived_at == archived.archived_at  # idempotent
    # Archiving the vault archives its credentials (and purges their secrets).
    assert client.beta.vaults.credentials.retrieve(credential.id, vault_id=vault.id).archived_at is not None
    assert vault.id not in [v.id for v in client.beta.vaults.list()]
    assert vault.id in [v.id for v in client.beta.vaults.list(include_archived=True)]
    err = error_of(lambda: client.beta.vaults.update(vault.id, display_name="x"), anthropic.BadRequestError)
    assert "archived" in err.message
    err = error_of(
        lambda: client.beta.vaults.credentials.create(
            vault.id, auth={"type": "static_bearer", "token": "t", "mcp_server_url": "https://other.example.com"}
        ),
        anthropic.BadRequestError,
    )
    assert "archived" in err.message

    raw_deleted = client.beta.vaults.with_raw_response.delete(vault.id)
    deleted = check(BetaManagedAgentsDeletedVault, raw_deleted.http_response.json())
    assert deleted.id == vault.id and deleted.type == "vault_deleted"
    err = error_of(lambda: client.beta.vaults.retrieve(vault.id), anthropic.NotFoundError)
    assert err.body["error"]["details"]["error_code"] == "vault_not_found"  # type: ignore[index]
    error_of(lambda: client.beta.vaults.credentials.list(vault.id), anthropic.NotFoundError)


# --- the SDK's credential kinds ------------------------------------------------------------------


def test_static_bearer_mcp_oauth_and_environment_variable_credentials(
    client: anthropic.Anthropic, vault_id: str
) -> None:
    secret_values = [token("bearer_"), token("access_"), token("refresh_"), token("client_"), token("envval_")]
    bearer, access, refresh, client_secret, env_value = secret_values
    creds = client.beta.vaults.credentials
    raw = creds.with_raw_response.create(
        vault_id,
        auth={"type": "static_bearer", "token": bearer, "mcp_server_url": "https://mcp.linear.app/mcp"},
        display_name="Linear MCP",
        metadata={"team": "eng"},
    )
    static = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert static.id.startswith("vcrd_") and static.type == "vault_credential" and static.vault_id == vault_id
    assert static.auth.type == "static_bearer" and static.auth.mcp_server_url == "https://mcp.linear.app/mcp"
    assert static.display_name == "Linear MCP" and static.metadata == {"team": "eng"}

    expires = future()
    raw = creds.with_raw_response.create(
        vault_id,
        auth={
            "type": "mcp_oauth",
            "access_token": access,
            "mcp_server_url": "https://mcp.notion.com/mcp",
            "expires_at": expires,
            "refresh": {
                "client_id": "client-123",
                "refresh_token": refresh,
                "token_endpoint": "https://api.notion.com/v1/oauth/token",
                "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": client_secret},
                "scope": "read write",
            },
        },
    )
    oauth = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert isinstance(oauth.auth, BetaManagedAgentsMCPOAuthAuthResponse)
    assert oauth.auth.expires_at == datetime.fromisoformat(expires)
    assert oauth.auth.refresh is not None and oauth.auth.refresh.client_id == "client-123"
    assert oauth.auth.refresh.token_endpoint_auth.type == "client_secret_basic"
    assert oauth.auth.refresh.scope == "read write" and oauth.display_name is None

    raw = creds.with_raw_response.create(
        vault_id,
        auth={
            "type": "environment_variable",
            "secret_name": "STRIPE_KEY",
            "secret_value": env_value,
            "networking": {"type": "limited", "allowed_hosts": ["api.stripe.com", "*.stripe.com"]},
        },
    )
    env = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert isinstance(env.auth, BetaManagedAgentsEnvironmentVariableAuthResponse)
    assert env.auth.secret_name == "STRIPE_KEY" and env.auth.networking.type == "limited"
    assert env.auth.networking.allowed_hosts == ["api.stripe.com", "*.stripe.com"]  # type: ignore[union-attr]
    assert env.auth.injection_location.header and env.auth.injection_location.body

    raw = creds.with_raw_response.list(vault_id, limit=2)
    page = check(SyncPageCursor[BetaManagedAgentsCredential], raw.http_response.json())
    assert [c.id for c in page.data] == [env.id, oauth.id] and page.next_page
    assert [c.id for c in creds.list(vault_id, limit=2)] == [env.id, oauth.id, static.id]
    got = creds.with_raw_response.retrieve(oauth.id, vault_id=vault_id)
    assert check(BetaManagedAgentsCredential, got.http_response.json()) == oauth

    # Updates: new secrets in, shown fields patched, nothing secret out.
    new_bearer, new_access, new_refresh, new_client = (token(p) for p in ("b2_", "a2_", "r2_", "c2_"))
    raw = creds.with_raw_response.update(
        static.id,
        vault_id=vault_id,
        auth={"type": "static_bearer", "token": new_bearer},
        display_name="Linear",
        metadata={"team": None, "owner": "ops"},
    )
    static2 = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert static2.display_name == "Linear" and static2.metadata == {"owner": "ops"}
    assert static2.auth == static.auth and static2.updated_at > static.updated_at
    raw = creds.with_raw_response.update(
        oauth.id,
        vault_id=vault_id,
        auth={
            "type": "mcp_oauth",
            "access_token": new_access,
            "refresh": {
                "refresh_token": new_refresh,
                "scope": "",
                "token_endpoint_auth": {"type": "client_secret_post", "client_secret": new_client},
            },
        },
    )
    oauth2 = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert isinstance(oauth2.auth, BetaManagedAgentsMCPOAuthAuthResponse) and oauth2.auth.refresh is not None
    # The stored method stays (as the API documents); an empty scope clears it.
    assert oauth2.auth.refresh.token_endpoint_auth.type == "client_secret_basic"
    assert oauth2.auth.refresh.scope is None and oauth2.auth.expires_at == oauth.auth.expires_at
    raw = creds.with_raw_response.update(
        env.id,
        vault_id=vault_id,
        auth={
            "type": "environment_variable",
            "networking": {"type": "unrestricted"},
            "injection_location": {"body": False},
        },
    )
    env2 = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert isinstance(env2.auth, BetaManagedAgentsEnvironmentVariableAuthResponse)
    assert env2.auth.networking.type == "unrestricted"
    assert (env2.auth.injection_location.body, env2.auth.injection_location.header) == (False, True)
    err = error_of(
        lambda: creds.update(
            env.id, vault_id=vault_id, auth={"type": "environment_variable", "injection_location": {"header": False}}
        ),
        anthropic.BadRequestError,
    )
    assert "at least one of body and header" in err.message

    err = error_of(
        lambda: creds.update(static.id, vault_id=vault_id, auth={"type": "mcp_oauth", "access_token": "x"}),
        anthropic.BadRequestError,
    )
    assert "type cannot change" in err.message
    err = error_of(
        lambda: creds.update(
            static.id,
            vault_id=vault_id,
            auth={"type": "static_bearer", "mcp_server_url": "https://elsewhere.example.com"},  # type: ignore[typeddict-unknown-key]
        ),
        anthropic.BadRequestError,
    )
    assert "auth.static_bearer.mcp_server_url: unknown field" in err.message

    raw = creds.with_raw_response.archive(static.id, vault_id=vault_id)
    archived = check(BetaManagedAgentsCredential, raw.http_response.json())
    assert archived.archived_at is not None and archived.auth == static.auth
    assert static.id not in [c.id for c in creds.list(vault_id)]
    assert static.id in [c.id for c in creds.list(vault_id, include_archived=True)]
    err = error_of(lambda: creds.update(static.id, vault_id=vault_id, display_name="again"), anthropic.BadRequestError)
    assert "archived" in err.message

    raw = creds.with_raw_response.delete(env.id, vault_id=vault_id)
    deleted = check(BetaManagedAgentsDeletedCredential, raw.http_response.json())
    assert deleted.id == env.id and deleted.type == "vault_credential_deleted"
    err = error_of(lambda: creds.retrieve(env.id, vault_id=vault_id), anthropic.NotFoundError)
    assert err.body["error"]["details"]["error_code"] == "credential_not_found"  # type: ignore[index]

    everything = " ".join(
        [
            *(c.model_dump_json() for c in creds.list(vault_id, include_archived=True)),
            client.beta.vaults.with_raw_response.retrieve(vault_id).http_response.text,
        ]
    )
    for value in [*secret_values, new_bearer, new_access, new_refresh, new_client]:
        assert value not in everything


def test_mcp_oauth_validate(client: anthropic.Anthropic, vault_id: str) -> None:
    creds = client.beta.vaults.credentials
    oauth = creds.create(
        vault_id,
        auth={"type": "mcp_oauth", "access_token": token("a_"), "mcp_server_url": "https://mcp.example.com/sse"},
    )
    raw = creds.with_raw_response.mcp_oauth_validate(oauth.id, vault_id=vault_id)
    result = check(BetaManagedAgentsCredentialValidation, raw.http_response.json())
    assert result.type == "vault_credential_validation" and result.credential_id == oauth.id
    assert result.vault_id == vault_id and result.status == "unknown" and result.has_refresh_token is False
    bearer = creds.create(
        vault_id, auth={"type": "static_bearer", "token": "t", "mcp_server_url": "https://mcp2.example.com"}
    )
    err = error_of(lambda: creds.mcp_oauth_validate(bearer.id, vault_id=vault_id), anthropic.BadRequestError)
    assert "only mcp_oauth credentials" in err.message


# --- this platform's kinds ---------------------------------------------------------------------


def test_model_provider_and_workspace_credentials(client: anthropic.Anthropic, vault_id: str) -> None:
    creds = client.beta.vaults.credentials
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + secrets.token_hex(64) + "\n-----END RSA PRIVATE KEY-----\n"
    kinds: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"type": "anthropic_api_key", "api_key": token("sk-ant-")}, {"base_url": None}),
        (
            {"type": "openai_api_key", "api_key": token("sk-"), "base_url": "https://eu.api.openai.com/v1"},
            {"base_url": "https://eu.api.openai.com/v1"},
        ),
        (
            {
                "type": "openai_compatible",
                "provider": "together",
                "base_url": "https://api.together.xyz/v1",
                "api_key": token("tg-"),
            },
            {"provider": "together", "base_url": "https://api.together.xyz/v1"},
        ),
        (
            {
                "type": "slack",
                "bot_token": token("xoxb-"),
                "signing_secret": token("sig"),
                "app_token": token("xapp-"),
                "team_id": "T0123",
            },
            {"team_id": "T0123"},
        ),
        (
            {
                "type": "github_app",
                "app_id": "123456",
                "private_key": pem,
                "webhook_secret": token("whs"),
                "installation_id": "987",
            },
            {"app_id": "123456", "installation_id": "987"},
        ),
        ({"type": "linear", "access_token": token("lin_api_"), "webhook_secret": token("lws")}, {}),
        (
            {"type": "lark", "app_id": "cli_a1b2", "app_secret": token("ls"), "encrypt_key": token("ek")},
            {"app_id": "cli_a1b2", "domain": "lark"},
        ),
    ]
    given: list[str] = []
    for auth, shown in kinds:
        given += [v for k, v in auth.items() if k not in ("type", *shown)]
        raw = creds.with_raw_response.create(vault_id, auth=auth)  # type: ignore[arg-type]
        credential = check(ExtendedCredential, raw.http_response.json())
        assert credential.auth.type == auth["type"]
        for name, value in shown.items():
            assert getattr(credential.auth, name) == value
        # The SDK parses the kinds it doesn't know leniently: every field is still there.
        parsed = raw.parse()
        assert parsed.id == credential.id and parsed.auth.type == auth["type"]
        for name, value in shown.items():
            assert getattr(parsed.auth, name) == value

    anthropic_key = next(c for c in creds.list(vault_id) if c.auth.type == "anthropic_api_key")
    raw = creds.with_raw_response.update(
        anthropic_key.id,
        vault_id=vault_id,
        auth={"type": "anthropic_api_key", "base_url": "https://proxy.example.com"},  # type: ignore[arg-type]
    )
    assert check(ExtendedCredential, raw.http_response.json()).auth.base_url == "https://proxy.example.com"  # type: ignore[union-attr]
    raw = creds.with_raw_response.update(
        anthropic_key.id,
        vault_id=vault_id,
        auth={"type": "anthropic_api_key", "api_key": token("sk-ant-"), "base_url": ""},  # type: ignore[arg-type]
    )
    assert check(ExtendedCredential, raw.http_response.json()).auth.base_url is None  # type: ignore[union-attr]
    github = next(c for c in creds.list(vault_id) if c.auth.type == "github_app")
    raw = creds.with_raw_response.update(
        github.id,
        vault_id=vault_id,
        auth={"type": "github_app", "installation_id": "555", "private_key": pem + "\n"},  # type: ignore[arg-type]
    )
    assert check(ExtendedCredential, raw.http_response.json()).auth.installation_id == "555"  # type: ignore[union-attr]

    listed = creds.with_raw_response.list(vault_id, limit=100)
    check(SyncPageCursor[ExtendedCredential], listed.http_response.json())
    for value in given:
        assert value not in listed.http_response.text


def test_one_active_credential_per_server_name_or_provider(client: anthropic.Anthropic, vault_id: str) -> None:
    creds = client.beta.vaults.credentials
    url = "https://mcp.example.com/mcp"
    first = creds.create(vault_id, auth={"type": "static_bearer", "token": "a", "mcp_server_url": url})
    err = error_of(
        lambda: creds.create(vault_id, auth={"type": "mcp_oauth", "access_token": "b", "mcp_server_url": url}),
        anthropic.ConflictError,
    )
    assert first.id in err.message and err.response.headers["x-should-retry"] == "false"
    creds.archive(first.id, vault_id=vault_id)
    creds.create(vault_id, auth={"type": "mcp_oauth", "access_token": "b", "mcp_server_url": url})
    creds.create(vault_id, auth={"type": "anthropic_api_key", "api_key": "k1"})  # type: ignore[arg-type]
    error_of(
        lambda: creds.create(vault_id, auth={"type": "anthropic_api_key", "api_key": "k2"}),  # type: ignore[arg-type]
        anthropic.ConflictError,
    )
    other = client.beta.vaults.create(display_name="other").id
    creds.create(other, auth={"type": "anthropic_api_key", "api_key": "k2"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            {"type": "static_bearer", "mcp_server_url": "https://x.example.com"},
            "auth.static_bearer.token: Field required",
        ),
        ({"type": "static_bearer", "token": "t", "mcp_server_url": "ftp://x.example.com"}, "http:// or https://"),
        ({"type": "password", "password": "hunter2"}, "does not match any of the expected tags"),
        (
            {
                "type": "mcp_oauth",
                "access_token": "t",
                "mcp_server_url": "https://x.example.com",
                "expires_at": "2001-01-01T00:00:00Z",
            },
            "must be in the future",
        ),
        (
            {
                "type": "environment_variable",
                "secret_name": "API_KEY",
                "secret_value": "v",
                "networking": {"type": "limited", "allowed_hosts": ["https://api.example.com/v1"]},
            },
            "URLs, ports, paths and IPv6 addresses are not accepted",
        ),
        (
            {
                "type": "environment_variable",
                "secret_name": "9BAD",
                "secret_value": "v",
                "networking": {"type": "unrestricted"},
            },
            "secret_name",
        ),
        (
            {"type": "openai_compatible", "provider": "anthropic", "base_url": "https://x.example.com", "api_key": "k"},
            "built-in provider",
        ),
        ({"type": "anthropic_api_key", "api_key": "x" * 16_385}, "at most 16384 characters"),
    ],
)
def test_bad_credentials_are_rejected_clearly(
    client: anthropic.Anthropic, vault_id: str, auth: dict[str, Any], expected: str
) -> None:
    err = error_of(lambda: client.beta.vaults.credentials.create(vault_id, auth=auth), anthropic.BadRequestError)  # type: ignore[arg-type]
    assert expected in err.message
    assert "hunter2" not in err.response.text and "x" * 100 not in err.response.text


def test_a_url_holding_a_password_is_refused_without_echoing_it(client: anthropic.Anthropic, vault_id: str) -> None:
    password = token("pw")
    err = error_of(
        lambda: client.beta.vaults.credentials.create(
            vault_id,
            auth={"type": "static_bearer", "token": "t", "mcp_server_url": f"https://me:{password}@mcp.example.com"},
        ),
        anthropic.BadRequestError,
    )
    assert "must not carry credentials in the URL" in err.message and password not in err.response.text


# --- tenants and sessions ----------------------------------------------------------------------


@pytest.fixture
def stranger(server: ServerThread) -> Iterator[anthropic.Anthropic]:
    async def mint() -> str:
        tenant_id = await create_tenant(server.platform.db, "stranger")
        return (await create_key(server.platform.db, "s", tenant_id)).key

    with anthropic.Anthropic(base_url=server.url, api_key=server.call(mint), max_retries=0, timeout=30) as c:
        yield c


def test_another_tenants_vaults_are_invisible(client: anthropic.Anthropic, stranger: anthropic.Anthropic) -> None:
    vault = client.beta.vaults.create(display_name="mine")
    cred = client.beta.vaults.credentials.create(
        vault.id, auth={"type": "mcp_oauth", "access_token": "t", "mcp_server_url": "https://mcp.example.com"}
    )
    assert list(stranger.beta.vaults.list(include_archived=True)) == []
    sv, sc = stranger.beta.vaults, stranger.beta.vaults.credentials
    attempts: list[Callable[[], Any]] = [
        lambda: sv.retrieve(vault.id),
        lambda: sv.update(vault.id, display_name="theirs"),
        lambda: sv.archive(vault.id),
        lambda: sv.delete(vault.id),
        lambda: sc.list(vault.id),
        lambda: sc.create(vault.id, auth={"type": "static_bearer", "token": "t", "mcp_server_url": "https://a.b"}),
        lambda: sc.retrieve(cred.id, vault_id=vault.id),
        lambda: sc.update(cred.id, vault_id=vault.id, display_name="x"),
        lambda: sc.archive(cred.id, vault_id=vault.id),
        lambda: sc.mcp_oauth_validate(cred.id, vault_id=vault.id),
        lambda: sc.delete(cred.id, vault_id=vault.id),
    ]
    for attempt in attempts:
        err = error_of(attempt, anthropic.NotFoundError)
        assert vault.id in err.message
    agent = stranger.beta.agents.create(name="a", model="demo")
    env = stranger.beta.environments.create(name="e")
    err = error_of(
        lambda: stranger.beta.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=[vault.id]),
        anthropic.NotFoundError,
    )
    assert message(err) == f"vault_ids: vault {vault.id} not found"
    # Untouched for its owner.
    assert client.beta.vaults.retrieve(vault.id).display_name == "mine"
    assert client.beta.vaults.credentials.retrieve(cred.id, vault_id=vault.id).archived_at is None


def test_sessions_take_existing_vaults_of_their_tenant(client: anthropic.Anthropic) -> None:
    agent = client.beta.agents.create(name="a", model="demo")
    env = client.beta.environments.create(name="e")
    first, second = (client.beta.vaults.create(display_name=n).id for n in ("one", "two"))
    raw = client.beta.sessions.with_raw_response.create(
        agent=agent.id, environment_id=env.id, vault_ids=[second, first]
    )
    session = check(BetaManagedAgentsSession, raw.http_response.json())
    assert session.vault_ids == [second, first]
    assert client.beta.sessions.retrieve(session.id).vault_ids == [second, first]

    def create(vault_ids: list[str]) -> Any:
        return client.beta.sessions.create(agent=agent.id, environment_id=env.id, vault_ids=vault_ids)

    err = error_of(lambda: create([first, "vlt_nope"]), anthropic.NotFoundError)
    assert message(err) == "vault_ids: vault vlt_nope not found"
    err = error_of(lambda: create([first, first]), anthropic.BadRequestError)
    assert message(err) == f"vault_ids: vault {first} is listed twice"
    client.beta.vaults.archive(second)
    err = error_of(lambda: create([second]), anthropic.BadRequestError)
    assert message(err) == f"vault_ids: vault {second} is archived; new sessions cannot use it"
    error_of(lambda: client.beta.sessions.update(session.id, vault_ids=[first]), anthropic.BadRequestError)
    # A session keeps naming a vault deleted after it started; it just holds no keys any more.
    client.beta.vaults.delete(first)
    assert client.beta.sessions.retrieve(session.id).vault_ids == [second, first]
