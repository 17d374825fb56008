"""Outdated Klaviyo segments over 15 simulated days, through the real Dagster assets.

A Recart flow uses an analyst segment that reads two Klaviyo segments; the segment sync (against
the sandbox), the Recart loaders (from a landing zone) and the dbt build (with run config
``as_of``, the simulated day) run as Dagster materializations. Day 0 the flow is active, day 1 it
is paused; at day 15 dbt marks both Klaviyo segments outdated and the daily sync skips them,
keeping their last snapshot and as-of time, until an operator resyncs one (``group_ids``) or all
(``include_outdated``); the flow active again on day 16 brings them back into the daily sync.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from test_segment_sync import SHOP, current_members, last_synced, member_metadata, sync

from orchestration.assets.recart import LandingZoneResource, raw_automated_flows, raw_segment_usages

USAGE = dg.AssetKey(["marts", "klaviyo_group_usage"])
# klaviyo_group_usage and what it is built from (the loaders' raw tables are not dbt's to build);
# marts/segments too: segment_klaviyo_references' relationship test reads it.
DBT_SELECTION = (
    dg.AssetSelection.assets(USAGE).upstream() | dg.AssetSelection.assets(dg.AssetKey(["marts", "segments"]))
) - dg.AssetSelection.key_prefixes(["recart"], ["klaviyo"])
SEGMENT = "clicked_klaviyo_email_no_purchase"  # reads "Clicked email, no purchase" and "Engaged 30 days"


def _land(landing: Path, entity: str, name: str, rows: list[dict]) -> None:
    """A file of the Recart app's change export for SHOP."""
    folder = landing / "recart" / entity / SHOP
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps({"account_id": SHOP, **row}) + "\n" for row in rows))


def _flow(status: str, at: datetime) -> dict:
    return {
        "flow_id": "f-winback",
        "name": "Win back clickers",
        "status": status,
        "trigger": "klaviyo_email_clicked",
        "updated_at": at.isoformat(),
        "deleted": False,
    }


def _load_recart(world, landing: Path, instance: dg.DagsterInstance) -> None:
    result = dg.materialize(
        [raw_automated_flows, raw_segment_usages],
        resources={"warehouse": world.warehouse, "landing": LandingZoneResource(path=str(landing))},
        instance=instance,
    )
    assert result.success


def _build_dbt(world, materialize_dbt, instance: dg.DagsterInstance, as_of: datetime) -> dict[str, tuple]:
    """Build klaviyo_group_usage as of ``as_of``.

    Returns {group_id: (is_in_use, last_used_at, is_outdated, last_synced_at)} of SHOP.
    """
    result = materialize_dbt(world.warehouse.path, as_of, selection=DBT_SELECTION, instance=instance)
    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    assert USAGE in {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    with world.warehouse.read() as conn:
        rows = conn.execute(
            "select group_id, is_in_use, last_used_at, is_outdated, last_synced_at"
            " from marts.klaviyo_group_usage where account_id = ?",
            [SHOP],
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_a_segment_unused_for_15_days_stops_syncing_until_resynced_or_used_again(
    world, tmp_path, monkeypatch, materialize_dbt
):
    # Only tests whose every parent is selected: the others read models this subset does not build.
    monkeypatch.setenv("DBT_INDIRECT_SELECTION", "cautious")
    world.connect(SHOP, 0)
    instance = world.instance(SHOP)
    day0 = datetime.now(UTC)
    landing = tmp_path / "landing"

    def day(n: float) -> datetime:
        return day0 + timedelta(days=n)

    assert sync(world, instance=instance).success  # day 0: every segment and list
    with world.warehouse.read() as conn:
        ids = dict(
            conn.execute(
                "select name, group_id from klaviyo.raw_groups"
                " where account_id = ? and group_kind = 'segment'",
                [SHOP],
            ).fetchall()
        )
    clicked, engaged = ids["Clicked email, no purchase"], ids["Engaged 30 days"]
    unused = next(gid for name, gid in sorted(ids.items()) if gid not in (clicked, engaged))

    # Day 0: the active win-back flow uses the analyst segment.
    _land(landing, "automated_flows", "day-00.jsonl", [_flow("active", day(-0.1))])
    _land(
        landing,
        "segment_usages",
        "day-00.jsonl",
        [
            {
                "consumer_type": "flow",
                "consumer_id": "f-winback",
                "segment_name": SEGMENT,
                "updated_at": day(-0.1).isoformat(),
                "deleted": False,
            }
        ],
    )
    _load_recart(world, landing, instance)
    usage = _build_dbt(world, materialize_dbt, instance, day(0.5))
    assert usage[clicked][:3] == (True, day(0.5), False)
    assert usage[engaged][0] and not usage[engaged][2]

    # Day 1: the flow is paused. 14 days later the segments are not outdated yet, 15 days later they are.
    _land(landing, "automated_flows", "day-01.jsonl", [_flow("paused", day(1))])
    _load_recart(world, landing, instance)
    assert _build_dbt(world, materialize_dbt, instance, day(14.5))[clicked][:3] == (False, day(1), False)
    usage = _build_dbt(world, materialize_dbt, instance, day(15.5))
    synced_on_day0 = last_synced(world, clicked)
    assert usage[clicked] == (False, day(1), True, synced_on_day0)
    assert usage[engaged][2] and usage[unused][2]  # never used: outdated 15 days after first seen

    # The daily sync skips the outdated segments: last snapshot and as-of time kept.
    members = current_members(world, clicked)
    assert members
    daily = sync(world, instance=instance)
    assert daily.success and member_metadata(daily)["outdated_skipped"] >= 3
    assert last_synced(world, clicked) == synced_on_day0
    assert current_members(world, clicked) == members

    # An operator resyncs one on demand, then all of them.
    assert sync(world, instance=instance, group_ids=[clicked]).success
    assert last_synced(world, clicked) > synced_on_day0
    assert last_synced(world, engaged) == synced_on_day0
    everything = sync(world, instance=instance, include_outdated=True)
    assert member_metadata(everything)["outdated_skipped"] == 0
    assert last_synced(world, engaged) > synced_on_day0

    # Day 16: the flow is active again; both segments are back in the daily sync, the unused one is not.
    _land(landing, "automated_flows", "day-16.jsonl", [_flow("active", day(16))])
    _load_recart(world, landing, instance)
    usage = _build_dbt(world, materialize_dbt, instance, day(16.5))
    assert usage[clicked][:3] == (True, day(16.5), False) and not usage[engaged][2]
    before = {gid: last_synced(world, gid) for gid in (clicked, engaged, unused)}
    assert sync(world, instance=instance).success
    assert last_synced(world, clicked) > before[clicked]
    assert last_synced(world, engaged) > before[engaged]
    assert last_synced(world, unused) == before[unused]
