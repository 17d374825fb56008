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

``--latency-ms`` adds server-side latency to every API answer (after the limiter counts it, as
Klaviyo's own processing would); real Klaviyo pages take a few hundred milliseconds, loopback ~2.

Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.klaviyo.client import KlaviyoClient, PrivateKeyCredentials  # noqa: E402
from connectors.klaviyo.config import REVISION  # noqa: E402
from connectors.klaviyo.ratelimit import TIERS, LimiterRegistry  # noqa: E402

PAGE_SIZE = 100


# ---------------------------------------------------------------------------- the ceiling


def ceiling_seconds(requests: int, start: float, burst: int, steady: int) -> float:
    """Seconds from ``start`` until the last of ``requests`` can be admitted under both fixed windows.

    Greedy is optimal for fixed windows: send as many as both the current second and the current
    minute still allow, else jump to the next boundary of the full window.
    """
    if requests <= 0:
        return 0.0
    t = start
    sent = 0
    burst_used: dict[int, int] = {}
    steady_used: dict[int, int] = {}
    while True:
        second, minute = math.floor(t), math.floor(t / 60)
        room = min(burst - burst_used.get(second, 0), steady - steady_used.get(minute, 0))
        if room > 0:
            take = min(room, requests - sent)
            burst_used[second] = burst_used.get(second, 0) + take
            steady_used[minute] = steady_used.get(minute, 0) + take
            sent += take
            if sent == requests:
                return t - start
        if steady_used.get(minute, 0) >= steady:
            t = (minute + 1) * 60.0
        else:
            t = second + 1.0


# ---------------------------------------------------------------------------- sandbox set-up


def start_sandbox(scale: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the sandbox subprocess; its first stdout line is JSON with base_url and accounts."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klaviyo_sandbox.cli",
            "serve",
            "--port",
            "0",
            "--json",
            "--seed",
            "empty",
            "--rate-limits",
            scale,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


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
        KlaviyoClient(base_url, PrivateKeyCredentials(a["key"]), max_concurrency=concurrency, limiter=registry)
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


async def run_baseline(
    base_url: str, account: dict[str, Any]
) -> tuple[float, float, set[tuple[str, str]], dict[str, int]]:
    """The plain loop: segment after segment, page after page; on 429 sleep Retry-After and retry."""
    headers = {
        "Authorization": f"Klaviyo-API-Key {account['key']}",
        "revision": REVISION,
        "accept": "application/vnd.api+json",
    }
    found: set[tuple[str, str]] = set()
    counts = {"api_calls": 0, "throttled": 0, "failed": 0}
    start = time.time()
    async with httpx2.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:
        for segment_id in account["segments"]:
            url: str | None = (
                f"/api/segments/{segment_id}/profiles?page[size]={PAGE_SIZE}"
                "&fields[profile]=email,phone_number,external_id,joined_group_at&sort=joined_group_at"
            )
            while url:
                counts["api_calls"] += 1
                response = await http.get(url)
                if response.status_code == 429:
                    counts["throttled"] += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                if response.status_code != 200:
                    counts["failed"] += 1
                    await asyncio.sleep(1)
                    continue
                page = response.json()
                found.update((segment_id, item["id"]) for item in page["data"])
                url = page["links"]["next"]
    return start, time.time(), found, counts


def reset_limits(control: httpx2.Client) -> None:
    """Forget the sandbox's window counters: the next run starts with a full quota."""
    control.delete("/_sandbox/rate-limits").raise_for_status()


def figures(
    name: str,
    start: float,
    end: float,
    members: int,
    pages_per_account: int,
    accounts: int,
    burst: int,
    steady: int,
    throttled: int,
    failed: int,
    api_calls: int,
) -> dict[str, Any]:
    """The figures of one run, with its ceiling computed from its actual start time."""
    elapsed = end - start
    ceiling = ceiling_seconds(pages_per_account, start, burst, steady)
    return {
        "run": name,
        "accounts": accounts,
        "members": members,
        "pages": pages_per_account * accounts,
        "api_calls": api_calls,
        "seconds": round(elapsed, 2),
        "members_per_second": round(members / elapsed, 1),
        "ceiling_seconds": round(ceiling, 2),
        "ceiling_members_per_second": round(members / ceiling, 1) if ceiling else None,
        "ratio_to_ceiling": round(ceiling / elapsed, 3) if elapsed else None,
        "throttled_429": throttled,
        "failed_requests": failed,
        "start_second_of_minute": round(start % 60, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Set up the sandbox, run the three extractions, return all figures."""
    process, info = start_sandbox(args.rate_limits)
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
            burst = max(1, math.floor(TIERS["L"].burst * scale))
            steady = max(1, math.floor(TIERS["L"].steady * scale))
            pages_per_account = args.segments * math.ceil(args.members / PAGE_SIZE)
            members_per_account = args.segments * args.members
            results = []

            def failed_of(stats: list[dict[str, Any]], ok: bool) -> int:
                return 0 if ok else 1

            for name, group in (("iter_members_many, 1 account", accounts[:1]), ("iter_members_many, 4 accounts", accounts)):
                reset_limits(control)
                ok = True
                try:
                    start, end, found, stats = await run_many(base_url, group, args.concurrency)
                except Exception as exc:  # a failed run is a figure, not a crash
                    print(f"{name}: FAILED {exc!r}", file=sys.stderr)
                    ok, start, end, found, stats = False, 0.0, 1.0, {}, []
                complete = all(len(found.get(a["id"], ())) == members_per_account for a in group)
                results.append(
                    figures(
                        name,
                        start,
                        end,
                        sum(len(s) for s in found.values()),
                        pages_per_account,
                        len(group),
                        burst,
                        steady,
                        sum(s["throttled"] for s in stats),
                        failed_of(stats, ok) + (0 if complete else 1),
                        sum(s["api_calls"] for s in stats),
                    )
                    | {"retries": sum(s["retries"] for s in stats), "complete": complete}
                )
                print(json.dumps(results[-1]), file=sys.stderr)
            reset_limits(control)
            start, end, found_base, counts = await run_baseline(base_url, accounts[0])
            results.append(
                figures(
                    "plain sequential loop, 1 account",
                    start,
                    end,
                    len(found_base),
                    pages_per_account,
                    1,
                    burst,
                    steady,
                    counts["throttled"],
                    counts["failed"],
                    counts["api_calls"],
                )
                | {"complete": len(found_base) == members_per_account}
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        process.terminate()
        process.wait(timeout=30)
    many_one, many_four, baseline = results
    return {
        "bench": "extract_members",
        "rate_limits": args.rate_limits,
        "tier_L_per_account": {"burst_per_s": burst, "steady_per_min": steady},
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
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
