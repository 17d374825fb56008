"""Rate limits: fixed burst and steady windows per tier, per account, headers, 429 bodies."""

from __future__ import annotations

import pytest

from klaviyo_sandbox.ratelimit import RateLimiter, parse_mode
from klaviyo_sandbox.spec import RateLimit, operation_by_id
from klaviyo_sandbox.testing import api_client


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_window_then_steady_window():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    tier = RateLimit(burst=3, steady=5)
    assert [limiter.check([("acct", tier)]).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.check([("acct", tier)])
    assert refused.headers == {"Retry-After": "1"}
    clock.now += 1
    assert [limiter.check([("acct", tier)]).allowed for _ in range(3)] == [True, True, False]  # 5 per minute
    clock.now += 60
    assert limiter.check([("acct", tier)]).allowed


def test_headers_report_the_binding_window():
    limiter = RateLimiter(clock=FakeClock())
    decision = limiter.check([("acct", RateLimit(burst=75, steady=750))])
    assert decision.headers["RateLimit-Limit"] == "75, 75;w=1, 750;w=60"
    assert decision.headers["RateLimit-Remaining"] == "74"


def test_headers_follow_the_window_closest_to_exhaustion():
    # Limit's first number, Remaining and Reset must describe one window: once the steady window
    # has less room than the burst window, all three switch to it (they used to mix burst's limit
    # with steady's remaining and report Reset 0 until exhaustion).
    clock = FakeClock(1_000_020.5)  # 0.5 s into a second, 0.5 s into a minute (1_000_020 = 16667 × 60)
    limiter = RateLimiter(clock=clock)
    tier = RateLimit(burst=10, steady=12)
    for _ in range(9):
        decision = limiter.check([("acct", tier)])
    assert decision.headers == {
        "RateLimit-Limit": "10, 10;w=1, 12;w=60",
        "RateLimit-Remaining": "1",  # burst: 1 left; steady: 3 left
        "RateLimit-Reset": "0",  # the burst window resets within the second
    }
    clock.now += 1  # a new second: burst has 9 left after this request, steady only 2
    decision = limiter.check([("acct", tier)])
    assert decision.headers == {
        "RateLimit-Limit": "12, 10;w=1, 12;w=60",
        "RateLimit-Remaining": "2",
        "RateLimit-Reset": "58",  # 58.5 s left in the minute, rounded down while requests remain
    }
    limiter.check([("acct", tier)])
    decision = limiter.check([("acct", tier)])
    assert decision.headers["RateLimit-Remaining"] == "0"
    assert decision.headers["RateLimit-Reset"] == "59"  # exhausted: rounded up, so waiting it is enough
    assert not limiter.check([("acct", tier)]).allowed


def test_buckets_are_separate_per_caller_and_extra_limits_count_in_addition():
    limiter = RateLimiter(clock=FakeClock())
    tier, extra = RateLimit(burst=75, steady=750), RateLimit(burst=1, steady=15)
    assert limiter.check([("a", tier), ("a:profile_count", extra)]).allowed
    assert not limiter.check([("a", tier), ("a:profile_count", extra)]).allowed
    assert limiter.check([("a", tier)]).allowed  # the endpoint's own quota is not used up
    assert limiter.check([("b", tier), ("b:profile_count", extra)]).allowed


def test_modes():
    assert parse_mode("off").enabled is False
    assert parse_mode("x10").scale == 10
    assert parse_mode("klaviyo").scale == 1
    for bad in ("x0", "fast", "x-2"):
        with pytest.raises(ValueError):
            parse_mode(bad)


def test_limits_come_from_the_spec():
    assert operation_by_id("get_profiles_for_segment").rate_limit == RateLimit(75, 750)
    assert operation_by_id("get_webhooks").rate_limit == RateLimit(1, 15)
    assert operation_by_id("get_segment").extra_limits == {
        "additional-fields[segment]=profile_count": RateLimit(1, 15)
    }


def test_http_429_with_klaviyo_body_and_retry_after(make_sandbox):
    running = make_sandbox(rate_limits="klaviyo")
    api = api_client(running)
    segment = api.get("/api/segments").json()["data"][0]["id"]
    statuses = []
    for _ in range(6):  # the profile_count extra limit is 1/s
        response = api.get(f"/api/segments/{segment}", params={"additional-fields[segment]": "profile_count"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            break
    assert statuses[0] == 200 and statuses[-1] == 429
    assert int(response.headers["retry-after"]) >= 1
    assert "ratelimit-limit" not in response.headers
    error = response.json()["errors"][0]
    assert error["code"] == "throttled" and error["title"] == "Request was throttled."
    assert error["source"] == {"pointer": "/data"}
    assert error["links"] == {
        "type": "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling#rate-limits"
    }
    # the plain endpoint still answers: the extra limit is counted in addition, not instead
    ok = api.get(f"/api/segments/{segment}")
    assert ok.status_code == 200 and ok.headers["ratelimit-limit"].startswith("75, 75;w=1, 750;w=60")


def test_burst_limit_per_account_over_http(make_sandbox):
    running = make_sandbox(rate_limits="klaviyo")
    first, second = api_client(running, 0), api_client(running, 1)
    # accounts is XS (1/s): the second call in the same second is throttled for that account only
    codes = [first.get("/api/accounts").status_code for _ in range(3)]
    assert 429 in codes
    assert second.get("/api/accounts").status_code == 200


def test_scaled_limits(make_sandbox):
    running = make_sandbox(rate_limits="x10")
    api = api_client(running)
    codes = [api.get("/api/accounts").status_code for _ in range(5)]
    assert codes == [200] * 5  # XS × 10 = 10 per second
    assert api.get("/api/accounts").headers["ratelimit-limit"].startswith("10, 10;w=1, 150;w=60")
