"""Shared fixtures: a real Klaviyo sandbox on loopback (see ``klaviyo_sandbox.testing`` for the
spec-validating client)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx2
import pytest

from klaviyo_sandbox.server import RunningSandbox, create_sandbox, running_sandbox
from orchestration.dbt_manifest import parse_if_stale

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def pytest_configure(config: pytest.Config) -> None:
    """``@dbt_assets`` reads dbt's manifest at import (the definitions load it): parse once if stale."""
    parse_if_stale()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[RunningSandbox]:
    """The demo-seeded sandbox shared by read-mostly tests (rate limits off)."""
    with running_sandbox(create_sandbox("demo", rate_limits="off")) as running:
        yield running


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., RunningSandbox]]:
    """Start a fresh sandbox with options (``seed``, ``rate_limits``, ``access_token_ttl_seconds``, …)."""
    with ExitStack() as stack:

        def start(seed: str = "demo", **options: Any) -> RunningSandbox:
            return stack.enter_context(running_sandbox(create_sandbox(seed, **options)))

        yield start


@pytest.fixture
def control() -> Callable[[RunningSandbox], httpx2.Client]:
    """A plain client for a sandbox's /_sandbox/ control API."""
    clients: list[httpx2.Client] = []

    def open_client(running: RunningSandbox) -> httpx2.Client:
        client = httpx2.Client(base_url=running.base_url, timeout=30)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()
