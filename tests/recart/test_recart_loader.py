"""Loading the landing zone: typed rows, rejections with file and reason, each file once."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.recart.loader import LoadResult, ensure_tables, load_entity
from tests.recart.landing_helpers import Landing, subscriber
from warehouse.duckdb_file import write_connection, write_lock

ACME = "acme-outdoor"


def test_jsonl_rows_load_typed_with_messy_values_kept(landing: Landing):
    landing.jsonl(
        "subscribers",
        ACME,
        "a.jsonl",
        [
            subscriber(
                "s1",
                email="  Foo@Example.COM ",
                phone="(415) 555-2671",
                external_id="shopify:1",
                email_consent=True,
                email_consent_at="2026-01-01T10:00:00+02:00",
                sms_consent=False,
                custom_attributes={"vip": True, "loyalty_tier": "gold"},
                source="popup",
                account_id=ACME,
            ),
            subscriber("s2", phone="+1 415 555 2671", updated_at="2026-01-02 03:04:05"),
        ],
    )
    result = load_entity("subscribers", landing.root, landing.warehouse)
    assert (result.files_loaded, result.rows_loaded, result.rows_rejected) == (1, 2, 0)
    rows = landing.query(
        "select account_id, subscriber_id, email, phone, email_consent, email_consent_at, sms_consent,"
        " custom_attributes->>'loyalty_tier', source, deleted, _file, _row"
        " from recart.raw_subscribers order by _row"
    )
    first, second = rows
    assert first[:5] == (ACME, "s1", "  Foo@Example.COM ", "(415) 555-2671", True)
    assert first[5] == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)  # the offset is honoured
    assert first[6:] == (False, "gold", "popup", False, "recart/subscribers/acme-outdoor/a.jsonl", 1)
    assert second[3] == "+1 415 555 2671" and second[9] is False and second[11] == 2


BAD_ROWS = [
    pytest.param('{"subscriber_id": "x", "updated_at": ', "malformed JSON: ", id="malformed-json"),
    pytest.param("[1, 2]", "expected a JSON object, got array", id="not-an-object"),
    pytest.param(
        json.dumps({"email": "a@b.c", "updated_at": "2026-01-01T00:00:00Z"}),
        "missing subscriber_id",
        id="missing-key",
    ),
    pytest.param(json.dumps(subscriber("  ")), "subscriber_id is blank", id="blank-key"),
    pytest.param(
        json.dumps(subscriber("x", updated_at="yesterday")),
        'updated_at: "yesterday" is not an ISO-8601 timestamp',
        id="bad-timestamp",
    ),
    pytest.param(json.dumps({"subscriber_id": "x"}), "missing updated_at", id="missing-version"),
    pytest.param(
        json.dumps(subscriber("x", email_consent="yes")),
        'email_consent: "yes" is not true or false',
        id="bad-boolean",
    ),
    pytest.param(
        json.dumps(subscriber("x", custom_attributes=[1])),
        "custom_attributes: [1] is not a JSON object",
        id="bad-object",
    ),
    pytest.param(
        json.dumps(subscriber("x", email={"a": 1})), 'email: {"a":1} is not a string', id="object-as-text"
    ),
    pytest.param(
        json.dumps(subscriber("x", account_id="other-shop")),
        'account_id "other-shop" differs from the account directory "acme-outdoor"',
        id="other-account",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD_ROWS)
def test_each_bad_row_kind_is_rejected_with_file_row_and_reason(landing: Landing, line: str, reason: str):
    landing.jsonl("subscribers", ACME, "mixed.jsonl", [subscriber("good-1"), line, subscriber("good-2")])
    result = load_entity("subscribers", landing.root, landing.warehouse)
    assert (result.rows_loaded, result.rows_rejected) == (2, 1)
    assert landing.query("select subscriber_id from recart.raw_subscribers order by _row") == [
        ("good-1",),
        ("good-2",),
    ]
    [(account, entity, file, row, got, raw_line)] = landing.query(
        "select account_id, entity, _file, _row, reason, raw_line from recart.rejections"
    )
    assert (account, entity, file, row) == (
        ACME,
        "subscribers",
        "recart/subscribers/acme-outdoor/mixed.jsonl",
        2,
    )
    assert got.startswith(reason) if reason.endswith(": ") else reason in got
    assert raw_line == line
    assert landing.query("select rows_loaded, rows_rejected from recart.loaded_files") == [(2, 1)]


@pytest.mark.parametrize(
    ("entity", "record", "reason"),
    [
        (
            "orders",
            {"order_id": "o1", "total_amount": "12,50", "updated_at": "2026-01-01T00:00:00Z"},
            'total_amount: "12,50" is not a decimal number',
        ),
        (
            "order_lines",
            {"order_id": "o1", "line_id": "1", "quantity": 2.5, "updated_at": "2026-01-01T00:00:00Z"},
            "quantity: 2.5 is not an integer",
        ),
        (
            "products",
            {"product_id": "p1", "tags": ["sale", 3], "updated_at": "2026-01-01T00:00:00Z"},
            'tags: ["sale",3] is not an array of strings',
        ),
        (
            "automated_flows",
            {"flow_id": "f1", "status": "live", "updated_at": "2026-01-01T00:00:00Z"},
            'status: "live" is not one of draft, active, paused, archived',
        ),
        (
            "campaigns",
            {
                "campaign_id": "c1",
                "status": "sent",
                "scheduled_at": 1700000000,
                "updated_at": "2026-01-01T00:00:00Z",
            },
            "scheduled_at: 1700000000 is not an ISO-8601 timestamp",
        ),
        (
            "segment_usages",
            {"consumer_type": "flow", "consumer_id": "f1", "updated_at": "2026-01-01T00:00:00Z"},
            "missing segment_name",
        ),
    ],
)
def test_type_rules_of_every_entity(landing: Landing, entity: str, record: dict, reason: str):
    landing.jsonl(entity, ACME, "x.jsonl", [record])
    result = load_entity(entity, landing.root, landing.warehouse)
    assert (result.rows_loaded, result.rows_rejected) == (0, 1)
    [(got,)] = landing.query("select reason from recart.rejections")
    assert reason in got


def test_valid_values_of_every_entity(landing: Landing):
    at = "2026-01-01T00:00:00Z"
    landing.jsonl(
        "orders",
        ACME,
        "o.jsonl",
        [
            {
                "order_id": 1001,
                "total_amount": 12.345,
                "currency": "USD",
                "placed_at": at,
                "updated_at": at,
                "deleted": True,
            }
        ],
    )
    landing.jsonl(
        "order_lines",
        ACME,
        "l.jsonl",
        [{"order_id": "1001", "line_id": "1", "quantity": "2", "unit_price": "6.5", "updated_at": at}],
    )
    landing.jsonl(
        "products", ACME, "p.jsonl", [{"product_id": "p1", "tags": ["hiking", "sale"], "updated_at": at}]
    )
    landing.jsonl(
        "automated_flows", ACME, "f.jsonl", [{"flow_id": "f1", "status": " Active ", "updated_at": at}]
    )
    landing.jsonl(
        "campaigns",
        ACME,
        "c.jsonl",
        [{"campaign_id": "c1", "status": "scheduled", "scheduled_at": at, "updated_at": at}],
    )
    landing.jsonl(
        "segment_usages",
        ACME,
        "s.jsonl",
        [{"consumer_type": "campaign", "consumer_id": "c1", "segment_name": "vip_hikers", "updated_at": at}],
    )
    for entity in ("orders", "order_lines", "products", "automated_flows", "campaigns", "segment_usages"):
        assert load_entity(entity, landing.root, landing.warehouse).rows_rejected == 0, entity
    assert landing.query("select order_id, total_amount, deleted from recart.raw_orders") == [
        ("1001", Decimal("12.35"), True)
    ]
    assert landing.query("select quantity, unit_price from recart.raw_order_lines") == [(2, Decimal("6.50"))]
    assert landing.query("select tags from recart.raw_products") == [(["hiking", "sale"],)]
    assert landing.query("select status from recart.raw_automated_flows") == [("active",)]
    assert landing.query("select consumer_type, segment_name from recart.raw_segment_usages") == [
        ("campaign", "vip_hikers")
    ]


def test_line_numbers_count_blank_lines_and_odd_bytes_fall_back(landing: Landing):
    path = landing.path("subscribers", ACME, "odd.jsonl")
    lines = [
        json.dumps(subscriber("a")).encode(),
        b"",
        b'{"subscriber_id": "\xff\xfe", "updated_at": "2026-01-01T00:00:00Z"}',  # not UTF-8
        b"garbage \x01\x02\x03\x04 with the reader's delimiter",
        json.dumps(subscriber("b")).encode() + b"\r",  # CRLF line ending
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_entity("subscribers", landing.root, landing.warehouse)
    assert (result.rows_loaded, result.rows_rejected) == (2, 2)
    assert landing.query("select subscriber_id, _row from recart.raw_subscribers order by _row") == [
        ("a", 1),
        ("b", 5),
    ]
    (utf8_row, utf8_reason), (json_row, json_reason) = landing.query(
        "select _row, reason from recart.rejections order by _row"
    )
    assert (utf8_row, utf8_reason) == (3, "line is not valid UTF-8")
    assert json_row == 4 and json_reason.startswith("malformed JSON: ") and "column 1" in json_reason


def test_second_run_loads_nothing_and_a_new_file_loads_alone(landing: Landing):
    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1"), subscriber("s2")])
    landing.parquet(
        "subscribers",
        "bloom-beauty",
        "2.parquet",
        "select 's3' as subscriber_id, timestamptz '2026-01-01 00:00:00+00' as updated_at",
    )
    first = load_entity("subscribers", landing.root, landing.warehouse)
    assert (first.files_loaded, first.rows_loaded) == (2, 3)

    again = load_entity("subscribers", landing.root, landing.warehouse)
    assert (again.files_loaded, again.files_skipped, again.rows_loaded) == (0, 2, 0)
    assert landing.query("select count(*) from recart.raw_subscribers") == [(3,)]

    landing.jsonl(
        "subscribers",
        ACME,
        "3.jsonl",
        [subscriber("s1", email="new@x.io", updated_at="2026-02-01T00:00:00Z")],
    )
    third = load_entity("subscribers", landing.root, landing.warehouse)
    assert [f.file for f in third.files] == ["recart/subscribers/acme-outdoor/3.jsonl"]
    assert (third.rows_loaded, third.files_skipped) == (1, 2)
    assert landing.query("select count(*), count(distinct _loaded_at) from recart.raw_subscribers") == [
        (4, 2)
    ]
    assert landing.query("select count(*) from recart.loaded_files") == [(3,)]


def test_rows_are_stamped_when_published_under_the_write_lock(landing: Landing):
    """_loaded_at is taken holding the lock a dbt build holds: never older than a build that ran.

    A build holds the lock while the load, its files already read and staged, waits to publish;
    the rows must carry a time after the build let go.
    """
    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1")])
    landing.parquet(
        "subscribers", ACME, "2.parquet",
        "select 's2' as subscriber_id, timestamptz '2026-01-01 00:00:00+00' as updated_at",
    )  # fmt: skip
    with write_connection(landing.warehouse) as conn:
        ensure_tables(conn)  # an existing warehouse: the load reads what is loaded without the lock
    loader_thread: list[int] = []

    def load() -> LoadResult:
        loader_thread.append(threading.get_ident())
        return load_entity("subscribers", landing.root, landing.warehouse)

    with ThreadPoolExecutor(1) as pool:
        with write_lock(landing.warehouse):  # "a dbt build"
            loading = pool.submit(load)
            deadline = time.monotonic() + 30
            while not _waits_in(loader_thread, "_publish") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _waits_in(loader_thread, "_publish")  # staged, waiting for the lock to publish
            build_finished = datetime.now(UTC)
        result = loading.result(timeout=60)
    assert result.rows_loaded == 2 and result.loaded_at < build_finished
    stamps = landing.query("select min(_loaded_at), max(_loaded_at) from recart.raw_subscribers")[0]
    assert stamps[0] == stamps[1] and stamps[0] >= build_finished  # JSON Lines and Parquet rows alike
    # the run's start stays on loaded_files: file modification times are compared with it
    assert landing.query("select max(loaded_at) from recart.loaded_files") == [(result.loaded_at,)]


def _waits_in(thread: list[int], function: str) -> bool:
    """Whether the thread (its ident, once started) is inside ``function`` right now."""
    frame = sys._current_frames().get(thread[0]) if thread else None
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_touched_but_identical_file_is_not_reloaded(landing: Landing):
    path = landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1")])
    load_entity("subscribers", landing.root, landing.warehouse)
    os.utime(path)  # same content, newer mtime: hashed again, recognised, skipped
    result = load_entity("subscribers", landing.root, landing.warehouse)
    assert (result.files_loaded, result.files_skipped) == (0, 1)
    assert landing.query("select count(*) from recart.rejections") == [(0,)]


def test_changed_file_under_the_same_name_is_rejected_once(landing: Landing):
    path = landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1")])
    load_entity("subscribers", landing.root, landing.warehouse)
    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1", email="sneaky@x.io")])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    result = load_entity("subscribers", landing.root, landing.warehouse)
    assert (result.files_rejected, result.rows_loaded, result.rows_rejected) == (1, 0, 1)
    [(file, row, reason, raw_line)] = landing.query(
        "select _file, _row, reason, raw_line from recart.rejections"
    )
    assert (file, row, raw_line) == ("recart/subscribers/acme-outdoor/1.jsonl", None, None)
    assert "changed after it was loaded" in reason and "immutable" in reason
    assert landing.query("select email from recart.raw_subscribers") == [(None,)]  # the original stays

    quiet = load_entity("subscribers", landing.root, landing.warehouse)
    assert (quiet.files_loaded, quiet.rows_rejected) == (0, 0)
    assert landing.query("select count(*), count(distinct sha256) from recart.loaded_files") == [(2, 2)]


def test_parquet_rows_load_and_bad_values_are_rejected(landing: Landing):
    landing.parquet(
        "orders",
        ACME,
        "orders.parquet",
        """
        select * from (values
            ('o1', 'sub_1', 'A@B.C ', timestamptz '2026-01-01 10:00:00+00', 12.5::decimal(10,2), 'USD',
             'paid', '2026-01-02T00:00:00Z', false),
            ('o2', null, 'x@y.z', timestamptz '2026-01-01 11:00:00+00', 7::decimal(10,2), 'USD', 'paid',
             'not a time', false),
            ('o3', null, null, null, null, null, null, '2026-01-02T00:00:00Z', true)
        ) t(order_id, subscriber_id, email, placed_at, total_amount, currency, status, updated_at, deleted)
        """,
    )
    landing.parquet(
        "products",
        ACME,
        "products.parquet",
        "select 'p1' as product_id, 'Tent' as title, ['hiking', 'sale'] as tags,"
        " timestamp '2026-01-01 00:00:00' as updated_at",
    )
    orders = load_entity("orders", landing.root, landing.warehouse)
    assert (orders.rows_loaded, orders.rows_rejected) == (2, 1)
    assert landing.query(
        "select order_id, email, total_amount, deleted, _row from recart.raw_orders order by _row"
    ) == [
        ("o1", "A@B.C ", Decimal("12.50"), False, 1),
        ("o3", None, None, True, 3),
    ]
    [(row, reason, raw_line)] = landing.query("select _row, reason, raw_line from recart.rejections")
    assert (row, reason) == (2, 'updated_at: "not a time" is not an ISO-8601 timestamp')
    assert json.loads(raw_line)["order_id"] == "o2"
    assert load_entity("products", landing.root, landing.warehouse).rows_loaded == 1
    assert landing.query("select tags, updated_at from recart.raw_products") == [
        (["hiking", "sale"], datetime(2026, 1, 1, tzinfo=UTC))
    ]


def test_whole_file_rejections_have_no_row_number(landing: Landing):
    landing.path("orders", ACME, "corrupt.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    landing.parquet("orders", ACME, "no-key.parquet", "select 'x@y.z' as email, now() as updated_at")
    landing.parquet(
        "orders", ACME, "bad-type.parquet", "select 'o1' as order_id, 42 as placed_at, now() as updated_at"
    )
    landing.jsonl(
        "orders", "bad account", "a.jsonl", [{"order_id": "o1", "updated_at": "2026-01-01T00:00:00Z"}]
    )
    landing.jsonl("orders", None, "loose.jsonl", [{"order_id": "o1", "updated_at": "2026-01-01T00:00:00Z"}])
    landing.path("orders", ACME, "orders.csv").write_text("order_id\no1\n")
    landing.jsonl("orders", ACME, ".in-progress.jsonl.tmp", ["{"])  # being written: not a landing file
    landing.path("orders", ACME, "_SUCCESS").write_text("")
    result = load_entity("orders", landing.root, landing.warehouse)
    assert (result.files_seen, result.files_rejected, result.rows_loaded) == (6, 6, 0)
    reasons = dict(landing.query("select _file, reason from recart.rejections where _row is null"))
    assert reasons["recart/orders/acme-outdoor/corrupt.parquet"].startswith("unreadable Parquet file: ")
    assert (
        reasons["recart/orders/acme-outdoor/no-key.parquet"]
        == "Parquet file has no column order_id (required)"
    )
    assert (
        "column placed_at has Parquet type INTEGER" in reasons["recart/orders/acme-outdoor/bad-type.parquet"]
    )
    assert reasons["recart/orders/bad account/a.jsonl"] == (
        "account directory 'bad account' is not a valid Recart account id"
    )
    assert reasons["recart/orders/loose.jsonl"].startswith("file is not inside an account directory")
    assert reasons["recart/orders/acme-outdoor/orders.csv"].startswith("unsupported file type '.csv'")
    assert landing.query("select count(*) from recart.rejections where _row is not null") == [(0,)]
    assert load_entity("orders", landing.root, landing.warehouse).files_loaded == 0  # each file once


def test_known_accounts_restrict_directories(landing: Landing):
    landing.jsonl("subscribers", "stranger", "1.jsonl", [subscriber("s1")])
    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1")])
    result = load_entity("subscribers", landing.root, landing.warehouse, known_accounts={ACME})
    assert (result.rows_loaded, result.files_rejected) == (1, 1)
    assert landing.query("select account_id, reason from recart.rejections") == [
        ("stranger", "account directory 'stranger' is not a known Recart account")
    ]


def test_duplicate_keys_within_a_file_are_counted(landing: Landing):
    landing.jsonl("subscribers", ACME, "1.jsonl", [subscriber("s1"), subscriber("s1"), subscriber("s2")])
    result = load_entity("subscribers", landing.root, landing.warehouse)
    assert (result.rows_loaded, result.duplicate_keys) == (3, 1)


def test_empty_landing_creates_the_tables(landing: Landing):
    result = load_entity("campaigns", landing.root, landing.warehouse)
    assert (result.files_seen, result.files_loaded) == (0, 0)
    tables = {
        row[0]
        for row in landing.query(
            "select table_name from information_schema.tables where table_schema = 'recart'"
        )
    }
    assert {"raw_campaigns", "rejections", "loaded_files", "raw_subscribers", "raw_segment_usages"} <= tables


def _load_in_process(entity: str, root: str, warehouse: str) -> int:
    return load_entity(entity, root, warehouse).rows_loaded


def test_concurrent_runs_load_each_file_once(landing: Landing):
    for n in range(4):
        landing.jsonl("subscribers", ACME, f"{n}.jsonl", [subscriber(f"s{n}-{i}") for i in range(50)])
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [
            pool.submit(_load_in_process, "subscribers", str(landing.root), str(landing.warehouse))
            for _ in "ab"
        ]
        loaded = sorted(run.result() for run in runs)
    assert sum(loaded) == 200  # one run loaded everything, or they shared it: never twice
    assert landing.query("select count(*), count(distinct _file) from recart.raw_subscribers") == [(200, 4)]
    assert landing.query("select count(*) from recart.loaded_files") == [(4,)]
    assert not list(Path(landing.warehouse).parent.glob(".recart-stage-*"))  # staging cleaned up
