"""The one settings object, read once from the environment (and an optional `.env` file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    return f"sqlite+aiosqlite:///{Path.cwd() / 'oma.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMA_", env_file=".env", extra="ignore")

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
