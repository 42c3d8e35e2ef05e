"""OpenAI-compatible Chat Completions provider with structured (JSON Schema) output.

A sans-IO retry loop (``_plan``) yields what to do next (send the request, or sleep) and the
async driver (``acomplete``, what the worker awaits) performs that I/O.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
from jsonschema import Draft202012Validator

from desk.providers.base import ModelRequest, ModelResponse, Provider, ProviderError
from tenants import safe_json

logger = logging.getLogger(__name__)

__all__ = [
    "Failure",
    "OpenAIProvider",
    "backoff_delay",
    "build_headers",
    "build_payload",
    "build_timeout",
    "classify_exception",
    "classify_status",
    "default_jitter",
    "parse_completion",
    "parse_retry_after",
    "retry_delay",
]

_SNIPPET = 300


# --- Pure request-building and retry-policy functions -------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why one attempt failed, and whether another attempt may help."""

    code: str
    message: str
    retryable: bool
    retry_after: float | None = None


def build_payload(request: ModelRequest) -> dict[str, Any]:
    """The Chat Completions body for ``request``."""
    messages = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": request.prompt})
    return {
        "model": request.model,
        "messages": messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "step_output",
                "schema": request.output_schema,
                "strict": True,
            },
        },
    }


def build_headers(api_key: str) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def build_timeout(request: ModelRequest) -> httpx.Timeout:
    return httpx.Timeout(request.timeout_seconds, connect=min(5.0, request.timeout_seconds))


def parse_retry_after(headers: httpx.Headers | dict[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date)."""
    headers = httpx.Headers(headers)
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_detail(response: httpx.Response) -> str:
    """The API's own error message if it sent one, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:_SNIPPET].strip()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:_SNIPPET]
    return json.dumps(data)[:_SNIPPET]


def classify_status(response: httpx.Response) -> Failure | None:
    """``None`` for a 2xx answer, otherwise the failure its status code stands for."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    detail = _error_detail(response)
    suffix = f": {detail}" if detail else ""
    if status == 429:
        return Failure(
            "rate_limited",
            f"HTTP 429 rate limited{suffix}",
            retryable=True,
            retry_after=parse_retry_after(response.headers),
        )
    if status >= 500:
        return Failure("server_error", f"HTTP {status} server error{suffix}", retryable=True)
    return Failure("bad_request", f"HTTP {status} rejected{suffix}", retryable=False)


def classify_exception(exc: httpx.RequestError) -> Failure:
    """Map a transport-level httpx error to a retryable failure."""
    if isinstance(exc, httpx.TimeoutException):
        return Failure("timeout", f"request timed out ({type(exc).__name__})", retryable=True)
    detail = str(exc) or type(exc).__name__
    return Failure("connection_error", f"connection failed: {detail}", retryable=True)


def _invalid(message: str) -> Failure:
    return Failure("invalid_output", message, retryable=True)


def parse_completion(data: Any, validator: Draft202012Validator) -> dict[str, Any] | Failure:
    """The model's structured answer from a completion body, or why it is unusable."""
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return _invalid("response has no choices[0].message")
    if not isinstance(message, dict):
        return _invalid("choices[0].message is not an object")
    content = message.get("content")
    if not isinstance(content, str):
        refusal = message.get("refusal")
        if refusal:
            return _invalid(f"model refused: {str(refusal)[:_SNIPPET]}")
        return _invalid("choices[0].message.content is missing")
    try:
        output = safe_json.loads(content)  # UnsafeJSON is a ValueError: a retry, not a crash
    except ValueError as exc:
        return _invalid(f"content is not valid JSON ({exc}): {content[:_SNIPPET]!r}")
    if not isinstance(output, dict):
        return _invalid(f"content is JSON but not an object: {content[:_SNIPPET]!r}")
    error = jsonschema.exceptions.best_match(validator.iter_errors(output))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "<root>"
        return _invalid(f"content does not match the output schema at {where}: {error.message}")
    return output


def backoff_delay(attempt: int, *, base: float, maximum: float) -> float:
    """Exponential backoff before attempt ``attempt + 1``: base, 2*base, 4*base... capped."""
    return min(maximum, base * (2 ** (attempt - 1)))


def retry_delay(
    failure: Failure,
    attempt: int,
    *,
    base: float,
    maximum: float,
    jitter: Callable[[float], float],
) -> float:
    """Seconds to sleep after failed attempt ``attempt`` (1-based)."""
    if failure.retry_after is not None:
        # The server said how long; trust it, within reason, and without jitter.
        return min(failure.retry_after, maximum * 4)
    delay = backoff_delay(attempt, base=base, maximum=maximum)
    return delay + jitter(delay)


def default_jitter(delay: float) -> float:
    """Up to 10% extra so that many clients retrying together spread out."""
    return random.uniform(0.0, delay * 0.1)


# --- The provider ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sleep:
    seconds: float


class _Send:
    pass


_SEND = _Send()
_Outcome = httpx.Response | httpx.RequestError
_Plan = Generator[_Send | _Sleep, _Outcome | None, ModelResponse]


class OpenAIProvider(Provider):
    """Calls an OpenAI-compatible ``/chat/completions`` endpoint with a strict JSON Schema.

    A client passed in is used as-is and never closed here; one created here is closed by
    ``aclose()``.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        async_client: httpx.AsyncClient | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        jitter: Callable[[float], float] = default_jitter,
        max_connections: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key = api_key
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._async_sleep = async_sleep
        self._jitter = jitter
        self._async_client = async_client
        self._owns_async_client = async_client is None
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        # An owned AsyncClient's connections belong to one event loop; remember which.
        self._async_loop: asyncio.AbstractEventLoop | None = None

    # -- async --

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        """Run ``request`` with retries; raise ProviderError once attempts are exhausted."""
        client = self._get_async_client()
        payload, headers, timeout = self._prepare(request)
        plan = self._plan(request)
        action = next(plan)
        while True:
            outcome: _Outcome | None = None
            if isinstance(action, _Sleep):
                await self._async_sleep(action.seconds)
            else:
                try:
                    outcome = await client.post(
                        self.url, json=payload, headers=headers, timeout=timeout
                    )
                except httpx.RequestError as exc:
                    outcome = exc
            try:
                action = plan.send(outcome)
            except StopIteration as done:
                return done.value

    # -- shared --

    def _prepare(
        self, request: ModelRequest
    ) -> tuple[dict[str, Any], dict[str, str], httpx.Timeout]:
        return build_payload(request), build_headers(self.api_key), build_timeout(request)

    def _plan(self, request: ModelRequest) -> _Plan:
        """The retry loop, free of I/O: yields ``_SEND`` (gets the outcome back) or ``_Sleep``."""
        try:
            Draft202012Validator.check_schema(request.output_schema)
        except jsonschema.SchemaError as exc:
            raise ProviderError(
                f"{self.name}: output_schema is not a valid JSON Schema: {exc.message}",
                code="bad_request",
            ) from exc
        validator = Draft202012Validator(request.output_schema)
        max_attempts = max(1, request.max_attempts)
        for attempt in range(1, max_attempts + 1):
            outcome = yield _SEND
            assert outcome is not None
            result = _evaluate(outcome, validator)
            if not isinstance(result, Failure):
                output, data = result
                return _to_response(output, data, request, attempt)
            if not result.retryable or attempt == max_attempts:
                raise ProviderError(
                    f"{self.name} call to {request.model!r} failed after {attempt} "
                    f"attempt{'s' if attempt > 1 else ''}: {result.message}",
                    code=result.code,
                    retryable=result.retryable,
                )
            delay = retry_delay(
                result,
                attempt,
                base=self.backoff_base,
                maximum=self.backoff_max,
                jitter=self._jitter,
            )
            logger.warning(
                "%s attempt %d/%d failed (%s: %s); retrying in %.2fs",
                self.name,
                attempt,
                max_attempts,
                result.code,
                result.message,
                delay,
            )
            yield _Sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._owns_async_client and (self._async_client is None or self._async_loop is not loop):
            # A client from a previous (now finished) loop cannot be reused or closed here.
            self._async_client = httpx.AsyncClient(limits=self._limits)
            self._async_loop = loop
        assert self._async_client is not None
        return self._async_client

    async def aclose(self) -> None:
        """Close the async client if this provider created it (one made in an event loop
        that has ended is let go: its connections cannot be closed from another loop)."""
        if self._owns_async_client and self._async_client is not None:
            if self._async_loop is asyncio.get_running_loop():
                await self._async_client.aclose()
            self._async_client = None
            self._async_loop = None

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _evaluate(
    outcome: _Outcome, validator: Draft202012Validator
) -> tuple[dict[str, Any], dict[str, Any]] | Failure:
    """``(output, raw body)`` for a usable answer, else the Failure."""
    if isinstance(outcome, httpx.RequestError):
        return classify_exception(outcome)
    failure = classify_status(outcome)
    if failure is not None:
        return failure
    try:
        data = outcome.json()
    except ValueError:
        return _invalid(f"response body is not JSON: {outcome.text[:_SNIPPET]!r}")
    parsed = parse_completion(data, validator)
    if isinstance(parsed, Failure):
        return parsed
    return parsed, data


def _to_response(
    output: dict[str, Any], data: dict[str, Any], request: ModelRequest, attempts: int
) -> ModelResponse:
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ModelResponse(
        output=output,
        model=str(data.get("model") or request.model),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        attempts=attempts,
        raw=data,
    )
