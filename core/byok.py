"""Bring-your-own-key: which provider, model and key a session's model call uses.

The key comes from the session's vaults, else the tenant's default vaults (see core/vaults.py),
else the server's settings. The session records where the key came from (vault and credential
ids, in the private `_model_key` field of `span.model_request_start`) and the usage; never the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import ConfigError
from core.providers import Providers
from core.providers.base import ModelError, ModelRequest, ModelResponse, OnDelta, Provider
from core.vaults import VaultStore
from vault.errors import VaultError

REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    provider: Provider
    model: str
    # {"source": "vault", "vault_id": …, "credential_id": …} or {"source": "settings"}.
    key_source: dict[str, str]


class RedactingProvider:
    """A provider whose errors never carry the key it was given (some gateways echo it back)."""

    def __init__(self, inner: Provider, secret: str) -> None:
        self.inner = inner
        self.name = inner.name
        self._secret = secret

    async def complete(self, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelResponse:
        try:
            return await self.inner.complete(request, on_delta)
        except ModelError as err:
            if self._secret in err.message:
                err.message = err.message.replace(self._secret, REDACTED)
                err.args = (err.message,)
            raise


async def resolve_model(
    providers: Providers, vaults: VaultStore | None, tenant_id: str, vault_ids: Sequence[str], model_id: str
) -> ResolvedModel:
    """Raises ConfigError (with a message fit for the session's error event) when there is no key
    or a vault secret cannot be opened."""
    try:
        family: str | None = providers.split(model_id)[0]
    except ConfigError:
        family = None  # perhaps a gateway named by a vault credential
    key = None
    if vaults is not None and family != "demo":
        try:
            key = await vaults.model_key(tenant_id, vault_ids, model_id, family)
        except VaultError as exc:
            raise ConfigError(exc.message) from exc
    if key is None:
        provider, model = providers.resolve(model_id)
        return ResolvedModel(provider, model, {"source": "settings"})
    provider, model = providers.resolve(
        model_id, api_key=key.api_key, base_url=key.base_url, compatible=[key.provider] if key.provider else ()
    )
    source = {"source": "vault", "vault_id": key.vault_id, "credential_id": key.credential_id}
    return ResolvedModel(RedactingProvider(provider, key.api_key), model, source)
