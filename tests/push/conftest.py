"""A connected shop, its Klaviyo lists in the sandbox, and a warehouse holding the push's dbt view.

The desired-state view (``push.klaviyo_push_desired_state``) is built once per session by real dbt
on an empty warehouse; each test copies that file and lands its own Recart subscriber rows.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import duckdb
import httpx2
import pandas as pd
import pytest

from connectors.klaviyo.push_settings import PushSettings, validate_push_settings
from connectors.recart.models import all_ddl
from klaviyo_sandbox.server import RunningSandbox
from orchestration.dbt_manifest import run_dbt
from orchestration.resources import KlaviyoResource
from orchestration.subscriber_push import PushPlan, PushResult, ledger_of_connection, push_account

RECART_ACCOUNT = "shop-push"
RAW_SUBSCRIBER_TYPES = {
    **dict.fromkeys(
        ("account_id", "subscriber_id", "email", "phone", "external_id", "source", "_file"), "varchar"
    ),
    **dict.fromkeys(("email_consent", "sms_consent", "deleted"), "boolean"),
    **dict.fromkeys(
        (
            "email_consent_at",
            "sms_consent_at",
            "email_opted_out_at",
            "sms_opted_out_at",
            "created_at",
            "updated_at",
            "_loaded_at",
        ),
        "timestamptz",
    ),
    "_row": "bigint",
    "custom_attributes": "json",
}


def build_push_view(database: Path, work: Path) -> None:
    """Create Recart's raw tables and ``dbt run`` the push's desired-state view into ``database``."""
    conn = duckdb.connect(str(database))
    for statement in all_ddl():
        conn.execute(statement)
    conn.close()
    done = run_dbt(["run", "--select", "klaviyo_push_desired_state"], database, work)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def push_view_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty warehouse with the push's dbt view (copied by each test)."""
    work = tmp_path_factory.mktemp("push_view")
    database = work / "warehouse.duckdb"
    build_push_view(database, work)
    return database


@dataclass
class PushWorld:
    """A sandbox Klaviyo account connected through OAuth, and Recart data in a warehouse."""

    running: RunningSandbox
    control: httpx2.Client
    klaviyo: KlaviyoResource
    warehouse: Path
    account_id: str  # the sandbox (Klaviyo) account
    connect: Callable[[str, int], Any]  # World.connect: (Recart account, sandbox account index)
    accounts: list[dict]  # the sandbox's accounts
    recart_account_id: str = RECART_ACCOUNT
    _rows: count = field(default_factory=lambda: count(1))

    def switch_klaviyo_account(self, index: int) -> None:
        """The shop connects (through OAuth) to another of the sandbox's Klaviyo accounts."""
        self.connect(self.recart_account_id, index)
        self.account_id = self.accounts[index]["id"]

    # ----------------------------------------------------------------- Klaviyo side

    def create_list(self, name: str, opt_in_process: str = "single_opt_in") -> str:
        """A new list in the sandbox account."""
        response = self.control.post(
            f"/_sandbox/accounts/{self.account_id}/lists",
            json={"name": name, "opt_in_process": opt_in_process},
        )
        assert response.status_code == 201, response.text
        return response.json()["data"]["id"]

    def profile(self, ref: str) -> dict[str, Any] | None:
        """The sandbox's view of a profile (consent, lists, suppressions), or None."""
        response = self.control.get(f"/_sandbox/accounts/{self.account_id}/profiles/{ref}")
        return None if response.status_code == 404 else response.json()["data"]

    def members(self, list_id: str) -> set[str]:
        """Emails and phone numbers of a list's members."""
        rows = self.control.get(f"/_sandbox/accounts/{self.account_id}/lists/{list_id}/members").json()[
            "data"
        ]
        return {v for member in rows["members"] for v in (member["email"], member["phone_number"]) if v}

    def confirmation_emails(self) -> list[dict]:
        """Double-opt-in confirmation emails the sandbox 'sent'."""
        return self.control.get(f"/_sandbox/accounts/{self.account_id}/confirmation-emails").json()["data"]

    def subscription_jobs(self) -> list[dict]:
        """Bulk subscribe / unsubscribe jobs the sandbox received."""
        return self.control.get(f"/_sandbox/accounts/{self.account_id}/subscription-jobs").json()["data"]

    def api_calls(self, path_prefix: str = "/api/profile-subscription") -> list[dict]:
        """Logged /api/ requests of this account under ``path_prefix``."""
        rows = self.control.get(
            "/_sandbox/requests", params={"account_id": self.account_id, "path_prefix": path_prefix}
        ).json()["data"]
        return rows

    # ----------------------------------------------------------------- Recart side

    def land_subscribers(self, *rows: dict[str, Any], account_id: str | None = None) -> None:
        """Append subscriber change rows to recart.raw_subscribers, as the landing loader would."""
        now = datetime.now(UTC)
        records = []
        for row in rows:
            n = next(self._rows)
            records.append(
                {
                    "account_id": account_id or self.recart_account_id,
                    "updated_at": row.get("updated_at", now),
                    "_file": f"test/{n}.jsonl",
                    "_row": n,
                    "_loaded_at": now,
                    **row,
                }
            )
        columns = sorted({name for record in records for name in record})
        frame = pd.DataFrame({c: [r.get(c) for r in records] for c in columns}, dtype="object")
        conn = duckdb.connect(str(self.warehouse))
        try:
            conn.register("landed", frame)
            casts = ", ".join(f"cast({c} as {RAW_SUBSCRIBER_TYPES[c]}) as {c}" for c in columns)
            conn.execute(f"insert into recart.raw_subscribers by name select {casts} from landed")
        finally:
            conn.close()

    # ----------------------------------------------------------------- the push

    def configure(self, **choices: Any) -> PushSettings:
        """Validate and save push settings (``email_list_id``, ``sms_list_id``, ``sms_countries``)."""

        async def run() -> PushSettings:
            with self.klaviyo.store() as store:
                async with self.klaviyo.client(store, self.recart_account_id) as client:
                    checked = await validate_push_settings(
                        client, PushSettings(recart_account_id=self.recart_account_id, **choices)
                    )
                return store.set_push_settings(checked)

        return asyncio.run(run())

    def push(self, **options: Any) -> tuple[PushPlan, PushResult | None]:
        """Plan and push the account (``dry_run``, ``concurrency``, …)."""

        async def run() -> tuple[PushPlan, PushResult | None]:
            with (
                self.klaviyo.store() as store,
                ledger_of_connection(store, self.recart_account_id) as ledger,
            ):
                settings = store.push_settings(self.recart_account_id)
                assert settings is not None
                async with self.klaviyo.client(store, self.recart_account_id) as client:
                    return await push_account(client, ledger, settings, self.warehouse, **options)

        return asyncio.run(run())

    def ledger(self) -> dict:
        """The account's ledger entries."""
        with self.klaviyo.store() as store, ledger_of_connection(store, self.recart_account_id) as ledger:
            return ledger.entries(self.recart_account_id)

    def rejections(self) -> list[tuple]:
        """``(subscriber_id, channel, reason, stage)`` rows of klaviyo_push.rejections."""
        conn = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            return conn.execute(
                "select subscriber_id, channel, reason, stage from klaviyo_push.rejections"
                " where account_id = ? order by subscriber_id, channel",
                [self.recart_account_id],
            ).fetchall()
        finally:
            conn.close()


@pytest.fixture
def make_push_world(make_world, push_view_warehouse: Path, tmp_path: Path) -> Callable[..., PushWorld]:
    """Build a PushWorld: the ``empty`` seed (accounts without data), rate limits off by default,
    one shop connected through the real OAuth flow (``make_world``)."""

    def build(rate_limits: str = "off", account_index: int = 0) -> PushWorld:
        world = make_world(rate_limits=rate_limits, seed="empty")
        world.connect(RECART_ACCOUNT, account_index)
        warehouse = tmp_path / "warehouse.duckdb"
        shutil.copyfile(push_view_warehouse, warehouse)
        return PushWorld(
            world.running,
            world.control,
            world.klaviyo,
            warehouse,
            world.accounts[account_index]["id"],
            world.connect,
            world.accounts,
        )

    return build
