"""Choosing a provider and key from an agent's model id.

`provider/model` picks the provider explicitly (`anthropic/claude-sonnet-5`, `openai/gpt-5`,
`openrouter/meta-llama/llama-4`, or any configured OpenAI-compatible name); bare ids are matched
by family (`claude-*` → Anthropic, `gpt-*`/`o1`/`o3`/`o4*` → OpenAI); `demo` is the offline model.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field

from core.errors import ConfigError
from core.providers.base import ModelError, ModelRequest, ModelResponse, Provider
from core.providers.demo import DemoProvider

__all__ = ["ModelError", "ModelRequest", "ModelResponse", "Provider", "ProviderConfig", "Providers"]

DEMO_IDS = frozenset({"demo", "oma/demo", "oma-demo"})
OPENAI_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4")


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str | None
    api_key: str | None


@dataclass(frozen=True)
class ProviderConfig:
    anthropic: Endpoint = Endpoint(None, None)
    openai: Endpoint = Endpoint(None, None)
    openrouter: Endpoint = Endpoint("https://openrouter.ai/api/v1", None)
    # Extra OpenAI-compatible gateways by name, e.g. {"vllm": Endpoint("http://gpu:8000/v1", "x")}.
    compatible: dict[str, Endpoint] = field(default_factory=dict)


class Providers:
    """Provider clients are made once per (provider, key, base URL) and reused: each keeps a
    connection pool. With bring-your-own-key every tenant's key is a client of its own, so at most
    `max_clients` are kept, the least recently used dropped first; a dropped client is closed
    after `close_grace` seconds, once any request it was serving is over."""

    def __init__(self, config: ProviderConfig, *, max_clients: int = 256, close_grace: float = 900.0) -> None:
        self.config = config
        self.max_clients = max_clients
        self.close_grace = close_grace
        self._clients: OrderedDict[tuple[str, str | None, str | None], Provider] = OrderedDict()
        self._retired: dict[asyncio.Task[None], Provider] = {}
        self._demo = DemoProvider()

    def split(self, model_id: str, *, compatible: Collection[str] = ()) -> tuple[str, str]:
        """(provider, provider-side model). `compatible` adds gateway names (from a vault)."""
        if model_id in DEMO_IDS:
            return "demo", model_id
        prefix, slash, rest = model_id.partition("/")
        if slash and (
            prefix in ("anthropic", "openai", "openrouter") or prefix in self.config.compatible or prefix in compatible
        ):
            return prefix, rest
        if model_id.startswith("claude"):
            return "anthropic", model_id
        if model_id.startswith(OPENAI_PREFIXES):
            return "openai", model_id
        raise ConfigError(
            f"cannot tell which provider serves model {model_id!r}; name it as provider/model, "
            "e.g. anthropic/claude-sonnet-5, openai/gpt-5, openrouter/<model>, or 'demo'"
        )

    def resolve(
        self,
        model_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        compatible: Collection[str] = (),
    ) -> tuple[Provider, str]:
        """The provider and the provider-side model name. `api_key` and `base_url` (from a vault)
        beat settings; `compatible` names OpenAI-compatible gateways that a vault defines."""
        kind, model = self.split(model_id, compatible=compatible)
        if kind == "demo":
            return self._demo, model
        endpoint = self._endpoint(kind)
        if base_url:
            # Never the settings' key at a URL the vault chose.
            endpoint = Endpoint(base_url, None)
        key = api_key or endpoint.api_key
        if not key:
            env = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "openrouter": "OPENROUTER_API_KEY"}
            raise ConfigError(
                f"no API key for provider {kind!r}: set {env.get(kind, 'its api_key in OMA_OPENAI_COMPATIBLE')} "
                "or store a provider credential in a vault"
            )
        cache_key = (kind, key, endpoint.base_url)
        client = self._clients.get(cache_key)
        if client is not None:
            self._clients.move_to_end(cache_key)
        else:
            # The SDKs are imported on first use: together they take over a second to import,
            # which a restart (and so crash recovery) would otherwise pay up front.
            if kind == "anthropic":
                from core.providers.anthropic import AnthropicProvider

                client = AnthropicProvider(api_key=key, base_url=endpoint.base_url)
            else:
                from core.providers.openai import OpenAIProvider

                client = OpenAIProvider(api_key=key, base_url=endpoint.base_url, name=kind)
            self._clients[cache_key] = client
            while len(self._clients) > self.max_clients:
                self._retire(self._clients.popitem(last=False)[1])
        return client, model

    def _retire(self, client: Provider) -> None:
        close = getattr(client, "close", None)
        if close is None:
            return

        async def later() -> None:
            await asyncio.sleep(self.close_grace)
            await close()

        try:
            task = asyncio.get_running_loop().create_task(later())
        except RuntimeError:  # no loop (a synchronous caller): the client is left to the collector
            return
        self._retired[task] = client
        task.add_done_callback(lambda done: self._retired.pop(done, None))

    def _endpoint(self, kind: str) -> Endpoint:
        if kind == "anthropic":
            return self.config.anthropic
        if kind == "openai":
            return self.config.openai
        if kind == "openrouter":
            return self.config.openrouter
        return self.config.compatible.get(kind, Endpoint(None, None))

    async def close(self) -> None:
        retired = list(self._retired.items())
        self._retired.clear()
        for task, client in retired:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._clients.setdefault(("retired", str(id(client)), None), client)
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                await close()
        self._clients.clear()
