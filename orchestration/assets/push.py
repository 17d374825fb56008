"""The subscriber push as a Dagster asset, per connected account (partition).

(No ``from __future__ import annotations`` here: Dagster reads the parameter annotations.)

``klaviyo/subscriber_push`` sends the difference between the dbt view
``push/klaviyo_push_desired_state`` and the push ledger to the account's Klaviyo lists
(``orchestration.subscriber_push``). It runs every 15 minutes and as soon as new Recart subscribers
land (``orchestration.sensors.push``); a materialization from the UI pushes now. Checks: every planned
change was answered by Klaviyo (blocking), and no row was rejected (a warning: the rows and reasons are in
``klaviyo_push.rejections``).
"""

import asyncio
from collections import Counter

import dagster as dg

from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource, require_active_connection
from orchestration.subscriber_push import (
    DEFAULT_MAX_KLAVIYO_REJECTIONS,
    PushNotConfigured,
    ledger_of_connection,
    push_connected_account,
)

SUBSCRIBER_PUSH = dg.AssetKey(["klaviyo", "subscriber_push"])
DESIRED_STATE = dg.AssetKey(["push", "klaviyo_push_desired_state"])
CONVERGED_CHECK = "subscriber_push_left_nothing_unpushed"
REJECTIONS_CHECK = "subscriber_push_has_no_rejections"


class SubscriberPushConfig(dg.Config):
    """Run config of a push (all optional)."""

    # Stop the run when Klaviyo refuses more rows than this (a setup problem, not bad rows).
    max_klaviyo_rejections: int = DEFAULT_MAX_KLAVIYO_REJECTIONS


@dg.asset(
    key=SUBSCRIBER_PUSH,
    deps=[DESIRED_STATE],
    description=(
        "Recart subscribers with consent, pushed into the shop's Klaviyo lists (bulk subscribe, single "
        "opt-in); Recart opt-outs pushed as unsubscribes. Only the difference to the ledger is sent."
    ),
    kinds={"python", "klaviyo"},
    group_name="push",
    partitions_def=klaviyo_accounts,
    pool="klaviyo_push",
    check_specs=[
        dg.AssetCheckSpec(
            CONVERGED_CHECK,
            asset=SUBSCRIBER_PUSH,
            blocking=True,
            description=(
                "Every change the push planned was answered by Klaviyo (accepted or refused): no intent is "
                "left in the ledger. Derived from the ledger, so subscribers landing mid-run do not count."
            ),
        ),
        dg.AssetCheckSpec(
            REJECTIONS_CHECK,
            asset=SUBSCRIBER_PUSH,
            description="No subscriber row was rejected (see klaviyo_push.rejections for rows and reasons).",
        ),
    ],
)
def subscriber_push(
    context: dg.AssetExecutionContext,
    config: SubscriberPushConfig,
    klaviyo: KlaviyoResource,
    warehouse: WarehouseResource,
):
    """Push one account's consented subscribers and opt-outs to its Klaviyo lists."""
    account_id = context.partition_key
    with klaviyo.store() as store:
        require_active_connection(store, account_id)
        try:
            plan, result = asyncio.run(
                push_connected_account(
                    klaviyo.settings(),
                    store,
                    account_id,
                    warehouse.path,
                    run_id=context.run.run_id,
                    max_concurrency=klaviyo.max_concurrency,
                    max_klaviyo_rejections=config.max_klaviyo_rejections,
                )
            )
        except PushNotConfigured as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None
        with ledger_of_connection(store, account_id) as ledger:
            ledger_counts = ledger.counts(account_id)
    assert result is not None
    figures = result.as_metadata()
    context.log.info(
        f"{account_id}: {figures['subscribed']} subscribed, {figures['unsubscribed']} unsubscribed, "
        f"{figures['rejected']} rejected, {figures['unchanged']} unchanged, {figures['api_calls']} API calls "
        f"in {figures['seconds']}s"
    )
    reasons = Counter(r.reason for r in result.rejections)
    yield dg.MaterializeResult(
        asset_key=SUBSCRIBER_PUSH,
        metadata={
            **figures,
            "subscribe_jobs_per_list": dg.MetadataValue.json(dict(result.subscribe_jobs)),
            "historical_import_lists": dg.MetadataValue.json(result.historical_import_lists),
            "not_pushed": dg.MetadataValue.json(dict(plan.not_pushed)),
            "ledger_subscribed": ledger_counts.get("subscribed", 0),
            "ledger_unsubscribed": ledger_counts.get("unsubscribed", 0),
            "ledger_rejected": ledger_counts.get("rejected", 0),
        },
    )
    yield dg.AssetCheckResult(
        check_name=CONVERGED_CHECK,
        asset_key=SUBSCRIBER_PUSH,
        passed=ledger_counts["pending"] == 0,
        metadata={"changes_without_an_answer": ledger_counts["pending"]},
    )
    yield dg.AssetCheckResult(
        check_name=REJECTIONS_CHECK,
        asset_key=SUBSCRIBER_PUSH,
        passed=not result.rejections,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rejected": len(result.rejections),
            "reasons": dg.MetadataValue.json(dict(reasons.most_common(20))),
            "table": "klaviyo_push.rejections",
        },
    )
