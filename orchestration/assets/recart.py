"""Recart app data from the landing zone into the warehouse's raw tables, one asset per entity.

(No ``from __future__ import annotations`` here: Dagster reads the parameter annotations.)

Each asset loads the entity's new landing files (``connectors.recart.loader``): each file once,
every unreadable row into ``recart.rejections`` with its file, row and reason. Not partitioned:
the files carry their account, and one run loads whatever has landed for all accounts. The
``recart_landing_sensor`` requests a run when new files appear; a manual materialization from the
UI does the same on demand (and loads nothing when nothing is new).
"""

import json

import dagster as dg

from connectors.recart.landing import scan_landing
from connectors.recart.loader import LoadResult, load_entity
from connectors.recart.models import ENTITIES, Entity
from orchestration.resources import WarehouseResource


class LandingZoneResource(dg.ConfigurableResource):
    """Where Recart's change export lands (``<path>/recart/<entity>/<account_id>/…``)."""

    path: str = ".state/landing"
    # Accept only these account directories (empty: any well-formed Recart account id).
    accounts: list[str] = []

    def known_accounts(self) -> set[str] | None:
        """The allow-list of account directories, or None when any valid id is accepted."""
        return set(self.accounts) or None


def _check_names(entity: Entity) -> tuple[str, str]:
    return f"{entity.table}_has_no_rejections", f"{entity.table}_has_unique_keys_per_file"


def _build_asset(entity: Entity) -> dg.AssetsDefinition:
    key = dg.AssetKey(["recart", entity.table])
    rejections_check, unique_check = _check_names(entity)
    key_columns = ", ".join(("account_id", *entity.key))

    @dg.asset(
        key=key,
        description=entity.description,
        group_name="ingestion",
        kinds={"python", "duckdb"},
        check_specs=[
            dg.AssetCheckSpec(
                rejections_check,
                asset=key,
                description="This run's landing files had no unreadable rows (see recart.rejections).",
            ),
            dg.AssetCheckSpec(
                unique_check,
                asset=key,
                description=f"No ({key_columns}) occurs twice within one landing file.",
            ),
        ],
    )
    def _load(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, landing: LandingZoneResource
    ) -> dg.MaterializeResult:
        result = load_entity(
            entity.name, landing.path, warehouse.path, known_accounts=landing.known_accounts()
        )
        context.log.info(json.dumps(result.summary()))
        with warehouse.read() as conn:
            total = conn.execute(f"select count(*) from {entity.qualified_table}").fetchone()[0]
        return dg.MaterializeResult(
            metadata={
                "files_loaded": result.files_loaded,
                "files_skipped": result.files_skipped,
                "files_rejected": result.files_rejected,
                "rows_loaded": result.rows_loaded,
                "rows_rejected": result.rows_rejected,
                "seconds": round(result.seconds, 3),
                "write_lock_seconds": round(result.write_seconds, 3),
                "dagster/row_count": total,
            },
            check_results=_check_results(entity, result),
        )

    return _load


def _check_results(entity: Entity, result: LoadResult) -> list[dg.AssetCheckResult]:
    rejections_check, unique_check = _check_names(entity)
    return [
        dg.AssetCheckResult(
            check_name=rejections_check,
            passed=result.rows_rejected == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rejections": result.rows_rejected,
                "files_rejected": result.files_rejected,
                "sample": dg.MetadataValue.json(list(result.rejection_samples)),
            },
        ),
        dg.AssetCheckResult(
            check_name=unique_check,
            passed=result.duplicate_keys == 0,
            metadata={
                "duplicate_keys": result.duplicate_keys,
                "files": dg.MetadataValue.json(
                    {f.file: f.duplicate_keys for f in result.files if f.duplicate_keys}
                ),
            },
        ),
    ]


raw_subscribers = _build_asset(ENTITIES["subscribers"])
raw_orders = _build_asset(ENTITIES["orders"])
raw_order_lines = _build_asset(ENTITIES["order_lines"])
raw_products = _build_asset(ENTITIES["products"])
raw_automated_flows = _build_asset(ENTITIES["automated_flows"])
raw_campaigns = _build_asset(ENTITIES["campaigns"])
raw_segment_usages = _build_asset(ENTITIES["segment_usages"])

RECART_ASSETS: dict[str, dg.AssetsDefinition] = {
    "subscribers": raw_subscribers,
    "orders": raw_orders,
    "order_lines": raw_order_lines,
    "products": raw_products,
    "automated_flows": raw_automated_flows,
    "campaigns": raw_campaigns,
    "segment_usages": raw_segment_usages,
}

recart_landing_job = dg.define_asset_job(
    "recart_landing_job",
    selection=dg.AssetSelection.assets(*(a.key for a in RECART_ASSETS.values())),
    description="Load new Recart landing files into the raw tables.",
)


@dg.sensor(job=recart_landing_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def recart_landing_sensor(
    context: dg.SensorEvaluationContext, landing: LandingZoneResource
) -> dg.SensorResult | dg.SkipReason:
    """Request a load of the entities whose landing files are new (or touched) since the last tick.

    The cursor maps every seen file (relative path) to its mtime; a run loads only what is new,
    so a cursor reset costs one idle run per entity, never a double load.
    """
    seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    current = {f.relative: f.mtime_ns for f in scan_landing(landing.path)}
    fresh = sorted(path for path, mtime in current.items() if seen.get(path) != mtime)
    if not fresh:
        return dg.SkipReason(f"no new landing files ({len(current)} seen)")
    entities = sorted({path.split("/")[1] for path in fresh})
    context.log.info(f"{len(fresh)} new landing files for {', '.join(entities)}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(asset_selection=[RECART_ASSETS[entity].key for entity in entities])],
        cursor=json.dumps(current, sort_keys=True),
    )
