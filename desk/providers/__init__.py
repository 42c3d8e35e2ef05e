"""Model providers: `offline` (deterministic, default) and `openai` (any compatible API)."""

from django.conf import settings

from desk.providers.base import ModelRequest, ModelResponse, Provider, ProviderError

__all__ = ["ModelRequest", "ModelResponse", "Provider", "ProviderError", "get_provider"]

_providers: dict[tuple, Provider] = {}


def get_provider() -> Provider:
    """The provider settings.DESK_LLM_PROVIDER names (one shared instance per process)."""
    name = settings.DESK_LLM_PROVIDER
    key = (name, settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY)
    if key not in _providers:
        if name == "offline":
            from desk.providers.offline import OfflineProvider

            _providers[key] = OfflineProvider()
        elif name == "openai":
            from desk.providers.openai import OpenAIProvider

            _providers[key] = OpenAIProvider(
                base_url=settings.OPENAI_BASE_URL,
                api_key=settings.OPENAI_API_KEY,
                max_connections=settings.DESK_MODEL_CONCURRENCY,
            )
        else:
            raise ProviderError(f"Unknown DESK_LLM_PROVIDER '{name}' (use offline or openai).")
    return _providers[key]
