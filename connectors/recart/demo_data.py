"""Deterministic demo data for the Recart landing zone, from the demo size up to millions of rows.

``python -m connectors.recart.demo_data --out PATH --scale demo|100k|1m|10m [--subscribers N --orders N]``

Writes ``<out>/recart/<entity>/<account_id>/…`` for the demo shops (``DEMO_SHOPS``). The first
subscribers of each shop are exactly the Klaviyo sandbox's demo people (``demo_people(slug,
profile_count)``: same email, E.164 phone and external id), some rendered messy the way app data
is (upper-case or padded emails, national-format phones) so identity matching gets exercised.
Beyond the demo size, extra people are generated in SQL (not in Klaviyo). Orders and their lines
are generated in SQL and written as Parquet in chunks with DuckDB's ``COPY``, so memory stays
bounded at any scale; the small entities are JSON Lines. Change files then supersede some rows
(refunds, opt-outs, a re-tagged and a deleted product) and, by default, carry a few deliberately
bad rows so the rejections table has something to show.

Everything is a pure function of the scale, the shops and ``as_of`` (default: today 00:00 UTC):
two runs with the same arguments write byte-identical files (for a given DuckDB version, whose
``hash()`` drives the SQL side).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pandas as pd
import phonenumbers

from connectors.recart.landing import (
    SOURCE_DIR,
    atomic_write,
    default_landing_root,
    landing_path,
    temp_name_for,
)
from connectors.recart.models import ENTITIES
from klaviyo_sandbox.seed import DEMO_ACCOUNTS, DemoPerson, demo_people

#: Recart account id of each demo shop → the Klaviyo sandbox demo account (slug) it connects to.
DEMO_SHOPS: dict[str, str] = dict(
    zip(("acme-outdoor", "bloom-beauty", "maple-moss"), (a.slug for a in DEMO_ACCOUNTS), strict=True)
)

#: Each demo shop's home country. Phones in its data that are written without a country code
#: (national format) are numbers of this country: dbt's ``phone_default_countries`` should say so.
DEMO_SHOP_COUNTRIES: dict[str, str] = {"acme-outdoor": "US", "bloom-beauty": "US", "maple-moss": "GB"}

#: The analyst segments (dbt models under models/segments/) that flows and campaigns use.
CLICKED_NO_PURCHASE = "clicked_klaviyo_email_no_purchase"
ABANDONED_CART_NO_PURCHASE = "abandoned_cart_email_no_purchase"
VIP_HIKERS = "vip_hikers"  # used only by a paused flow: the "outdated segment" case


@dataclass(frozen=True)
class Scale:
    """Totals over all demo shops; None means the demo size (each shop's Klaviyo profile count)."""

    subscribers: int | None
    orders: int | None


SCALES: dict[str, Scale] = {
    "demo": Scale(None, None),
    "100k": Scale(100_000, 1_000_000),
    "1m": Scale(1_000_000, 10_000_000),
    "10m": Scale(10_000_000, 100_000_000),
}
DEMO_ORDERS_PER_SUBSCRIBER = 2
CHUNK_ROWS = 1_000_000
ORDER_WINDOW_DAYS = 180


@dataclass(frozen=True)
class ShopPlan:
    """What to generate for one shop."""

    account_id: str  # the Recart account id (the landing folder)
    slug: str  # the Klaviyo demo account
    subscribers: int
    orders: int
    demo_people: int  # the first ``demo_people`` subscribers are the Klaviyo demo people


@dataclass
class GenerationSummary:
    """What a run wrote."""

    out: Path
    as_of: datetime
    shops: list[ShopPlan]
    files: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    bad_rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        return {
            "out": str(self.out),
            "as_of": _iso(self.as_of),
            "shops": {s.account_id: {"subscribers": s.subscribers, "orders": s.orders} for s in self.shops},
            "files": self.files,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "seconds": round(self.seconds, 2),
        }


# ---------------------------------------------------------------------------- shop catalog


@dataclass(frozen=True)
class _Product:
    product_id: str
    title: str
    category: str
    price: float
    tags: tuple[str, ...]


_CATEGORY_TAGS: dict[str, tuple[str, ...]] = {
    "Tents": ("camping", "hiking"),
    "Apparel": ("apparel",),
    "Footwear": ("footwear", "hiking"),
    "Packs": ("packs", "hiking"),
    "Sleep": ("camping",),
    "Cooking": ("camping",),
    "Accessories": ("accessories", "gift"),
    "Skincare": ("skincare",),
    "Makeup": ("makeup", "gift"),
    "Haircare": ("haircare",),
    "Suncare": ("skincare", "summer"),
    "Textiles": ("textiles", "gift"),
    "Candles": ("candles", "gift"),
    "Kitchen": ("kitchen",),
    "Home": ("home",),
    "Garden": ("garden",),
}


def _catalog(slug: str) -> tuple[str, list[_Product]]:
    """The shop's currency and products: the same products (Shopify ids) as the sandbox's shop."""
    # The sandbox keeps its shop specs private; this is the one place that reads them.
    from klaviyo_sandbox.seed import _DEMO_ACCOUNTS

    spec = next(s for s in _DEMO_ACCOUNTS if s.slug == slug)
    products = []
    for i, p in enumerate(spec.products):
        tags = list(_CATEGORY_TAGS.get(p.category, (p.category.lower(),)))
        if "hiking" in p.name.lower() and "hiking" not in tags:
            tags.append("hiking")
        if i % 3 == 1:
            tags.append("sale")
        if i % 4 == 2:
            tags.append("new-arrival")
        products.append(_Product(p.product_id, p.name, p.category, p.price, tuple(tags)))
    return spec.currency, products


# ---------------------------------------------------------------------------- planning


def plan_shops(subscribers: int | None = None, orders: int | None = None) -> list[ShopPlan]:
    """Split totals over the demo shops in proportion to their Klaviyo profile counts."""
    accounts = {a.slug: a for a in DEMO_ACCOUNTS}
    counts = [accounts[slug].profile_count for slug in DEMO_SHOPS.values()]
    subs = counts if subscribers is None else _split(subscribers, counts)
    if orders is None:
        orders_split = [n * DEMO_ORDERS_PER_SUBSCRIBER for n in subs]
    else:
        orders_split = _split(orders, counts)
    return [
        ShopPlan(account_id, slug, n_subs, n_orders, min(n_subs, accounts[slug].profile_count))
        for (account_id, slug), n_subs, n_orders in zip(DEMO_SHOPS.items(), subs, orders_split, strict=True)
    ]


def _split(total: int, weights: list[int]) -> list[int]:
    """Largest-remainder split: integers in proportion to ``weights`` that add up to ``total``."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (exact[i] - parts[i], -i), reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def default_as_of() -> datetime:
    """Today at 00:00 UTC: runs on the same day produce identical files."""
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC)


# ---------------------------------------------------------------------------- entry point


def generate(
    out: Path | str,
    *,
    scale: str = "demo",
    subscribers: int | None = None,
    orders: int | None = None,
    as_of: datetime | None = None,
    chunk_rows: int = CHUNK_ROWS,
    bad_rows: bool = True,
    overwrite: bool = False,
) -> GenerationSummary:
    """Write the landing zone for the demo shops under ``out`` and return what was written.

    ``subscribers`` / ``orders`` override the scale's totals. Refuses to write into a landing zone
    that already holds files of the demo shops unless ``overwrite`` (files are immutable once
    landed: a loader would reject changed content under an old name).
    """
    started = time.monotonic()
    preset = SCALES[scale]
    shops = plan_shops(
        subscribers if subscribers is not None else preset.subscribers,
        orders if orders is not None else preset.orders,
    )
    out = Path(out)
    as_of = (as_of or default_as_of()).astimezone(UTC).replace(microsecond=0)
    _prepare(out, overwrite)
    summary = GenerationSummary(out=out, as_of=as_of, shops=shops)
    con = duckdb.connect()
    try:
        con.execute("set timezone = 'UTC'")
        _define_macros(con)
        for shop in shops:
            _Shop(con, out, shop, as_of, chunk_rows, bad_rows, summary).write()
    finally:
        con.close()
    summary.seconds = time.monotonic() - started
    return summary


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [
        out / SOURCE_DIR / entity / account
        for entity in ENTITIES
        for account in DEMO_SHOPS
        if (out / SOURCE_DIR / entity / account).exists()
    ]
    if not existing:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out / SOURCE_DIR} already holds demo shop files (e.g. {existing[0]}); landing files are "
            "immutable, so pass overwrite=True (--overwrite) to replace them, or write elsewhere"
        )
    for folder in existing:
        shutil.rmtree(folder)


# ---------------------------------------------------------------------------- helpers


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


def _write_jsonl(path: Path, lines: Iterable[bytes]) -> int:
    count = 0
    with atomic_write(path) as handle:
        for line in lines:
            handle.write(line)
            count += 1
    return count


def _sql_list(values: Iterable[Any]) -> str:
    return "[" + ", ".join(_sql_lit(v) for v in values) + "]"


def _sql_lit(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


_FIRST_NAMES = (
    "Ava",
    "Liam",
    "Mia",
    "Noah",
    "Zoe",
    "Ethan",
    "Lily",
    "Mason",
    "Chloe",
    "Lucas",
    "Grace",
    "Owen",
    "Ruby",
    "Eli",
    "Nora",
    "Leo",
    "Isla",
    "Jack",
    "Ella",
    "Finn",
    "Hazel",
    "Caleb",
    "Ivy",
    "Miles",
    "Clara",
    "Theo",
    "Maya",
    "Felix",
    "Alice",
    "Hugo",
    "Sadie",
    "Jonah",
    "Iris",
    "Max",
    "Stella",
    "Wade",
)
_LAST_NAMES = (
    "Bennett",
    "Carter",
    "Diaz",
    "Ellis",
    "Foster",
    "Garcia",
    "Hayes",
    "Irving",
    "Jensen",
    "Kim",
    "Lopez",
    "Murphy",
    "Nguyen",
    "Ortiz",
    "Patel",
    "Quinn",
    "Rivera",
    "Shaw",
    "Turner",
    "Usman",
    "Vance",
    "Walsh",
    "Young",
    "Zhang",
    "Brooks",
    "Chen",
    "Dawson",
    "Evans",
    "Fraser",
    "Gill",
)
_EMAIL_DOMAINS = ("gmail.com", "yahoo.com", "icloud.com", "outlook.com", "hotmail.com", "proton.me")
# Area codes no demo person uses, so extra people never collide with a Klaviyo profile's phone.
_EXTRA_AREA_CODES = ("208", "307", "406", "701", "605", "802", "207", "302", "401", "603")
_EXCHANGES = tuple(e for e in range(200, 1000) if e % 100 != 11 and e != 555)
_SOURCES = ("popup", "checkout", "import")
_SOURCE_WEIGHTS = (55, 30, 15)
_TIERS = ("bronze", "silver", "gold", "platinum")
_TIER_WEIGHTS = (55, 25, 14, 6)
# Extra people's external ids start above any demo person's (those stay below ~4.6M).
_EXTRA_EXTERNAL_ID_BASE = 10_000_000


def _define_macros(con: duckdb.DuckDBPyConnection) -> None:
    """SQL helpers: ``u(shop, i, salt)`` is a deterministic uniform draw in [0, 1)."""
    con.execute(
        "create or replace macro u(shop, i, salt) as (hash(shop, i, salt) % 1000000007) / 1000000007.0"
    )
    con.execute(
        "create or replace macro pick(list, shop, i, salt)"
        " as list[1 + (hash(shop, i, salt) % len(list))::bigint]"
    )
    con.execute("create or replace macro iso(ts) as strftime(ts, '%Y-%m-%dT%H:%M:%SZ')")
    con.execute("create or replace macro secs(n) as to_seconds(cast(n as bigint))")


def _subscriber_id(index: int) -> str:
    return f"sub_{index + 1:08d}"


# ---------------------------------------------------------------------------- one shop


class _Shop:
    """Writes every entity of one shop."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        out: Path,
        plan: ShopPlan,
        as_of: datetime,
        chunk_rows: int,
        bad_rows: bool,
        summary: GenerationSummary,
    ) -> None:
        self.con, self.out, self.plan, self.as_of = con, out, plan, as_of
        self.chunk_rows, self.bad_rows, self.summary = max(1, chunk_rows), bad_rows, summary
        self.currency, self.products = _catalog(plan.slug)
        self.people = list(demo_people(plan.slug, plan.demo_people))
        self.categories = sorted({p.category.lower() for p in self.products})
        self.home_country = DEMO_SHOP_COUNTRIES.get(plan.account_id, "US")

    # -- bookkeeping

    def _path(self, entity: str, name: str) -> Path:
        return landing_path(self.out, entity, self.plan.account_id, name)

    def _count(self, entity: str, rows: int, files: int = 1) -> None:
        self.summary.rows[entity] = self.summary.rows.get(entity, 0) + rows
        self.summary.files += files

    def _copy(self, entity: str, name: str, query: str, fmt: str, extra: list[bytes] | None = None) -> int:
        """``COPY (query) TO`` a landing file through a temp name; returns the row count.

        ``extra`` lines are appended to a JSON Lines file before it is renamed into place.
        """
        path = self._path(entity, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name_for(path)
        options = "format parquet, compression zstd" if fmt == "parquet" else "format json"
        try:
            rows = int(self.con.execute(f"copy ({query}) to {_sql_lit(str(tmp))} ({options})").fetchone()[0])
            if extra:
                with open(tmp, "ab") as handle:
                    handle.writelines(extra)
                rows += len(extra)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return rows

    def write(self) -> None:
        """All entities of the shop."""
        self._write_subscribers()
        self._write_products()
        self._write_orders()
        self._write_flows_campaigns_usages()

    # -- subscribers

    def _demo_subscriber(self, person: DemoPerson) -> dict[str, Any]:
        """The Recart subscriber row of a Klaviyo demo person (own rng per person: prefix-stable)."""
        rng = random.Random(f"recart-demo/subscriber/{self.plan.slug}/{person.index}")
        created = (self.as_of - person.signup_age).replace(microsecond=0)
        lifetime = (self.as_of - created).total_seconds()
        source = rng.choices(_SOURCES, weights=_SOURCE_WEIGHTS)[0]
        email_consent = rng.random() < 0.9
        email_consent_at = created + timedelta(seconds=rng.randint(0, 600)) if email_consent else None
        email_opted_out_at = None
        if email_consent and rng.random() < 0.04:
            email_opted_out_at = created + timedelta(seconds=int(lifetime * rng.uniform(0.2, 0.95)))
            email_consent = False
        sms_consent = person.phone_number is not None and rng.random() < 0.45
        sms_consent_at = created + timedelta(seconds=rng.randint(0, 900)) if sms_consent else None
        sms_opted_out_at = None
        if sms_consent and rng.random() < 0.05:
            sms_opted_out_at = created + timedelta(seconds=int(lifetime * rng.uniform(0.2, 0.95)))
            sms_consent = False
        attributes: dict[str, Any] = {
            "vip": rng.random() < 0.08,
            "favorite_category": rng.choice(self.categories),
            "loyalty_tier": rng.choices(_TIERS, weights=_TIER_WEIGHTS)[0],
        }
        if rng.random() < 0.3:
            attributes["birthday_month"] = rng.randint(1, 12)
        stamps = [created, email_consent_at, sms_consent_at, email_opted_out_at, sms_opted_out_at]
        return {
            "account_id": self.plan.account_id,
            "subscriber_id": _subscriber_id(person.index),
            "email": _messy_email(rng, person.email),
            "phone": _messy_phone(rng, person.phone_number, self.home_country),
            "external_id": person.external_id,
            "email_consent": email_consent,
            "email_consent_at": _iso(email_consent_at) if email_consent_at else None,
            "sms_consent": sms_consent,
            "sms_consent_at": _iso(sms_consent_at) if sms_consent_at else None,
            "email_opted_out_at": _iso(email_opted_out_at) if email_opted_out_at else None,
            "sms_opted_out_at": _iso(sms_opted_out_at) if sms_opted_out_at else None,
            "custom_attributes": attributes,
            "source": source,
            "created_at": _iso(created),
            "updated_at": _iso(max(s for s in stamps if s is not None)),
            "deleted": False,
        }

    def _write_subscribers(self) -> None:
        rows = [self._demo_subscriber(p) for p in self.people]
        if rows:
            self._count(
                "subscribers", _write_jsonl(self._path("subscribers", "demo-people.jsonl"), map(_line, rows))
            )
        for number, (lo, hi) in enumerate(
            _chunks(self.plan.demo_people, self.plan.subscribers, self.chunk_rows), 1
        ):
            query = self._extra_subscribers_sql(lo, hi)
            self._count(
                "subscribers",
                self._copy("subscribers", f"subscribers-{number:05d}.parquet", query, "parquet"),
            )
        self._write_subscriber_changes(rows)

    def _extra_subscribers_sql(self, lo: int, hi: int) -> str:
        """Subscribers beyond the demo people, generated in SQL (not in Klaviyo)."""
        shop, as_of = _sql_lit(self.plan.account_id), f"timestamptz '{self.as_of.isoformat()}'"
        first, last = _sql_list(_FIRST_NAMES), _sql_list(_LAST_NAMES)
        categories, domains = _sql_list(self.categories), _sql_list(_EMAIL_DOMAINS)
        areas, exchanges = _sql_list(_EXTRA_AREA_CODES), _sql_list(_EXCHANGES)
        n_areas, n_exchanges = len(_EXTRA_AREA_CODES), len(_EXCHANGES)
        # Extra people have US numbers: written nationally only where the shop's home is +1.
        nanp_home = phonenumbers.country_code_for_region(self.home_country) == 1
        phone_style = f"hash({shop}, i, 'phone_style') % 3" if nanp_home else "1"
        return f"""
        with base as (
            select i,
                lower(pick({first}, {shop}, i, 'first')) || '.' || lower(pick({last}, {shop}, i, 'last'))
                    || '.' || i || '@' || pick({domains}, {shop}, i, 'domain') as email,
                {areas}[1 + i % {n_areas}] as area,
                -- A bijection from i to (area, line, exchange): unique numbers, varied digits.
                {exchanges}[1 + (i // {n_areas * 10_000}) % {n_exchanges}]::varchar as exchange,
                lpad((((i // {n_areas}) % 10000) * 7919 % 10000)::varchar, 4, '0') as line,
                u({shop}, i, 'phone') < 0.7 as has_phone,
                {as_of} - secs(365 * 86400 * pow(u({shop}, i, 'signup'), 1.25) + 600) as created_at
            from range({lo}, {hi}) t(i)
        ), consent as (
            select *,
                u({shop}, i, 'email') < 0.9 as email_ok,
                u({shop}, i, 'email_out') < 0.04 as email_out,
                has_phone and u({shop}, i, 'sms') < 0.45 as sms_ok,
                u({shop}, i, 'sms_out') < 0.05 as sms_out,
                date_diff('second', created_at, {as_of}) as lifetime
            from base
        ), shaped as (
            select *,
                case when email_ok then created_at + secs(u({shop}, i, 'email_at') * 600) end
                    as email_consent_at,
                case when email_ok and email_out
                    then created_at + secs(lifetime * (0.2 + 0.75 * u({shop}, i, 'email_out_at'))) end
                    as email_opted_out_at,
                case when sms_ok then created_at + secs(u({shop}, i, 'sms_at') * 900) end as sms_consent_at,
                case when sms_ok and sms_out
                    then created_at + secs(lifetime * (0.2 + 0.75 * u({shop}, i, 'sms_out_at'))) end
                    as sms_opted_out_at
            from consent
        )
        select
            {shop} as account_id,
            'sub_' || lpad((i + 1)::varchar, 8, '0') as subscriber_id,
            case when u({shop}, i, 'messy_email') < 0.12 then
                case hash({shop}, i, 'email_style') % 3
                    when 0 then upper(email)
                    when 1 then '  ' || email || ' '
                    else upper(email[1]) || email[2:]
                end
            else email end as email,
            case when not has_phone then null
                when u({shop}, i, 'messy_phone') < 0.2 then
                    case {phone_style}
                        when 0 then '(' || area || ') ' || exchange || '-' || line
                        when 1 then '+1 ' || area || ' ' || exchange || ' ' || line
                        else area || '-' || exchange || '-' || line
                    end
                else '+1' || area || exchange || line end as phone,
            'shopify:' || ({_EXTRA_EXTERNAL_ID_BASE} + i) as external_id,
            email_ok and not email_out as email_consent,
            email_consent_at,
            sms_ok and not sms_out as sms_consent,
            sms_consent_at,
            email_opted_out_at,
            sms_opted_out_at,
            json_object(
                'vip', u({shop}, i, 'vip') < 0.08,
                'favorite_category', pick({categories}, {shop}, i, 'category'),
                'loyalty_tier', case
                    when u({shop}, i, 'tier') < 0.55 then 'bronze'
                    when u({shop}, i, 'tier') < 0.80 then 'silver'
                    when u({shop}, i, 'tier') < 0.94 then 'gold' else 'platinum' end
            )::varchar as custom_attributes,
            case when u({shop}, i, 'source') < 0.55 then 'popup'
                when u({shop}, i, 'source') < 0.85 then 'checkout' else 'import' end as source,
            created_at,
            greatest(created_at, coalesce(email_consent_at, created_at),
                coalesce(sms_consent_at, created_at), coalesce(email_opted_out_at, created_at),
                coalesce(sms_opted_out_at, created_at)) as updated_at,
            false as deleted
        from shaped
        order by i
        """

    def _write_subscriber_changes(self, rows: list[dict[str, Any]]) -> None:
        """Later versions of some demo subscribers: email opt-outs, one deletion, and a bad line."""
        rng = random.Random(f"recart-demo/subscriber-changes/{self.plan.slug}")
        changes: list[bytes] = []
        for row in rows:
            if row["email_consent"] and rng.random() < 0.02:
                at = self.as_of - timedelta(seconds=rng.randint(3_600, 20 * 86_400))
                if at > datetime.fromisoformat(row["updated_at"]):
                    changes.append(
                        _line(
                            {
                                **row,
                                "email_consent": False,
                                "email_opted_out_at": _iso(at),
                                "updated_at": _iso(at),
                            }
                        )
                    )
        if rows:
            gone = rows[len(rows) // 2]
            at = self.as_of - timedelta(days=1)
            if at > datetime.fromisoformat(gone["updated_at"]):
                changes.append(_line({**gone, "deleted": True, "updated_at": _iso(at)}))
        if self.bad_rows and self.plan.account_id == "acme-outdoor" and changes:
            # A line cut off mid-record, as a crashed exporter would leave it.
            changes.insert(len(changes) // 2, changes[0][: len(changes[0]) // 2].rstrip() + b"\n")
            self.summary.bad_rows += 1
        if changes:
            self._count("subscribers", _write_jsonl(self._path("subscribers", "changes-0001.jsonl"), changes))

    # -- products

    def _write_products(self) -> None:
        created = self.as_of - timedelta(days=200)
        rows = [
            {
                "account_id": self.plan.account_id,
                "product_id": p.product_id,
                "title": p.title,
                "tags": list(p.tags),
                "updated_at": _iso(created),
                "deleted": False,
            }
            for p in self.products
        ]
        self._count("products", _write_jsonl(self._path("products", "products.jsonl"), map(_line, rows)))
        changes = [
            _line(
                {
                    **rows[0],
                    "tags": [*rows[0]["tags"], "clearance"],
                    "updated_at": _iso(self.as_of - timedelta(days=10)),
                }
            ),
            _line({**rows[-1], "deleted": True, "updated_at": _iso(self.as_of - timedelta(days=5))}),
        ]
        if self.bad_rows and self.plan.account_id == "acme-outdoor":
            changes.append(_line({"title": "Gift card", "tags": ["gift"], "updated_at": _iso(self.as_of)}))
            self.summary.bad_rows += 1
        self._count("products", _write_jsonl(self._path("products", "changes-0001.jsonl"), changes))

    # -- orders and lines

    def _product_lists(self) -> tuple[str, str]:
        """SQL list literals of the product ids and prices (1-based, as ``p1``… index them)."""
        ids = _sql_list([p.product_id for p in self.products])
        prices = "[" + ", ".join(f"{p.price:.2f}::decimal(18,2)" for p in self.products) + "]"
        return ids, prices

    def _orders_sql(self, lo: int, hi: int) -> str:
        """Orders ``[lo, hi)`` with their (up to three) lines as columns; totals match the lines."""
        shop, as_of = _sql_lit(self.plan.account_id), f"timestamptz '{self.as_of.isoformat()}'"
        _, prices = self._product_lists()
        n_products, subscribers = len(self.products), max(self.plan.subscribers, 1)
        first, last, domains = _sql_list(_FIRST_NAMES), _sql_list(_LAST_NAMES), _sql_list(_EMAIL_DOMAINS)
        lines = ",\n".join(
            f"1 + (hash({shop}, k, {j}, 'product') % {n_products})::bigint as p{j},"
            f" case when u({shop}, k * 4 + {j}, 'qty') < 0.8 then 1 else 2 end as q{j}"
            for j in (1, 2, 3)
        )
        return f"""
        with base as (
            select k,
                least({subscribers - 1}, floor({subscribers} * pow(u({shop}, k, 'who'), 1.6)))::bigint as idx,
                {as_of} - secs(u({shop}, k, 'when') * {ORDER_WINDOW_DAYS * 86400} + 60) as placed_at,
                1 + (hash({shop}, k, 'n_lines') % 3)::bigint as n_lines,
                {lines}
            from range({lo}, {hi}) t(k)
        )
        select
            base.*,
            'ord_' || lpad((k + 1)::varchar, 9, '0') as order_id,
            case when u({shop}, k, 'guest') < 0.04 then null
                else 'sub_' || lpad((base.idx + 1)::varchar, 8, '0') end as subscriber_id,
            coalesce(people.person_email,
                lower(pick({first}, {shop}, base.idx, 'first')) || '.'
                || lower(pick({last}, {shop}, base.idx, 'last')) || '.' || base.idx || '@'
                || pick({domains}, {shop}, base.idx, 'domain')) as email,
            {prices}[p1] * q1
                + case when n_lines >= 2 then {prices}[p2] * q2 else 0 end
                + case when n_lines >= 3 then {prices}[p3] * q3 else 0 end as total_amount,
            least({as_of}, placed_at + secs(u({shop}, k, 'updated') * 172800)) as updated_at,
            case when u({shop}, k, 'cancel') < 0.01 then 'cancelled'
                when placed_at < {as_of} - interval 5 day then 'fulfilled' else 'paid' end as status,
        from base
        left join people on people.person_index = base.idx
        """

    def _write_orders(self) -> None:
        self.con.register(
            "people_frame",
            pd.DataFrame(
                {
                    "person_index": pd.Series([p.index for p in self.people], dtype="int64"),
                    "person_email": pd.Series([p.email for p in self.people], dtype=object),
                }
            ),
        )
        self.con.execute("create or replace temp table people as select * from people_frame")
        self.con.unregister("people_frame")
        shop = _sql_lit(self.plan.account_id)
        currency = _sql_lit(self.currency)
        ids, prices = self._product_lists()
        for number, (lo, hi) in enumerate(_chunks(0, self.plan.orders, self.chunk_rows), 1):
            self.con.execute(f"create or replace temp table chunk as {self._orders_sql(lo, hi)} order by k")
            orders = f"""
                select {shop} as account_id, order_id, subscriber_id, email, placed_at, total_amount,
                    {currency} as currency, status, updated_at, false as deleted
                from chunk order by k
            """
            self._count("orders", self._copy("orders", f"orders-{number:05d}.parquet", orders, "parquet"))
            order_lines = f"""
                select {shop} as account_id, order_id, (100000000 + k * 4 + j)::varchar as line_id,
                    {ids}[[p1, p2, p3][j]] as product_id, [q1, q2, q3][j]::integer as quantity,
                    {prices}[[p1, p2, p3][j]] as unit_price, placed_at as updated_at
                from chunk, range(1, 4) r(j)
                where j <= n_lines
                order by k, j
            """
            self._count(
                "order_lines",
                self._copy("order_lines", f"order-lines-{number:05d}.parquet", order_lines, "parquet"),
            )
            self._write_order_changes(number)
        self.con.execute("drop table if exists chunk")
        self.con.execute("drop table if exists people")

    def _write_order_changes(self, number: int) -> None:
        """Refunds of about 2% of the chunk's older orders (JSON Lines), plus a bad timestamp."""
        shop, as_of = _sql_lit(self.plan.account_id), f"timestamptz '{self.as_of.isoformat()}'"
        query = f"""
            select {shop} as account_id, order_id, subscriber_id, email, iso(placed_at) as placed_at,
                total_amount, {_sql_lit(self.currency)} as currency, 'refunded' as status,
                iso(least({as_of}, updated_at + secs(259200 + u({shop}, k, 'refund_at') * 86400)))
                    as updated_at,
                false as deleted
            from chunk
            where u({shop}, k, 'refund') < 0.02 and updated_at < {as_of} - interval 4 day
            order by k
        """
        extra: list[bytes] = []
        if self.bad_rows and number == 1 and self.plan.account_id == "acme-outdoor":
            bad = {
                "account_id": self.plan.account_id,
                "order_id": "ord_manual_0001",
                "email": "walk.in@example.com",
                "placed_at": "yesterday at noon",  # an app bug: a display string instead of a timestamp
                "total_amount": 42.0,
                "currency": self.currency,
                "status": "paid",
                "updated_at": _iso(self.as_of),
            }
            extra.append(_line(bad))
            self.summary.bad_rows += 1
        self._count("orders", self._copy("orders", f"changes-{number:04d}.jsonl", query, "json", extra))

    # -- flows, campaigns, segment usages

    def _write_flows_campaigns_usages(self) -> None:
        shop, as_of = self.plan.account_id, self.as_of

        def ago(days: float) -> str:
            return _iso(as_of - timedelta(days=days))

        flows = [
            ("flow_welcome", "Welcome series", "active", "subscribed", ago(300)),
            ("flow_abandoned_cart", "Abandoned cart", "active", "cart_abandoned", ago(250)),
            (
                "flow_klaviyo_clicked",
                "Clicked a Klaviyo email, no purchase",
                "active",
                "klaviyo_email_clicked",
                ago(60),
            ),
            (
                "flow_klaviyo_received",
                "Received a Klaviyo email follow-up",
                "draft",
                "klaviyo_email_received",
                ago(12),
            ),
            ("flow_post_purchase", "Post-purchase cross-sell", "draft", "order_placed", ago(20)),
            ("flow_browse_abandonment", "Browse abandonment", "archived", "product_viewed", ago(90)),
        ]
        if shop == "acme-outdoor":
            flows.append(("flow_vip_hikers", "VIP hikers early access", "paused", "segment_entered", ago(30)))
        campaigns = [
            ("cmp_spring_sale", "Spring sale", "sent", ago(40), ago(40)),
            (
                "cmp_cart_reminder",
                "Still thinking it over?",
                "scheduled",
                _iso(as_of + timedelta(days=2)),
                ago(3),
            ),
            ("cmp_gift_guide", "Gift guide", "draft", None, ago(8)),
            ("cmp_flash_sale", "Flash sale", "cancelled", ago(10), ago(11)),
        ]
        usages = [
            ("flow", "flow_klaviyo_clicked", CLICKED_NO_PURCHASE, ago(60)),
            ("campaign", "cmp_cart_reminder", ABANDONED_CART_NO_PURCHASE, ago(3)),
            ("campaign", "cmp_spring_sale", CLICKED_NO_PURCHASE, ago(40)),  # sent: no longer keeps it in sync
        ]
        if shop == "acme-outdoor":
            usages.append(("flow", "flow_vip_hikers", VIP_HIKERS, ago(30)))
        base = {"account_id": shop}
        self._count(
            "automated_flows",
            _write_jsonl(
                self._path("automated_flows", "flows.jsonl"),
                (
                    _line(
                        {
                            **base,
                            "flow_id": f,
                            "name": n,
                            "status": s,
                            "trigger": t,
                            "updated_at": u,
                            "deleted": False,
                        }
                    )
                    for f, n, s, t, u in flows
                ),
            ),
        )
        self._count(
            "campaigns",
            _write_jsonl(
                self._path("campaigns", "campaigns.jsonl"),
                (
                    _line(
                        {
                            **base,
                            "campaign_id": c,
                            "name": n,
                            "status": s,
                            "scheduled_at": at,
                            "updated_at": u,
                            "deleted": False,
                        }
                    )
                    for c, n, s, at, u in campaigns
                ),
            ),
        )
        self._count(
            "segment_usages",
            _write_jsonl(
                self._path("segment_usages", "segment-usages.jsonl"),
                (
                    _line(
                        {
                            **base,
                            "consumer_type": t,
                            "consumer_id": c,
                            "segment_name": s,
                            "updated_at": u,
                            "deleted": False,
                        }
                    )
                    for t, c, s, u in usages
                ),
            ),
        )


def _chunks(lo: int, hi: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(lo, hi, size):
        yield start, min(start + size, hi)


# ---------------------------------------------------------------------------- messy renderings


def _messy_email(rng: random.Random, email: str) -> str:
    """About one email in eight as apps store them: upper-cased, padded or capitalised."""
    draw, style = rng.random(), rng.randrange(3)
    if draw >= 0.12:
        return email
    if style == 0:
        return email.upper()
    if style == 1:
        return f"  {email} "
    local, domain = email.split("@", 1)
    return f"{local.capitalize()}@{domain.upper()}"


def _messy_phone(rng: random.Random, phone: str | None, home_country: str) -> str | None:
    """About one phone in five formatted for people: national format (only for numbers of the
    shop's home country, so that country as the default region recovers them) or international
    with spaces."""
    draw, style = rng.random(), rng.randrange(2)
    if phone is None or draw >= 0.2:
        return phone
    number = phonenumbers.parse(phone)
    if number.country_code == phonenumbers.country_code_for_region(home_country) and style == 0:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """The command line: generate, then print the summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m connectors.recart.demo_data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=None, help="landing root (default: RECART_LANDING_PATH)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
    parser.add_argument("--subscribers", type=int, default=None, help="total subscribers (overrides --scale)")
    parser.add_argument("--orders", type=int, default=None, help="total orders (overrides --scale)")
    parser.add_argument("--as-of", default=None, help="YYYY-MM-DD (UTC midnight; default: today)")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="rows per Parquet file")
    parser.add_argument("--no-bad-rows", action="store_true", help="leave out the deliberately bad rows")
    parser.add_argument("--overwrite", action="store_true", help="replace the demo shops' existing files")
    args = parser.parse_args(argv)
    as_of = datetime.fromisoformat(args.as_of).replace(tzinfo=UTC) if args.as_of else None
    summary = generate(
        args.out if args.out is not None else default_landing_root(),
        scale=args.scale,
        subscribers=args.subscribers,
        orders=args.orders,
        as_of=as_of,
        chunk_rows=args.chunk_rows,
        bad_rows=not args.no_bad_rows,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
