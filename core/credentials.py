"""Credential kinds: the `auth` object of `/v1/vaults/{id}/credentials`, split into the fields that are
stored sealed (write-only, never rendered) and the fields a response shows.

The anthropic SDK 2.10.0 knows three kinds, implemented as it sends and parses them: `static_bearer`
and `mcp_oauth` (MCP servers) and `environment_variable`. This platform adds kinds in the same style
(a `type` discriminator, secrets write-only): model-provider keys for bring-your-own-key
(`anthropic_api_key`, `openai_api_key`, `openai_compatible`) and workspace credentials (`slack`,
`github_app`, `linear`, `lark`). The SDK parses these leniently (its auth union falls back to its
first member and keeps every field), so `client.beta.vaults.credentials.*` works with them too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints, field_validator, model_validator

from core.errors import InvalidRequest
from core.schemas import Metadata, MetadataPatch, Strict, check_metadata


class CredentialKind(StrEnum):
    MCP_OAUTH = "mcp_oauth"
    STATIC_BEARER = "static_bearer"
    ENVIRONMENT_VARIABLE = "environment_variable"
    ANTHROPIC_API_KEY = "anthropic_api_key"
    OPENAI_API_KEY = "openai_api_key"
    OPENAI_COMPATIBLE = "openai_compatible"
    SLACK = "slack"
    GITHUB_APP = "github_app"
    LINEAR = "linear"
    LARK = "lark"


MODEL_PROVIDER_KINDS = frozenset(
    {CredentialKind.ANTHROPIC_API_KEY, CredentialKind.OPENAI_API_KEY, CredentialKind.OPENAI_COMPATIBLE}
)
# Provider names an `openai_compatible` credential may not take: they mean a built-in provider.
RESERVED_PROVIDERS = frozenset({"anthropic", "openai", "demo", "oma"})


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        # The value is not echoed: it may hold a password.
        raise ValueError("must not carry credentials in the URL; put secrets in the credential's secret fields")
    return value


def _optional_http_url(value: str) -> str:
    return value if value == "" else _http_url(value)


_HOST = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _host(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
        return value
    except ValueError:
        pass
    if not _HOST.match(value) or len(value) > 253:
        raise ValueError(
            "each allowed host is a bare hostname (api.example.com), an IPv4 address or a *. wildcard "
            "(*.example.com); URLs, ports, paths and IPv6 addresses are not accepted"
        )
    return value.lower()


def _future(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if value <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return value


Secret = Annotated[str, StringConstraints(min_length=1, max_length=16_384)]
URL = Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_http_url)]
OptionalURL = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_optional_http_url)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Expiry = Annotated[datetime | None, AfterValidator(_future)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")]
Host = Annotated[str, AfterValidator(_host)]
ProviderName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


# --- the SDK's kinds ---------------------------------------------------------------------------


class StaticBearerCreate(Strict):
    type: Literal["static_bearer"]
    token: Secret
    mcp_server_url: URL


class StaticBearerUpdate(Strict):
    type: Literal["static_bearer"]
    token: Secret | None = None


class TokenEndpointAuthNone(Strict):
    type: Literal["none"]


class TokenEndpointAuthBasic(Strict):
    type: Literal["client_secret_basic"]
    client_secret: Secret


class TokenEndpointAuthPost(Strict):
    type: Literal["client_secret_post"]
    client_secret: Secret


class MCPOAuthRefresh(Strict):
    client_id: Label
    refresh_token: Secret
    token_endpoint: URL
    token_endpoint_auth: Annotated[
        TokenEndpointAuthNone | TokenEndpointAuthBasic | TokenEndpointAuthPost, Field(discriminator="type")
    ]
    resource: Annotated[str, StringConstraints(max_length=2048)] | None = None
    scope: Annotated[str, StringConstraints(max_length=4096)] | None = None


class MCPOAuthCreate(Strict):
    type: Literal["mcp_oauth"]
    access_token: Secret
    mcp_server_url: URL
    expires_at: Expiry = None
    refresh: MCPOAuthRefresh | None = None


class TokenEndpointAuthBasicUpdate(Strict):
    type: Literal["client_secret_basic"]
    client_secret: Secret | None = None


class TokenEndpointAuthPostUpdate(Strict):
    type: Literal["client_secret_post"]
    client_secret: Secret | None = None


class MCPOAuthRefreshUpdate(Strict):
    refresh_token: Secret | None = None
    scope: Annotated[str, StringConstraints(max_length=4096)] | None = None
    token_endpoint_auth: (
        Annotated[TokenEndpointAuthBasicUpdate | TokenEndpointAuthPostUpdate, Field(discriminator="type")] | None
    ) = None


class MCPOAuthUpdate(Strict):
    type: Literal["mcp_oauth"]
    access_token: Secret | None = None
    expires_at: Expiry = None
    refresh: MCPOAuthRefreshUpdate | None = None


class InjectionLocation(Strict):
    body: bool | None = None
    header: bool | None = None


class UnrestrictedNetworking(Strict):
    type: Literal["unrestricted"]


class LimitedNetworking(Strict):
    type: Literal["limited"]
    allowed_hosts: Annotated[list[Host], Field(min_length=1, max_length=16)]


CredentialNetworking = Annotated[UnrestrictedNetworking | LimitedNetworking, Field(discriminator="type")]


class EnvironmentVariableCreate(Strict):
    type: Literal["environment_variable"]
    secret_name: EnvName
    secret_value: Secret
    networking: CredentialNetworking
    injection_location: InjectionLocation | None = None


class EnvironmentVariableUpdate(Strict):
    type: Literal["environment_variable"]
    injection_location: InjectionLocation | None = None
    networking: CredentialNetworking | None = None
    secret_value: Secret | None = None


# --- model-provider keys (bring your own key) --------------------------------------------------


class AnthropicKeyCreate(Strict):
    type: Literal["anthropic_api_key"]
    api_key: Secret
    # Default: the server's ANTHROPIC_BASE_URL, else api.anthropic.com.
    base_url: OptionalURL | None = None


class AnthropicKeyUpdate(Strict):
    type: Literal["anthropic_api_key"]
    api_key: Secret | None = None
    base_url: OptionalURL | None = None  # "" goes back to the default


class OpenAIKeyCreate(Strict):
    type: Literal["openai_api_key"]
    api_key: Secret
    base_url: OptionalURL | None = None


class OpenAIKeyUpdate(Strict):
    type: Literal["openai_api_key"]
    api_key: Secret | None = None
    base_url: OptionalURL | None = None


class OpenAICompatibleCreate(Strict):
    type: Literal["openai_compatible"]
    # Agents name models as "<provider>/<model>", e.g. "together/meta-llama/Llama-4".
    provider: ProviderName
    base_url: URL
    api_key: Secret

    @field_validator("provider")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_PROVIDERS:
            raise ValueError(f"{value!r} names a built-in provider; use anthropic_api_key or openai_api_key")
        return value


class OpenAICompatibleUpdate(Strict):
    type: Literal["openai_compatible"]
    api_key: Secret | None = None
    base_url: URL | None = None


# --- workspace credentials ---------------------------------------------------------------------


class SlackCreate(Strict):
    type: Literal["slack"]
    bot_token: Secret
    signing_secret: Secret
    app_token: Secret | None = None  # Socket Mode
    team_id: Label | None = None


class SlackUpdate(Strict):
    type: Literal["slack"]
    bot_token: Secret | None = None
    signing_secret: Secret | None = None
    app_token: Secret | None = None


class GitHubAppCreate(Strict):
    type: Literal["github_app"]
    app_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")]
    private_key: Secret
    webhook_secret: Secret | None = None
    installation_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = None


class GitHubAppUpdate(Strict):
    type: Literal["github_app"]
    private_key: Secret | None = None
    webhook_secret: Secret | None = None
    installation_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")] | None = None


class LinearCreate(Strict):
    type: Literal["linear"]
    access_token: Secret
    # An OAuth install's (rotated on every refresh).
    refresh_token: Secret | None = None
    webhook_secret: Secret | None = None
    organization_id: Label | None = None


class LinearUpdate(Strict):
    type: Literal["linear"]
    access_token: Secret | None = None
    refresh_token: Secret | None = None
    webhook_secret: Secret | None = None


class LarkCreate(Strict):
    type: Literal["lark"]
    app_id: Label
    app_secret: Secret
    verification_token: Secret | None = None
    encrypt_key: Secret | None = None
    domain: Literal["lark", "feishu"] = "lark"


class LarkUpdate(Strict):
    type: Literal["lark"]
    app_secret: Secret | None = None
    verification_token: Secret | None = None
    encrypt_key: Secret | None = None


AuthCreate = Annotated[
    MCPOAuthCreate
    | StaticBearerCreate
    | EnvironmentVariableCreate
    | AnthropicKeyCreate
    | OpenAIKeyCreate
    | OpenAICompatibleCreate
    | SlackCreate
    | GitHubAppCreate
    | LinearCreate
    | LarkCreate,
    Field(discriminator="type"),
]
AuthUpdate = Annotated[
    MCPOAuthUpdate
    | StaticBearerUpdate
    | EnvironmentVariableUpdate
    | AnthropicKeyUpdate
    | OpenAIKeyUpdate
    | OpenAICompatibleUpdate
    | SlackUpdate
    | GitHubAppUpdate
    | LinearUpdate
    | LarkUpdate,
    Field(discriminator="type"),
]

DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class VaultCreate(Strict):
    display_name: DisplayName
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rules(self) -> VaultCreate:
        check_metadata(self.metadata)
        return self


class VaultUpdate(Strict):
    display_name: DisplayName | None = None
    metadata: MetadataPatch | None = None

    @model_validator(mode="after")
    def _rules(self) -> VaultUpdate:
        check_metadata(self.metadata, patch=True)
        if "display_name" in self.model_fields_set and self.display_name is None:
            raise ValueError("display_name cannot be cleared")
        return self


class CredentialCreate(Strict):
    auth: AuthCreate
    display_name: Annotated[str, StringConstraints(max_length=255)] | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rules(self) -> CredentialCreate:
        check_metadata(self.metadata)
        return self


class CredentialUpdate(Strict):
    auth: AuthUpdate | None = None
    display_name: DisplayName | None = None
    metadata: MetadataPatch | None = None

    @model_validator(mode="after")
    def _rules(self) -> CredentialUpdate:
        check_metadata(self.metadata, patch=True)
        return self


# --- splitting secrets from what is shown ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Split:
    kind: CredentialKind
    # What the credential is for: a vault holds one active credential per identity.
    identity: str
    label: str
    public: dict[str, Any]
    secret: dict[str, str]


def _identity(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:40]


def mcp_identity(url: str) -> str:
    """The identity of the MCP credentials (static_bearer, mcp_oauth) for the server at `url`."""
    return _identity("mcp:" + url)


def environment_identity(name: str) -> str:
    """The identity of the `environment_variable` credential named `name`."""
    return _identity("env:" + name)


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _injection(given: InjectionLocation | None, current: dict[str, bool] | None) -> dict[str, bool]:
    # GUESS: the API's default when none is given is to substitute in headers and bodies alike.
    out = dict(current or {"body": True, "header": True})
    if given is not None:
        for name in ("body", "header"):
            value = getattr(given, name)
            if value is not None:
                out[name] = value
    if not (out["body"] or out["header"]):
        raise InvalidRequest("auth.injection_location: at least one of body and header must be enabled")
    return out


def _networking(value: UnrestrictedNetworking | LimitedNetworking) -> dict[str, Any]:
    if isinstance(value, LimitedNetworking):
        return {"type": "limited", "allowed_hosts": list(dict.fromkeys(value.allowed_hosts))}
    return {"type": "unrestricted"}


def _present(**fields: str | None) -> dict[str, str]:
    return {k: v for k, v in fields.items() if v is not None}


def split_create(auth: Any) -> Split:
    """The kind, identity, shown fields and secret fields of a create request's `auth`."""
    kind = CredentialKind(auth.type)
    if isinstance(auth, StaticBearerCreate | MCPOAuthCreate):
        label = f"MCP server {auth.mcp_server_url}"
        public: dict[str, Any] = {"type": kind.value, "mcp_server_url": auth.mcp_server_url}
        if isinstance(auth, StaticBearerCreate):
            return Split(kind, mcp_identity(auth.mcp_server_url), label, public, {"token": auth.token})
        secret = {"access_token": auth.access_token}
        public["expires_at"] = _rfc3339(auth.expires_at)
        public["refresh"] = None
        if auth.refresh is not None:
            ref = auth.refresh
            public["refresh"] = {
                "client_id": ref.client_id,
                "token_endpoint": ref.token_endpoint,
                "token_endpoint_auth": {"type": ref.token_endpoint_auth.type},
                "resource": ref.resource,
                "scope": ref.scope,
            }
            secret["refresh_token"] = ref.refresh_token
            if not isinstance(ref.token_endpoint_auth, TokenEndpointAuthNone):
                secret["client_secret"] = ref.token_endpoint_auth.client_secret
        return Split(kind, mcp_identity(auth.mcp_server_url), label, public, secret)
    if isinstance(auth, EnvironmentVariableCreate):
        public = {
            "type": kind.value,
            "secret_name": auth.secret_name,
            "networking": _networking(auth.networking),
            "injection_location": _injection(auth.injection_location, None),
        }
        label = f"environment variable {auth.secret_name}"
        return Split(kind, environment_identity(auth.secret_name), label, public, {"secret_value": auth.secret_value})
    if isinstance(auth, AnthropicKeyCreate | OpenAIKeyCreate):
        public = {"type": kind.value, "base_url": auth.base_url or None}
        return Split(kind, _identity(kind.value), f"{kind.value} key", public, {"api_key": auth.api_key})
    if isinstance(auth, OpenAICompatibleCreate):
        public = {"type": kind.value, "provider": auth.provider, "base_url": auth.base_url}
        label = f"OpenAI-compatible provider {auth.provider!r}"
        return Split(kind, _identity("compatible:" + auth.provider), label, public, {"api_key": auth.api_key})
    if isinstance(auth, SlackCreate):
        public = {"type": kind.value, "team_id": auth.team_id}
        secret = _present(bot_token=auth.bot_token, signing_secret=auth.signing_secret, app_token=auth.app_token)
    elif isinstance(auth, GitHubAppCreate):
        public = {"type": kind.value, "app_id": auth.app_id, "installation_id": auth.installation_id}
        secret = _present(private_key=auth.private_key, webhook_secret=auth.webhook_secret)
    elif isinstance(auth, LinearCreate):
        public = {"type": kind.value, "organization_id": auth.organization_id}
        secret = _present(
            access_token=auth.access_token, refresh_token=auth.refresh_token, webhook_secret=auth.webhook_secret
        )
    elif isinstance(auth, LarkCreate):
        public = {"type": kind.value, "app_id": auth.app_id, "domain": auth.domain}
        secret = _present(
            app_secret=auth.app_secret, verification_token=auth.verification_token, encrypt_key=auth.encrypt_key
        )
    else:  # pragma: no cover - the union above is exhaustive
        raise InvalidRequest(f"auth.type: unsupported credential type {auth.type!r}")
    return Split(kind, _identity("workspace:" + kind.value), f"{kind.value} workspace credential", public, secret)


@dataclass(frozen=True, slots=True)
class Change:
    public: dict[str, Any]
    # Secret fields to set (None: the secret is unchanged).
    secret: dict[str, str] | None
    # Whether `secret` replaces every stored field (True) or must be merged into them.
    whole: bool


# Secret fields every credential of a kind has: when an update sets them all, the stored secret
# is replaced without being opened.
_REQUIRED_SECRETS: dict[CredentialKind, frozenset[str]] = {
    CredentialKind.STATIC_BEARER: frozenset({"token"}),
    CredentialKind.ENVIRONMENT_VARIABLE: frozenset({"secret_value"}),
    CredentialKind.ANTHROPIC_API_KEY: frozenset({"api_key"}),
    CredentialKind.OPENAI_API_KEY: frozenset({"api_key"}),
    CredentialKind.OPENAI_COMPATIBLE: frozenset({"api_key"}),
}


def change_for_update(kind: CredentialKind, public: dict[str, Any], auth: Any) -> Change:
    """How an update's `auth` changes a credential of `kind` (its `type` must match)."""
    if auth.type != kind.value:
        raise InvalidRequest(
            f"auth.type: this credential is {kind.value!r}; a credential's type cannot change "
            "(archive it and create a new one)",
            error_code="credential_type_mismatch",
        )
    out = dict(public)
    secret: dict[str, str] = {}
    if isinstance(auth, MCPOAuthUpdate):
        if auth.access_token is not None:
            secret["access_token"] = auth.access_token
        if "expires_at" in auth.model_fields_set:  # null: the token's expiry is not known
            out["expires_at"] = _rfc3339(auth.expires_at)
        if auth.refresh is not None:
            refresh = dict(out.get("refresh") or {})
            if not refresh:
                raise InvalidRequest(
                    "auth.refresh: this credential was created without refresh support; "
                    "create a new credential with refresh to add it"
                )
            if auth.refresh.refresh_token is not None:
                secret["refresh_token"] = auth.refresh.refresh_token
            if auth.refresh.scope is not None:
                refresh["scope"] = auth.refresh.scope or None
            endpoint_auth = auth.refresh.token_endpoint_auth
            if endpoint_auth is not None and endpoint_auth.client_secret is not None:
                if refresh["token_endpoint_auth"]["type"] == "none":
                    raise InvalidRequest(
                        "auth.refresh.token_endpoint_auth: this credential's token endpoint takes no client "
                        "authentication, so it has no client secret to replace"
                    )
                # The stored method stays, even if the other one was named (as the API documents).
                secret["client_secret"] = endpoint_auth.client_secret
            out["refresh"] = refresh
    elif isinstance(auth, EnvironmentVariableUpdate):
        if auth.secret_value is not None:
            secret["secret_value"] = auth.secret_value
        if auth.networking is not None:
            out["networking"] = _networking(auth.networking)
        if auth.injection_location is not None:
            out["injection_location"] = _injection(auth.injection_location, out.get("injection_location"))
    else:
        shown = {"base_url", "installation_id"}
        for name in auth.model_fields_set - {"type"}:
            value = getattr(auth, name)
            if value is None:
                continue  # null leaves a field as it is
            if name in shown:
                out[name] = value or None
            else:
                secret[name] = value
    whole = bool(secret) and _REQUIRED_SECRETS.get(kind, frozenset()) <= secret.keys() and kind in _REQUIRED_SECRETS
    return Change(out, secret or None, whole)
