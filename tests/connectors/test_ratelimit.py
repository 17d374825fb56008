"""Unit tests of the rate limiter with a fake clock: both fixed windows, the margin, learning from
``RateLimit-*`` headers, the probe, ``Retry-After`` and cancellation."""

from __future__ import annotations

import asyncio
import math

import pytest

from connectors.klaviyo.ratelimit import (
    EXTRA_TIERS,
    TIERS,
    Clock,
    LimiterRegistry,
    Tier,
    binding_window,
    parse_rate_limit_header,
    parse_retry_after,
)

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)
KEY = "http://klaviyo|account:test"


class FakeClock(Clock):
    """Time moves only when someone sleeps (each sleep yields to the event loop once)."""

    def __init__(self, start: float = T0) -> None:
        self.now_value = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.now_value

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_value += max(0.0, seconds)
        await asyncio.sleep(0)


def registry(clock: FakeClock, margin: float = 0.0) -> LimiterRegistry:
    return LimiterRegistry(clock, margin=margin, probe_poll=0.01)


async def send_times(
    limits: LimiterRegistry, tiers: list[Tier], count: int, status: int = 200
) -> list[float]:
    """Acquire ``count`` permits one after another, settling each as answered; return their send times."""
    times = []
    for _ in range(count):
        permit = await limits.acquire(KEY, tiers)
        times.append(permit.sent_at)
        permit.settle(status, {})
    return times


def per_window(times: list[float], window: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for at in times:
        counts[math.floor(at / window)] = counts.get(math.floor(at / window), 0) + 1
    return counts


def test_burst_window_spaces_requests_into_seconds() -> None:
    clock = FakeClock()
    tier = Tier("S", 3, 60)
    times = asyncio.run(send_times(registry(clock), [tier], 9))
    assert [t - T0 for t in times] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_steady_window_waits_for_the_next_minute() -> None:
    clock = FakeClock()
    tier = Tier("S", 3, 5)  # 5 a minute: after two seconds of bursts the minute is spent
    times = asyncio.run(send_times(registry(clock), [tier], 12))
    assert [t - T0 for t in times] == [0, 0, 0, 1, 1, 60, 60, 60, 61, 61, 120, 120]
    assert max(per_window(times, 60).values()) == 5
    assert max(per_window(times, 1).values()) == 3


def test_windows_are_aligned_to_the_clock_not_to_the_first_request() -> None:
    clock = FakeClock(T0 + 59.5)  # half a second before a minute ends
    tier = Tier("S", 3, 4)
    times = asyncio.run(send_times(registry(clock), [tier], 6))
    # three in second 59, then the new minute (a fresh steady window) at the boundary
    assert [round(t - T0, 3) for t in times] == [59.5, 59.5, 59.5, 60, 60, 60]


def test_margin_counts_a_request_near_a_boundary_in_both_windows() -> None:
    clock = FakeClock(T0 + 0.95)
    tier = Tier("S", 2, 100)
    times = asyncio.run(send_times(registry(clock, margin=0.1), [tier], 4))
    # the two at 0.95 may land in second 1, so second 1 has room for none more
    assert [round(t - T0, 3) for t in times] == [0.95, 0.95, 2, 2]


def test_extra_quota_is_counted_in_addition_to_the_tier() -> None:
    clock = FakeClock()
    main = TIERS["L"]
    extra = EXTRA_TIERS["additional-fields[segment]=profile_count"]
    times = asyncio.run(send_times(registry(clock), [main, extra], 4))
    assert [t - T0 for t in times] == [0, 1, 2, 3]  # 1/s from the profile_count quota


def test_a_booking_far_ahead_keeps_the_current_windows_counts() -> None:
    clock = FakeClock()
    limits = registry(clock)
    main = Tier("M", 2, 100)

    async def scenario() -> list[float]:
        (await limits.acquire(KEY, [main])).settle(200, {})  # second T0: 1 of 2 used
        # a request held back by some other quota books two minutes ahead
        limits.bucket(KEY, main).book(T0 + 120, now=T0)
        return [(await limits.acquire(KEY, [main])).sent_at for _ in range(2)]

    assert asyncio.run(scenario()) == [T0, T0 + 1]  # second T0 still remembers its first request


def test_learns_the_servers_limits_from_ratelimit_limit() -> None:
    clock = FakeClock()
    limits = registry(clock)

    async def scenario() -> list[float]:
        first = await limits.acquire(KEY, [TIERS["L"]])
        # The sandbox at x0.1: 7/s, 75/min instead of the table's 75/s, 750/min.
        first.settle(200, {"RateLimit-Limit": "7, 7;w=1, 75;w=60", "RateLimit-Remaining": "6"})
        return await send_times(limits, [TIERS["L"]], 14)

    times = asyncio.run(scenario())
    bucket = limits.bucket(KEY, TIERS["L"])
    assert (bucket.burst, bucket.steady) == (7, 75)
    assert max(per_window([T0, *times], 1).values()) == 7
    # and higher limits too (x10)
    bucket.learn_limits(parse_rate_limit_header("750, 750;w=1, 7500;w=60"))
    assert (bucket.burst, bucket.steady) == (750, 7500)


def test_first_request_probes_alone_until_the_server_has_answered() -> None:
    clock = FakeClock()
    limits = registry(clock)

    async def scenario() -> tuple[float, int, float]:
        probe = await limits.acquire(KEY, [TIERS["L"]])
        waiting = asyncio.create_task(limits.acquire(KEY, [TIERS["L"]]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # held back while the probe is out
        clock.now_value += 0.2  # the probe's round trip
        probe.settle(200, {"ratelimit-limit": "3, 3;w=1, 30;w=60", "ratelimit-remaining": "2"})
        second = await waiting
        second.settle(200, {})
        return probe.sent_at, limits.bucket(KEY, TIERS["L"]).burst, second.sent_at

    probe_at, burst, second_at = asyncio.run(scenario())
    assert burst == 3
    assert second_at >= probe_at + 0.2


def test_a_probe_that_gets_no_answer_lets_the_next_request_probe() -> None:
    clock = FakeClock()
    limits = registry(clock)

    async def scenario() -> bool:
        probe = await limits.acquire(KEY, [TIERS["L"]])
        probe.settle(None)  # connection failed: nothing learned
        again = await limits.acquire(KEY, [TIERS["L"]])
        probing = limits.bucket(KEY, TIERS["L"]).probing
        again.settle(200, {})  # a success without headers: trust the table from now on
        return probing

    assert asyncio.run(scenario()) is True
    bucket = limits.bucket(KEY, TIERS["L"])
    assert bucket.learned and not bucket.probing


def test_retry_after_pauses_the_bucket() -> None:
    clock = FakeClock(T0 + 10.2)
    limits = registry(clock)

    async def scenario() -> float:
        permit = await limits.acquire(KEY, [TIERS["M"]])
        permit.settle(429, {"Retry-After": "7"})
        after = await limits.acquire(KEY, [TIERS["M"]])
        after.settle(200, {})
        return after.sent_at

    assert asyncio.run(scenario()) == pytest.approx(T0 + 17.2)


def test_retry_after_reaches_requests_already_waiting_for_their_slot() -> None:
    clock = FakeClock()
    limits = registry(clock)
    tier = Tier("S", 1, 60)

    async def scenario() -> list[float]:
        first = await limits.acquire(KEY, [tier])
        first.settle(200, {})
        # booked for T0+1 and T0+2, then a 429 (e.g. another process) pauses the bucket for 5 s
        waiting = [asyncio.create_task(limits.acquire(KEY, [tier])) for _ in range(2)]
        await asyncio.sleep(0)
        limits.bucket(KEY, tier).pause(T0 + 5)
        permits = await asyncio.gather(*waiting)
        return sorted(p.sent_at for p in permits)

    times = asyncio.run(scenario())
    assert all(t >= T0 + 5 for t in times)
    assert len(set(times)) == 2  # still one a second


def test_remaining_raises_our_count_when_the_server_saw_more() -> None:
    clock = FakeClock(T0 + 5)
    limits = registry(clock)
    tier = Tier("M", 10, 150)

    async def scenario() -> float:
        permit = await limits.acquire(KEY, [tier])
        # Another process has used the minute: the server says nothing remains for 55 s.
        permit.settle(
            200,
            {"RateLimit-Limit": "10, 10;w=1, 150;w=60", "RateLimit-Remaining": "0", "RateLimit-Reset": "55"},
        )
        nxt = await limits.acquire(KEY, [tier])
        return nxt.sent_at

    assert asyncio.run(scenario()) == T0 + 60


def test_remaining_of_the_burst_window_only_blocks_the_rest_of_the_second() -> None:
    clock = FakeClock(T0 + 5.3)
    limits = registry(clock)
    tier = Tier("M", 10, 150)

    async def scenario() -> float:
        permit = await limits.acquire(KEY, [tier])
        permit.settle(
            200,
            {"RateLimit-Limit": "10, 10;w=1, 150;w=60", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"},
        )
        nxt = await limits.acquire(KEY, [tier])
        return nxt.sent_at

    assert asyncio.run(scenario()) == T0 + 6


def test_the_binding_window_named_by_the_server_takes_the_remaining_count() -> None:
    clock = FakeClock(T0 + 5.3)
    limits = registry(clock)
    tier = Tier("M", 10, 150)

    async def scenario() -> list[float]:
        permit = await limits.acquire(KEY, [tier])
        # "150" first: the steady window binds, and only 3 of its 150 remain (another process used them).
        permit.settle(
            200,
            {"RateLimit-Limit": "150, 10;w=1, 150;w=60", "RateLimit-Remaining": "3", "RateLimit-Reset": "0"},
        )
        return [(await limits.acquire(KEY, [tier])).sent_at for _ in range(4)]

    # three more this minute, then the next minute (not merely the next second)
    assert asyncio.run(scenario()) == [T0 + 5.3, T0 + 5.3, T0 + 5.3, T0 + 60]


def test_cancelled_waiter_returns_its_booking() -> None:
    clock = FakeClock()
    limits = registry(clock)
    tier = Tier("S", 1, 60)

    async def scenario() -> float:
        (await limits.acquire(KEY, [tier])).settle(200, {})
        doomed = asyncio.create_task(limits.acquire(KEY, [tier]))  # books T0+1
        await asyncio.sleep(0)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        clock.now_value = T0 + 0.5
        nxt = await limits.acquire(KEY, [tier])
        return nxt.sent_at

    assert asyncio.run(scenario()) == T0 + 1  # the cancelled slot was given back


def test_keys_and_tiers_are_separate_quotas() -> None:
    clock = FakeClock()
    limits = registry(clock)

    async def scenario() -> list[float]:
        times = []
        for key, tier in (("a", TIERS["XS"]), ("b", TIERS["XS"]), ("a", TIERS["S"])):
            permit = await limits.acquire(key, [tier])
            times.append(permit.sent_at)
            permit.settle(200, {})
        return times

    assert asyncio.run(scenario()) == [T0, T0, T0]
    assert set(limits.snapshot("a")) == {"XS", "S"}


def test_many_concurrent_waiters_never_exceed_either_window() -> None:
    clock = FakeClock(T0 + 42.7)
    limits = registry(clock, margin=0.1)
    tier = Tier("L", 75, 750)

    async def one() -> float:
        permit = await limits.acquire(KEY, [tier])
        permit.settle(200, {})
        return permit.sent_at

    async def scenario() -> list[float]:
        (await limits.acquire(KEY, [tier])).settle(200, {})  # learned: no probe
        return list(await asyncio.gather(*(one() for _ in range(1600))))

    times = asyncio.run(scenario())
    assert max(per_window(times, 1).values()) <= 75
    assert max(per_window(times, 60).values()) <= 750


def test_header_parsers() -> None:
    assert parse_rate_limit_header("75, 75;w=1, 750;w=60") == {1: 75, 60: 750}
    assert parse_rate_limit_header("750;w=1,7500;w=60") == {1: 750, 60: 7500}
    assert parse_rate_limit_header("") == {}
    assert parse_rate_limit_header("garbage") == {}
    assert binding_window("150, 10;w=1, 150;w=60", {1: 10, 60: 150}) == 60
    assert binding_window("10, 10;w=1, 150;w=60", {1: 10, 60: 150}) == 1
    assert binding_window("10;w=1, 150;w=60", {1: 10, 60: 150}) is None
    assert parse_retry_after("3", 0) == 3
    assert parse_retry_after(None, 0) == 1.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4.0) == pytest.approx(6.0)
    assert parse_retry_after("soon", 0, default=2.5) == 2.5


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        # a sandbox at x2 announces 150/s, 1500/min for the endpoint's own quota only
        ("150, 150;w=1, 1500;w=60", (2, 30)),
        # Klaviyo's own limits leave the extra quota as published
        ("75, 75;w=1, 750;w=60", (1, 15)),
    ],
)
def test_extra_quotas_follow_the_scale_the_server_announces(
    announced: str, expected: tuple[int, int]
) -> None:
    limits = registry(FakeClock())
    count = EXTRA_TIERS["additional-fields[segment]=profile_count"]

    async def scenario() -> None:
        permit = await limits.acquire(KEY, [TIERS["L"], count])
        permit.settle(200, {"RateLimit-Limit": announced, "RateLimit-Remaining": "1"})

    asyncio.run(scenario())
    extra = limits.bucket(KEY, count)
    assert (extra.burst, extra.steady) == expected
