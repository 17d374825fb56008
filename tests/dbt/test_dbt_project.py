"""The dbt project end to end on a small DuckDB warehouse (see ``warehouse_scenario``): one full
``dbt build`` with its data and unit tests, what the marts and segments hold, outdated Klaviyo groups
over 15 simulated days, adding a segment by adding a file, and the build materialized through Dagster.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import duckdb
from warehouse_scenario import AS_OF, CAMPAIGNS, FLOWS, SEGMENT_USAGES, build_warehouse, day

from orchestration.assets.dbt import warehouse_dbt_assets
from orchestration.dbt_manifest import DBT_PROJECT_DIR
from warehouse.duckdb_file import write_lock

if TYPE_CHECKING:  # the fixture's class; a runtime `from conftest import` is ambiguous
    from tests.dbt.conftest import BuiltWarehouse


def test_dbt_build_runs_models_data_tests_and_unit_tests(built_warehouse: BuiltWarehouse):
    out = built_warehouse.build.stdout + built_warehouse.build.stderr
    assert built_warehouse.build.returncode == 0, out[-5000:]
    summary = re.search(r"Done\. PASS=(\d+) WARN=(\d+) ERROR=(\d+)", out)
    assert summary, out[-2000:]
    assert (summary.group(2), summary.group(3)) == ("0", "0"), out[-5000:]
    units = re.search(r"(\d+) unit tests", out)
    assert units and int(units.group(1)) >= 10, "the unit tests ran"


def test_docs_generate_works(built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path: Path):
    database = built_warehouse.copy(tmp_path / "warehouse.duckdb")
    assert dbt_in_process(["docs", "generate"], database), dbt_in_process.last_result.exception
    catalog = json.loads((tmp_path / "target" / "catalog.json").read_text())
    manifest = json.loads((tmp_path / "target" / "manifest.json").read_text())
    assert "source.recart_warehouse.klaviyo.raw_group_members" in catalog["sources"]
    documented = {
        unique_id: node
        for unique_id, node in manifest["nodes"].items()
        if node["resource_type"] == "model" and node["fqn"][1] in ("marts", "segments")
    }
    assert {"model.recart_warehouse.segment_members", "model.recart_warehouse.vip_hikers"} <= set(documented)
    for unique_id, node in documented.items():
        # Every marts and segments model is in the catalog (built, with its columns), described,
        # and every column its YAML documents exists in the warehouse under that name.
        assert unique_id in catalog["nodes"], unique_id
        assert node["description"], unique_id
        built = {name.lower() for name in catalog["nodes"][unique_id]["columns"]}
        assert set(node["columns"]) <= built, (unique_id, set(node["columns"]) - built)
    members = documented["model.recart_warehouse.segment_members"]["columns"]
    assert members["klaviyo_as_of"]["description"].startswith("Oldest last_synced_at")


def test_segment_members_hold_the_shipped_segments(built_warehouse: BuiltWarehouse):
    rows = built_warehouse.query(
        "select account_id, segment_name, subscriber_id, klaviyo_as_of"
        " from marts.segment_members order by all"
    )
    assert rows == [
        # s1: Abandoned cart 7 days (via her phone profile p2), no purchase since joining it.
        ("acme", "abandoned_cart_email_no_purchase", "s1", day(15)),
        # s1 via p1 in Engaged, last order 40 days ago; s3 (email superseded, order deleted).
        # as-of: the older of Clicked (day 15) and Engaged (day 14).
        ("acme", "clicked_klaviyo_email_no_purchase", "s1", day(14)),
        ("acme", "clicked_klaviyo_email_no_purchase", "s3", day(14)),
        # s7 bought boots (re-tagged Hiking) as a guest; no Klaviyo condition: no as-of.
        ("acme", "vip_hikers", "s7", None),
        # brit reads "07911 123456" as +44; only "Engaged 30 days" exists there.
        ("brit", "clicked_klaviyo_email_no_purchase", "s6", day(15)),
    ]
    refs = built_warehouse.query(
        "select segment_name, account_id, group_id from marts.segment_klaviyo_references order by all"
    )
    assert refs == [
        ("abandoned_cart_email_no_purchase", "acme", "SEG_ABANDONED"),
        ("clicked_klaviyo_email_no_purchase", "acme", "SEG_CLICKED"),
        ("clicked_klaviyo_email_no_purchase", "acme", "SEG_ENGAGED"),
        ("clicked_klaviyo_email_no_purchase", "brit", "SEG_ENGAGED_UK"),
    ]
    assert built_warehouse.query("select segment_name from marts.segments order by 1") == [
        ("abandoned_cart_email_no_purchase",),
        ("clicked_klaviyo_email_no_purchase",),
        ("vip_hikers",),
    ]


def test_one_subscriber_keeps_two_klaviyo_profiles(built_warehouse: BuiltWarehouse):
    rows = built_warehouse.query(
        "select account_id, subscriber_id, profile_id, match_method"
        " from intermediate.int_subscribers_matched_to_klaviyo_profiles order by all"
    )
    assert rows == [
        ("acme", "s1", "p1", "email"),  # "  Alice@Example.COM " = alice@example.com
        ("acme", "s1", "p2", "phone"),  # "(415) 555-2671" = +14155552671
        ("acme", "s2", "p3", "external_id"),  # p3's email differs
        ("acme", "s3", "p4", "email"),  # her superseding email
        ("brit", "s6", "p6", "phone"),  # GB national format
    ]  # s4 (deleted) does not match p5
    memberships = built_warehouse.query(
        "select group_id from marts.subscriber_klaviyo_memberships"
        " where account_id = 'acme' and subscriber_id = 's1' order by 1"
    )
    assert memberships == [("LIST_NEWS",), ("SEG_ABANDONED",), ("SEG_ENGAGED",)]


def test_subscribers_summarise_purchases_from_the_latest_changes(built_warehouse: BuiltWarehouse):
    rows = {
        row[0]: row[1:]
        for row in built_warehouse.query(
            "select subscriber_id, email, phone_number, order_count, revenue, last_order_at,"
            " product_tags_bought from marts.subscribers where account_id = 'acme'"
        )
    }
    assert set(rows) == {"s1", "s2", "s3", "s5", "s7", "s8"}  # s4 deleted
    assert rows["s1"][:2] == ("alice@example.com", "+14155552671")
    assert rows["s2"][2:5] == (1, 25, day(10))  # superseded total; the cancelled order is no purchase
    assert rows["s3"][2:4] == (0, 0)  # its only order was deleted
    assert rows["s7"][2:] == (1, 120, day(3), ["hiking", "outdoor"])  # guest order, by email
    assert built_warehouse.query(
        "select subscriber_id, contact_field, value_as_given"
        " from marts.subscriber_contact_rejections order by all"
    ) == [("s5", "email", "not-an-email"), ("s5", "phone", "12")]


def test_klaviyo_groups_become_outdated_after_14_days_unused(
    built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path
):
    """Day by day, that day's flow, campaign and usage changes land, then dbt runs as of that day."""
    database = built_warehouse.copy(tmp_path / "warehouse.duckdb")
    assert len(FLOWS) + len(CAMPAIGNS) + len(SEGMENT_USAGES) == 9  # the history in warehouse_scenario
    timeline: dict[int, dict[str, tuple]] = {}
    for n in range(16):
        today = day(n + 0.5)
        _land_changes(built_warehouse.path, database, until=today)
        assert dbt_in_process(
            [
                "run",
                "--select",
                "int_segment_usage_spells",
                "klaviyo_group_usage",
                "--vars",
                json.dumps({"as_of": today.isoformat()}),
            ],
            database,
        ), dbt_in_process.last_result.exception
        conn = duckdb.connect(str(database), read_only=True)
        try:
            conn.execute("set timezone = 'UTC'")
            timeline[n] = {
                group: (in_use, last_used, outdated)
                for group, in_use, last_used, outdated in conn.execute(
                    "select group_id, is_in_use, last_used_at, is_outdated from marts.klaviyo_group_usage"
                    " where account_id = 'acme'"
                ).fetchall()
            }
        finally:
            conn.close()

    # Flow f1 (active on day 0, paused on day 1) used Clicked and Engaged: last used on day 1.
    assert timeline[0]["SEG_CLICKED"] == (True, day(0.5), False)
    assert timeline[1]["SEG_ENGAGED"] == (False, day(1), False)
    assert [timeline[n]["SEG_CLICKED"][2] for n in range(16)] == [False] * 15 + [True]
    # Abandoned cart: campaign c1 scheduled day 0 → sent day 2; draft flow f2 used it days 5 to 8.
    assert timeline[3]["SEG_ABANDONED"] == (False, day(2), False)
    assert timeline[6]["SEG_ABANDONED"] == (True, day(6.5), False)
    assert timeline[15]["SEG_ABANDONED"] == (False, day(8), False)
    # Never used: outdated 14 days after its members were first loaded (day 0).
    assert timeline[13]["LIST_NEWS"] == (False, None, False)
    assert timeline[14]["LIST_NEWS"] == (False, None, True)


def _land_changes(source: Path, database: Path, until: datetime) -> None:
    """Make the raw flow, campaign and usage tables of ``database`` hold the changes up to ``until``."""
    conn = duckdb.connect(str(database))
    try:
        conn.execute(f"attach '{source}' as scenario (read_only)")
        for table in ("raw_automated_flows", "raw_campaigns", "raw_segment_usages"):
            conn.execute(f"delete from recart.{table}")
            conn.execute(
                f"insert into recart.{table} select * from scenario.recart.{table} where updated_at <= ?",
                [until],
            )
        conn.execute("detach scenario")
    finally:
        conn.close()


def test_adding_a_segment_file_is_enough(built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path):
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "models" / "segments" / "newsletter_never_bought.sql").write_text(
        "select account_id, subscriber_id\n"
        "from {{ ref('subscribers') }}\n"
        "where {{ in_klaviyo_list('newsletter') }} and {{ not_purchased_since('2026-01-20') }}\n"
    )
    database = built_warehouse.copy(tmp_path / "warehouse.duckdb")
    assert dbt_in_process(
        [
            "run",
            "--select",
            "newsletter_never_bought",
            "segments",
            "segment_klaviyo_references",
            "segment_members",
            "--vars",
            json.dumps({"as_of": AS_OF.isoformat()}),
        ],
        database,
        project_dir=project,
    ), dbt_in_process.last_result.exception
    conn = duckdb.connect(str(database), read_only=True)
    try:
        assert conn.execute(
            "select account_id, subscriber_id from marts.segment_members"
            " where segment_name = 'newsletter_never_bought'"
        ).fetchall() == [("acme", "s1")]
        assert conn.execute(
            "select group_id from marts.segment_klaviyo_references"
            " where segment_name = 'newsletter_never_bought'"
        ).fetchall() == [("LIST_NEWS",)]
    finally:
        conn.close()

    # A Klaviyo name that is not a literal cannot be seen by segment_klaviyo_references: refused.
    (project / "models" / "segments" / "newsletter_never_bought.sql").write_text(
        "{% set name = 'Newsletter' %}\n"
        "select account_id, subscriber_id from {{ ref('subscribers') }} where {{ in_klaviyo_list(name) }}\n"
    )
    assert not dbt_in_process(["run", "--select", "newsletter_never_bought"], database, project_dir=project)
    assert "literal string" in str(dbt_in_process.last_result.result or dbt_in_process.last_result.exception)


def test_dagster_materializes_the_dbt_assets(tmp_path: Path, materialize_dbt):
    """Through Dagster, once, while a loader holds the warehouse write lock for its first 2 seconds.

    dbt runs inside this process (run_dbt_in_process): when the build is done, its DuckDB file must be free
    for another process to write.
    """
    database = tmp_path / "warehouse.duckdb"
    build_warehouse(database)
    locked, release = threading.Event(), threading.Event()

    def loader_writing() -> None:
        with write_lock(database):
            locked.set()
            release.wait(2)

    loader = threading.Thread(target=loader_writing)
    loader.start()
    locked.wait(5)
    started = time.monotonic()
    result = materialize_dbt(database, AS_OF)
    loader.join()
    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    assert time.monotonic() - started >= 2  # it waited for the loader instead of failing on DuckDB's lock
    materialized = {e.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert {
        dg.AssetKey(["marts", "segment_members"]),
        dg.AssetKey(["marts", "klaviyo_group_usage"]),
        dg.AssetKey(["segments", "vip_hikers"]),
        dg.AssetKey(["staging", "stg_recart__subscribers"]),
    } <= materialized
    checks = result.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks), [c.check_name for c in checks if not c.passed]
    conn = duckdb.connect(str(database), read_only=True)
    try:
        assert (
            conn.execute("select count(*) from marts.segment_members").fetchone()[0] == 4
        )  # brit: US default
    finally:
        conn.close()
    write = "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('create table t (i int)')"
    writer = subprocess.run(
        [sys.executable, "-c", write, str(database)], capture_output=True, text=True, timeout=60
    )
    assert writer.returncode == 0, writer.stderr  # dbt's connection in this process was closed


def test_dbt_asset_keys_groups_and_lineage():
    specs = {spec.key: spec for spec in warehouse_dbt_assets.specs}
    members = specs[dg.AssetKey(["marts", "segment_members"])]
    assert members.group_name == "marts"
    assert {
        dg.AssetKey(["segments", name]) for name in ("vip_hikers", "clicked_klaviyo_email_no_purchase")
    } <= {dep.asset_key for dep in members.deps}
    assert specs[dg.AssetKey(["segments", "vip_hikers"])].group_name == "segments"
    assert specs[dg.AssetKey(["staging", "stg_recart__subscribers"])].group_name == "staging"
    upstream = {dep.asset_key for spec in specs.values() for dep in spec.deps} - set(specs)
    assert upstream == {
        dg.AssetKey(["recart", name])
        for name in (
            "raw_subscribers",
            "raw_orders",
            "raw_order_lines",
            "raw_products",
            "raw_automated_flows",
            "raw_campaigns",
            "raw_segment_usages",
        )
    } | {dg.AssetKey(["klaviyo", name]) for name in ("raw_groups", "raw_group_members", "group_sync_status")}


def test_a_second_current_spell_of_one_profile_in_one_group_fails_the_build(
    built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path: Path
):
    """subscriber_klaviyo_memberships counts matched profiles with count(*): exact only while a
    profile has one current spell per group, which this data test holds."""
    database = built_warehouse.copy(tmp_path / "warehouse.duckdb")
    test = "one_current_spell_per_group_and_profile"
    assert dbt_in_process(["test", "--select", test], database), dbt_in_process.last_result.exception
    conn = duckdb.connect(str(database))
    try:
        conn.execute(
            """
            insert into klaviyo.raw_group_members
            select account_id, group_kind, group_id, profile_id, email, phone_number, external_id,
                   joined_group_at, valid_from + interval 1 hour, null, null, loaded_at + interval 1 hour
            from klaviyo.raw_group_members
            where valid_to is null
            limit 1
            """
        )
    finally:
        conn.close()
    assert not dbt_in_process(["test", "--select", test], database)
    failed = [r for r in dbt_in_process.last_result.result.results if r.status == "fail"]
    assert [r.node.name for r in failed] == [test]


def test_relationship_tests_find_a_missing_parent_both_ways(
    built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path: Path
):
    """relationships_within_account looks parents up by recent children (a semi-join) or joins
    every child: either way a child without a parent is reported."""
    database = built_warehouse.copy(tmp_path / "warehouse.duckdb")
    conn = duckdb.connect(str(database))
    try:
        # recent child: a line of an order that never landed
        conn.execute(
            "insert into recart.raw_order_lines select account_id, 'o-missing', line_id, product_id,"
            " quantity, unit_price, updated_at, _file, _row + 1000, _loaded_at + interval 1 hour"
            " from recart.raw_order_lines limit 1"
        )
        # every child checked: a segment member who is no subscriber
        conn.execute(
            "insert into marts.segment_members select account_id, segment_name, 's-nobody', klaviyo_as_of"
            " from marts.segment_members limit 1"
        )
    finally:
        conn.close()
    dbt_in_process(["test", "--select", "test_name:relationships_within_account"], database)
    results = {r.node.name: r for r in dbt_in_process.last_result.result.results}
    lines = next(r for name, r in results.items() if "raw_order_lines_order_id" in name)
    members = next(
        r for name, r in results.items() if name.startswith("relationships_within_account_segment_members")
    )
    assert (lines.status, lines.failures) == ("warn", 1)
    assert (members.status, members.failures) == ("fail", 1)
    assert all(r.status == "pass" for r in results.values() if r not in (lines, members))


def test_recent_row_tests_cover_a_day_of_loads_not_just_the_look_back(
    built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path: Path
):
    """The landing sensor loads all day and the build runs daily: a dangling line loaded five
    hours before the day's last load must still be reported (the incremental look-back is one
    hour; the tests' window is data_tests_recent_hours)."""
    database = built_warehouse.copy(tmp_path / "warehouse.duckdb")
    conn = duckdb.connect(str(database))
    try:
        newest = conn.execute("select max(_loaded_at) from recart.raw_order_lines").fetchone()[0]
        conn.execute(
            "insert into recart.raw_order_lines select account_id, 'o-missing', line_id, product_id,"
            " quantity, unit_price, updated_at, _file, _row + 1000, ? + interval 1 hour"
            " from recart.raw_order_lines limit 1",
            [newest],
        )
        conn.execute(  # the day's last load: a line of an existing order, six hours later
            "insert into recart.raw_order_lines select account_id, order_id, line_id, product_id,"
            " quantity, unit_price, updated_at, _file, _row + 2000, ? + interval 6 hour"
            " from recart.raw_order_lines where order_id <> 'o-missing' limit 1",
            [newest],
        )
    finally:
        conn.close()
    lines_tests = "source:recart.raw_order_lines,test_name:relationships_within_account"
    dbt_in_process(["test", "--select", lines_tests], database)
    results = {r.node.name: r for r in dbt_in_process.last_result.result.results}
    lines = next(r for name, r in results.items() if "raw_order_lines_order_id" in name)
    assert (lines.status, lines.failures) == ("warn", 1)
