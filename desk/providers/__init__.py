"""Model providers: `offline` (deterministic, default) and `openai` (any compatible API).

With `openai`, each tenant's calls go through a provider of its own, made with the tenant's
own API key (set in the tenant's admin page, stored encrypted) or, when the tenant has none,
the platform's `OPENAI_API_KEY`. A tenant key that cannot be decrypted fails the call: it
never falls back to the platform's key, and no provider is shared between tenants.
"""

from django.conf import settings

from desk.providers.base import ModelRequest, ModelResponse, Provider, ProviderError
from tenants.encryption import SecretsError

__all__ = [
    "ModelRequest",
    "ModelResponse",
    "Provider",
    "ProviderError",
    "aclose_providers",
    "get_provider",
]

# (provider name, base URL, tenant id or None) -> the provider made for it.
_providers: dict[tuple, Provider] = {}
# Providers replaced (their tenant's key changed) whose connections are still to be closed.
_replaced: list[Provider] = []


def _api_key(tenant) -> str:
    if tenant is None or not tenant.has_provider_api_key:
        return settings.OPENAI_API_KEY
    try:
        return tenant.provider_api_key()
    except SecretsError as exc:
        raise ProviderError(
            f"The model provider key of tenant '{tenant.slug}' cannot be used: {exc}",
            code="provider_key_unavailable",
        ) from None


def get_provider(*, tenant=None) -> Provider:
    """The provider settings.DESK_LLM_PROVIDER names for the tenant's calls (one per tenant
    and process with `openai`, one shared `offline`).

    Raises ProviderError for an unknown provider name, or when the tenant's own API key
    cannot be decrypted (no key, or none that opens it).
    """
    name = settings.DESK_LLM_PROVIDER
    if name == "offline":
        slot = (name, None, None)
        if slot not in _providers:
            from desk.providers.offline import OfflineProvider

            _providers[slot] = OfflineProvider()
        return _providers[slot]
    if name != "openai":
        raise ProviderError(f"Unknown DESK_LLM_PROVIDER '{name}' (use offline or openai).")
    from desk.providers.openai import OpenAIProvider

    api_key = _api_key(tenant)
    slot = (name, settings.OPENAI_BASE_URL, getattr(tenant, "pk", None))
    provider = _providers.get(slot)
    if provider is None or provider.api_key != api_key:
        if provider is not None:
            _replaced.append(provider)
        provider = _providers[slot] = OpenAIProvider(
            base_url=settings.OPENAI_BASE_URL,
            api_key=api_key,
            max_connections=settings.DESK_MODEL_CONCURRENCY,
        )
    return provider


async def aclose_providers() -> None:
    """Close the connections of every provider this process made (they belong to the event
    loop that is ending); the providers open new ones on their next call."""
    while _replaced:
        await _replaced.pop().aclose()
    for provider in list(_providers.values()):
        if hasattr(provider, "aclose"):
            await provider.aclose()
