"""Incremental builds: a day of changes built incrementally equals the same data built from scratch.

The scenario warehouse (``warehouse_scenario``) is built once as of day 15.5; then day 16's changes
land — chosen to move purchases between subscribers in every way the incremental models must
notice — and ``dbt build`` runs again, incrementally on one copy and with ``--full-refresh`` on
another. Every table and view of the project must hold the same rows in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
from warehouse_scenario import day

if TYPE_CHECKING:  # the fixture's class; a runtime `from conftest import` is ambiguous
    from tests.dbt.conftest import BuiltWarehouse

DAY16 = day(16.5)
LOADED = day(16)

# recart.raw_subscribers: account, id, email, phone, external id, email consent (+ at), sms
# consent (+ at), opt-outs, attributes, source, created, updated, deleted; then _file, _row, _loaded_at.
SUBSCRIBER_CHANGES = [
    # s9 signs up with hiker@'s email but was created earlier: the guest order o7 becomes hers.
    ("acme", "s9", "hiker@example.com", None, None, True, day(-200), False, None, None, None,
     "{}", "popup", day(-200), day(16), False),
    # s3 changes her email: the new guest order o10 (carol@) no longer finds an owner.
    ("acme", "s3", "carol.new@example.com", "+1 650-555-0100", None, True, day(-100), True, day(-100),
     None, None, "{}", "popup", day(-100), day(16), False),
    # s5 is deleted.
    ("acme", "s5", "not-an-email", "12", None, True, day(-100), False, None, None, None,
     '{"vip": false}', "popup", day(-100), day(16), True),
]  # fmt: skip

# recart.raw_orders: account, order, subscriber, email, placed, total, currency, status, updated, deleted
ORDER_CHANGES = [
    ("acme", "o8", "s8", "mug@example.com", day(4), 15, "USD", "refunded", day(16), False),  # s8: none left
    ("acme", "o2", "s2", "bob@example.com", day(10), 25, "USD", "paid", day(16), True),  # deleted
    ("acme", "o9", "s3", "carol.new@example.com", day(15.9), 80, "USD", "paid", day(15.9), False),
    ("acme", "o10", None, "carol@example.com", day(15.8), 12, "USD", "paid", day(15.8), False),  # guest
    # o1 (built as s1's) is re-attributed to s7: s1 loses it, s7 gains it and its lines' tags.
    ("acme", "o1", "s7", "hiker@example.com", day(-25), 10, "USD", "paid", day(16), False),
    # a late copy of an older o8 change (paid): the day's refund, updated later, still wins.
    ("acme", "o8", "s8", "mug@example.com", day(4), 15, "USD", "paid", day(3.5), False),
]

# recart.raw_order_lines: account, order, line, product, quantity, unit price, updated
ORDER_LINE_CHANGES = [
    ("acme", "o9", "l1", "p-boots", 1, 80, day(15.9)),
    ("acme", "o1", "l2", "p-boots", 1, 0, day(16)),  # a line added to an old order
]

# recart.raw_products: account, product, title, tags, updated, deleted
PRODUCT_CHANGES = [("acme", "p-mug", "Mug", ["kitchen", "Gift"], day(16), False)]


def _land_day_16(database: Path) -> None:
    conn = duckdb.connect(str(database))
    try:
        conn.execute("set timezone = 'UTC'")
        for table, rows in (
            ("raw_subscribers", SUBSCRIBER_CHANGES),
            ("raw_orders", ORDER_CHANGES),
            ("raw_order_lines", ORDER_LINE_CHANGES),
            ("raw_products", PRODUCT_CHANGES),
        ):
            lineage = [(f"{table}/day16.jsonl", n, LOADED) for n in range(len(rows))]
            width = len(rows[0]) + 3
            conn.executemany(
                f"insert into recart.{table} values ({', '.join(['?'] * width)})",
                [(*row, *extra) for row, extra in zip(rows, lineage, strict=True)],
            )
        # The day's segment sync: p4 (carol@) leaves Engaged; everything was synced today.
        conn.execute(
            "update klaviyo.raw_group_members set valid_to = ?, left_detected_at = ?"
            " where profile_id = 'p4' and group_id = 'SEG_ENGAGED'",
            [LOADED, LOADED],
        )
        conn.execute("update klaviyo.group_sync_status set last_synced_at = ?", [LOADED])
    finally:
        conn.close()


def _relations(database: Path) -> list[str]:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        return [
            f"{schema}.{name}"
            for schema, name in conn.execute(
                "select table_schema, table_name from information_schema.tables"
                " where table_schema in ('staging', 'intermediate', 'marts', 'segments') order by all"
            ).fetchall()
        ]
    finally:
        conn.close()


def _differences(incremental: Path, full: Path, relation: str) -> int:
    conn = duckdb.connect()
    try:
        conn.execute("set timezone = 'UTC'")
        conn.execute(f"attach '{incremental}' as incremental (read_only)")
        conn.execute(f"attach '{full}' as full_refresh (read_only)")
        return conn.execute(
            f"select count(*) from ((select * from incremental.{relation}"
            f" except all select * from full_refresh.{relation})"
            f" union all (select * from full_refresh.{relation}"
            f" except all select * from incremental.{relation}))"
        ).fetchone()[0]
    finally:
        conn.close()


def test_a_daily_incremental_build_equals_a_full_refresh(
    built_warehouse: BuiltWarehouse, dbt_in_process, tmp_path: Path
):
    incremental = built_warehouse.copy(tmp_path / "incremental.duckdb")
    _land_day_16(incremental)
    full = tmp_path / "full.duckdb"
    full.write_bytes(incremental.read_bytes())
    vars_ = ["--vars", json.dumps({"as_of": DAY16.isoformat(), "phone_default_countries": {"brit": "GB"}})]

    assert dbt_in_process(["build", *vars_], incremental), dbt_in_process.last_result.exception
    compiled = tmp_path / "target" / "compiled" / "recart_warehouse" / "models"
    summaries = compiled / "intermediate/purchases/int_purchases_summarised_per_subscriber.sql"
    assert "orders_of_affected_subscribers" in summaries.read_text(), "purchases were not built incrementally"
    assert dbt_in_process(["build", "--full-refresh", *vars_], full), dbt_in_process.last_result.exception

    relations = _relations(full)
    assert "intermediate.int_purchases_aggregated_to_subscribers" in relations
    assert {relation: _differences(incremental, full, relation) for relation in relations} == {
        relation: 0 for relation in relations
    }

    # The day's changes did move purchases and tags as intended.
    conn = duckdb.connect(str(incremental), read_only=True)
    try:
        purchases = conn.execute(
            "select subscriber_id, order_count from intermediate.int_purchases_aggregated_to_subscribers"
            " where account_id = 'acme' order by 1"
        ).fetchall()
        tags = conn.execute(
            "select subscriber_id, product_tag from marts.subscriber_product_tags"
            " where account_id = 'acme' order by all"
        ).fetchall()
    finally:
        conn.close()
    # s1: o1 is s7's now; s2: o2 deleted; s7: o1 (o7 is s9's); s8: refunded (the late older change lost)
    assert purchases == [("s3", 1), ("s7", 1), ("s9", 1)]
    assert tags == [
        ("s3", "hiking"), ("s3", "outdoor"),
        ("s7", "gift"), ("s7", "hiking"), ("s7", "kitchen"), ("s7", "outdoor"),
        ("s9", "hiking"), ("s9", "outdoor"),
    ]  # fmt: skip
