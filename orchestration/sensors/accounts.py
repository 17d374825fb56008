"""Keep the ``klaviyo_accounts`` partitions in step with the connection store, and schedule daily syncs."""

import json

import dagster as dg

from connectors.klaviyo.connections import Connection, ConnectionState
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource

segment_sync_job = dg.define_asset_job(
    "klaviyo_segment_sync_job",
    selection=dg.AssetSelection.assets(
        ["klaviyo", "raw_groups"], ["klaviyo", "raw_group_members"], ["klaviyo", "group_sync_status"]
    ),
    description="Sync Klaviyo segments and lists of one account (partition) into the warehouse.",
)


def skip_reason(connection: Connection) -> str:
    """Why an inactive or needs-reauth account gets no runs: ``account: state (reason)``."""
    return f"{connection.recart_account_id}: {connection.state.value}" + (
        f" ({connection.state_reason})" if connection.state_reason else ""
    )


@dg.sensor(job=segment_sync_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def klaviyo_accounts_sensor(
    context: dg.SensorEvaluationContext, klaviyo: KlaviyoResource
) -> dg.SensorResult | dg.SkipReason:
    """Add a partition when a shop connects (and sync it once), delete it when the connection is removed.

    Inactive and needs-re-authorization accounts keep their partition but get no runs; the reason
    is in the cursor and the tick's message, never a retry loop.
    """
    with klaviyo.store() as store:
        connections = {c.recart_account_id: c for c in store.list()}
    existing = set(context.instance.get_dynamic_partitions(klaviyo_accounts.name))
    live = {key for key, c in connections.items() if c.state != ConnectionState.REMOVED}
    added = sorted(live - existing)
    removed = sorted(existing - live)
    skipped = sorted(
        skip_reason(c)
        for c in connections.values()
        if c.state in (ConnectionState.INACTIVE, ConnectionState.NEEDS_REAUTH)
    )
    requests = []
    if added:
        requests.append(klaviyo_accounts.build_add_request(added))
    if removed:
        requests.append(klaviyo_accounts.build_delete_request(removed))
    runs = [
        dg.RunRequest(
            partition_key=key, run_key=f"first-sync:{key}:{connections[key].created_at.isoformat()}"
        )
        for key in added
        if connections[key].state == ConnectionState.ACTIVE
    ]
    cursor = json.dumps({"partitions": sorted(live), "skipped": skipped})
    if not requests and not runs:
        return dg.SkipReason(
            "partitions in step with the connection store"
            + (f"; not syncing: {', '.join(skipped)}" if skipped else "")
        )
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=requests, cursor=cursor)


@dg.schedule(
    job=segment_sync_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def klaviyo_daily_segment_sync_schedule(
    context: dg.ScheduleEvaluationContext, klaviyo: KlaviyoResource
) -> list[dg.RunRequest] | dg.SkipReason:
    """Every day at 03:00 UTC: one sync run per active account; others are skipped with their reason."""
    with klaviyo.store() as store:
        connections = store.list()
    partitions = set(context.instance.get_dynamic_partitions(klaviyo_accounts.name))
    day = context.scheduled_execution_time.date().isoformat()
    runs = [
        dg.RunRequest(partition_key=c.recart_account_id, run_key=f"daily:{day}:{c.recart_account_id}")
        for c in connections
        if c.state == ConnectionState.ACTIVE and c.recart_account_id in partitions
    ]
    skipped = [
        skip_reason(c)
        for c in connections
        if c.state in (ConnectionState.INACTIVE, ConnectionState.NEEDS_REAUTH)
    ]
    for reason in skipped:
        context.log.info(f"not syncing {reason}")
    if not runs:
        return dg.SkipReason(
            "no active Klaviyo connection" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        )
    return runs
