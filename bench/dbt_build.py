"""The dbt project at scale: full build, a day's incremental build, and a hand-written floor.

Synthetic raw tables are generated directly with DuckDB SQL (``range()``), in the shapes the
loaders write (``connectors/recart/models.py``, ``warehouse/klaviyo_membership.py``): by default
1M Recart subscribers (plus superseded and deleted change rows, messy emails and national-format
phones) in 10 accounts, 10M orders with 12M lines, 20k products with tags, and 5M Klaviyo
membership spells of ~1.3M profiles (some subscribers have two: one by email, one by phone) over
22 groups per account, with flows, campaigns and segment usages.

dbt runs as in production (``orchestration/assets/dbt.py``): in the process of a Dagster step,
which has imported the definitions (and so dbt) before the build starts, through
``run_dbt_in_process``;
the "now" of a build comes through ``RECART_AS_OF`` (not ``--vars``, which would force a full
re-parse), unit tests are left out (they run in ``make test``), and every invocation shares one
target folder, so after one ``dbt parse`` — untimed, reported as ``parse_s``: the deployment's
parse (``make dbt-parse``, dagster-dbt's prepare) — each build parses only what changed.

Each run has its own process (memory is its peak RSS); what is timed is the work inside it, after
the imports: dbt's invocation, and for the floor the DuckDB script (both sides alike).

0. dbt's fixed cost per invocation (``dbt_noop_build_s``): ``dbt build`` of one view model that
   scans nothing (``NOOP_MODEL``, no tests) — partial parse, graph, connection, cache. For
   comparison, the wall time of the same build as a ``dbt`` subprocess (``dbt_noop_cli_s``: a
   second Python importing dbt; dagster-dbt's subprocess path also ran ``dbt --version``, 2.1 s,
   and set up an adapter in the step before it, which this does not count);
1. ``dbt build`` from scratch (models and data tests; ``--full-refresh``);
2. a day later: one day of changes lands (new and changed subscribers and orders, membership
   joins and leaves as the segment sync writes them), then ``dbt build`` again — incremental
   models only take the new change rows;
3. the floor: one hand-written DuckDB SQL script that computes the same two shipped segments
   (clicked_klaviyo_email_no_purchase, abandoned_cart_email_no_purchase) from the raw tables —
   dedupe, normalise, match, membership, purchases — and nothing else.

4. dbt's own cost for this project (``tiny_full_build_s``, ``tiny_daily_build_s``): the same full
   and daily builds of a warehouse a thousandth the size, where the SQL has next to nothing to do
   — dbt's start-up plus its ~30 ms of Python per model and test. ``daily_dbt_cost_over_full``
   (``tiny_daily_build_s`` ÷ ``full_build_s``) estimates the share of the full build a daily build
   takes before any real SQL work: an estimate, not a bound (the tiny build still runs some SQL).

Peak memory of a dbt build includes the Dagster definitions its process imported first.

Targets: full build within 2× the floor, the daily build within 25 % of the full build. Together
they leave a daily build 0.25 × 2 = half the floor's time (``joint_daily_budget_s``), to compare
with dbt's own cost for it (``tiny_daily_build_s``).
The floor's segment rows are compared with dbt's ``segment_members``. Ends with one JSON line.

    .venv/bin/python bench/dbt_build.py [--subscribers 1000000] [--orders 10000000] [--memberships 5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.recart.models import all_ddl  # noqa: E402
from orchestration.dbt_manifest import DBT_EXECUTABLE, dbt_location_args  # noqa: E402
from warehouse.klaviyo_membership import SCHEMA_SQL as KLAVIYO_SCHEMA_SQL  # noqa: E402

ACCOUNTS = 10
GROUPS_PER_ACCOUNT = 20  # segments, besides the three the shipped segments use
LISTS_PER_ACCOUNT = 2
DAY1 = datetime(2026, 6, 1, tzinfo=UTC)  # the full build runs as of this time
DAY2 = DAY1 + timedelta(days=1)  # the daily build, after a day of changes
NOOP_MODEL = "stg_klaviyo__groups"  # a view: creating it reads no rows
TARGET_FULL_OVER_FLOOR = 2.0  # the targets: full build within 2x the floor,
TARGET_DAILY_OVER_FULL = 0.25  # the daily build within 25 % of the full build


# ---------------------------------------------------------------------------- synthetic data


def generate(path: Path, subscribers: int, orders: int, memberships: int) -> dict[str, int]:
    """Create the raw tables of both sources at ``path`` (as of DAY1)."""
    conn = duckdb.connect(str(path))
    conn.execute("set timezone = 'UTC'")
    for statement in all_ddl():
        conn.execute(statement)
    conn.execute(KLAVIYO_SCHEMA_SQL)
    params = {"n": subscribers, "orders": orders, "day1": DAY1, "accounts": ACCOUNTS}

    def run(sql: str, **extra: object) -> None:
        names = {**params, **extra}
        conn.execute(sql, {k: v for k, v in names.items() if f"${k}" in sql})

    # Subscribers: messy emails (case, spaces, 2 % invalid), half with a national US phone, 30 % an
    # external id, 5 % vip. Every 10th was changed once (an older superseded row), 1 % deleted.
    run(
        """
        create temp table people as
        select
            i,
            'acct-' || (i % $accounts) as account_id,
            's' || i as subscriber_id,
            case
                when i % 50 = 7 then 'not-an-email-' || i
                when i % 3 = 0 then '  User' || i || '@Example.COM '
                else 'user' || i || '@example.com'
            end as email,
            case
                when i % 2 = 0 then
                    '(' || substr(cast(2000000000 + i as varchar), 1, 3) || ') '
                    || substr(cast(2000000000 + i as varchar), 4, 3) || '-'
                    || substr(cast(2000000000 + i as varchar), 7, 4)
            end as phone,
            case when i % 10 < 3 then 'ext-' || i end as external_id,
            case when i % 20 = 0 then '{"vip": true}' else '{"vip": false}' end as custom_attributes,
            $day1 - to_days(cast(400 + i % 300 as integer)) as created_at
        from range($n) as t(i)
        """
    )
    run(
        """
        insert into recart.raw_subscribers
        select
            account_id, subscriber_id, email, phone, external_id,
            true, created_at, phone is not null, created_at, null, null,
            cast(custom_attributes as json), 'popup', created_at, created_at + interval 1 hour, false,
            'subscribers/initial.jsonl', i, created_at + interval 2 hour
        from people
        union all
        select
            account_id, subscriber_id, 'OLD' || email, phone, external_id,
            false, null, false, null, null, null,
            cast('{}' as json), 'popup', created_at, created_at, false,
            'subscribers/old.jsonl', i, created_at + interval 3 hour
        from people where i % 10 = 3
        union all
        select
            account_id, subscriber_id, email, phone, external_id,
            true, created_at, false, null, null, null,
            cast('{}' as json), 'popup', created_at, $day1 - interval 1 day, true,
            'subscribers/deleted.jsonl', i, $day1 - interval 23 hour
        from people where i % 100 = 1
        """
    )
    # Orders: spread over a year, 3 % cancelled, 2 % guest orders (no subscriber id, email in
    # other case), 5 % changed once (the older row superseded). One line each, 20 % a second.
    run(
        """
        create temp table order_base as
        select
            i,
            (i * 7919) % $n as subscriber_i,
            'acct-' || (((i * 7919) % $n) % $accounts) as account_id,
            'o' || i as order_id,
            $day1 - to_minutes(cast(1 + (i * 104729) % (365 * 24 * 60) as bigint)) as placed_at
        from range($orders) as t(i)
        """
    )
    run(
        """
        insert into recart.raw_orders
        select
            account_id, order_id,
            case when i % 50 = 0 then null else 's' || subscriber_i end,
            case when i % 50 = 0 then 'USER' else 'user' end || subscriber_i || '@example.com',
            placed_at, cast(10 + i % 190 as decimal(18, 2)), 'USD',
            case when i % 33 = 0 then 'cancelled' else 'paid' end,
            placed_at + interval 1 minute, false,
            'orders/initial.jsonl', i, placed_at + interval 1 hour
        from order_base
        union all
        select
            account_id, order_id, 's' || subscriber_i, 'user' || subscriber_i || '@example.com',
            placed_at, cast(1 as decimal(18, 2)), 'USD', 'pending', placed_at, false,
            'orders/old.jsonl', i, placed_at + interval 30 minute
        from order_base where i % 20 = 0
        """
    )
    run(
        """
        insert into recart.raw_order_lines
        select account_id, order_id, 'l1', 'p' || (i % 2000), 1, cast(10 as decimal(18, 2)),
               placed_at, 'order_lines/initial.jsonl', i, placed_at + interval 1 hour
        from order_base
        union all
        select account_id, order_id, 'l2', 'p' || ((i * 13) % 2000), 2, cast(5 as decimal(18, 2)),
               placed_at, 'order_lines/second.jsonl', i, placed_at + interval 1 hour
        from order_base where i % 5 = 0
        """
    )
    run(
        """
        insert into recart.raw_products
        select
            'acct-' || a, 'p' || p, 'Product ' || p,
            [['Hiking', 'outdoor'], ['kitchen'], ['apparel', 'sale'], ['outdoor'], ['gift']][1 + p % 5],
            $day1 - interval 300 day, false, 'products/initial.jsonl', a * 2000 + p, $day1 - interval 300 day
        from range($accounts) as a(a), range(2000) as p(p)
        """
    )
    # Klaviyo profiles: 80 % of subscribers by email (30 % of those carry the external id), and a
    # second, phone-only profile for every 5th subscriber with a phone; plus 10 % strangers.
    run(
        """
        create temp table profiles as
        select account_id, 'pe' || i as profile_id, lower(trim(email)) as email, null as phone_number,
               external_id, i
        from people where i % 10 < 8
        union all
        select account_id, 'pp' || i, null, '+1' || cast(2000000000 + i as varchar), null, i
        from people where i % 10 = 0
        union all
        select 'acct-' || (i % $accounts), 'px' || i, 'stranger' || i || '@example.com', null, null, i
        from range(cast($n / 10 as bigint)) as t(i)
        """
    )
    groups = [("SEG_ENGAGED", "segment", "Engaged 30 days"),
              ("SEG_CLICKED", "segment", "Clicked email, no purchase"),
              ("SEG_ABANDONED", "segment", "Abandoned cart 7 days")]  # fmt: skip
    groups += [(f"SEG_{k:02d}", "segment", f"Segment {k}") for k in range(GROUPS_PER_ACCOUNT - 3)]
    groups += [(f"LIST_{k}", "list", f"List {k}") for k in range(LISTS_PER_ACCOUNT)]
    conn.execute(
        "create temp table group_names (group_id varchar, group_kind varchar, name varchar, k integer)"
    )
    conn.executemany("insert into group_names values (?, ?, ?, ?)", [(*g, k) for k, g in enumerate(groups)])
    run(
        """
        insert into klaviyo.raw_groups
        select 'acct-' || a, group_id, group_kind, name, null, true, null,
               $day1 - interval 500 day, $day1 - interval 500 day, $day1 - interval 3 hour
        from range($accounts) as t(a), group_names
        """
    )
    # Membership: each profile is in each group with a probability that makes `memberships` spells
    # in all (10 % of them closed, historic); joins spread over 60 days.
    profile_count = conn.execute("select count(*) from profiles").fetchone()[0]
    share = memberships / (profile_count * len(groups))
    run(
        """
        insert into klaviyo.raw_group_members
        select
            profiles.account_id, group_names.group_kind, group_names.group_id, profiles.profile_id,
            profiles.email, profiles.phone_number, profiles.external_id,
            $day1 - to_minutes(cast(hash(profiles.profile_id, group_names.k) % (60 * 24 * 60) as bigint)),
            $day1 - to_minutes(cast(hash(profiles.profile_id, group_names.k) % (60 * 24 * 60) as bigint)),
            case when hash(group_names.k, profiles.profile_id) % 10 = 0 then $day1 - interval 2 day end,
            case when hash(group_names.k, profiles.profile_id) % 10 = 0 then $day1 - interval 2 day end,
            $day1 - interval 60 day
        from profiles, group_names
        where hash(profiles.i, group_names.k, 'member') % 1000000 < $share * 1000000
        """,
        share=share,
    )
    run(
        """
        insert into klaviyo.group_sync_status
        select account_id, group_id, group_kind, $day1 - interval 3 hour, max(valid_from),
               count(*) filter (where valid_to is null), null, 0, 0, $day1 - interval 3 hour
        from klaviyo.raw_group_members group by all
        """
    )
    # Flows and campaigns using the shipped segments in some accounts.
    run(
        """
        insert into recart.raw_automated_flows
        select 'acct-' || a, 'f' || a, 'Win back', case when a % 2 = 0 then 'active' else 'paused' end,
               'klaviyo_email_clicked', $day1 - interval 30 day, false, 'flows/initial.jsonl', a,
               $day1 - interval 30 day
        from range($accounts) as t(a)
        """
    )
    run(
        """
        insert into recart.raw_campaigns
        select 'acct-' || a, 'c' || a, 'Cart reminder', 'scheduled', $day1 + interval 1 day,
               $day1 - interval 20 day, false, 'campaigns/initial.jsonl', a, $day1 - interval 20 day
        from range($accounts) as t(a)
        """
    )
    run(
        """
        insert into recart.raw_segment_usages
        select 'acct-' || a, 'flow', 'f' || a, 'clicked_klaviyo_email_no_purchase',
               $day1 - interval 30 day, false, 'segment_usages/initial.jsonl', a, $day1 - interval 30 day
        from range($accounts) as t(a)
        union all
        select 'acct-' || a, 'campaign', 'c' || a, 'abandoned_cart_email_no_purchase',
               $day1 - interval 20 day, false, 'segment_usages/initial.jsonl', 100 + a,
               $day1 - interval 20 day
        from range($accounts) as t(a)
        """
    )
    counts = {
        table: conn.execute(f"select count(*) from {table}").fetchone()[0]
        for table in (
            "recart.raw_subscribers", "recart.raw_orders", "recart.raw_order_lines",
            "klaviyo.raw_group_members",
        )
    }  # fmt: skip
    conn.execute("checkpoint")
    conn.close()
    return counts


def land_a_day(path: Path, subscribers: int) -> dict[str, int]:
    """One day of changes, as the loaders would append and apply them (as of DAY2)."""
    conn = duckdb.connect(str(path))
    conn.execute("set timezone = 'UTC'")
    day = {"day2": DAY2, "n": subscribers, "accounts": ACCOUNTS}
    changes: dict[str, int] = {}

    def run(name: str, sql: str) -> None:
        changes[name] = (
            changes.get(name, 0)
            + conn.execute(sql, {k: v for k, v in day.items() if f"${k}" in sql}).fetchone()[0]
        )

    # 1 % of subscribers change (consent, attributes), 0.2 % new ones sign up.
    run(
        "subscribers",
        """
        insert into recart.raw_subscribers
        select account_id, subscriber_id, email, phone, external_id, true, updated_at, true, updated_at,
               null, null, cast('{"vip": true}' as json), source, created_at, $day2 - interval 6 hour,
               false, 'subscribers/day2.jsonl', _row, $day2 - interval 5 hour
        from recart.raw_subscribers
        where _file = 'subscribers/initial.jsonl' and _row % 100 = 42
        """,
    )
    run(
        "subscribers",
        """
        insert into recart.raw_subscribers
        select 'acct-' || (i % $accounts), 's' || i, 'new' || i || '@example.com', null, null, true,
               $day2 - interval 8 hour, false, null, null, null, cast('{}' as json), 'popup',
               $day2 - interval 8 hour, $day2 - interval 8 hour, false, 'subscribers/day2-new.jsonl', i,
               $day2 - interval 5 hour
        from range($n, $n + cast($n / 500 as bigint)) as t(i)
        """,
    )
    # A day's orders (~30k) with lines, and 5k status changes of older orders.
    run(
        "orders",
        """
        insert into recart.raw_orders
        select 'acct-' || (((i * 7919) % $n) % $accounts), 'o-day2-' || i, 's' || ((i * 7919) % $n),
               'user' || ((i * 7919) % $n) || '@example.com', $day2 - to_minutes(cast(i % 1440 as bigint)),
               cast(50 as decimal(18, 2)), 'USD', 'paid', $day2 - to_minutes(cast(i % 1440 as bigint)), false,
               'orders/day2.jsonl', i, $day2 - interval 5 hour
        from range(30000) as t(i)
        """,
    )
    run(
        "order_lines",
        """
        insert into recart.raw_order_lines
        select account_id, order_id, 'l1', 'p' || (_row % 2000), 1, cast(50 as decimal(18, 2)), updated_at,
               'order_lines/day2.jsonl', _row, _loaded_at
        from recart.raw_orders where _file = 'orders/day2.jsonl'
        """,
    )
    run(
        "orders",
        """
        insert into recart.raw_orders
        select account_id, order_id, subscriber_id, email, placed_at, total_amount, currency, 'refunded',
               $day2 - interval 7 hour, false, 'orders/day2-changes.jsonl', _row, $day2 - interval 5 hour
        from recart.raw_orders where _file = 'orders/initial.jsonl' and _row % 2000 = 17
        """,
    )
    # The segment sync: 0.5 % of current spells end, as many profiles join; groups re-synced.
    run(
        "membership_leaves",
        """
        update klaviyo.raw_group_members
        set valid_to = $day2 - interval 3 hour, left_detected_at = $day2 - interval 3 hour
        where valid_to is null and hash(profile_id, group_id, 'day2') % 200 = 0
        """,
    )
    run(
        "membership_joins",
        """
        insert into klaviyo.raw_group_members
        select account_id, group_kind, group_id, profile_id, email, phone_number, external_id,
               $day2 - interval 4 hour, $day2 - interval 4 hour, null, null, $day2 - interval 3 hour
        from klaviyo.raw_group_members
        where valid_to is not null and left_detected_at < $day2 - interval 1 day
          and hash(profile_id, group_id, 'rejoin') % 20 = 0
        """,
    )
    run("group_syncs", "update klaviyo.group_sync_status set last_synced_at = $day2 - interval 3 hour")
    run("group_syncs", "update klaviyo.raw_groups set synced_at = $day2 - interval 3 hour")
    conn.execute("checkpoint")
    conn.close()
    return changes


# ---------------------------------------------------------------------------- the floor

FLOOR_SQL = """
create or replace table floor_segment_members as
with
subscribers as (
    select account_id, subscriber_id, external_id,
           case when regexp_full_match(lower(trim(email)), '[^@\\s]+@[^@\\s]+[.][^@\\s.]+')
                then lower(trim(email)) end as email,
           case when length(regexp_replace(phone, '[^0-9]', '', 'g')) = 10
                then '+1' || regexp_replace(phone, '[^0-9]', '', 'g') end as phone_number,
           deleted
    from recart.raw_subscribers
    qualify row_number() over (partition by account_id, subscriber_id
                               order by updated_at desc, _loaded_at desc, _file desc, _row desc) = 1
),
live_subscribers as (select * from subscribers where not coalesce(deleted, false)),
orders as (
    select account_id, order_id, subscriber_id, lower(trim(email)) as email, placed_at, status, deleted
    from recart.raw_orders
    qualify row_number() over (partition by account_id, order_id
                               order by updated_at desc, _loaded_at desc, _file desc, _row desc) = 1
),
email_owner as (
    select account_id, email, arg_min(subscriber_id, subscriber_id) as subscriber_id
    from live_subscribers where email is not null group by all
),
last_purchase as (
    select orders.account_id, coalesce(orders.subscriber_id, email_owner.subscriber_id) as subscriber_id,
           max(orders.placed_at) as last_order_at
    from orders
    left join email_owner on orders.subscriber_id is null and orders.account_id = email_owner.account_id
        and orders.email = email_owner.email
    where not coalesce(orders.deleted, false)
      and orders.status not in ('cancelled', 'canceled', 'refunded', 'voided', 'failed')
    group by all
),
groups as (
    select account_id, group_id, name from klaviyo.raw_groups
    where group_kind = 'segment'
      and lower(name) in ('engaged 30 days', 'clicked email, no purchase', 'abandoned cart 7 days')
),
members as (
    select members.account_id, members.profile_id, members.valid_from, members.email,
           members.phone_number, members.external_id, lower(groups.name) as group_name
    from klaviyo.raw_group_members as members
    join groups using (account_id, group_id)
    where members.valid_to is null
),
matched as (
    select members.account_id, subscribers.subscriber_id, members.group_name, members.valid_from
    from members join live_subscribers as subscribers
      on members.account_id = subscribers.account_id and members.external_id = subscribers.external_id
    union all
    select members.account_id, subscribers.subscriber_id, members.group_name, members.valid_from
    from members join live_subscribers as subscribers
      on members.account_id = subscribers.account_id and members.email = subscribers.email
    union all
    select members.account_id, subscribers.subscriber_id, members.group_name, members.valid_from
    from members join live_subscribers as subscribers
      on members.account_id = subscribers.account_id and members.phone_number = subscribers.phone_number
),
per_subscriber as (
    select matched.account_id, matched.subscriber_id,
           bool_or(matched.group_name in ('engaged 30 days', 'clicked email, no purchase')) as clicked,
           max(case when matched.group_name = 'abandoned cart 7 days' then matched.valid_from end)
               as joined_abandoned,
           any_value(last_purchase.last_order_at) as last_order_at
    from matched
    left join last_purchase using (account_id, subscriber_id)
    group by all
)
select account_id, 'clicked_klaviyo_email_no_purchase' as segment_name, subscriber_id
from per_subscriber
where clicked and (last_order_at is null or last_order_at < $as_of - interval 30 day)
union all
select account_id, 'abandoned_cart_email_no_purchase', subscriber_id
from per_subscriber
where joined_abandoned is not null and (last_order_at is null or last_order_at < joined_abandoned)
"""


def floor(path: str, as_of: str) -> None:
    """Run the hand-written SQL (in its own process, like dbt); prints the seconds it took."""
    started = time.perf_counter()
    conn = duckdb.connect(path)
    conn.execute("set timezone = 'UTC'")
    conn.execute(FLOOR_SQL.replace("$as_of", f"timestamptz '{as_of}'"))
    conn.close()
    print(f"{WORK_SECONDS}{time.perf_counter() - started}")


# ---------------------------------------------------------------------------- timing

WORK_SECONDS = "WORK_SECONDS="  # a timed child prints this, then the seconds its work took


def timed(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``args`` in a child process: the seconds of its work (what it printed after
    ``WORK_SECONDS=``, else its wall time), its peak RSS in MB, and its output."""
    probe = (
        "import resource, subprocess, sys\n"
        "result = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(result.stdout[-20000:] + result.stderr[-5000:])\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stdout.write(f'\\nPEAK_RSS_KB={peak}\\n')\n"
        "sys.exit(result.returncode)\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{done.stdout[-8000:]}\n{done.stderr[-3000:]}")
    peak_kb = int(done.stdout.rsplit("PEAK_RSS_KB=", 1)[1].split()[0])
    if WORK_SECONDS in done.stdout:
        seconds = float(done.stdout.rsplit(WORK_SECONDS, 1)[1].split()[0])
    return seconds, peak_kb / 1024, done.stdout


# A Dagster step's process: the definitions imported (untimed), then one timed in-process dbt run.
DAGSTER_STEP = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
import orchestration.definitions
from orchestration.assets.dbt import run_dbt_in_process
started = time.perf_counter()
run = run_dbt_in_process(json.loads(sys.argv[1]))
print("{WORK_SECONDS}" + str(time.perf_counter() - started))
sys.exit(0 if run.success else run.failure())
"""


def dbt(
    command: list[str], database: Path, work: Path, as_of: datetime, cli: bool = False
) -> tuple[float, float, str]:
    """``dbt <command>`` as the Dagster asset runs it (``run_dbt_in_process`` in a step's process; ``cli``: as
    a ``dbt`` subprocess instead), as_of in RECART_AS_OF, one lasting target folder.

    Returns the seconds of the dbt invocation, peak MB, and what dbt wrote to its log meanwhile.
    """
    # Imported here, not at the top: the floor's timed process imports this module too, and must
    # not pay for Dagster's import.
    from orchestration.assets.dbt import DbtBuildConfig, build_environment

    args = [*command, *dbt_location_args(work / "target")]
    log = work / "target" / "dbt.log"
    start = log.stat().st_size if log.exists() else 0
    environment = build_environment(DbtBuildConfig(as_of=as_of.isoformat()), database)
    if cli:
        seconds, peak_mb, _ = timed([DBT_EXECUTABLE, *args], env=environment)
    else:
        seconds, peak_mb, _ = timed([sys.executable, "-c", DAGSTER_STEP, json.dumps(args)], env=environment)
    with log.open("rb") as file:
        file.seek(start)
        return seconds, peak_mb, file.read().decode(errors="replace")


def dbt_build(database: Path, work: Path, as_of: datetime, full_refresh: bool) -> tuple[float, float, str]:
    """The Dagster asset's ``dbt build`` command line (``build_args``), timed."""
    from orchestration.assets.dbt import DbtBuildConfig, build_args

    return dbt(build_args(DbtBuildConfig(full_refresh=full_refresh)), database, work, as_of)


def reparsed(log: str) -> bool:
    """Whether dbt's log of a run says it parsed the project from scratch."""
    return "Unable to do partial parsing" in log


def node_seconds(work: Path, count: int = 8) -> tuple[list[tuple[str, float]], dict[str, dict[str, float]]]:
    """From the last build's run_results.json: the ``count`` slowest nodes with their seconds, and
    node count and summed seconds per resource type (model, test).

    What the wall time holds beyond the summed seconds is dbt's own start-up and bookkeeping.
    """
    results = json.loads((work / "target" / "run_results.json").read_text())["results"]
    ranked = sorted(((r["unique_id"], r["execution_time"]) for r in results), key=lambda x: -x[1])
    slowest = [(uid.split(".", 2)[-1], round(t, 2)) for uid, t in ranked[:count]]
    totals: dict[str, dict[str, float]] = {}
    for result in results:
        kind = totals.setdefault(result["unique_id"].split(".", 1)[0], {"nodes": 0, "seconds": 0.0})
        kind["nodes"] += 1
        kind["seconds"] = round(kind["seconds"] + result["execution_time"], 2)
    return slowest, totals


def tiny_builds(
    work: Path, subscribers: int, orders: int, memberships: int
) -> tuple[float, float, list[str]]:
    """The full and the daily build (seconds) of a warehouse a thousandth the size: dbt's own cost;
    and the two builds' dbt logs.

    Its own folder and target (a different DuckDB path is a different profile: one untimed parse
    first, as for the main warehouse).
    """
    tiny_work = work / "tiny"
    tiny_work.mkdir(parents=True, exist_ok=True)
    database = tiny_work / "warehouse.duckdb"
    database.unlink(missing_ok=True)
    tiny_subscribers = max(subscribers // 1000, 100)
    generate(database, tiny_subscribers, max(orders // 1000, 1000), max(memberships // 1000, 500))
    dbt(["parse"], database, tiny_work, DAY1)
    full_seconds, _, full_log = dbt_build(database, tiny_work, DAY1, full_refresh=True)
    land_a_day(database, tiny_subscribers)
    daily_seconds, _, daily_log = dbt_build(database, tiny_work, DAY2, full_refresh=False)
    return full_seconds, daily_seconds, [full_log, daily_log]


def compare_with_floor(database: Path) -> dict[str, int]:
    conn = duckdb.connect(str(database), read_only=True)
    try:
        dbt_rows, floor_rows, differing = conn.execute(
            """
            with dbt_rows as (
                select account_id, segment_name, subscriber_id from marts.segment_members
                where segment_name in (
                    'clicked_klaviyo_email_no_purchase', 'abandoned_cart_email_no_purchase'
                )
            ),
            floor_rows as (select distinct * from floor_segment_members)
            select (select count(*) from dbt_rows), (select count(*) from floor_rows),
                   (select count(*) from (
                       (select * from dbt_rows except select * from floor_rows)
                       union all (select * from floor_rows except select * from dbt_rows)))
            """
        ).fetchone()
    finally:
        conn.close()
    return {"dbt_segment_rows": dbt_rows, "floor_segment_rows": floor_rows, "differing_rows": differing}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--memberships", type=int, default=5_000_000)
    parser.add_argument("--keep", type=Path, help="keep the warehouse in this folder")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dbt-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        database = work / "warehouse.duckdb"
        database.unlink(missing_ok=True)
        started = time.perf_counter()
        counts = generate(database, args.subscribers, args.orders, args.memberships)
        generate_seconds = time.perf_counter() - started
        print(f"generated {counts} in {generate_seconds:.1f}s", flush=True)

        # The deployment's parse (make dbt-parse, dagster-dbt's prepare): not part of a build.
        parse_seconds, _, _ = dbt(["parse"], database, work, DAY1)
        print(f"dbt parse: {parse_seconds:.1f}s", flush=True)
        noop = ["build", "--select", NOOP_MODEL, "--resource-type", "model"]
        noop_seconds, _, noop_log = dbt(noop, database, work, DAY1)
        noop_cli_seconds, _, _ = dbt(noop, database, work, DAY1, cli=True)
        print(
            f"no-op dbt build ({NOOP_MODEL}): {noop_seconds:.2f}s in process, {noop_cli_seconds:.2f}s as a"
            " dbt subprocess",
            flush=True,
        )

        full_seconds, full_mb, full_log = dbt_build(database, work, DAY1, full_refresh=True)
        full_slowest, full_by_type = node_seconds(work)
        print(
            f"full dbt build: {full_seconds:.1f}s, peak {full_mb:.0f} MB; slowest {full_slowest}", flush=True
        )

        floor_seconds, floor_mb, _ = timed(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r});"
             f" import dbt_build; dbt_build.floor({str(database)!r}, {DAY1.isoformat()!r})"]
        )  # fmt: skip
        print(f"hand-written floor: {floor_seconds:.1f}s, peak {floor_mb:.0f} MB", flush=True)
        agreement = compare_with_floor(database)
        print(f"segments vs floor: {agreement}", flush=True)

        changes = land_a_day(database, args.subscribers)
        daily_seconds, daily_mb, daily_log = dbt_build(database, work, DAY2, full_refresh=False)
        daily_slowest, daily_by_type = node_seconds(work)
        print(
            f"daily dbt build: {daily_seconds:.1f}s, peak {daily_mb:.0f} MB; slowest {daily_slowest}",
            flush=True,
        )
        # The incremental result must equal a from-scratch computation of the same day.
        timed(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r});"
             f" import dbt_build; dbt_build.floor({str(database)!r}, {DAY2.isoformat()!r})"]
        )  # fmt: skip
        daily_agreement = compare_with_floor(database)
        print(f"daily segments vs floor: {daily_agreement}", flush=True)

        tiny_full_seconds, tiny_daily_seconds, tiny_logs = tiny_builds(
            work, args.subscribers, args.orders, args.memberships
        )
        print(
            f"the same builds at a thousandth the size (dbt's own cost): full {tiny_full_seconds:.1f}s,"
            f" daily {tiny_daily_seconds:.1f}s",
            flush=True,
        )

        joint_daily_budget = TARGET_DAILY_OVER_FULL * TARGET_FULL_OVER_FLOOR * floor_seconds
        print(
            f"both targets together leave a daily build {joint_daily_budget:.2f}s; dbt's own cost for it:"
            f" {tiny_daily_seconds:.1f}s",
            flush=True,
        )

        figures = {
            "subscribers": args.subscribers,
            "orders": args.orders,
            "memberships": args.memberships,
            "raw_rows": counts,
            "day_changes": changes,
            "generate_s": round(generate_seconds, 1),
            "parse_s": round(parse_seconds, 1),
            "dbt_noop_build_s": round(noop_seconds, 2),
            "dbt_noop_cli_s": round(noop_cli_seconds, 2),
            # Timed invocations that parsed from scratch (0 unless profile, vars or dbt_project.yml changed).
            "reparsed_invocations": sum(map(reparsed, (noop_log, full_log, daily_log, *tiny_logs))),
            "full_build_s": round(full_seconds, 1),
            "full_build_peak_mb": round(full_mb),
            "floor_s": round(floor_seconds, 1),
            "floor_peak_mb": round(floor_mb),
            "daily_build_s": round(daily_seconds, 1),
            "daily_build_peak_mb": round(daily_mb),
            "full_over_floor": round(full_seconds / floor_seconds, 2),
            "daily_over_full": round(daily_seconds / full_seconds, 2),
            "target_full_over_floor": TARGET_FULL_OVER_FLOOR,
            "target_daily_over_full": TARGET_DAILY_OVER_FULL,
            # what the two targets together leave a daily build: 0.25 × 2 × the floor
            "joint_daily_budget_s": round(joint_daily_budget, 2),
            "tiny_full_build_s": round(tiny_full_seconds, 1),
            "tiny_daily_build_s": round(tiny_daily_seconds, 1),
            # about the share of the full build a daily build takes before any real SQL work
            "daily_dbt_cost_over_full": round(tiny_daily_seconds / full_seconds, 2),
            **agreement,
            "daily_differing_rows": daily_agreement["differing_rows"],
            "full_by_resource_type": full_by_type,
            "daily_by_resource_type": daily_by_type,
            "full_slowest": full_slowest,
            "daily_slowest": daily_slowest,
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
