"""Pytest fixtures for the fakes; registered via ``pytest_plugins`` in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openai_server import FakeOpenAIServer


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A running fake OpenAI server (no latency, empty script), stopped after the test."""
    with FakeOpenAIServer() as server:
        yield server
