"""Shared fixtures: a real Klaviyo sandbox on loopback (see ``klaviyo_sandbox.testing`` for the
spec-validating client), and a world of an OAuth app, connected shops and the Dagster resources
pointing at them (``make_world``: the segment sync, the push)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import httpx2
import pytest
from cryptography.fernet import Fernet

from connectors.klaviyo.connections import Connection
from connectors.klaviyo.oauth import KlaviyoOAuth
from klaviyo_sandbox.server import RunningSandbox, create_sandbox, running_sandbox
from klaviyo_sandbox.testing import approve_consent, register_oauth_app
from orchestration.dbt_manifest import DBT_PROJECT_DIR, parse_if_stale
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def pytest_configure(config: pytest.Config) -> None:
    """``@dbt_assets`` reads dbt's manifest at import (the definitions load it): parse once if stale."""
    parse_if_stale()


@pytest.fixture(scope="session", autouse=True)
def _remove_dbt_target_folders_of_test_warehouses() -> Iterator[None]:
    """Dagster dbt builds keep a target folder per warehouse (``target/warehouse-<hash>``); the
    tests' warehouses live in temporary folders, so their target folders go when the session ends."""
    target = DBT_PROJECT_DIR / "target"
    before = set(target.glob("warehouse-*"))
    yield
    for folder in set(target.glob("warehouse-*")) - before:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def materialize_dbt() -> Callable[..., dg.ExecuteInProcessResult]:
    """Materialize the dbt assets through Dagster against a warehouse file, as of ``as_of`` (a
    datetime, or a string passed as given), as the Dagster asset runs them; failures are returned,
    not raised."""
    from orchestration.assets import dbt as dbt_assets  # needs the dbt manifest (pytest_configure)

    def materialize(
        warehouse_path: str | Path,
        as_of: datetime | str,
        selection: Any = None,
        instance: dg.DagsterInstance | None = None,
    ) -> dg.ExecuteInProcessResult:
        config = dbt_assets.DbtBuildConfig(as_of=as_of if isinstance(as_of, str) else as_of.isoformat())
        warehouse = WarehouseResource(path=str(warehouse_path))
        return dg.materialize(
            [dbt_assets.warehouse_dbt_assets],
            selection=selection,
            resources={"warehouse": warehouse},
            run_config=dg.RunConfig(ops={"warehouse_dbt_assets": config}),
            instance=instance or dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )

    return materialize


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


# ---------------------------------------------------------------------------- a connected world

REDIRECT_URI = "http://127.0.0.1:9/oauth/klaviyo/callback"  # never called: consent is answered directly


@dataclass
class World:
    """Everything a segment-sync test needs."""

    running: RunningSandbox
    control: httpx2.Client
    klaviyo: KlaviyoResource
    warehouse: WarehouseResource
    accounts: list[dict]  # the sandbox's accounts (id, private key, …)

    def connect(self, recart_account_id: str, klaviyo_account_index: int = 0) -> Connection:
        """Connect a Recart account to a sandbox Klaviyo account through the real OAuth flow."""
        with self.klaviyo.store() as store:
            oauth = KlaviyoOAuth(self.klaviyo.settings(), store)
            back = approve_consent(
                oauth.start_authorization(recart_account_id), self.accounts[klaviyo_account_index]["id"]
            )
            return asyncio.run(oauth.complete_authorization(back["state"], code=back["code"]))

    def resources(self) -> dict:
        """Resources for ``dg.materialize``."""
        return {"klaviyo": self.klaviyo, "warehouse": self.warehouse}

    def instance(self, *partitions: str) -> dg.DagsterInstance:
        """An ephemeral instance holding these account partitions."""
        instance = dg.DagsterInstance.ephemeral()
        if partitions:
            instance.add_dynamic_partitions(klaviyo_accounts.name, list(partitions))
        return instance

    def members_at_klaviyo(self, account_index: int, kind: str, group_id: str) -> set[str]:
        """Current members according to the sandbox itself."""
        account = self.accounts[account_index]["id"]
        rows = self.control.get(f"/_sandbox/accounts/{account}/{kind}s/{group_id}/members").json()["data"]
        return {m["profile_id"] for m in rows["members"]}


@pytest.fixture
def make_world(make_sandbox, control, tmp_path: Path) -> Callable[..., World]:
    def build(rate_limits: str = "x10", seed: str = "demo", client_scopes: list[str] | None = None) -> World:
        running = make_sandbox(seed=seed, rate_limits=rate_limits)
        http = control(running)
        app = register_oauth_app(http, REDIRECT_URI, client_scopes)
        klaviyo = KlaviyoResource(
            base_url=running.base_url,
            authorize_url=f"{running.base_url}/oauth/authorize",
            client_id=app["client_id"],
            client_secret=app["client_secret"],
            redirect_uri=REDIRECT_URI,
            state_db=str(tmp_path / "state.db"),
            encryption_key=Fernet.generate_key().decode(),
        )
        warehouse = WarehouseResource(path=str(tmp_path / "warehouse.duckdb"))
        accounts = http.get("/_sandbox/accounts").json()["data"]
        return World(running, http, klaviyo, warehouse, accounts)

    return build


@pytest.fixture
def world(make_world) -> World:
    return make_world()
