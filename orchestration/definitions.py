"""The one place that assembles the Dagster definitions of the project."""

from __future__ import annotations

import dagster as dg

from orchestration.assets import dbt, klaviyo, push, recart
from orchestration.assets.recart import LandingZoneResource, recart_landing_job, recart_landing_sensor
from orchestration.resources import KlaviyoResource, WarehouseResource
from orchestration.sensors.accounts import (
    klaviyo_accounts_sensor,
    klaviyo_daily_segment_sync_schedule,
    segment_sync_job,
)
from orchestration.sensors.push import (
    klaviyo_subscriber_push_schedule,
    recart_subscribers_landed_sensor,
    subscriber_push_job,
)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([klaviyo, recart, dbt, push]),
    asset_checks=dg.load_asset_checks_from_modules([klaviyo, recart]),
    jobs=[segment_sync_job, recart_landing_job, subscriber_push_job],
    sensors=[klaviyo_accounts_sensor, recart_landing_sensor, recart_subscribers_landed_sensor],
    schedules=[klaviyo_daily_segment_sync_schedule, klaviyo_subscriber_push_schedule],
    resources={
        "klaviyo": KlaviyoResource.from_env_vars(),
        "warehouse": WarehouseResource(path=dg.EnvVar("WAREHOUSE_DUCKDB_PATH")),
        "landing": LandingZoneResource(path=dg.EnvVar("RECART_LANDING_PATH")),
    },
)
