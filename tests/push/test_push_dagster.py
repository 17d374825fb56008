"""The push as Dagster runs it: the partitioned asset with its checks, the 15-minute schedule, the
sensor on landed subscribers, and accounts that are skipped with a visible reason."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from orchestration.assets.push import CONVERGED_CHECK, REJECTIONS_CHECK, subscriber_push
from orchestration.definitions import defs
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import WarehouseResource
from orchestration.sensors.push import (
    RAW_SUBSCRIBERS,
    klaviyo_subscriber_push_schedule,
    recart_subscribers_landed_sensor,
)
from tests.push.test_subscriber_push import CONSENT, email_subscriber


def _instance(*partitions: str) -> dg.DagsterInstance:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(klaviyo_accounts.name, list(partitions))
    return instance


def _resources(world) -> dict:
    return {"klaviyo": world.klaviyo, "warehouse": WarehouseResource(path=str(world.warehouse))}


def test_asset_pushes_reports_figures_and_checks(make_push_world):
    world = make_push_world()
    both = world.create_list("Everyone", "double_opt_in")
    world.configure(email_list_id=both, sms_list_id=both)
    world.land_subscribers(
        *(email_subscriber(n) for n in range(12)),
        {"subscriber_id": "bad", "email": "nope", "email_consent": True, "email_consent_at": CONSENT},
    )
    instance = _instance(world.recart_account_id)

    first = dg.materialize(
        [subscriber_push],
        partition_key=world.recart_account_id,
        resources=_resources(world),
        instance=instance,
    )

    assert first.success
    [materialization] = first.asset_materializations_for_node("klaviyo__subscriber_push")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["subscribed"], meta["rejected"], meta["subscribe_jobs"]) == (12, 1, 1)
    assert meta["historical_import_lists"] == [both] and meta["ledger_subscribed"] == 12
    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    assert checks[CONVERGED_CHECK].passed
    assert (
        not checks[REJECTIONS_CHECK].passed
        and checks[REJECTIONS_CHECK].severity == dg.AssetCheckSeverity.WARN
    )
    assert world.members(both) == {f"person{n}@example.com" for n in range(12)}

    again = dg.materialize(
        [subscriber_push],
        partition_key=world.recart_account_id,
        resources=_resources(world),
        instance=instance,
    )
    [materialization] = again.asset_materializations_for_node("klaviyo__subscriber_push")
    assert materialization.metadata["api_calls"].value == 0


def test_inactive_account_fails_with_its_reason_and_is_not_scheduled(make_push_world):
    world = make_push_world()
    world.configure(email_list_id=world.create_list("Everyone"))
    with world.klaviyo.store() as store:
        store.set_state(world.recart_account_id, "needs_reauth", "refresh token revoked")
    instance = _instance(world.recart_account_id)

    with pytest.raises(dg.Failure, match=r"needs_reauth\. refresh token revoked"):
        dg.materialize(
            [subscriber_push],
            partition_key=world.recart_account_id,
            resources=_resources(world),
            instance=instance,
        )
    with dg.instance_for_test() as persistent:  # schedule contexts need a persistent instance
        persistent.add_dynamic_partitions(klaviyo_accounts.name, [world.recart_account_id])
        with dg.build_schedule_context(
            instance=persistent,
            scheduled_execution_time=datetime(2026, 11, 1, 10, 15, tzinfo=UTC),
            resources=_resources(world),
        ) as context:
            outcome = klaviyo_subscriber_push_schedule(context)
    assert isinstance(outcome, dg.SkipReason)


def test_schedule_and_landing_sensor_request_one_run_per_pushable_account(make_push_world):
    world = make_push_world()
    world.configure(email_list_id=world.create_list("Everyone"))
    at = datetime(2026, 11, 1, 10, 15, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(
            klaviyo_accounts.name, [world.recart_account_id, "shop-without-settings"]
        )
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=at, resources=_resources(world)
        ) as context:
            runs = klaviyo_subscriber_push_schedule(context)
        assert [(r.partition_key, r.run_key) for r in runs] == [
            (world.recart_account_id, f"push:{at.isoformat()}:{world.recart_account_id}")
        ]

        with dg.build_sensor_context(
            instance=instance, resources=_resources(world), definitions=defs
        ) as context:
            assert isinstance(recart_subscribers_landed_sensor(context), dg.SkipReason)
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=RAW_SUBSCRIBERS))
        with dg.build_sensor_context(
            instance=instance, resources=_resources(world), definitions=defs
        ) as context:
            result = recart_subscribers_landed_sensor(context)
        assert [r.partition_key for r in result.run_requests] == [world.recart_account_id]
        assert result.run_requests[0].run_key.startswith("landed:")
        # The same load is not pushed twice.
        with dg.build_sensor_context(
            instance=instance, resources=_resources(world), cursor=result.cursor
        ) as context:
            assert isinstance(recart_subscribers_landed_sensor(context), dg.SkipReason)
