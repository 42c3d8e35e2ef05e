"""The model-provider interface the engine talks to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class ProviderError(Exception):
    """A model call failed for good (after its retries); the step fails with this message."""

    def __init__(self, message: str, *, code: str = "provider_error", retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True)
class ModelRequest:
    """One structured-output call: the prompt, the JSON Schema the answer must satisfy, settings."""

    prompt: str
    output_schema: dict[str, Any]
    model: str = "offline-1"
    system: str = ""
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout_seconds: float = 30.0
    max_attempts: int = 3


@dataclass(frozen=True)
class ModelResponse:
    output: dict[str, Any]
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Provider(ABC):
    """A model the worker awaits (one call per attempt plan; retries are the provider's)."""

    name = "base"

    @abstractmethod
    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        """Answer `request` with output satisfying its schema.

        Raises ProviderError when it cannot (after its retries).
        """
