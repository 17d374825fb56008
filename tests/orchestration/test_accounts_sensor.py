"""The accounts sensor keeps partitions in step with the connection store; the daily schedule."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import dagster as dg

from connectors.klaviyo.connections import ConnectionState
from connectors.klaviyo.oauth import KlaviyoOAuth
from orchestration.partitions import klaviyo_accounts
from orchestration.sensors.accounts import klaviyo_accounts_sensor, klaviyo_daily_segment_sync_schedule


def evaluate(world, instance: dg.DagsterInstance, cursor: str | None = None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"klaviyo": world.klaviyo}
    ) as context:
        result = klaviyo_accounts_sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def test_partitions_follow_connections(world):
    instance = dg.DagsterInstance.ephemeral()
    skipped = evaluate(world, instance)
    assert isinstance(skipped, dg.SkipReason)

    world.connect("shop-1", 0)
    world.connect("shop-2", 1)
    added = evaluate(world, instance)
    assert sorted(instance.get_dynamic_partitions(klaviyo_accounts.name)) == ["shop-1", "shop-2"]
    assert sorted(r.partition_key for r in added.run_requests) == ["shop-1", "shop-2"]  # first sync at once

    with world.klaviyo.store() as store:
        store.set_state("shop-2", ConnectionState.NEEDS_REAUTH, "refresh failed: invalid_grant")
        oauth = KlaviyoOAuth(world.klaviyo.settings(), store)
        asyncio.run(oauth.disconnect("shop-1"))
    changed = evaluate(world, instance, added.cursor)
    assert instance.get_dynamic_partitions(klaviyo_accounts.name) == ["shop-2"]
    assert changed.run_requests == []
    assert "shop-2: needs_reauth (refresh failed: invalid_grant)" in json.loads(changed.cursor)["skipped"]

    quiet = evaluate(world, instance, changed.cursor)
    assert isinstance(quiet, dg.SkipReason) and "shop-2: needs_reauth" in str(quiet.skip_message)


def test_daily_schedule_requests_active_accounts_only(world):
    world.connect("shop-1", 0)
    world.connect("shop-2", 1)
    with world.klaviyo.store() as store:
        store.set_state("shop-2", ConnectionState.INACTIVE, "switched off by the shop")
    with dg.instance_for_test() as instance:  # schedule contexts need a persistent instance
        instance.add_dynamic_partitions(klaviyo_accounts.name, ["shop-1", "shop-2"])
        with dg.build_schedule_context(
            instance=instance,
            resources={"klaviyo": world.klaviyo},
            scheduled_execution_time=datetime(2026, 11, 30, 3, 0, tzinfo=UTC),
        ) as context:
            requests = klaviyo_daily_segment_sync_schedule(context)
    assert [(r.partition_key, r.run_key) for r in requests] == [("shop-1", "daily:2026-11-30:shop-1")]
