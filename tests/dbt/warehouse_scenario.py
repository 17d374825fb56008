"""A small warehouse for the dbt project: raw Recart change data and Klaviyo membership, by hand.

Day 0 is ``D0``; the dbt build runs "as of" ``AS_OF`` (day 15, noon). What each row is for:

- acme (default country US)
  - s1 Alice: messy email and a national phone; Klaviyo knows her as TWO profiles (p1 by
    email, p2 by phone). p1 is in "Engaged 30 days", p2 joined "Abandoned cart 7 days" on day 13.
    Her only order is 40 days old → in both shipped segments.
  - s2 Bob: matched by external id (p3, whose email differs). In "Clicked email, no purchase"
    and, since day 5, "Abandoned cart 7 days"; he bought on day 10 (a superseded order row
    and a cancelled order don't count) → in neither segment.
  - s3 Carol: her email was superseded (old@ → carol@); p4 carol@ is in "Engaged 30 days"; her
    only order was deleted → in clicked_klaviyo_email_no_purchase. Her old spell in
    "Abandoned cart 7 days" is closed → not in abandoned_cart.
  - s4 Dave: deleted (his latest row); p5 is still in "Engaged 30 days" → nowhere.
  - s5: an invalid email and an unreadable phone → subscriber_contact_rejections.
  - s7 Hiker: vip, a guest order (no subscriber_id, email in other case) of boots, whose tags
    were superseded to ["Hiking", "Outdoor"] → vip_hikers.
  - s8 Mug: vip, bought a mug (kitchen) → not vip_hikers.
- brit (default country GB): s6 with "07911 123456" matches p6 (+447911123456) by phone.

Usage history (for klaviyo_group_usage): flow f1 (active on day 0, paused on day 1) uses
clicked_klaviyo_email_no_purchase (→ "Clicked email, no purchase", "Engaged 30 days");
campaign c1 (scheduled on day 0, sent on day 2) and, from day 5 to day 8, draft flow f2 use
abandoned_cart_email_no_purchase (→ "Abandoned cart 7 days").
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from connectors.recart.models import all_ddl
from warehouse.klaviyo_membership import ensure_schema

D0 = datetime(2026, 2, 1, tzinfo=UTC)
AS_OF = D0 + timedelta(days=15, hours=12)


def day(n: float) -> datetime:
    """Day ``n`` of the scenario (fractions are parts of a day)."""
    return D0 + timedelta(days=n)


def _subscriber(
    account: str,
    sid: str,
    email: str | None,
    phone: str | None,
    external_id: str | None = None,
    attributes: dict | None = None,
    updated: float = 0,
    deleted: bool = False,
) -> tuple:
    return (
        account,
        sid,
        email,
        phone,
        external_id,
        True,
        day(-100),
        phone is not None,
        day(-100) if phone else None,
        None,
        None,
        json.dumps(attributes or {}),
        "popup",
        day(-100),
        day(updated),
        deleted,
    )


SUBSCRIBERS = [
    _subscriber("acme", "s1", "  Alice@Example.COM ", "(415) 555-2671", "ext-1"),
    _subscriber("acme", "s2", "bob@example.com", None, "ext-2"),
    _subscriber("acme", "s3", "old@example.com", None, updated=-50),
    _subscriber("acme", "s3", "carol@example.com", "+1 650-555-0100", updated=-10),
    _subscriber("acme", "s4", "dave@example.com", None, updated=-50),
    _subscriber("acme", "s4", "dave@example.com", None, updated=-5, deleted=True),
    _subscriber("acme", "s5", "not-an-email", "12", attributes={"vip": False}),
    _subscriber("acme", "s7", "hiker@example.com", None, attributes={"vip": True}),
    _subscriber("acme", "s8", "mug@example.com", None, attributes={"vip": True}),
    _subscriber("brit", "s6", "eve@example.co.uk", "07911 123456"),
]

ORDERS = [
    # account, order, subscriber, email, placed (day), total, currency, status, updated (day), deleted
    ("acme", "o1", "s1", "alice@example.com", -25, 10, "USD", "paid", -25, False),
    ("acme", "o2", "s2", "bob@example.com", 10, 20, "USD", "pending", 10, False),
    ("acme", "o2", "s2", "bob@example.com", 10, 25, "USD", "paid", 10.5, False),  # supersedes
    ("acme", "o3", "s2", "bob@example.com", 14, 99, "USD", "cancelled", 14, False),
    ("acme", "o4", "s3", "carol@example.com", 12, 30, "USD", "paid", 12, False),
    ("acme", "o4", "s3", "carol@example.com", 12, 30, "USD", "paid", 13, True),  # deleted
    ("acme", "o7", None, " Hiker@Example.com", 3, 120, "USD", "paid", 3, False),  # guest order
    ("acme", "o8", "s8", "mug@example.com", 4, 15, "USD", "paid", 4, False),
]

ORDER_LINES = [
    ("acme", "o1", "l1", "p-mug", 1, 10),
    ("acme", "o2", "l1", "p-mug", 1, 25),
    ("acme", "o7", "l1", "p-boots", 1, 120),
    ("acme", "o8", "l1", "p-mug", 1, 15),
]

PRODUCTS = [
    ("acme", "p-boots", "Trail boots", ["outdoor"], -30, False),
    ("acme", "p-boots", "Trail boots", ["Hiking", " Outdoor "], -20, False),  # supersedes
    ("acme", "p-mug", "Mug", ["kitchen"], -30, False),
]

GROUPS = [
    # account, group id, kind, name
    ("acme", "SEG_CLICKED", "segment", "Clicked email, no purchase"),
    ("acme", "SEG_ENGAGED", "segment", "Engaged 30 days"),
    ("acme", "SEG_ABANDONED", "segment", "Abandoned cart 7 days"),
    ("acme", "SEG_UNUSED", "segment", "Unused segment"),
    ("acme", "LIST_NEWS", "list", "Newsletter"),
    ("brit", "SEG_ENGAGED_UK", "segment", "Engaged 30 days"),
]

PROFILES = {
    # account, profile: email, phone, external id
    ("acme", "p1"): ("alice@example.com", None, None),
    ("acme", "p2"): (None, "+14155552671", None),
    ("acme", "p3"): ("robert@work.example", None, "ext-2"),
    ("acme", "p4"): ("carol@example.com", None, None),
    ("acme", "p5"): ("dave@example.com", None, None),
    ("brit", "p6"): (None, "+447911123456", None),
}

MEMBERS = [
    # account, group, profile, valid_from (day), valid_to (day or None)
    ("acme", "SEG_ENGAGED", "p1", -3, None),
    ("acme", "SEG_ABANDONED", "p2", 13, None),
    ("acme", "SEG_CLICKED", "p3", -1, None),
    ("acme", "SEG_ABANDONED", "p3", 5, None),
    ("acme", "SEG_ENGAGED", "p4", -2, None),
    ("acme", "SEG_ABANDONED", "p4", -2, 3),
    ("acme", "SEG_ENGAGED", "p5", -2, None),
    ("acme", "LIST_NEWS", "p1", -30, None),
    ("brit", "SEG_ENGAGED_UK", "p6", -2, None),
]

FLOWS = [
    # account, flow, status, updated (day), deleted
    ("acme", "f1", "active", 0, False),
    ("acme", "f1", "paused", 1, False),
    ("acme", "f2", "draft", 5, False),
]

CAMPAIGNS = [
    ("acme", "c1", "scheduled", 0, False),
    ("acme", "c1", "sent", 2, False),
]

SEGMENT_USAGES = [
    # account, consumer type, consumer, segment, updated (day), deleted
    ("acme", "flow", "f1", "clicked_klaviyo_email_no_purchase", 0, False),
    ("acme", "campaign", "c1", "abandoned_cart_email_no_purchase", 0, False),
    ("acme", "flow", "f2", "abandoned_cart_email_no_purchase", 5, False),
    ("acme", "flow", "f2", "abandoned_cart_email_no_purchase", 8, True),
]


def build_warehouse(path: Path) -> None:
    """Create the raw tables of both sources at ``path`` and fill them with the scenario."""
    conn = duckdb.connect(str(path))
    try:
        conn.execute("set timezone = 'UTC'")
        for statement in all_ddl():  # the loader's own tables (the contract dbt's sources read)
            conn.execute(statement)
        ensure_schema(conn)
        lineage = _Lineage()
        conn.executemany(
            "insert into recart.raw_subscribers values (" + ", ".join(["?"] * 19) + ")",
            [(*row, *lineage.next("subscribers.jsonl", row[14])) for row in SUBSCRIBERS],
        )
        conn.executemany(
            "insert into recart.raw_orders values (" + ", ".join(["?"] * 13) + ")",
            [
                (a, o, s, e, day(p), t, c, st, day(u), d, *lineage.next("orders.jsonl", day(u)))
                for a, o, s, e, p, t, c, st, u, d in ORDERS
            ],
        )
        conn.executemany(
            "insert into recart.raw_order_lines values (" + ", ".join(["?"] * 10) + ")",
            [(*row, day(-30), *lineage.next("order_lines.jsonl", day(-30))) for row in ORDER_LINES],
        )
        conn.executemany(
            "insert into recart.raw_products values (" + ", ".join(["?"] * 9) + ")",
            [
                (a, p, t, tags, day(u), d, *lineage.next("products.jsonl", day(u)))
                for a, p, t, tags, u, d in PRODUCTS
            ],
        )
        conn.executemany(
            "insert into recart.raw_automated_flows values (" + ", ".join(["?"] * 10) + ")",
            [
                (
                    a,
                    f,
                    f"Flow {f}",
                    st,
                    "klaviyo_email_clicked",
                    day(u),
                    d,
                    *lineage.next("flows.jsonl", day(u)),
                )
                for a, f, st, u, d in FLOWS
            ],
        )
        conn.executemany(
            "insert into recart.raw_campaigns values (" + ", ".join(["?"] * 10) + ")",
            [
                (a, c, f"Campaign {c}", st, day(3), day(u), d, *lineage.next("campaigns.jsonl", day(u)))
                for a, c, st, u, d in CAMPAIGNS
            ],
        )
        conn.executemany(
            "insert into recart.raw_segment_usages values (" + ", ".join(["?"] * 9) + ")",
            [
                (a, t, c, s, day(u), d, *lineage.next("segment_usages.jsonl", day(u)))
                for a, t, c, s, u, d in SEGMENT_USAGES
            ],
        )
        synced_at = day(15)
        conn.executemany(
            "insert into klaviyo.raw_groups values (?, ?, ?, ?, null, true, null, ?, ?, ?)",
            [(a, g, k, n, day(-60), day(-60), synced_at) for a, g, k, n in GROUPS],
        )
        conn.executemany(
            "insert into klaviyo.raw_group_members values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    a,
                    _kind(a, g),
                    g,
                    p,
                    *PROFILES[(a, p)],
                    day(f),
                    day(f),
                    None if t is None else day(t),
                    None if t is None else day(t),
                    day(0),
                )
                for a, g, p, f, t in MEMBERS
            ],
        )
        # Each group's membership sync; "Engaged 30 days" (acme) was synced a day earlier.
        conn.executemany(
            "insert into klaviyo.group_sync_status values (?, ?, ?, ?, null, 0, null, 0, 0, ?)",
            [(a, g, k, day(14) if g == "SEG_ENGAGED" else synced_at, synced_at) for a, g, k, _ in GROUPS],
        )
    finally:
        conn.close()


def _kind(account: str, group_id: str) -> str:
    return next(k for a, g, k, _ in GROUPS if (a, g) == (account, group_id))


class _Lineage:
    """``_file``, ``_row`` and ``_loaded_at`` of appended rows, in load order."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def next(self, file: str, changed_at: datetime) -> tuple[str, int, datetime]:
        self.rows[file] = self.rows.get(file, 0) + 1
        return file, self.rows[file], changed_at + timedelta(minutes=5)
