"""Segment-member extraction at the rate-limit ceiling: ``iter_members_many`` against a plain loop.

A Klaviyo sandbox runs as a subprocess with its limits scaled (``--rate-limits xN``). Each account
gets ``--segments`` segments of ``--members`` members (drawn from a pool of profiles, so segments
overlap as real ones do). Three runs extract every member of every segment:

1. one account with :meth:`KlaviyoClient.iter_members_many`;
2. four accounts at once, one client each, in one ``asyncio.gather``;
3. the baseline: the first account's segments again, one page after another with a plain HTTP
   client that sleeps ``Retry-After`` on a 429 (what common tools and SDKs do).

Before each run the sandbox's limiter counters are reset, so every run starts with a full quota.
The *ceiling* is the best any client could do from the actual start time: a simulation that sends
every page request as early as the two fixed windows (1 s burst, 60 s steady, aligned to the clock
as the sandbox counts them) allow, ignoring latency and page-to-page dependencies. The ratio is
ceiling time / achieved time (= achieved members/s ÷ ceiling members/s).

Defaults, and why: ``x1`` (Klaviyo's own limits: tier L 75/s, 750/min per account) with 50
segments × 2,000 members = 1,000 pages per account, more than one minute's quota, so both windows
bind. At ``x2`` four accounts may ask 600 pages/s, more than this 2-core machine serves with client
and sandbox on it (~450/s): the CPU, not the limits, would bind. ``--latency-ms 100`` adds that much
server-side latency to every API answer (after the limiter has counted the request, as Klaviyo's
own processing would): real Klaviyo pages take a few hundred milliseconds, loopback about two, and
at loopback speed every approach spends most of a run waiting for the next minute anyway.

Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx2

from connectors.klaviyo.client import KlaviyoClient, PrivateKeyCredentials
from connectors.klaviyo.config import REVISION
from connectors.klaviyo.ratelimit import TIERS, LimiterRegistry, fixed_window_ceiling_seconds
from klaviyo_sandbox.server import start_sandbox_process

PAGE_SIZE = 100


# ---------------------------------------------------------------------------- the ceiling


def build_accounts(
    control: httpx2.Client, existing: list[dict[str, Any]], count: int, segments: int, members: int, pool: int
) -> list[dict[str, Any]]:
    """``count`` accounts, each with ``segments`` segments of ``members`` members from ``pool`` profiles."""
    accounts = list(existing)
    while len(accounts) < count:
        response = control.post("/_sandbox/accounts", json={"name": f"Bench shop {len(accounts) + 1}"})
        response.raise_for_status()
        accounts.append(response.json()["data"])
    built = []
    for number, account in enumerate(accounts[:count]):
        account_id = account["id"]
        profile_ids: list[str] = []
        for start in range(0, pool, 5000):
            batch = [
                {"email": f"a{number}-p{i}@bench.example", "phone_number": f"+1555{number:02d}{i:05d}"}
                for i in range(start, min(pool, start + 5000))
            ]
            response = control.post(f"/_sandbox/accounts/{account_id}/profiles", json={"profiles": batch})
            response.raise_for_status()
            profile_ids.extend(response.json()["data"]["profile_ids"])
        segment_ids = []
        for s in range(segments):
            # Overlapping windows over the pool: each profile sits in several segments.
            offset = (s * members // 2) % pool
            chosen = [profile_ids[(offset + i) % pool] for i in range(members)]
            response = control.post(
                f"/_sandbox/accounts/{account_id}/segments", json={"name": f"Segment {s}", "members": chosen}
            )
            response.raise_for_status()
            segment_ids.append(response.json()["data"]["id"])
        built.append({"id": account_id, "key": account["private_api_key"], "segments": segment_ids})
    return built


# ---------------------------------------------------------------------------- the runs


async def run_many(
    base_url: str, accounts: Sequence[dict[str, Any]], concurrency: int
) -> tuple[float, float, dict[str, set[tuple[str, str]]], list[dict[str, Any]]]:
    """Extract every segment of every account at once (one client per account); returns start, end,
    the member sets per account and each client's stats."""
    registry = LimiterRegistry()  # a fresh registry: no quota knowledge carried over between runs
    clients = [
        KlaviyoClient(
            base_url, PrivateKeyCredentials(a["key"]), max_concurrency=concurrency, limiter=registry
        )
        for a in accounts
    ]
    found: dict[str, set[tuple[str, str]]] = {a["id"]: set() for a in accounts}

    async def extract(client: KlaviyoClient, account: dict[str, Any]) -> None:
        seen = found[account["id"]]
        async for page in client.iter_members_many(account["segments"], kind="segment"):
            seen.update((page.group_id, m.profile_id) for m in page.members)

    start = time.time()
    try:
        await asyncio.gather(*(extract(c, a) for c, a in zip(clients, accounts, strict=True)))
    finally:
        end = time.time()
        for client in clients:
            await client.aclose()
    return start, end, found, [c.stats.as_metadata() for c in clients]


async def run_baseline(base_url: str, account: dict[str, Any]) -> tuple[float, float, set[tuple[str, str]]]:
    """The plain loop: segment after segment, page after page; on 429 sleep Retry-After and retry."""
    headers = {
        "Authorization": f"Klaviyo-API-Key {account['key']}",
        "revision": REVISION,
        "accept": "application/vnd.api+json",
    }
    found: set[tuple[str, str]] = set()
    start = time.time()
    async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        for segment_id in account["segments"]:
            url: str | None = (
                f"/api/segments/{segment_id}/profiles?page[size]={PAGE_SIZE}"
                "&fields[profile]=email,phone_number,external_id,joined_group_at&sort=joined_group_at"
            )
            while url:
                response = await http.get(url)
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                if response.status_code != 200:
                    await asyncio.sleep(1)  # what an SDK's retry would do
                    continue
                page = response.json()
                found.update((segment_id, item["id"]) for item in page["data"])
                url = page["links"]["next"]
    return start, time.time(), found


def reset_server(control: httpx2.Client) -> None:
    """Forget the sandbox's window counters and request log: the next run starts with a full quota."""
    control.delete("/_sandbox/rate-limits").raise_for_status()
    control.delete("/_sandbox/requests").raise_for_status()


def server_counts(control: httpx2.Client) -> dict[str, int]:
    """What the sandbox saw since the last reset: requests, 429s, and other failures (4xx/5xx)."""
    rows = control.get("/_sandbox/requests").json()["data"]
    statuses = [int(row["status"]) for row in rows]
    return {
        "requests": len(statuses),
        "throttled": sum(1 for s in statuses if s == 429),
        "failed": sum(1 for s in statuses if s >= 400 and s != 429),
    }


def figures(
    name: str,
    start: float,
    end: float,
    members: int,
    pages_per_account: int,
    accounts: int,
    limits: tuple[int, int],
    server: dict[str, int],
    raised: bool,
) -> dict[str, Any]:
    """The figures of one run, with its ceiling computed from its actual start time."""
    elapsed = end - start
    ceiling = fixed_window_ceiling_seconds(pages_per_account, start, *limits)
    return {
        "run": name,
        "accounts": accounts,
        "members": members,
        "pages": pages_per_account * accounts,
        "api_calls": server["requests"],
        "seconds": round(elapsed, 2),
        "members_per_second": round(members / elapsed, 1),
        "ceiling_seconds": round(ceiling, 2),
        "ceiling_members_per_second": round(members / ceiling, 1) if ceiling else None,
        "ratio_to_ceiling": round(ceiling / elapsed, 3),
        "throttled_429": server["throttled"],
        # a request that failed for good raises out of the run; failed answers the server logged
        "failed_requests": server["failed"] + (1 if raised else 0),
        "start_second_of_minute": round(start % 60, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Set up the sandbox, run the three extractions, return all figures."""
    process, info = start_sandbox_process("empty", args.rate_limits)
    base_url = info["base_url"]
    try:
        with httpx2.Client(base_url=base_url, timeout=300) as control:
            setup_started = time.time()
            accounts = build_accounts(
                control, info["accounts"], 4, args.segments, args.members, args.profiles_per_account
            )
            setup_seconds = time.time() - setup_started
            if args.latency_ms:
                control.put("/_sandbox/faults", json={"latency_ms": args.latency_ms}).raise_for_status()
            scale = control.get("/_sandbox/rate-limits").json()["data"]["scale"]
            limits = (
                max(1, math.floor(TIERS["L"].burst * scale)),
                max(1, math.floor(TIERS["L"].steady * scale)),
            )
            pages_per_account = args.segments * math.ceil(args.members / PAGE_SIZE)
            members_per_account = args.segments * args.members
            results = []
            for name, group in (
                ("iter_members_many, 1 account", accounts[:1]),
                ("iter_members_many, 4 accounts", accounts),
            ):
                reset_server(control)
                raised = False
                try:
                    start, end, found, stats = await run_many(base_url, group, args.concurrency)
                except Exception as exc:  # a failed run is a figure, not a crash
                    print(f"{name}: FAILED {exc!r}", file=sys.stderr)
                    raised, start, end, found, stats = True, time.time(), time.time() + 1, {}, []
                complete = all(len(found.get(a["id"], ())) == members_per_account for a in group)
                results.append(
                    figures(
                        name,
                        start,
                        end,
                        sum(len(s) for s in found.values()),
                        pages_per_account,
                        len(group),
                        limits,
                        server_counts(control),
                        raised,
                    )
                    | {"retries": sum(s["retries"] for s in stats), "complete": complete}
                )
                print(json.dumps(results[-1]), file=sys.stderr)
            reset_server(control)
            start, end, found_base = await run_baseline(base_url, accounts[0])
            results.append(
                figures(
                    "plain sequential loop, 1 account",
                    start,
                    end,
                    len(found_base),
                    pages_per_account,
                    1,
                    limits,
                    server_counts(control),
                    False,
                )
                | {"complete": len(found_base) == members_per_account}
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        process.terminate()
        process.wait(timeout=30)
    many_one, _, baseline = results
    return {
        "bench": "extract_members",
        "rate_limits": args.rate_limits,
        "tier_L_per_account": {"burst_per_s": limits[0], "steady_per_min": limits[1]},
        "segments_per_account": args.segments,
        "members_per_segment": args.members,
        "page_size": PAGE_SIZE,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "setup_seconds": round(setup_seconds, 1),
        "runs": results,
        "speedup_vs_baseline_1_account": round(
            many_one["members_per_second"] / baseline["members_per_second"], 2
        ),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse options, run, print progress on stderr and one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate-limits", default="x1", help="sandbox limit scale (xN)")
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--profiles-per-account", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=int, default=100, help="server-side latency per API answer")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
