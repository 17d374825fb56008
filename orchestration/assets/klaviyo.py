"""Klaviyo segments and lists into the warehouse, per connected account (partition).

(No ``from __future__ import annotations`` here: Dagster reads the parameter annotations.)

One run reads the account's catalog and the membership of its segments and lists, incrementally
where it can, and loads both tables in one transaction (see ``orchestration.segment_sync``).
"Sync now" is a materialization from the Dagster UI: one partition or all, optionally for chosen
segments only (run config ``group_ids``) or re-read whole (``force_full``).
"""

import asyncio
from datetime import timedelta

import dagster as dg

from connectors.klaviyo.connections import ConnectionState
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource, require_active_connection
from orchestration.segment_sync import SyncResult, summarize, sync_account

RAW_GROUPS = dg.AssetKey(["klaviyo", "raw_groups"])
RAW_GROUP_MEMBERS = dg.AssetKey(["klaviyo", "raw_group_members"])
GROUP_SYNC_STATUS = dg.AssetKey(["klaviyo", "group_sync_status"])
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26))

MEMBER_COUNT_CHECK = "raw_group_members_match_klaviyo_profile_count"
UNIQUE_CHECK = "raw_group_members_has_one_current_row_per_member"


class SegmentSyncConfig(dg.Config):
    """Run config of a sync (all optional)."""

    group_ids: list[str] = []  # sync only these segments/lists (default: all)
    force_full: bool = False  # re-read every member instead of reading incrementally
    include_outdated: bool = False  # also resync segments marked outdated (unused for 14 days)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            RAW_GROUPS,
            description=(
                "Klaviyo segments and lists per account: name, opt-in process, profile_count, synced_at."
            ),
            kinds={"python", "duckdb"},
            group_name="ingestion",
            freshness_policy=FRESHNESS,
        ),
        dg.AssetSpec(
            RAW_GROUP_MEMBERS,
            description=(
                "Klaviyo segment and list membership as history (SCD-2): one row per membership spell, "
                "valid_from = joined_group_at, valid_to = when the member left (null while a member)."
            ),
            kinds={"python", "duckdb"},
            group_name="ingestion",
            freshness_policy=FRESHNESS,
        ),
        dg.AssetSpec(
            GROUP_SYNC_STATUS,
            description=(
                "Per segment and list: last synced at, joined_group_at watermark, counts, joins, leaves."
            ),
            kinds={"python", "duckdb"},
            group_name="ingestion",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            MEMBER_COUNT_CHECK,
            asset=RAW_GROUP_MEMBERS,
            description="Current members per group equal Klaviyo's profile_count where fetched.",
        ),
        dg.AssetCheckSpec(
            UNIQUE_CHECK,
            asset=RAW_GROUP_MEMBERS,
            blocking=True,
            description="No duplicate (account, group, profile) among current members.",
        ),
    ],
    partitions_def=klaviyo_accounts,
    pool="klaviyo_api",
    can_subset=False,
)
def klaviyo_segment_sync(
    context: dg.AssetExecutionContext,
    config: SegmentSyncConfig,
    klaviyo: KlaviyoResource,
    warehouse: WarehouseResource,
):
    """Sync one account's Klaviyo segments and lists (incremental joins, sweeps only when someone left)."""
    account_id = context.partition_key
    with klaviyo.store() as store:
        require_active_connection(store, account_id)

        async def run() -> SyncResult:
            async with klaviyo.client(store, account_id) as client:
                return await sync_account(
                    client,
                    account_id,
                    warehouse.read,
                    warehouse.write,
                    only_groups=set(config.group_ids) or None,
                    force_full=config.force_full,
                    include_outdated=config.include_outdated,
                )

        result = asyncio.run(run())
    figures = summarize(result)
    context.log.info(
        f"{account_id}: {figures['segments']} groups, {figures['members']} members "
        f"(+{figures['joins']} / -{figures['leaves']}), {figures['api_calls']} API calls, "
        f"{figures['throttled_429s']} throttled, {figures['seconds']}s"
    )
    as_of = result.as_of.isoformat()
    yield dg.MaterializeResult(
        asset_key=RAW_GROUPS,
        metadata={
            "groups": result.groups_in_catalog,
            "as_of": as_of,
            "dagster/row_count": result.groups_in_catalog,
        },
    )
    yield dg.MaterializeResult(asset_key=RAW_GROUP_MEMBERS, metadata={**figures, "as_of": as_of})
    yield dg.MaterializeResult(
        asset_key=GROUP_SYNC_STATUS, metadata={"groups": result.groups_synced, "as_of": as_of}
    )

    mismatched = {
        group_id: {"warehouse": ours, "klaviyo": theirs}
        for group_id, (ours, theirs) in result.counts.items()
        if theirs is not None and ours != theirs
    }
    checked = sum(1 for _, theirs in result.counts.values() if theirs is not None)
    yield dg.AssetCheckResult(
        check_name=MEMBER_COUNT_CHECK,
        asset_key=RAW_GROUP_MEMBERS,
        passed=not mismatched,
        metadata={
            "groups_checked": checked,
            "mismatched_groups": len(mismatched),
            "mismatches": dg.MetadataValue.json(mismatched),
        },
    )
    with warehouse.read() as conn:
        duplicates = conn.execute(
            """
            select count(*) from (
                select group_id, profile_id from klaviyo.raw_group_members
                where account_id = ? and valid_to is null
                group by all having count(*) > 1
            )
            """,
            [account_id],
        ).fetchone()[0]
    yield dg.AssetCheckResult(
        check_name=UNIQUE_CHECK,
        asset_key=RAW_GROUP_MEMBERS,
        passed=duplicates == 0,
        metadata={"duplicate_current_members": duplicates},
    )


@dg.asset_check(
    asset=RAW_GROUP_MEMBERS,
    name="raw_group_members_synced_within_26_hours",
    description="Every active account's groups were synced within the last 26 hours.",
)
def raw_group_members_synced_within_26_hours(
    klaviyo: KlaviyoResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Freshness: an active account whose last sync is older than 26 hours (or missing) fails."""
    with klaviyo.store() as store:
        active = [c.recart_account_id for c in store.list([ConnectionState.ACTIVE])]
    from warehouse.klaviyo_membership import table_exists

    with warehouse.read() as conn:
        last = {}
        if table_exists(conn, "group_sync_status"):
            last = dict(
                conn.execute(
                    "select account_id, min(last_synced_at) from klaviyo.group_sync_status"
                    " group by account_id"
                ).fetchall()
            )
        now = conn.execute("select now()").fetchone()[0]
    stale = {
        account: (last[account].isoformat() if account in last else "never")
        for account in active
        if account not in last or now - last[account] > timedelta(hours=26)
    }
    return dg.AssetCheckResult(
        passed=not stale,
        metadata={
            "active_accounts": len(active),
            "stale_accounts": len(stale),
            "stale": dg.MetadataValue.json(stale),
        },
    )
