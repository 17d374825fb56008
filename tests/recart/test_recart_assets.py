"""The Dagster side: one asset per entity, their checks, and the landing sensor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from orchestration.assets import recart
from orchestration.assets.recart import LandingZoneResource, recart_landing_sensor
from orchestration.resources import WarehouseResource
from tests.recart.landing_helpers import Landing, subscriber

ACME = "acme-outdoor"
AT = "2026-01-01T00:00:00Z"


def _fill(landing: Landing) -> None:
    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1"), "{not json", subscriber("s2")])
    landing.parquet(
        "orders",
        ACME,
        "1.parquet",
        "select 'o' || i as order_id, 'sub' as subscriber_id, 10.5 as total_amount,"
        " timestamptz '2026-01-01 00:00:00+00' as updated_at from range(3) t(i)",
    )
    landing.jsonl("order_lines", ACME, "1.jsonl", [{"order_id": "o1", "line_id": "1", "updated_at": AT}] * 2)
    landing.jsonl("products", ACME, "1.jsonl", [{"product_id": "p1", "tags": ["hiking"], "updated_at": AT}])
    landing.jsonl(
        "automated_flows", ACME, "1.jsonl", [{"flow_id": "f1", "status": "active", "updated_at": AT}]
    )
    landing.jsonl("campaigns", ACME, "1.jsonl", [{"campaign_id": "c1", "status": "draft", "updated_at": AT}])
    landing.jsonl(
        "segment_usages",
        ACME,
        "1.jsonl",
        [{"consumer_type": "flow", "consumer_id": "f1", "segment_name": "vip_hikers", "updated_at": AT}],
    )


def _resources(landing: Landing) -> dict:
    return {
        "warehouse": WarehouseResource(path=str(landing.warehouse)),
        "landing": LandingZoneResource(path=str(landing.root)),
    }


def _metadata(result: dg.ExecuteInJobResult) -> dict[str, dict]:
    return {
        event.asset_key.path[-1]: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def test_assets_load_every_entity_and_report(landing: Landing):
    _fill(landing)
    assets = list(recart.RECART_ASSETS.values())
    assert [a.key.path for a in assets] == [["recart", f"raw_{name}"] for name in recart.RECART_ASSETS]
    assert all(a.group_names_by_key[a.key] == "ingestion" for a in assets)

    first = dg.materialize(assets, resources=_resources(landing))
    assert first.success
    metadata = _metadata(first)
    assert metadata["raw_subscribers"]["rows_loaded"] == 2
    assert metadata["raw_subscribers"]["rows_rejected"] == 1
    assert metadata["raw_orders"]["rows_loaded"] == 3 and metadata["raw_orders"]["files_loaded"] == 1
    assert {m["files_loaded"] for m in metadata.values()} == {1}
    assert all(isinstance(m["seconds"], float) for m in metadata.values())

    checks = {c.asset_check_key.name: c for c in first.get_asset_check_evaluations()}
    assert len(checks) == 14
    rejected = checks["raw_subscribers_has_no_rejections"]
    assert not rejected.passed and rejected.severity == dg.AssetCheckSeverity.WARN
    assert rejected.metadata["rejections"].value == 1
    [sample] = rejected.metadata["sample"].value
    assert sample["file"] == "recart/subscribers/acme-outdoor/1.jsonl" and sample["row"] == 2
    assert not checks["raw_order_lines_has_unique_keys_per_file"].passed  # the same line twice
    assert all(c.passed for name, c in checks.items() if name.startswith(("raw_orders", "raw_products")))

    second = dg.materialize(assets, resources=_resources(landing))
    again = _metadata(second)
    assert {m["rows_loaded"] for m in again.values()} == {0}
    assert again["raw_subscribers"]["dagster/row_count"] == 2
    assert all(c.passed for c in second.get_asset_check_evaluations())


def _tick(landing: Landing, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        cursor=cursor, resources={"landing": LandingZoneResource(path=str(landing.root))}
    ) as ctx:
        return recart_landing_sensor(ctx)


def test_sensor_requests_runs_only_for_new_files(landing: Landing):
    assert isinstance(_tick(landing, None), dg.SkipReason)  # nothing landed yet

    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1")])
    landing.jsonl("orders", ACME, "1.jsonl", [{"order_id": "o1", "updated_at": AT}])
    landing.jsonl("orders", ACME, ".2.jsonl.tmp", ["{"])  # still being written
    first = _tick(landing, None)
    assert isinstance(first, dg.SensorResult)
    [request] = first.run_requests
    assert sorted(k.path[-1] for k in request.asset_selection) == ["raw_orders", "raw_subscribers"]
    assert sorted(json.loads(first.cursor)) == [
        "recart/orders/acme-outdoor/1.jsonl",
        "recart/subscribers/acme-outdoor/1.jsonl",
    ]

    quiet = _tick(landing, first.cursor)
    assert isinstance(quiet, dg.SkipReason)

    path = landing.jsonl("products", ACME, "1.jsonl", [{"product_id": "p1", "updated_at": AT}])
    new = _tick(landing, first.cursor)
    [request] = new.run_requests
    assert [k.path[-1] for k in request.asset_selection] == ["raw_products"]

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched: load again
    touched = _tick(landing, new.cursor)
    assert [k.path[-1] for k in touched.run_requests[0].asset_selection] == ["raw_products"]


def test_module_definitions_load(tmp_path: Path):
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([recart]),
        asset_checks=dg.load_asset_checks_from_modules([recart]),
        jobs=[recart.recart_landing_job],
        sensors=[recart_landing_sensor],
        resources={
            "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
            "landing": LandingZoneResource(path=str(tmp_path / "landing")),
        },
    )
    dg.Definitions.validate_loadable(defs)
    assert len(defs.resolve_asset_graph().get_all_asset_keys()) == 7
