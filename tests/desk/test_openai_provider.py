"""OpenAIProvider against the fake OpenAI server (real HTTP, no Django)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from desk.providers.base import ModelRequest, ProviderError
from desk.providers.openai import (
    Failure,
    OpenAIProvider,
    backoff_delay,
    parse_retry_after,
    retry_delay,
)
from tests.fakes.openai_server import FakeOpenAIServer, FakeReply, example_from_schema

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "priority": {"type": "string", "enum": ["high", "low"]},
        "score": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "done": {"type": "boolean"},
    },
    "required": ["summary", "priority", "score", "tags", "done"],
    "additionalProperties": False,
}
EXPECTED = {"summary": "text", "priority": "high", "score": 1, "tags": ["text"], "done": True}


def make_request(**overrides: Any) -> ModelRequest:
    fields: dict[str, Any] = {
        "prompt": "Summarise the ticket",
        "output_schema": SCHEMA,
        "model": "gpt-test",
        "system": "You are a support agent.",
        "timeout_seconds": 5.0,
        "max_attempts": 3,
    }
    fields.update(overrides)
    return ModelRequest(**fields)


def recorder(sleeps: list[float]):
    async def record_async_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return record_async_sleep


def make_provider(server: FakeOpenAIServer, sleeps: list[float], **kwargs: Any) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=server.base_url,
        api_key=kwargs.pop("api_key", "sk-test"),
        async_sleep=recorder(sleeps),
        jitter=lambda delay: 0.0,
        **kwargs,
    )


class Sync:
    """Calls the provider's (only) entry point from a plain test, one event loop a call."""

    def __init__(self, provider: OpenAIProvider):
        self.provider = provider

    def __enter__(self) -> Sync:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def complete(self, request: ModelRequest):
        async def call():
            try:
                return await self.provider.acomplete(request)
            finally:
                await self.provider.aclose()

        return asyncio.run(call())


def sync_provider(server: FakeOpenAIServer, sleeps: list[float], **kwargs: Any) -> Sync:
    return Sync(make_provider(server, sleeps, **kwargs))


# --- one call at a time -------------------------------------------------------------------


def test_success_returns_output_usage_and_sends_schema(fake_openai: FakeOpenAIServer) -> None:
    sleeps: list[float] = []
    with sync_provider(fake_openai, sleeps) as provider:
        response = provider.complete(make_request(temperature=0.2, max_tokens=321))

    assert response.output == EXPECTED
    assert response.model == "gpt-test"
    assert response.attempts == 1
    assert response.prompt_tokens == response.raw["usage"]["prompt_tokens"] > 0
    assert response.completion_tokens == response.raw["usage"]["completion_tokens"] > 0
    assert sleeps == []

    [sent] = fake_openai.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "gpt-test"
    assert sent.body["temperature"] == 0.2
    assert sent.body["max_tokens"] == 321
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Summarise the ticket"},
    ]
    assert sent.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "step_output", "schema": SCHEMA, "strict": True},
    }


def test_exact_usage_and_no_system_message_or_auth_when_not_given(
    fake_openai: FakeOpenAIServer,
) -> None:
    fake_openai.script(FakeReply.output(EXPECTED, usage=(11, 7)))
    with sync_provider(fake_openai, [], api_key="") as provider:
        response = provider.complete(make_request(system=""))

    assert (response.prompt_tokens, response.completion_tokens, response.total_tokens) == (
        11,
        7,
        18,
    )
    [sent] = fake_openai.requests
    assert "authorization" not in sent.headers
    assert sent.body["messages"] == [{"role": "user", "content": "Summarise the ticket"}]


def test_429_then_success_honours_retry_after(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.status(429, headers={"Retry-After": "2"}))
    sleeps: list[float] = []
    with sync_provider(fake_openai, sleeps) as provider:
        response = provider.complete(make_request())

    assert response.output == EXPECTED
    assert response.attempts == 2
    assert sleeps == [2.0]
    assert fake_openai.request_count == 2


def test_retry_after_is_capped(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.status(429, headers={"Retry-After": "1000"}))
    sleeps: list[float] = []
    with sync_provider(fake_openai, sleeps, backoff_max=3.0) as provider:
        assert provider.complete(make_request()).attempts == 2
    assert sleeps == [12.0]


def test_429_every_time_is_rate_limited(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(*[FakeReply.status(429)] * 3)
    sleeps: list[float] = []
    with sync_provider(fake_openai, sleeps) as provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request())
    assert info.value.code == "rate_limited"
    assert fake_openai.request_count == 3
    assert sleeps == [0.5, 1.0]  # no Retry-After: exponential backoff


def test_500_then_success(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.status(500))
    sleeps: list[float] = []
    with sync_provider(fake_openai, sleeps) as provider:
        response = provider.complete(make_request())
    assert response.attempts == 2
    assert response.output == EXPECTED
    assert sleeps == [0.5]


def test_5xx_every_time_is_server_error_with_exponential_backoff(
    fake_openai: FakeOpenAIServer,
) -> None:
    fake_openai.script(*[FakeReply.status(503)] * 4)
    sleeps: list[float] = []
    provider = sync_provider(fake_openai, sleeps, backoff_base=1.0, backoff_max=3.0)
    with provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request(max_attempts=4))
    assert info.value.code == "server_error"
    assert info.value.retryable
    assert "after 4 attempts" in str(info.value)
    assert "503" in str(info.value)
    assert sleeps == [1.0, 2.0, 3.0]


def test_timeout_then_success(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.timeout())
    with sync_provider(fake_openai, []) as provider:
        response = provider.complete(make_request(timeout_seconds=0.3))
    assert response.attempts == 2
    assert response.output == EXPECTED


def test_timeout_every_attempt(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(*[FakeReply.timeout()] * 3)
    with sync_provider(fake_openai, []) as provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request(timeout_seconds=0.3))
    assert info.value.code == "timeout"
    assert fake_openai.request_count == 3


def test_dropped_connection_is_retried(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.disconnect())
    with sync_provider(fake_openai, []) as provider:
        assert provider.complete(make_request()).attempts == 2


def test_unreachable_server_is_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    provider = Sync(
        OpenAIProvider(
            base_url=f"http://127.0.0.1:{port}/v1",
            async_sleep=recorder(sleeps),
            jitter=lambda d: 0.0,
        )
    )
    with provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request(max_attempts=2))
    assert info.value.code == "connection_error"
    assert sleeps == [0.5]


def test_invalid_json_then_success(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.content("not json"))
    with sync_provider(fake_openai, []) as provider:
        response = provider.complete(make_request())
    assert response.attempts == 2
    assert response.output == EXPECTED


def test_invalid_json_every_time(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(*[FakeReply.content("not json")] * 3)
    with sync_provider(fake_openai, []) as provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request())
    assert info.value.code == "invalid_output"
    assert "not valid JSON" in str(info.value)
    assert fake_openai.request_count == 3


@pytest.mark.parametrize(
    "content",
    [
        '{"summary": "a\\u0000b", "priority": "high", "score": 1, "tags": [], "done": true}',
        '{"summary": "\\ud800", "priority": "high", "score": 1, "tags": [], "done": true}',
        '{"summary": "x", "priority": "high", "score": 1, "tags": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"summary": "x", "priority": "high", "score": NaN, "tags": [], "done": true}',
    ],
    ids=["nul", "lone-surrogate", "nested-5000-deep", "nan"],
)
def test_a_model_answer_no_database_can_store_is_retried_not_a_crash(
    fake_openai: FakeOpenAIServer, content: str
) -> None:
    fake_openai.script(FakeReply.content(content))
    with sync_provider(fake_openai, []) as provider:
        response = provider.complete(make_request())
    assert response.attempts == 2
    assert response.output == EXPECTED


def test_output_not_matching_schema_is_retried(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(
        FakeReply.output({**EXPECTED, "priority": "urgent"}),  # not in the enum
        FakeReply.output({"summary": "missing the rest"}),
        FakeReply.output(["not", "an", "object"]),
    )
    with sync_provider(fake_openai, []) as provider:
        response = provider.complete(make_request(max_attempts=4))
    assert response.attempts == 4
    assert response.output == EXPECTED


def test_output_not_matching_schema_every_time(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(*[FakeReply.output({**EXPECTED, "score": 0})] * 2)
    with sync_provider(fake_openai, []) as provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request(max_attempts=2))
    assert info.value.code == "invalid_output"
    assert "score" in str(info.value)


def test_400_fails_at_once(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(FakeReply.status(400, body={"error": {"message": "unknown model"}}))
    sleeps: list[float] = []
    with sync_provider(fake_openai, sleeps) as provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request())
    assert info.value.code == "bad_request"
    assert not info.value.retryable
    assert "unknown model" in str(info.value)
    assert fake_openai.request_count == 1
    assert sleeps == []


def test_invalid_schema_fails_without_calling(fake_openai: FakeOpenAIServer) -> None:
    with sync_provider(fake_openai, []) as provider, pytest.raises(ProviderError) as info:
        provider.complete(make_request(output_schema={"type": "no-such-type"}))
    assert info.value.code == "bad_request"
    assert fake_openai.request_count == 0


def test_injected_client_is_used_and_left_open(fake_openai: FakeOpenAIServer) -> None:
    async def main() -> bool:
        async with httpx.AsyncClient(headers={"X-Trace": "abc"}) as client:
            async with OpenAIProvider(base_url=fake_openai.base_url, async_client=client) as p:
                await p.acomplete(make_request())
            return client.is_closed

    assert asyncio.run(main()) is False
    assert fake_openai.requests[0].headers["x-trace"] == "abc"


# --- async ----------------------------------------------------------------------------------------


def test_acomplete_success(fake_openai: FakeOpenAIServer) -> None:
    async def main() -> Any:
        async with make_provider(fake_openai, []) as provider:
            return await provider.acomplete(make_request())

    response = asyncio.run(main())
    assert response.output == EXPECTED
    assert response.attempts == 1
    assert fake_openai.requests[0].headers["authorization"] == "Bearer sk-test"


def test_acomplete_retries_429_and_invalid_output(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(
        FakeReply.status(429, headers={"Retry-After": "1.5"}), FakeReply.content("{oops")
    )
    sleeps: list[float] = []

    async def main() -> Any:
        async with make_provider(fake_openai, sleeps) as provider:
            return await provider.acomplete(make_request())

    response = asyncio.run(main())
    assert response.attempts == 3
    assert response.output == EXPECTED
    assert sleeps == [1.5, 1.0]


def test_acomplete_timeout_every_attempt(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.script(*[FakeReply.timeout()] * 2)

    async def main() -> None:
        async with make_provider(fake_openai, []) as provider:
            await provider.acomplete(make_request(timeout_seconds=0.3, max_attempts=2))

    with pytest.raises(ProviderError) as info:
        asyncio.run(main())
    assert info.value.code == "timeout"
    assert fake_openai.request_count == 2


def test_concurrent_acomplete_calls_overlap_on_the_server(fake_openai: FakeOpenAIServer) -> None:
    # No answer leaves the server until all 50 calls are in flight together: calls sent one
    # at a time never get there, and then the hold times out with hold_released False.
    fake_openai.hold_until_in_flight(50)

    async def main() -> list[Any]:
        async with make_provider(fake_openai, []) as provider:
            return await asyncio.gather(
                *(
                    provider.acomplete(make_request(prompt=f"ticket {i}", timeout_seconds=30))
                    for i in range(50)
                )
            )

    responses = asyncio.run(main())
    assert [r.output for r in responses] == [EXPECTED] * 50
    assert fake_openai.request_count == 50
    assert fake_openai.hold_released
    assert fake_openai.peak_in_flight == 50


# --- retry policy (pure functions) ----------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "3"}) == 0.25
    assert parse_retry_after({"Retry-After": "-4"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < (parse_retry_after({"Retry-After": future}) or 0) <= 120


def test_retry_delay_policy() -> None:
    server_error = Failure("server_error", "boom", retryable=True)
    delays = [
        retry_delay(server_error, n, base=0.5, maximum=8.0, jitter=lambda d: 0.0)
        for n in range(1, 8)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert retry_delay(server_error, 1, base=0.5, maximum=8.0, jitter=lambda d: d / 10) == 0.55
    limited = Failure("rate_limited", "slow down", retryable=True, retry_after=100.0)
    assert retry_delay(limited, 1, base=0.5, maximum=8.0, jitter=lambda d: 1.0) == 32.0
    assert backoff_delay(3, base=0.25, maximum=10.0) == 1.0


def test_example_from_schema_handles_refs_and_nullable_types() -> None:
    schema = {
        "type": "object",
        "$defs": {"step": {"type": "object", "properties": {"n": {"type": "number"}}}},
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 2},
            "note": {"type": ["string", "null"]},
            "kind": {"anyOf": [{"const": "a"}, {"const": "b"}]},
        },
        "required": ["steps", "note", "kind"],
    }
    assert example_from_schema(schema) == {
        "steps": [{"n": 0}, {"n": 0}],
        "note": "text",
        "kind": "a",
    }
