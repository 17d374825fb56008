"""``make demo`` (``orchestration/demo.py``): its Dagster instance keeps no secrets at rest."""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from pathlib import Path

import dagster as dg
import httpx2
import pytest
from cryptography.fernet import Fernet

from klaviyo_sandbox.seed import DEMO_OAUTH_CLIENT_SECRET
from orchestration import demo
from orchestration.assets.klaviyo import klaviyo_segment_sync
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource


def stored_text(dagster_home: Path) -> str:
    """Every value in the instance's SQLite files, zlib-compressed blobs (the snapshots) decompressed."""
    values: list[str] = []
    for database in sorted(dagster_home.rglob("*.db")):
        with contextlib.closing(sqlite3.connect(database)) as conn:
            tables = [row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")]
            for table in tables:
                for row in conn.execute(f'select * from "{table}"'):
                    for value in row:
                        if isinstance(value, bytes):
                            with contextlib.suppress(zlib.error):
                                value = zlib.decompress(value)
                            value = value.decode(errors="replace")
                        values.append(str(value))
    return "\n".join(values)


def test_demo_runs_keep_the_client_secret_and_encryption_key_out_of_the_dagster_instance(
    make_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = make_sandbox(seed="empty", rate_limits="off")  # the demo's OAuth app, bare accounts
    key = Fernet.generate_key().decode()
    env = demo.demo_env(running.base_url, key, demo_dir=tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    klaviyo = KlaviyoResource.from_env_vars()  # as the demo builds it
    accounts = httpx2.get(f"{running.base_url}/_sandbox/accounts", timeout=30).json()["data"]
    shop = demo.SHOPS[0]
    demo.connect_shops(klaviyo, (shop,), accounts)

    with demo.demo_instance(tmp_path / "dagster") as instance:
        instance.add_dynamic_partitions(klaviyo_accounts.name, [shop])
        result = dg.materialize(
            [klaviyo_segment_sync],
            partition_key=shop,
            instance=instance,
            resources={"klaviyo": klaviyo, "warehouse": WarehouseResource(path=env["WAREHOUSE_DUCKDB_PATH"])},
        )
    assert result.success

    stored = stored_text(tmp_path / "dagster")
    assert "encryption_key" in stored  # the job snapshot, with the resource's config, was read
    secrets = {"client secret": DEMO_OAUTH_CLIENT_SECRET, "encryption key": key}
    leaked = [name for name, secret in secrets.items() if secret in stored]  # names only, not the values
    assert leaked == []
