"""dbt's fixed cost through Dagster: the second build of a warehouse reuses the first one's parse.

dbt re-parses the whole project (~2 s) unless it finds a saved parse made with the same profile
(the DuckDB path is part of it) and the same ``--vars``. The dbt assets give each warehouse one
lasting target folder and pass ``as_of`` as ``RECART_AS_OF``, so two builds of one warehouse with
different ``as_of`` parse once. dbt's own log (``dbt.log`` in that folder) says which it did.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from orchestration.assets import dbt as dbt_assets
from tests.dbt.warehouse_scenario import AS_OF, build_warehouse

USAGE = dg.AssetKey(["marts", "klaviyo_group_usage"])


@pytest.fixture
def scenario_warehouse(tmp_path: Path) -> Path:
    """The dbt tests' scenario warehouse (its dbt target folder goes with the session: tests/conftest.py)."""
    database = (tmp_path / "warehouse.duckdb").resolve()
    build_warehouse(database)
    return database


def _parse_events(log: Path, start: int) -> list[str]:
    """dbt's parse events in ``log`` after byte ``start``: UnableToPartialParse, PartialParsingEnabled."""
    with log.open("rb") as file:
        file.seek(start)
        lines = file.read().decode().splitlines()
    names = []
    for line in lines:
        if not line.startswith("{"):
            continue
        event = json.loads(line)["info"]
        if event["name"] in ("UnableToPartialParse", "PartialParsingEnabled"):
            names.append(f"{event['name']}: {event['msg']}")
    return names


def _as_of_in_usage(database: Path) -> set[datetime]:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        return {
            row[0] for row in conn.execute("select distinct as_of from marts.klaviyo_group_usage").fetchall()
        }
    finally:
        conn.close()


def test_the_second_build_of_a_warehouse_parses_partially_with_another_as_of(
    scenario_warehouse: Path, materialize_dbt
):
    log = dbt_assets.dbt_target_path(scenario_warehouse) / "dbt.log"
    assert not log.exists()

    first = materialize_dbt(scenario_warehouse, AS_OF)
    assert first.success, [e.event_specific_data for e in first.all_events if e.is_failure]
    first_parse = _parse_events(log, 0)
    # A new folder: no saved parse yet for this warehouse's profile.
    assert first_parse and first_parse[0].startswith("UnableToPartialParse"), first_parse
    assert _as_of_in_usage(scenario_warehouse) == {AS_OF}

    size = log.stat().st_size
    next_day = AS_OF + timedelta(days=1)
    second = materialize_dbt(scenario_warehouse, next_day)
    assert second.success, [e.event_specific_data for e in second.all_events if e.is_failure]
    second_parse = _parse_events(log, size)
    assert second_parse and all(name.startswith("PartialParsingEnabled") for name in second_parse), (
        second_parse
    )
    assert _as_of_in_usage(scenario_warehouse) == {next_day}  # RECART_AS_OF reached the models
    materialized = {e.materialization.asset_key for e in second.get_asset_materialization_events()}
    assert USAGE in materialized  # dagster-dbt read the run's events and artifacts from that folder
    checks = second.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)


def test_an_as_of_that_is_not_an_iso_time_fails_the_build_naming_recart_as_of(
    scenario_warehouse: Path, materialize_dbt
):
    result = materialize_dbt(scenario_warehouse, "yesterday")
    assert not result.success
    failures = " ".join(str(e.event_specific_data) for e in result.all_events if e.is_failure)
    log = (dbt_assets.dbt_target_path(scenario_warehouse) / "dbt.log").read_text()
    assert "RECART_AS_OF must be an ISO 8601 time" in failures + log
