"""A sandbox Klaviyo, an OAuth app, connected shops, and the Dagster resources pointing at them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx2
import pytest
from cryptography.fernet import Fernet

from connectors.klaviyo.connections import Connection
from connectors.klaviyo.oauth import KlaviyoOAuth
from klaviyo_sandbox.server import RunningSandbox
from klaviyo_sandbox.testing import approve_consent
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource

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
def make_world(make_sandbox, tmp_path: Path) -> Iterator[Callable[..., World]]:
    clients: list[httpx2.Client] = []

    def build(rate_limits: str = "x10", seed: str = "demo", client_scopes: list[str] | None = None) -> World:
        running = make_sandbox(seed=seed, rate_limits=rate_limits)
        control = httpx2.Client(base_url=running.base_url, timeout=30)
        clients.append(control)
        body = {"name": "Recart", "redirect_uris": [REDIRECT_URI]}
        if client_scopes is not None:
            body["scopes"] = client_scopes
        app = control.post("/_sandbox/oauth/clients", json=body).json()
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
        accounts = control.get("/_sandbox/accounts").json()["data"]
        return World(running, control, klaviyo, warehouse, accounts)

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def world(make_world) -> World:
    return make_world()
