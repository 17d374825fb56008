"""The segment sync materialized through Dagster against the sandbox, into a real DuckDB file."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from orchestration.assets.klaviyo import (
    MEMBER_COUNT_CHECK,
    UNIQUE_CHECK,
    SegmentSyncConfig,
    klaviyo_segment_sync,
    raw_group_members_synced_within_26_hours,
)
from orchestration.definitions import defs

SHOP = "shop-1"


def sync(world, partition: str = SHOP, instance=None, **config) -> dg.ExecuteInJobResult:
    """Materialize the sync for one account partition."""
    return dg.materialize(
        [klaviyo_segment_sync],
        resources=world.resources(),
        partition_key=partition,
        instance=instance or world.instance(partition),
        run_config=dg.RunConfig(ops={"klaviyo_segment_sync": SegmentSyncConfig(**config)})
        if config
        else None,
        raise_on_error=False,
    )


def current_members(world, group_id: str, account: str = SHOP) -> set[str]:
    with world.warehouse.read() as conn:
        rows = conn.execute(
            "select profile_id from klaviyo.raw_group_members"
            " where account_id = ? and group_id = ? and valid_to is null",
            [account, group_id],
        ).fetchall()
    return {r[0] for r in rows}


def member_metadata(result: dg.ExecuteInJobResult) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == dg.AssetKey(["klaviyo", "raw_group_members"])
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def segments_of(world, index: int = 0) -> list[str]:
    account = world.accounts[index]["id"]
    return list(world.running.sandbox.store.accounts[account].segments)


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_first_sync_copies_every_segment_and_list_exactly(world):
    world.connect(SHOP, 0)
    result = sync(world)
    assert result.success
    account = world.running.sandbox.store.accounts[world.accounts[0]["id"]]
    for segment in account.segments.values():
        assert current_members(world, segment.id) == set(segment.members), segment.name
    for klist in account.lists.values():
        assert current_members(world, klist.id) == set(klist.members), klist.name
    meta = member_metadata(result)
    assert meta["segments"] == len(account.segments) + len(account.lists)
    assert meta["members"] == sum(
        len(g.members) for g in (*account.segments.values(), *account.lists.values())
    )
    assert meta["api_calls"] > 0 and meta["leaves"] == 0
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {MEMBER_COUNT_CHECK: True, UNIQUE_CHECK: True}
    with world.warehouse.read() as conn:
        synced = conn.execute(
            "select count(*), min(synced_at) from klaviyo.raw_groups where account_id = ?", [SHOP]
        ).fetchone()
    assert synced[0] == len(account.segments) + len(account.lists) and synced[1] is not None


def test_second_day_finds_exact_joins_and_leaves_with_far_fewer_calls(world):
    world.connect(SHOP, 0)
    day1 = sync(world)
    account_id = world.accounts[0]["id"]
    account = world.running.sandbox.store.accounts[account_id]
    segment = max(account.segments.values(), key=lambda s: len(s.members))
    before = set(segment.members)
    leaving = sorted(before)[:25]
    outsiders = sorted(set(account.profiles) - before)[:40]
    world.control.post(
        f"/_sandbox/accounts/{account_id}/segments/{segment.id}/members",
        json={"remove": leaving, "add": outsiders},
    )
    day2 = sync(world, instance=None)
    assert day2.success
    assert current_members(world, segment.id) == (before - set(leaving)) | set(outsiders)
    with world.warehouse.read() as conn:
        left = {
            r[0]
            for r in conn.execute(
                "select profile_id from klaviyo.raw_group_members"
                " where group_id = ? and valid_to is not null",
                [segment.id],
            ).fetchall()
        }
        joined_today = {
            r[0]
            for r in conn.execute(
                "select profile_id from klaviyo.raw_group_members where group_id = ? and valid_from >= ?",
                [segment.id, datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)],
            ).fetchall()
        }
    assert left == set(leaving)
    assert set(outsiders) <= joined_today
    meta1, meta2 = member_metadata(day1), member_metadata(day2)
    assert (meta2["joins"], meta2["leaves"]) == (40, 25)
    assert meta2["sweeps"] == 1  # only the changed segment is re-read
    assert meta2["api_calls"] < meta1["api_calls"] / 2


def test_nothing_changed_means_no_member_pages_reread(world):
    world.connect(SHOP, 0)
    sync(world)
    again = member_metadata(sync(world))
    assert (again["joins"], again["leaves"], again["sweeps"]) == (0, 0, 0)


def test_sync_one_segment_on_request(world):
    world.connect(SHOP, 0)
    segment = segments_of(world)[0]
    result = sync(world, group_ids=[segment])
    assert result.success and member_metadata(result)["segments"] == 1
    with world.warehouse.read() as conn:
        groups = conn.execute("select distinct group_id from klaviyo.raw_group_members").fetchall()
    assert groups == [(segment,)]


def test_unknown_segment_on_request_fails_naming_it(world):
    world.connect(SHOP, 0)
    result = sync(world, group_ids=["NOPE42"])
    assert not result.success
    assert "NOPE42" in str(result.get_step_failure_events()[0].event_specific_data.error)


def test_failure_mid_extraction_leaves_the_last_snapshot_intact(world):
    world.connect(SHOP, 0)
    assert sync(world).success
    with world.warehouse.read() as conn:
        before = conn.execute("select * from klaviyo.raw_group_members order by all").fetchall()
        status_before = conn.execute("select * from klaviyo.group_sync_status order by all").fetchall()
    account_id = world.accounts[0]["id"]
    segment = segments_of(world)[0]
    world.control.post(
        f"/_sandbox/accounts/{account_id}/segments/{segment}/members",
        json={
            "remove": sorted(world.running.sandbox.store.accounts[account_id].segments[segment].members)[:5]
        },
    )
    # every members page now fails (beyond the client's retries) while the catalog still answers
    world.control.put(
        "/_sandbox/faults", json={"error_rate": 1.0, "statuses": [503], "path_prefix": "/api/segments/"}
    )
    result = sync(world)
    assert not result.success
    with world.warehouse.read() as conn:
        assert conn.execute("select * from klaviyo.raw_group_members order by all").fetchall() == before
        assert (
            conn.execute("select * from klaviyo.group_sync_status order by all").fetchall() == status_before
        )


def test_inactive_account_is_refused_with_a_visible_reason_and_no_api_call(world):
    world.connect(SHOP, 0)
    with world.klaviyo.store() as store:
        from connectors.klaviyo.connections import ConnectionState

        store.set_state(SHOP, ConnectionState.INACTIVE, "switched off by the shop")
    world.control.delete("/_sandbox/requests")
    result = sync(world)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert "inactive" in str(failure)
    assert world.control.get("/_sandbox/requests").json()["data"] == []


def test_freshness_check(world):
    world.connect(SHOP, 0)
    check = raw_group_members_synced_within_26_hours(world.klaviyo, world.warehouse)
    assert not check.passed  # connected, never synced
    sync(world)
    assert raw_group_members_synced_within_26_hours(world.klaviyo, world.warehouse).passed


@pytest.mark.parametrize("accounts", [2])
def test_two_accounts_never_mix(world, accounts):
    world.connect("shop-a", 0)
    world.connect("shop-b", 1)
    instance = world.instance("shop-a", "shop-b")
    assert sync(world, "shop-a", instance).success and sync(world, "shop-b", instance).success
    store = world.running.sandbox.store
    a, b = (store.accounts[world.accounts[i]["id"]] for i in (0, 1))
    with world.warehouse.read() as conn:
        groups = dict(
            conn.execute(
                "select account_id, list(distinct group_id) from klaviyo.raw_group_members group by 1"
            ).fetchall()
        )
    assert set(groups["shop-a"]) == set(a.segments) | set(a.lists)
    assert set(groups["shop-b"]) == set(b.segments) | set(b.lists)


def mark_outdated(world, group_ids: list[str], account: str = SHOP) -> None:
    """What dbt's ``marts.klaviyo_group_usage`` says after 14 days without use."""
    with world.warehouse.write() as conn:
        conn.execute("create schema if not exists marts")
        conn.execute(
            "create or replace table marts.klaviyo_group_usage"
            " (account_id varchar, group_id varchar, is_outdated boolean)"
        )
        conn.executemany(
            "insert into marts.klaviyo_group_usage values (?, ?, true)", [(account, g) for g in group_ids]
        )


def last_synced(world, group_id: str):
    with world.warehouse.read() as conn:
        return conn.execute(
            "select last_synced_at from klaviyo.group_sync_status where account_id = ? and group_id = ?",
            [SHOP, group_id],
        ).fetchone()[0]


def test_outdated_segments_stop_syncing_and_a_resync_brings_one_back(world):
    world.connect(SHOP, 0)
    assert sync(world).success
    outdated = segments_of(world)[:2]
    mark_outdated(world, outdated)
    before = last_synced(world, outdated[0])
    daily = sync(world)
    meta = member_metadata(daily)
    assert meta["outdated_skipped"] == 2
    assert last_synced(world, outdated[0]) == before  # not synced: still readable, with its old as-of
    assert current_members(world, outdated[0])  # last snapshot kept
    fresh = segments_of(world)[2]
    assert last_synced(world, fresh) > before
    resync = sync(world, group_ids=[outdated[0]])  # the operator asks for one outdated segment
    assert resync.success and member_metadata(resync)["segments"] == 1
    assert last_synced(world, outdated[0]) > before
    everything = member_metadata(sync(world, include_outdated=True))  # or all of them at once
    assert everything["outdated_skipped"] == 0
    assert last_synced(world, outdated[1]) > before
