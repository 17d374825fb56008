"""``make demo``: the main job end to end on the embedded default (sandbox Klaviyo + SQLite + DuckDB).

1. Starts the Klaviyo sandbox (demo seed, Klaviyo's own rate limits) on 127.0.0.1:8765, its state
   kept in ``.state/demo/sandbox.json`` so ``make dev`` can serve the same world afterwards.
2. Connects the demo shops through the real OAuth flow (PKCE, consent answered by the script
   instead of a person), tokens encrypted in ``.state/demo/state.db``.
3. Materializes the segment sync through Dagster for every shop (a persistent Dagster instance in
   ``.state/demo/dagster``, so the runs show up in the UI), changes segment membership at Klaviyo as
   a day would, syncs again, and prints what was synced, what changed and where the data is.
4. Writes Recart's demo data (the same people) to the landing zone, loads it and builds the dbt
   project through Dagster, and prints each analyst segment's size per shop.
5. Chooses each shop's Klaviyo lists (validated at Klaviyo), pushes the consented subscribers and
   opt-outs through Dagster (``klaviyo/subscriber_push``), then pushes again: nothing to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import dagster as dg
import httpx2
from cryptography.fernet import Fernet

from connectors.klaviyo.oauth import KlaviyoOAuth
from klaviyo_sandbox.app import SandboxApp
from klaviyo_sandbox.seed import DEMO_OAUTH_CLIENT_ID, DEMO_OAUTH_CLIENT_SECRET, DEMO_REDIRECT_URIS
from klaviyo_sandbox.server import create_sandbox, running_sandbox
from klaviyo_sandbox.testing import approve_consent
from orchestration.assets.klaviyo import klaviyo_segment_sync
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / ".state" / "demo"
PORT = int(os.environ.get("KLAVIYO_SANDBOX_PORT", "8765"))
SHOPS = ("acme-outdoor", "bloom-beauty", "maple-moss")


def _write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable and writable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies to new files only
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def _encryption_key() -> str:
    """The demo's Fernet key, created once (a real deployment takes it from its secret store)."""
    path = DEMO_DIR / "encryption.key"
    if not path.exists():
        _write_private(path, Fernet.generate_key().decode())
    return path.read_text().strip()


def demo_env(base_url: str, key: str, demo_dir: Path = DEMO_DIR) -> dict[str, str]:
    """The demo's settings, secrets included: the demo sets them in its own process (the resources
    read them through ``dg.EnvVar``) and writes them to ``.env`` for ``dg dev``."""
    return {
        "KLAVIYO_BASE_URL": base_url,
        "KLAVIYO_AUTHORIZE_URL": f"{base_url}/oauth/authorize",
        "KLAVIYO_CLIENT_ID": DEMO_OAUTH_CLIENT_ID,
        "KLAVIYO_CLIENT_SECRET": DEMO_OAUTH_CLIENT_SECRET,
        "KLAVIYO_REDIRECT_URI": DEMO_REDIRECT_URIS[0],
        "RECART_STATE_DB": str(demo_dir / "state.db"),
        "RECART_ENCRYPTION_KEY": key,
        "WAREHOUSE_DUCKDB_PATH": str(demo_dir / "warehouse.duckdb"),
        "RECART_LANDING_PATH": str(demo_dir / "landing"),
        "DAGSTER_HOME": str(demo_dir / "dagster"),
    }


def write_env(env: dict[str, str]) -> Path:
    """``.env`` for ``dg dev`` / ``make dev``: the same sandbox, store and warehouse as the demo.

    ``make dev`` sources it into ``dg dev``'s environment, so it holds the demo's OAuth client
    secret and Fernet key in plain text, like a developer's own ``.env``: owner-only (0600), ignored
    by git, rewritten by every demo. Dagster itself stores only the variables' names.
    """
    header = "# Written by make demo for make dev. Holds the client secret and the encryption key.\n"
    return _write_private(ROOT / ".env", header + "".join(f"{k}={v}\n" for k, v in env.items()))


def demo_instance(dagster_home: Path) -> dg.DagsterInstance:
    """The persistent Dagster instance in ``dagster_home``, with the embedded default's settings."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_yaml = dagster_home / "dagster.yaml"
    if not instance_yaml.exists():
        instance_yaml.write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    return dg.DagsterInstance.from_config(str(dagster_home))


def connect_shops(klaviyo: KlaviyoResource, shops: tuple[str, ...], accounts: list[dict]) -> None:
    """Connect each shop to its sandbox account through the real OAuth flow, consent answered here."""
    resolved = klaviyo.process_config_and_initialize()
    with resolved.store() as store:
        oauth = KlaviyoOAuth(resolved.settings(), store)
        for shop, account in zip(shops, accounts, strict=False):
            back = approve_consent(oauth.start_authorization(shop), account["id"])
            connection = asyncio.run(oauth.complete_authorization(back["state"], code=back["code"]))
            print(
                f"  connected {shop:<13} → Klaviyo {connection.klaviyo_account_id} "
                f"({account['name']}): {connection.state.value}, {len(connection.granted_scopes)} scopes"
            )


def recart_and_dbt(instance: dg.DagsterInstance, warehouse: WarehouseResource) -> None:
    """Recart's demo data into the landing zone, loaded and modelled through Dagster."""
    from connectors.recart.demo_data import generate
    from orchestration.assets import dbt as dbt_assets
    from orchestration.assets.recart import RECART_ASSETS, LandingZoneResource

    landing = DEMO_DIR / "landing"
    generate(landing, scale="demo", overwrite=True)
    print(f"\nRecart demo data (the same people, a share written messily) in {landing}; loading:")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    loaded = dg.materialize(
        list(RECART_ASSETS.values()),
        instance=instance,
        run_config=quiet,
        resources={"landing": LandingZoneResource(path=str(landing)), "warehouse": warehouse},
    )
    for event in loaded.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        print(
            f"  {'/'.join(event.materialization.asset_key.path):<28} "
            f"{meta.get('rows_loaded', 0):>7} rows loaded, {meta.get('rows_rejected', 0)} rejected"
        )
    os.environ["WAREHOUSE_DUCKDB_PATH"] = warehouse.path
    started = time.monotonic()
    # dbt's own console log goes to a file; the summary below is what a person needs here.
    with open(DEMO_DIR / "dbt.log", "w") as log, contextlib.redirect_stdout(log):
        built = dg.materialize(
            [dbt_assets.warehouse_dbt_assets],
            instance=instance,
            # dbt's source tests run by indirect selection and are logged as observations (warnings)
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            resources={"warehouse": warehouse},
        )
    print(
        f"  dbt build through Dagster: {'ok' if built.success else 'FAILED'} "
        f"({len(built.get_asset_materialization_events())} models, {time.monotonic() - started:.0f}s; "
        f"dbt's log: {DEMO_DIR / 'dbt.log'})"
    )

    from warehouse.duckdb_file import read_connection

    with read_connection(warehouse.path) as conn:
        sizes = conn.execute(
            """
            select account_id, segment_name, count(*), min(klaviyo_as_of)
            from marts.segment_members group by all order by account_id, segment_name
            """
        ).fetchall()
    print("\nAnalyst segments (marts.segment_members):")
    for account, name, members, as_of in sizes:
        when = f"Klaviyo data as of {as_of:%Y-%m-%d %H:%M} UTC" if as_of else "no Klaviyo data"
        print(f"  {account:<13} {name:<36} {members:>6} subscribers  ({when})")


def land_opt_outs(instance: dg.DagsterInstance, warehouse: WarehouseResource, per_shop: int = 25) -> None:
    """Recart's next change file: some pushed subscribers opt out of email, some text STOP.

    Written to the landing zone as the app's export would (the whole subscriber row, changed) and
    loaded through Dagster, as the landing sensor would do.
    """
    from orchestration.assets.recart import RECART_ASSETS, LandingZoneResource
    from warehouse.duckdb_file import read_connection

    landing = DEMO_DIR / "landing"
    with read_connection(warehouse.path) as conn:
        conn.execute("set timezone = 'UTC'")
        for shop in SHOPS:
            target = landing / "recart" / "subscribers" / shop / "changes-optouts.jsonl"
            conn.execute(
                f"""
                copy (
                    with latest as (
                        select * exclude (_file, _row, _loaded_at)
                        from recart.raw_subscribers
                        where account_id = $shop
                        qualify row_number() over (
                            partition by subscriber_id order by updated_at desc, _loaded_at desc, _row desc
                        ) = 1
                    ),
                    pushed as (
                        select subscriber_id, bool_or(channel = 'sms') as has_sms
                        from push.klaviyo_push_desired_state
                        where account_id = $shop and desired_state = 'subscribed' and rejection_reason is null
                        group by subscriber_id
                        order by subscriber_id
                        limit {per_shop * 2}
                    )
                    select latest.* replace (
                        case when not pushed.has_sms then false else latest.email_consent end
                            as email_consent,
                        case when not pushed.has_sms then now() end as email_opted_out_at,
                        case when pushed.has_sms then false else latest.sms_consent end as sms_consent,
                        case when pushed.has_sms then now() end as sms_opted_out_at,
                        now() as updated_at
                    )
                    from latest join pushed using (subscriber_id)
                ) to '{target}' (format json)
                """,
                {"shop": shop},
            )
    dg.materialize(
        [RECART_ASSETS["subscribers"]],
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        resources={"landing": LandingZoneResource(path=str(landing)), "warehouse": warehouse},
    )


def subscriber_push(
    instance: dg.DagsterInstance,
    klaviyo: KlaviyoResource,
    warehouse: WarehouseResource,
    sandbox: SandboxApp,
    accounts: list[dict],
) -> None:
    """Choose each shop's lists, push its subscribers through Dagster twice, print the figures."""
    from connectors.klaviyo.push_settings import PushSettings, save_push_settings
    from orchestration.assets.push import subscriber_push as push_asset

    print("\nSubscriber push (klaviyo/subscriber_push, Dagster runs; lists checked at Klaviyo):")
    resolved = klaviyo.process_config_and_initialize()  # settings from the environment, outside a run
    with resolved.store() as store:
        for shop, account in zip(SHOPS, accounts, strict=False):
            lists = sorted(sandbox.store.accounts[account["id"]].lists.values(), key=lambda k: k.name)
            double = next((k for k in lists if k.opt_in_process == "double_opt_in"), lists[0])
            single = next((k for k in lists if k.opt_in_process != "double_opt_in"), lists[0])
            # Three shapes: email and SMS apart; one list for both; email only (no SMS at Klaviyo).
            sms = {SHOPS[0]: single, SHOPS[1]: double}.get(shop)
            choice = PushSettings(shop, double.id, sms.id if sms else None, sms_countries=("US", "CA"))
            saved = asyncio.run(save_push_settings(resolved.settings(), store, choice))
            print(
                f"  {shop:<13} email -> {double.name!r} ({double.opt_in_process}), "
                + (f"SMS -> {sms.name!r}" + (" (same list)" if saved.same_list else "") if sms else "no SMS")
            )
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    steps = ("first push", "again, nothing changed", "opt-outs landed (email unsubscribes, SMS STOP)")
    for label in steps:
        if label == steps[2]:
            land_opt_outs(instance, warehouse)
        print(f"  {label}:")
        for shop in SHOPS:
            result = dg.materialize(
                [push_asset],
                partition_key=shop,
                instance=instance,
                resources={"klaviyo": klaviyo, "warehouse": warehouse},
                run_config=quiet,
            )
            [event] = result.get_asset_materialization_events()
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            print(
                f"    {shop:<13} {meta['subscribed']:>5} subscribed {meta['unsubscribed']:>4} unsubscribed "
                f"{meta['rejected']:>4} rejected {meta['unchanged']:>5} unchanged  "
                f"{meta['subscribe_jobs']:>2} subscribe + {meta['unsubscribe_jobs']:>2} unsubscribe jobs, "
                f"{meta['api_calls']:>3} API calls {meta['seconds']:5.1f}s"
            )
    confirmations = sum(len(sandbox.store.accounts[a["id"]].confirmation_emails) for a in accounts)
    print(
        f"  double opt-in confirmation emails sent because of the push: {confirmations} "
        "(historical_import with Recart's consent time); rejections with reasons: klaviyo_push.rejections"
    )


def main() -> None:
    """Run the demo and print its summary."""
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    for stale in ("warehouse.duckdb", "state.db", "sandbox.json"):
        (DEMO_DIR / stale).unlink(missing_ok=True)  # every demo starts from the same world
    key = _encryption_key()
    sandbox = create_sandbox("demo", rate_limits="klaviyo", state=DEMO_DIR / "sandbox.json")
    with running_sandbox(sandbox, port=PORT) as running:
        base = running.base_url
        env = demo_env(base, key)
        os.environ.update(env)  # the resources read them as dg.EnvVar, as under `dg dev`
        env_file = write_env(env)
        # settings from the environment (demo_env): no secret in the Dagster instance's snapshots
        klaviyo = KlaviyoResource.from_env_vars()
        warehouse = WarehouseResource(path=str(DEMO_DIR / "warehouse.duckdb"))
        accounts = httpx2.get(f"{base}/_sandbox/accounts").json()["data"]
        print(f"Klaviyo sandbox at {base}: {len(accounts)} accounts (Klaviyo's rate limits)")
        connect_shops(klaviyo, SHOPS, accounts)

        with demo_instance(DEMO_DIR / "dagster") as instance:
            instance.add_dynamic_partitions(klaviyo_accounts.name, list(SHOPS))

            def sync_all(label: str) -> None:
                print(f"\n{label}")
                for shop in SHOPS:
                    started = time.monotonic()
                    result = dg.materialize(
                        [klaviyo_segment_sync],
                        partition_key=shop,
                        instance=instance,
                        resources={"klaviyo": klaviyo, "warehouse": warehouse},
                        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                    )
                    [event] = [
                        e
                        for e in result.get_asset_materialization_events()
                        if e.materialization.asset_key.path[-1] == "raw_group_members"
                    ]
                    meta = {k: v.value for k, v in event.materialization.metadata.items()}
                    print(
                        f"  {shop:<13} {meta['segments']:>3} segments+lists {meta['members']:>6} members  "
                        f"+{meta['joins']:<5} -{meta['leaves']:<4} {meta['api_calls']:>4} API calls "
                        f"{meta['throttled_429s']} × 429  {time.monotonic() - started:5.1f}s"
                    )

            sync_all("Day 1: first sync of every segment and list (Dagster runs, one per shop)")
            # A day passes at Klaviyo: people leave and join the largest segment of the first shop.
            acme = sandbox.store.accounts[accounts[0]["id"]]
            segment = max(acme.segments.values(), key=lambda s: len(s.members))
            members = sorted(segment.members)
            newcomers = sorted(set(acme.profiles) - set(members))[:120]
            httpx2.post(
                f"{base}/_sandbox/accounts/{acme.id}/segments/{segment.id}/members",
                json={"remove": members[:80], "add": newcomers},
                timeout=30,
            )
            sync_all(f"Day 2: 80 left and 120 joined {segment.name!r}; incremental sync, one sweep")

            recart_and_dbt(instance, warehouse)
            subscriber_push(instance, klaviyo, warehouse, sandbox, accounts)

    from warehouse.duckdb_file import read_connection

    with read_connection(DEMO_DIR / "warehouse.duckdb") as conn:
        rows = conn.execute(
            """
            select s.account_id, g.name, g.group_kind, s.member_count, s.joins, s.leaves, s.last_synced_at
            from klaviyo.group_sync_status as s
            join klaviyo.raw_groups as g using (account_id, group_id)
            where s.account_id = ?
            order by s.member_count desc
            """,
            [SHOPS[0]],
        ).fetchall()
        left = conn.execute(
            "select count(*) from klaviyo.raw_group_members where account_id = ? and valid_to is not null",
            [SHOPS[0]],
        ).fetchone()[0]
    print(f"\n{SHOPS[0]} in the warehouse (as of {rows[0][6]:%Y-%m-%d %H:%M:%S} UTC):")
    for _, name, kind, count, joins, leaves, _ in rows:
        print(f"  {name:<34} {kind:<8} {count:>6} members  (last sync +{joins} -{leaves})")
    print(f"  membership spells closed (people who left): {left}")
    print(
        f"\nwarehouse: {DEMO_DIR / 'warehouse.duckdb'}\n  tables klaviyo.raw_groups, "
        "klaviyo.raw_group_members (history), klaviyo.group_sync_status"
    )
    print(f"connections: {DEMO_DIR / 'state.db'} (tokens encrypted); settings for dg dev: {env_file}")
    print("open the Dagster UI on it: `make dev` (sandbox + http://127.0.0.1:3000)")


if __name__ == "__main__":
    main()
