"""The one settings object, read once from the environment (and an optional `.env` file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    return f"sqlite+aiosqlite:///{Path.cwd() / 'oma.db'}"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class CompatibleEndpoint(BaseModel):
    base_url: str
    api_key: SecretStr | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMA_", env_file=".env", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    database_url: str = Field(default_factory=default_database_url)
    # A bootstrap key accepted in addition to the keys minted with `oma keys create`.
    api_key: SecretStr | None = None
    log_level: str = "INFO"
    # SSE heartbeat; the SDK's read timeout is 600 s, the spec asks for at most 15 s.
    stream_ping_seconds: float = Field(default=15.0, gt=0, le=60)
    # Largest request body accepted (base64 images and documents travel inline).
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)

    # Where sandboxes keep their workspaces (local runtimes) and other local state.
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / ".oma")
    # The vault's key: base64 of 32 random bytes (`oma vault generate-key`); several, comma-separated,
    # while rotating (the first seals). Unset: a keyring file in data_dir, created on first start.
    master_key: SecretStr | None = None

    # --- model providers (bring your own key; the usual variable names are honoured) ---
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("ANTHROPIC_API_KEY", "OMA_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=_env("ANTHROPIC_BASE_URL", "OMA_ANTHROPIC_BASE_URL")
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("OPENAI_API_KEY", "OMA_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(default=None, validation_alias=_env("OPENAI_BASE_URL", "OMA_OPENAI_BASE_URL"))
    openrouter_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("OPENROUTER_API_KEY", "OMA_OPENROUTER_API_KEY")
    )
    openrouter_base_url: str = Field(
        default="https://openrouter.ai/api/v1", validation_alias=_env("OPENROUTER_BASE_URL", "OMA_OPENROUTER_BASE_URL")
    )
    # More OpenAI-compatible gateways, as JSON: {"vllm": {"base_url": "http://gpu:8000/v1", "api_key": "x"}}.
    # The agent's model then reads "vllm/<model>".
    openai_compatible: dict[str, CompatibleEndpoint] = Field(default_factory=dict)

    # --- the runner (sessions' work) ---
    runner_enabled: bool = True
    runner_concurrency: int = Field(default=64, ge=1, le=10_000)
    lease_seconds: float = Field(default=30.0, gt=1)
    model_max_retries: int = Field(default=4, ge=0, le=20)
    model_retry_base_seconds: float = Field(default=1.0, ge=0)
    tool_timeout_seconds: float = Field(default=120.0, gt=0)
    compact_at_tokens: int = Field(default=150_000, ge=1000)
    web_fetch_allow_private: bool = False
    # web_search's backend: a SearXNG instance (its base URL; JSON output enabled), or the Brave
    # Search API (a key). Neither: the tool is not offered.
    web_search_url: str | None = None
    web_search_api_key: SecretStr | None = None
    brave_search_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("BRAVE_SEARCH_API_KEY", "OMA_BRAVE_SEARCH_API_KEY")
    )
    brave_search_url: str = "https://api.search.brave.com/res/v1/web/search"
    sandbox_runtime: str = Field(default="auto", validation_alias=_env("SANDBOX_RUNTIME", "OMA_SANDBOX_RUNTIME"))
    # Hosted sandbox runtimes (SANDBOX_RUNTIME=e2b / daytona, or an environment's `oma.runtime`);
    # the SDKs' own variable names. The keys never reach a sandbox.
    e2b_api_key: SecretStr | None = Field(default=None, validation_alias=_env("E2B_API_KEY", "OMA_E2B_API_KEY"))
    e2b_api_url: str | None = Field(default=None, validation_alias=_env("E2B_API_URL", "OMA_E2B_API_URL"))
    e2b_domain: str | None = Field(default=None, validation_alias=_env("E2B_DOMAIN", "OMA_E2B_DOMAIN"))
    e2b_sandbox_url: str | None = Field(default=None, validation_alias=_env("E2B_SANDBOX_URL", "OMA_E2B_SANDBOX_URL"))
    daytona_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("DAYTONA_API_KEY", "OMA_DAYTONA_API_KEY")
    )
    daytona_api_url: str | None = Field(default=None, validation_alias=_env("DAYTONA_API_URL", "OMA_DAYTONA_API_URL"))
    daytona_target: str | None = Field(default=None, validation_alias=_env("DAYTONA_TARGET", "OMA_DAYTONA_TARGET"))

    # --- Slack (adapters/slack.py; the app manifest is manifests/slack/manifest.json) ---
    slack_bot_token: SecretStr | None = Field(
        default=None, validation_alias=_env("SLACK_BOT_TOKEN", "OMA_SLACK_BOT_TOKEN")
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("SLACK_SIGNING_SECRET", "OMA_SLACK_SIGNING_SECRET")
    )
    # Socket Mode instead of (or besides) the public POST /slack/events: an app-level `xapp-` token.
    slack_app_token: SecretStr | None = Field(
        default=None, validation_alias=_env("SLACK_APP_TOKEN", "OMA_SLACK_APP_TOKEN")
    )
    slack_api_url: str | None = Field(default=None, validation_alias=_env("SLACK_API_URL", "OMA_SLACK_API_URL"))
    # Who answers: an agent id, and an environment id (unset: one named "slack", created on first use).
    slack_agent: str | None = None
    slack_environment: str | None = None
    slack_streaming: bool = True
    slack_min_edit_seconds: float = Field(default=1.0, ge=0)

    # --- Linear (adapters/linear.py; the app's settings are in manifests/linear/) ---
    # The webhook signing secret turns the adapter on (POST /linear/webhook).
    linear_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("LINEAR_WEBHOOK_SECRET", "OMA_LINEAR_WEBHOOK_SECRET")
    )
    # A single workspace's credential: a personal API key, or an OAuth access token (actor=app).
    linear_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("LINEAR_API_KEY", "OMA_LINEAR_API_KEY")
    )
    linear_access_token: SecretStr | None = Field(
        default=None, validation_alias=_env("LINEAR_ACCESS_TOKEN", "OMA_LINEAR_ACCESS_TOKEN")
    )
    # The OAuth app: installs through /linear/install, and refreshing their tokens.
    linear_client_id: str | None = Field(
        default=None, validation_alias=_env("LINEAR_CLIENT_ID", "OMA_LINEAR_CLIENT_ID")
    )
    linear_client_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("LINEAR_CLIENT_SECRET", "OMA_LINEAR_CLIENT_SECRET")
    )
    linear_api_url: str = Field(
        default="https://api.linear.app/graphql", validation_alias=_env("LINEAR_API_URL", "OMA_LINEAR_API_URL")
    )
    linear_authorize_url: str = "https://linear.app/oauth/authorize"
    # Who answers: an agent id, and an environment id (unset: one named "linear", created on first use).
    linear_agent: str | None = None
    linear_environment: str | None = None
    # The link each Linear agent session shows to its session here ("{session_id}" filled in);
    # unset: OMA_PUBLIC_URL/v1/sessions/{session_id}.
    linear_session_url: str | None = None
    # This server's address as Linear and browsers reach it (OAuth callback, links to sessions).
    public_url: str | None = None

    # --- Lark/Feishu (adapters/lark.py; the app's configuration is in manifests/lark/) ---
    # The app's id (or OMA_LARK_VAULT) turns the adapter on; events come to POST /lark/events (with an
    # encrypt key and/or a verification token) or over the long connection (OMA_LARK_LONG_CONNECTION).
    lark_app_id: str | None = Field(default=None, validation_alias=_env("LARK_APP_ID", "OMA_LARK_APP_ID"))
    lark_app_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("LARK_APP_SECRET", "OMA_LARK_APP_SECRET")
    )
    lark_encrypt_key: SecretStr | None = Field(
        default=None, validation_alias=_env("LARK_ENCRYPT_KEY", "OMA_LARK_ENCRYPT_KEY")
    )
    lark_verification_token: SecretStr | None = Field(
        default=None, validation_alias=_env("LARK_VERIFICATION_TOKEN", "OMA_LARK_VERIFICATION_TOKEN")
    )
    # "feishu" (open.feishu.cn), "lark" (open.larksuite.com), or a base URL (unset: feishu, or the
    # domain of the vault's credential).
    lark_domain: str | None = Field(default=None, validation_alias=_env("LARK_DOMAIN", "OMA_LARK_DOMAIN"))
    lark_long_connection: bool = False
    # Instead of LARK_APP_ID and the secrets: a vault id whose `lark` credential holds them (read at start).
    lark_vault: str | None = None
    # Who answers: an agent id, and an environment id (unset: one named "lark", created on first use).
    lark_agent: str | None = None
    lark_environment: str | None = None
    lark_streaming: bool = True
    lark_min_edit_seconds: float = Field(default=0.5, ge=0)

    # --- GitHub (adapters/github.py; the App manifest is manifests/github/app-manifest.json) ---
    # The App's id, private key (PEM text, or the path of the .pem file) and webhook secret turn
    # the adapter on (POST /github/webhook).
    github_app_id: str | None = Field(default=None, validation_alias=_env("GITHUB_APP_ID", "OMA_GITHUB_APP_ID"))
    github_private_key: SecretStr | None = Field(
        default=None, validation_alias=_env("GITHUB_PRIVATE_KEY", "OMA_GITHUB_PRIVATE_KEY")
    )
    github_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("GITHUB_WEBHOOK_SECRET", "OMA_GITHUB_WEBHOOK_SECRET")
    )
    # GitHub Enterprise Server: https://HOST/api/v3.
    github_api_url: str = Field(
        default="https://api.github.com", validation_alias=_env("GITHUB_API_URL", "OMA_GITHUB_API_URL")
    )
    # The account whose assignment or @-mention triggers the agent (a machine user, or `<app-slug>[bot]`).
    github_bot_login: str | None = None
    # Who answers: an agent id, and an environment id (unset: one named "github", created on first use).
    github_agent: str | None = None
    github_environment: str | None = None
    # Adding this label to an issue or pull request also triggers the agent.
    github_trigger_label: str | None = None
    github_min_edit_seconds: float = Field(default=2.0, ge=0)
    # The pause between writes GitHub asks of integrations (secondary rate limits).
    github_write_interval_seconds: float = Field(default=1.0, ge=0)
    # Instead of GITHUB_APP_ID, GITHUB_PRIVATE_KEY (and GITHUB_WEBHOOK_SECRET): a vault id whose
    # `github_app` credential holds them (read at start).
    github_vault: str | None = None

    @model_validator(mode="after")
    def _check_github(self) -> Settings:
        secret = self.github_private_key
        parts = (self.github_app_id, secret, self.github_webhook_secret)
        if all(p is None for p in parts) and self.github_vault is None:
            return self
        if self.github_vault is None and (secret is None or any(p is None for p in parts)):
            raise ValueError(
                "GitHub: set all of GITHUB_APP_ID, GITHUB_PRIVATE_KEY and GITHUB_WEBHOOK_SECRET, or OMA_GITHUB_VAULT"
            )
        if not self.github_bot_login:
            raise ValueError(
                "GitHub: set OMA_GITHUB_BOT_LOGIN, the account whose assignment or @-mention triggers the agent"
            )
        if not self.github_api_url.startswith(("http://", "https://")):
            raise ValueError("GITHUB_API_URL must be an http(s) URL, e.g. https://api.github.com")
        if secret is None:
            return self
        key = secret.get_secret_value().strip().replace("\\n", "\n")
        if not key.startswith("-----BEGIN"):
            path = Path(key).expanduser()
            try:
                key = path.read_text().strip()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ValueError(f"GITHUB_PRIVATE_KEY is neither a PEM key nor a readable file: {reason}") from exc
            if not key.startswith("-----BEGIN"):
                raise ValueError(f"GITHUB_PRIVATE_KEY: {path} does not hold a PEM private key")
        self.github_private_key = SecretStr(key)
        return self

    @model_validator(mode="after")
    def _check_slack(self) -> Settings:
        if self.slack_bot_token is None:
            if self.slack_signing_secret is not None or self.slack_app_token is not None:
                raise ValueError("SLACK_SIGNING_SECRET/SLACK_APP_TOKEN are set but SLACK_BOT_TOKEN is not")
            return self
        if self.slack_signing_secret is None and self.slack_app_token is None:
            raise ValueError(
                "SLACK_BOT_TOKEN is set: also set SLACK_SIGNING_SECRET (events at POST /slack/events) "
                "or SLACK_APP_TOKEN (Socket Mode)"
            )
        if self.slack_api_url is not None and not self.slack_api_url.startswith(("http://", "https://")):
            raise ValueError("SLACK_API_URL must be an http(s) URL, e.g. https://slack.com/api/")
        return self

    @model_validator(mode="after")
    def _check_lark(self) -> Settings:
        secrets = (self.lark_app_secret, self.lark_encrypt_key, self.lark_verification_token)
        if self.lark_vault is not None:
            if self.lark_app_id is not None or self.lark_app_secret is not None:
                raise ValueError("set LARK_APP_ID and LARK_APP_SECRET, or OMA_LARK_VAULT, not both")
        elif self.lark_app_id is None:
            if any(s is not None for s in secrets) or self.lark_long_connection:
                raise ValueError("LARK_* settings are given but LARK_APP_ID (or OMA_LARK_VAULT) is not")
            return self
        elif self.lark_app_secret is None:
            raise ValueError("LARK_APP_ID is set: also set LARK_APP_SECRET")
        if (
            self.lark_vault is None
            and not self.lark_long_connection
            and self.lark_encrypt_key is None
            and self.lark_verification_token is None
        ):
            raise ValueError(
                "LARK_APP_ID is set: also set LARK_ENCRYPT_KEY and/or LARK_VERIFICATION_TOKEN (events at "
                "POST /lark/events), or OMA_LARK_LONG_CONNECTION=true"
            )
        domain = (self.lark_domain or "feishu").strip().lower()
        if domain not in ("feishu", "lark") and not domain.startswith(("http://", "https://")):
            raise ValueError("LARK_DOMAIN must be feishu, lark, or a base URL such as https://open.feishu.cn")
        return self

    @model_validator(mode="after")
    def _check_linear(self) -> Settings:
        credentials = self.linear_api_key or self.linear_access_token or self.linear_client_id
        if self.linear_webhook_secret is None:
            if credentials:
                raise ValueError(
                    "LINEAR_API_KEY/LINEAR_ACCESS_TOKEN/LINEAR_CLIENT_ID are set but LINEAR_WEBHOOK_SECRET is not"
                )
            return self
        if not credentials:
            raise ValueError(
                "LINEAR_WEBHOOK_SECRET is set: also set LINEAR_API_KEY or LINEAR_ACCESS_TOKEN (one workspace), "
                "or LINEAR_CLIENT_ID and LINEAR_CLIENT_SECRET (installs through /linear/install)"
            )
        if bool(self.linear_client_id) != bool(self.linear_client_secret):
            raise ValueError("set both LINEAR_CLIENT_ID and LINEAR_CLIENT_SECRET, or neither")
        for name in ("linear_api_url", "linear_authorize_url", "public_url"):
            value = getattr(self, name)
            if value is not None and not value.startswith(("http://", "https://")):
                raise ValueError(f"{name.upper()} must be an http(s) URL")
        return self

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        # Accept the usual spellings and pick the async driver for each.
        if value.startswith("postgres://"):
            value = "postgresql://" + value.removeprefix("postgres://")
        if value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        if value.startswith("sqlite://") and not value.startswith("sqlite+aiosqlite://"):
            value = "sqlite+aiosqlite://" + value.removeprefix("sqlite://")
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("OMA_DATABASE_URL must be a sqlite:/// or postgresql:// URL")
        return value
