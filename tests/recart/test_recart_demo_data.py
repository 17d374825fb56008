"""The demo-data generator: deterministic, the sandbox's people, loadable with only the planted bad rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import phonenumbers
import pytest

from connectors.recart.demo_data import DEMO_SHOP_COUNTRIES, DEMO_SHOPS, generate, main, plan_shops
from connectors.recart.loader import load_all
from klaviyo_sandbox.seed import DEMO_ACCOUNTS, demo_people
from warehouse.duckdb_file import read_connection

AS_OF = datetime(2026, 11, 29, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo scale, generated once for the module."""
    out = tmp_path_factory.mktemp("demo") / "landing"
    generate(out, as_of=AS_OF)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_shops_map_to_the_sandbox_accounts_in_order():
    assert list(DEMO_SHOPS) == ["acme-outdoor", "bloom-beauty", "maple-moss"]
    assert list(DEMO_SHOPS.values()) == [a.slug for a in DEMO_ACCOUNTS]


def test_two_runs_are_byte_identical(demo_landing: Path, tmp_path: Path):
    again = tmp_path / "again"
    main(["--out", str(again), "--as-of", "2026-11-29"])
    first, second = _files(demo_landing), _files(again)
    assert first.keys() == second.keys()
    assert any(name.endswith(".parquet") for name in first) and any(name.endswith(".jsonl") for name in first)
    assert [name for name in first if first[name] != second[name]] == []


def _normalised_phone(value: str | None, region: str) -> str | None:
    if value is None:
        return None
    return phonenumbers.format_number(phonenumbers.parse(value, region), phonenumbers.PhoneNumberFormat.E164)


def test_demo_subscribers_are_the_sandbox_people(demo_landing: Path):
    messy_emails = messy_phones = total = 0
    for account in DEMO_ACCOUNTS:
        path = demo_landing / "recart" / "subscribers" / account.slug / "demo-people.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        people = list(demo_people(account.slug, account.profile_count))
        assert len(rows) == len(people) == account.profile_count
        for row, person in zip(rows, people, strict=True):
            assert row["email"].strip().lower() == person.email
            assert _normalised_phone(row["phone"], DEMO_SHOP_COUNTRIES[account.slug]) == person.phone_number
            assert row["external_id"] == person.external_id
            assert not (row["sms_consent"] and row["phone"] is None)  # SMS consent only with a phone
            messy_emails += row["email"] != person.email
            messy_phones += row["phone"] != person.phone_number
        total += len(rows)
    assert 0.05 < messy_emails / total < 0.25
    assert 0.05 < messy_phones / total < 0.25


def test_demo_landing_loads_with_only_the_planted_rejections(demo_landing: Path, tmp_path: Path):
    results = load_all(demo_landing, tmp_path / "warehouse.duckdb")
    assert {name: r.rows_rejected for name, r in results.items() if r.rows_rejected} == {
        "subscribers": 1,
        "orders": 1,
        "products": 1,
    }
    with read_connection(tmp_path / "warehouse.duckdb") as conn:
        reasons = sorted(r[0] for r in conn.execute("select reason from recart.rejections").fetchall())
        assert reasons[0].startswith("malformed JSON: ")
        assert reasons[1:] == [
            "missing product_id",
            'placed_at: "yesterday at noon" is not an ISO-8601 timestamp',
        ]
        usages = conn.execute(
            """
            select u.account_id, u.segment_name, coalesce(f.status, c.status)
            from recart.raw_segment_usages u
            left join recart.raw_automated_flows f
                on u.consumer_type = 'flow' and f.account_id = u.account_id and f.flow_id = u.consumer_id
            left join recart.raw_campaigns c
                on u.consumer_type = 'campaign' and c.account_id = u.account_id
                and c.campaign_id = u.consumer_id
            """
        ).fetchall()
        by_segment: dict[str, set[str]] = {}
        for _, segment, status in usages:
            by_segment.setdefault(segment, set()).add(status)
        assert by_segment == {
            "clicked_klaviyo_email_no_purchase": {"active", "sent"},
            "abandoned_cart_email_no_purchase": {"scheduled"},
            "vip_hikers": {"paused"},
        }
        flow_statuses = {
            r[0] for r in conn.execute("select status from recart.raw_automated_flows").fetchall()
        }
        assert {"draft", "active", "paused"} <= flow_statuses
        campaign_statuses = {r[0] for r in conn.execute("select status from recart.raw_campaigns").fetchall()}
        assert {"draft", "scheduled", "sent"} <= campaign_statuses
        # Orders fall in the last 180 days, reference known subscribers and add up to their lines.
        window, orphans, mismatched = conn.execute(
            """
            with latest as (
                select * from recart.raw_orders
                qualify row_number() over (partition by account_id, order_id order by updated_at desc) = 1
            ), totals as (
                select account_id, order_id, sum(quantity * unit_price) as total
                from recart.raw_order_lines group by all
            )
            select
                count(*) filter (where placed_at < ?::timestamptz - interval 180 day or placed_at > ?),
                count(*) filter (where subscriber_id is not null and subscriber_id not in (
                    select subscriber_id from recart.raw_subscribers s
                    where s.account_id = latest.account_id)),
                count(*) filter (where totals.total <> latest.total_amount)
            from latest join totals using (account_id, order_id)
            """,
            [AS_OF, AS_OF],
        ).fetchone()
        assert (window, orphans, mismatched) == (0, 0, 0)
        refunded = conn.execute(
            "select count(*) from recart.raw_orders where status = 'refunded'"
        ).fetchone()[0]
        assert refunded > 0
        tags = conn.execute("select flatten(list(tags)) from recart.raw_products").fetchone()[0]
        assert {"hiking", "sale", "new-arrival", "gift"} <= set(tags)


def test_beyond_demo_size_extra_people_follow_the_demo_people(tmp_path: Path):
    out = tmp_path / "landing"
    summary = generate(out, subscribers=9_000, orders=12_000, as_of=AS_OF, chunk_rows=4_000, bad_rows=False)
    assert summary.rows["subscribers"] >= 9_000 and summary.bad_rows == 0
    assert [s.subscribers for s in summary.shops] == [5409, 3245, 346]
    extra = sorted((out / "recart" / "subscribers" / "acme-outdoor").glob("subscribers-*.parquet"))
    assert [p.name for p in extra] == ["subscribers-00001.parquet"]
    con = duckdb.connect()
    ids, emails, phones, distinct_phones, first = con.execute(
        "select count(distinct subscriber_id), count(distinct lower(trim(email))), count(phone),"
        f" count(distinct phone), min(subscriber_id) from read_parquet('{extra[0]}')"
    ).fetchone()
    assert (ids, emails, first) == (409, 409, "sub_00005001")
    assert phones == distinct_phones > 0
    assert len(sorted((out / "recart" / "orders" / "acme-outdoor").glob("orders-*.parquet"))) == 2
    assert [s.orders for s in summary.shops] == [7212, 4327, 461]  # 2 + 2 + 1 chunks of 4,000
    assert sum(1 for _ in (out / "recart" / "order_lines").rglob("*.parquet")) == 5


def test_plan_splits_totals_exactly():
    shops = plan_shops(1_000_000, 10_000_000)
    assert sum(s.subscribers for s in shops) == 1_000_000 and sum(s.orders for s in shops) == 10_000_000
    assert [s.demo_people for s in shops] == [a.profile_count for a in DEMO_ACCOUNTS]
    assert [s.subscribers for s in plan_shops()] == [a.profile_count for a in DEMO_ACCOUNTS]


def test_refuses_to_overwrite_landed_files(demo_landing: Path):
    with pytest.raises(FileExistsError, match="immutable"):
        generate(demo_landing, as_of=AS_OF)
