"""When the subscriber push runs: every 15 minutes, and as soon as new Recart subscribers land."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from connectors.klaviyo.connections import ConnectionState
from orchestration.assets.push import SUBSCRIBER_PUSH
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource
from orchestration.sensors.accounts import skip_reason

RAW_SUBSCRIBERS = dg.AssetKey(["recart", "raw_subscribers"])

subscriber_push_job = dg.define_asset_job(
    "klaviyo_subscriber_push_job",
    selection=dg.AssetSelection.assets(SUBSCRIBER_PUSH),
    description="Push one account's (partition's) consented Recart subscribers into its Klaviyo lists.",
)


# A push stopped for too many refusals (a setup problem: SMS not enabled for a country, a list that
# refuses everyone) is tried again by the schedule at most this often, not every 15 minutes: each
# try costs Klaviyo calls (up to ~100 refusals, isolated by halving batches). Saving the push
# settings, a push run by hand, or this much time lets it try again.
STOPPED_PUSH_RETRY = timedelta(hours=1)


def pushable_accounts(
    klaviyo: KlaviyoResource, partitions: set[str], now: datetime | None = None
) -> tuple[list[str], list[str]]:
    """Accounts to push (active connection, lists chosen) and the others with why they are skipped.

    An account whose push is switched off is pushed too: only its opt-outs go out (the consent the
    push gave before must not outlive them); an unchanged account costs no API call. An account
    whose last push stopped for too many refusals waits ``STOPPED_PUSH_RETRY``.
    """
    now = now or datetime.now(UTC)
    push, skipped = [], []
    with klaviyo.store() as store:
        for connection in store.list():
            account = connection.recart_account_id
            if connection.state == ConnectionState.REMOVED or account not in partitions:
                continue
            settings = store.push_settings(account)
            if connection.state != ConnectionState.ACTIVE:
                skipped.append(skip_reason(connection))
            elif settings is None:
                skipped.append(f"{account}: no lists chosen")
            elif settings.stopped_at is not None and now - settings.stopped_at < STOPPED_PUSH_RETRY:
                skipped.append(
                    f"{account}: push stopped at {settings.stopped_at:%Y-%m-%d %H:%M} UTC "
                    f"({settings.stopped_reason}); retried hourly, or run it from the Dagster UI or "
                    f"`recart-klaviyo push {account}` once the setup is fixed"
                )
            else:
                push.append(account)
    return push, skipped


def _requests(
    context: dg.SensorEvaluationContext | dg.ScheduleEvaluationContext,
    klaviyo: KlaviyoResource,
    run_key: str,
) -> list[dg.RunRequest]:
    partitions = set(context.instance.get_dynamic_partitions(klaviyo_accounts.name))
    push, skipped = pushable_accounts(klaviyo, partitions)
    for reason in skipped:
        context.log.info(f"not pushing {reason}")
    return [dg.RunRequest(partition_key=account, run_key=f"{run_key}:{account}") for account in push]


@dg.schedule(
    job=subscriber_push_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def klaviyo_subscriber_push_schedule(
    context: dg.ScheduleEvaluationContext, klaviyo: KlaviyoResource
) -> list[dg.RunRequest] | dg.SkipReason:
    """Every 15 minutes: one push run per account whose connection is active and lists are chosen
    (opt-outs only when its push is switched off)."""
    at: datetime = context.scheduled_execution_time
    runs = _requests(context, klaviyo, f"push:{at.isoformat()}")
    return runs or dg.SkipReason("no account to push (no active connection with lists chosen)")


@dg.sensor(
    job=subscriber_push_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def recart_subscribers_landed_sensor(
    context: dg.SensorEvaluationContext, klaviyo: KlaviyoResource
) -> dg.SensorResult | dg.SkipReason:
    """New Recart subscribers were loaded: push every pushable account now (the desired state is a
    view over the raw table, so no dbt build is needed first; unchanged accounts cost no API call).

    The cursor is the storage id of the last ``recart/raw_subscribers`` materialization acted on.
    """
    newest = context.instance.fetch_materializations(RAW_SUBSCRIBERS, limit=1).records
    if not newest:
        return dg.SkipReason("no Recart subscribers loaded yet")
    storage_id = newest[0].storage_id
    if context.cursor is not None and storage_id <= int(context.cursor):
        return dg.SkipReason("no new Recart subscribers since the last push request")
    runs = _requests(context, klaviyo, f"landed:{storage_id}")
    if not runs:
        return dg.SkipReason("new subscribers landed, but no account to push")
    return dg.SensorResult(run_requests=runs, cursor=str(storage_id))
