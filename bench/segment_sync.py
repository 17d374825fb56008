"""Segment sync at scale: 4 accounts × 50 segments × 2,000 members against the sandbox with Klaviyo's limits.

Day 1 reads everything; then membership changes at "Klaviyo" (some segments gain and lose
members); day 2 syncs again. Each account syncs in its own process (as Dagster runs them) into
one shared DuckDB file. Printed per day: wall time, the time Klaviyo's limits allow for the
requests that day needed (fixed 1 s / 60 s windows, aligned to the clock as the sandbox counts
them; day 2 also needs one ``profile_count`` per segment, which has its own 1/s, 15/min limit),
their ratio, API calls and 429s; and day 2's API calls against day 1's. The warehouse is checked
against the sandbox's own membership after each day. Ends with one JSON line.

Limits are Klaviyo's own by default (``--scale 1``): at x2 four accounts would ask this 2-core
machine for ~600 pages/s, more than the sandbox serves, and the bench would measure the CPU. Every
sandbox answer gets ``--latency-ms`` (100 ms) added, as real Klaviyo pages take that long or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.klaviyo.client import KlaviyoClient, PrivateKeyCredentials
from connectors.klaviyo.ratelimit import fixed_window_ceiling_seconds
from klaviyo_sandbox.server import start_sandbox_process
from orchestration.segment_sync import sync_account
from warehouse.duckdb_file import read_connection, write_connection

L_TIER = (75, 750)  # segments, lists and members: burst per second, steady per minute
PROFILE_COUNT = (1, 15)  # the additional-fields[segment]=profile_count limit


def build_world(control: httpx2.Client, accounts: int, segments: int, members: int) -> list[dict[str, Any]]:
    """``accounts`` accounts, each with ``segments`` segments of ``members`` overlapping members."""
    existing = control.get("/_sandbox/accounts").json()["data"]
    while len(existing) < accounts:
        control.post("/_sandbox/accounts", json={"name": f"Bench shop {len(existing) + 1}"})
        existing = control.get("/_sandbox/accounts").json()["data"]
    chosen = existing[:accounts]
    pool = members * 5
    for number, account in enumerate(chosen):
        rng = random.Random(number)
        ids: list[str] = []
        for start in range(0, pool, 5000):
            batch = [
                {"email": f"p{i}.a{number}@bench.example", "external_id": f"shop:{number}:{i}"}
                for i in range(start, min(pool, start + 5000))
            ]
            ids += control.post(
                f"/_sandbox/accounts/{account['id']}/profiles", json={"profiles": batch}
            ).json()["data"]["profile_ids"]
        account["segments"] = [
            control.post(
                f"/_sandbox/accounts/{account['id']}/segments",
                json={"name": f"Bench segment {s:02d}", "members": rng.sample(ids, members)},
            ).json()["data"]["id"]
            for s in range(segments)
        ]
        account["profile_ids"] = ids
    return chosen


def change_membership(
    control: httpx2.Client, account: dict[str, Any], changed_segments: int, churn: int
) -> None:
    """A day at Klaviyo: ``churn`` people leave and ``churn`` join each of ``changed_segments`` segments."""
    rng = random.Random(hash(account["id"]) & 0xFFFF)
    segments = account["segments"][:changed_segments]
    for segment_id in segments:
        current = control.get(f"/_sandbox/accounts/{account['id']}/segments/{segment_id}/members").json()
        members = [m["profile_id"] for m in current["data"]["members"]]
        outsiders = sorted(set(account["profile_ids"]) - set(members))
        control.post(
            f"/_sandbox/accounts/{account['id']}/segments/{segment_id}/members",
            json={"remove": rng.sample(members, churn), "add": rng.sample(outsiders, churn)},
        )


def _sync_one(base_url: str, key: str, account_id: str, warehouse: str, queue: Any) -> None:
    """Child process: one account's sync, as a Dagster run would do it."""

    async def run() -> dict[str, Any]:
        async with KlaviyoClient(base_url, PrivateKeyCredentials(key), max_concurrency=32) as client:
            started = time.time()
            result = await sync_account(
                client, account_id, lambda: read_connection(warehouse), lambda: write_connection(warehouse)
            )
            return {
                "account": account_id,
                "started": started,
                "finished": time.time(),
                "api": result.api,
                "joins": result.joins,
                "leaves": result.leaves,
                "members": result.members,
                "sweeps": result.sweeps,
                "groups": result.groups_synced,
            }

    try:
        queue.put(asyncio.run(run()))
    except Exception as exc:  # reported, and the bench fails loudly
        queue.put({"account": account_id, "error": repr(exc)})


def sync_day(base_url: str, accounts: list[dict[str, Any]], warehouse: str) -> list[dict[str, Any]]:
    """All accounts at once, one process each."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_sync_one, args=(base_url, a["private_api_key"], a["id"], warehouse, queue))
        for a in accounts
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    failed = [r for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"sync failed: {failed}")
    return results


def verify(control: httpx2.Client, accounts: list[dict[str, Any]], warehouse: str) -> bool:
    """The warehouse's current members equal the sandbox's, for every segment of every account."""
    with read_connection(warehouse) as conn:
        for account in accounts:
            for segment_id in account["segments"]:
                truth = {
                    m["profile_id"]
                    for m in control.get(
                        f"/_sandbox/accounts/{account['id']}/segments/{segment_id}/members"
                    ).json()["data"]["members"]
                }
                ours = {
                    r[0]
                    for r in conn.execute(
                        "select profile_id from klaviyo.raw_group_members"
                        " where account_id = ? and group_id = ? and valid_to is null",
                        [account["id"], segment_id],
                    ).fetchall()
                }
                if truth != ours:
                    return False
    return True


def day_figures(results: list[dict[str, Any]], scale: int, with_counts: bool) -> dict[str, Any]:
    """Wall time against the time the limits allow, per day (the slowest account decides both)."""
    start = min(r["started"] for r in results)
    wall = max(r["finished"] for r in results) - start
    allowed = 0.0
    for r in results:
        pages = int(r["api"]["api_calls"]) - int(r["api"]["retries"])
        counts = r["groups"] if with_counts else 0
        allowed = max(
            allowed,
            fixed_window_ceiling_seconds(pages - counts, r["started"], L_TIER[0] * scale, L_TIER[1] * scale),
            fixed_window_ceiling_seconds(
                counts, r["started"], PROFILE_COUNT[0] * scale, PROFILE_COUNT[1] * scale
            ),
        )
    return {
        "wall_seconds": round(wall, 2),
        "limits_allow_seconds": round(allowed, 2),
        "ratio_allowed_over_wall": round(allowed / wall, 3) if wall else None,
        "api_calls": sum(int(r["api"]["api_calls"]) for r in results),
        "throttled_429s": sum(int(r["api"]["throttled"]) for r in results),
        "retries": sum(int(r["api"]["retries"]) for r in results),
        "members": sum(r["members"] for r in results),
        "joins": sum(r["joins"] for r in results),
        "leaves": sum(r["leaves"] for r in results),
        "sweeps": sum(r["sweeps"] for r in results),
    }


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=1, help="Klaviyo's limits times this (1: Klaviyo's own)")
    parser.add_argument(
        "--latency-ms", type=int, default=100, help="added to every sandbox answer, as real pages take"
    )
    parser.add_argument("--changed-segments", type=int, default=10)
    parser.add_argument("--churn", type=int, default=50)
    args = parser.parse_args()

    process, info = start_sandbox_process("empty", f"x{args.scale}")
    base = info["base_url"]
    try:
        with httpx2.Client(base_url=base, timeout=120) as control, tempfile.TemporaryDirectory() as tmp:
            control.put("/_sandbox/rate-limits", json={"mode": "off"})  # world-building is not measured
            setup_started = time.monotonic()
            accounts = build_world(control, args.accounts, args.segments, args.members)
            control.put("/_sandbox/rate-limits", json={"mode": f"x{args.scale}"})
            print(
                f"world: {args.accounts} accounts × {args.segments} segments × {args.members} members "
                f"built in {time.monotonic() - setup_started:.1f}s; limits x{args.scale}",
                flush=True,
            )
            warehouse = str(Path(tmp) / "warehouse.duckdb")
            with write_connection(warehouse):
                pass

            day1 = sync_day(base, accounts, warehouse)
            ok1 = verify(control, accounts, warehouse)
            d1 = day_figures(day1, args.scale, with_counts=False)
            print(f"day 1: {d1}", flush=True)

            control.put("/_sandbox/rate-limits", json={"mode": "off"})
            for account in accounts:
                change_membership(control, account, args.changed_segments, args.churn)
            control.put("/_sandbox/rate-limits", json={"mode": f"x{args.scale}"})
            time.sleep(61)  # a fresh steady window, as a day later would have
            day2 = sync_day(base, accounts, warehouse)
            ok2 = verify(control, accounts, warehouse)
            d2 = day_figures(day2, args.scale, with_counts=True)
            print(f"day 2: {d2}", flush=True)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    expected_changes = args.accounts * args.changed_segments * args.churn
    figures = {
        "bench": "segment_sync",
        "accounts": args.accounts,
        "segments_per_account": args.segments,
        "members_per_segment": args.members,
        "limits_scale": args.scale,
        "latency_ms": args.latency_ms,
        "day1": d1,
        "day2": d2,
        "day2_over_day1_api_calls": round(d2["api_calls"] / d1["api_calls"], 3),
        "day1_matches_klaviyo": ok1,
        "day2_matches_klaviyo": ok2,
        "day2_joins_and_leaves_exact": d2["joins"] == expected_changes and d2["leaves"] == expected_changes,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
