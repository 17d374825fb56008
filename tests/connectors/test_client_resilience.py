"""The client under stress, against real sandboxes: injected 5xx and dropped connections, 429 storms,
limits that change under it, and two accounts extracted at once without anything crossing over.

The promise tested everywhere: the members extracted are exactly the members of a clean run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

from connectors.klaviyo.client import KlaviyoClient, PrivateKeyCredentials, RetryPolicy
from connectors.klaviyo.ratelimit import LimiterRegistry
from klaviyo_sandbox.server import RunningSandbox

FAST_RETRIES = RetryPolicy(max_attempts=15, backoff_base=0.01, backoff_max=0.05)
Membership = dict[str, set[str]]


@pytest.fixture
def start(
    make_sandbox: Callable[..., RunningSandbox],
) -> Iterator[Callable[..., tuple[RunningSandbox, httpx2.Client]]]:
    """Start an empty sandbox with options; returns it with a control client."""
    clients: list[httpx2.Client] = []

    def begin(**options: Any) -> tuple[RunningSandbox, httpx2.Client]:
        running = make_sandbox(seed="empty", **options)
        clients.append(httpx2.Client(base_url=running.base_url, timeout=60))
        return running, clients[-1]

    yield begin
    for client in clients:
        client.close()


def build_account(
    http: httpx2.Client, segments: int, members: int, prefix: str
) -> tuple[dict[str, Any], Membership]:
    """A new account with ``segments`` overlapping segments of ``members`` members each."""
    account = http.post("/_sandbox/accounts", json={"name": f"Shop {prefix}"}).json()["data"]
    pool_size = members * 2
    people = [{"email": f"{prefix}{i}@test.example"} for i in range(pool_size)]
    pool = http.post(f"/_sandbox/accounts/{account['id']}/profiles", json={"profiles": people}).json()[
        "data"
    ]["profile_ids"]
    truth: Membership = {}
    for s in range(segments):
        chosen = [pool[(s * members // 3 + i) % pool_size] for i in range(members)]
        response = http.post(
            f"/_sandbox/accounts/{account['id']}/segments",
            json={"name": f"{prefix} segment {s}", "members": chosen},
        )
        assert response.status_code == 201, response.text
        truth[response.json()["data"]["id"]] = set(chosen)
    return account, truth


async def extract(client: KlaviyoClient, segment_ids: list[str]) -> Membership:
    """Every member of every segment through ``iter_members_many``."""
    found: Membership = {segment_id: set() for segment_id in segment_ids}
    async for page in client.iter_members_many(segment_ids):
        found[page.group_id].update(m.profile_id for m in page.members)
    return found


def client_for(running: RunningSandbox, key: str, **options: Any) -> KlaviyoClient:
    options.setdefault("limiter", LimiterRegistry())
    return KlaviyoClient(running.base_url, PrivateKeyCredentials(key), **options)


# ---------------------------------------------------------------------------- 5xx and dropped connections


def test_5xx_and_dropped_connections_give_the_same_members_as_a_clean_run(start: Callable[..., Any]) -> None:
    running, http = start(rate_limits="x10")
    account, truth = build_account(http, segments=8, members=450, prefix="fault-")  # 40 pages
    key = account["private_api_key"]

    async def run() -> tuple[Membership, Any]:
        async with client_for(running, key, retry=FAST_RETRIES, max_concurrency=6) as client:
            found = await extract(client, list(truth))
            one = [m.profile_id async for m in client.iter_segment_members(next(iter(truth)))]
            profiles = await client.get_profiles(sorted(truth[next(iter(truth))])[:150])
            assert set(one) == truth[next(iter(truth))]
            assert len(profiles) == 150
            return found, client.stats

    clean, clean_stats = asyncio.run(run())
    assert clean == truth and clean_stats.retries == 0

    faults = {"error_rate": 0.3, "drop_rate": 0.08, "statuses": [500, 502, 503, 504]}
    assert http.put("/_sandbox/faults", json=faults).status_code == 200
    try:
        faulty, stats = asyncio.run(run())
    finally:
        http.put("/_sandbox/faults", json={"error_rate": 0, "drop_rate": 0})
    assert faulty == clean
    assert stats.server_errors > 0 and stats.transport_errors > 0
    assert stats.retries == stats.server_errors + stats.transport_errors + stats.throttled
    assert stats.api_calls == clean_stats.api_calls + stats.retries


def test_retries_give_up_with_a_server_error_naming_the_endpoint(start: Callable[..., Any]) -> None:
    running, http = start(rate_limits="off")
    account, truth = build_account(http, segments=1, members=10, prefix="giveup-")
    http.put("/_sandbox/faults", json={"fail_next": 3, "statuses": [503]})
    from connectors.klaviyo.errors import ServerError

    client = client_for(running, account["private_api_key"], retry=RetryPolicy(3, 0.01, 0.02))
    with pytest.raises(ServerError) as caught:
        asyncio.run(extract(client, list(truth)))
    assert caught.value.status == 503 and caught.value.endpoint.startswith("GET /api/segments/")
    assert client.stats.api_calls == 3 and client.stats.retries == 2


class ScriptedCredentials:
    """Hands out the given Authorization values in turn; every refresh says "new credentials"."""

    limiter_key = "account:scripted"

    def __init__(self, *values: str) -> None:
        self.values = list(values)
        self.refreshes = 0

    async def authorization(self) -> str:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]

    async def refresh_after_unauthorized(self) -> bool:
        self.refreshes += 1
        return True


def test_a_request_refreshes_credentials_at_most_once_across_retries(start: Callable[..., Any]) -> None:
    from connectors.klaviyo.errors import AuthenticationError

    running, http = start(rate_limits="off")
    account, _ = build_account(http, segments=1, members=1, prefix="once-")
    good, bad = f"Klaviyo-API-Key {account['private_api_key']}", "Klaviyo-API-Key pk_revoked"
    # 401 → refresh → (good key) 503 → retry → 401 again: no second refresh, an AuthenticationError.
    http.put("/_sandbox/faults", json={"fail_next": 1, "statuses": [503]})
    creds = ScriptedCredentials(bad, good, bad)
    client = KlaviyoClient(running.base_url, creds, limiter=LimiterRegistry(), retry=FAST_RETRIES)
    with pytest.raises(AuthenticationError):
        asyncio.run(client.get_account())
    assert creds.refreshes == 1
    assert (client.stats.api_calls, client.stats.server_errors, client.stats.retries) == (3, 1, 1)


# ---------------------------------------------------------------------------- 429s


def test_two_processes_on_one_account_get_429s_and_the_same_members(start: Callable[..., Any]) -> None:
    # Two limiter registries = two processes sharing one account's quota without knowing of each other.
    running, http = start(rate_limits="x0.2")  # tier L: 15/s, 150/min
    account, truth = build_account(http, segments=6, members=300, prefix="storm-")  # 18 pages each
    key = account["private_api_key"]
    patient = RetryPolicy(max_attempts=30, backoff_base=0.01, backoff_max=0.05)

    async def run() -> tuple[list[Membership], int]:
        clients = [client_for(running, key, retry=patient, max_concurrency=6) for _ in range(2)]
        try:
            found = await asyncio.gather(*(extract(c, list(truth)) for c in clients))
        finally:
            for c in clients:
                await c.aclose()
        return list(found), sum(c.stats.throttled for c in clients)

    found, throttled = asyncio.run(run())
    assert found == [truth, truth]
    assert throttled > 0
    log = http.get("/_sandbox/requests", params={"account_id": account["id"], "status": "429"}).json()["data"]
    assert len(log) == throttled


def test_limits_lowered_mid_run_are_learned_and_results_stay_the_same(start: Callable[..., Any]) -> None:
    running, http = start(rate_limits="klaviyo")
    account, truth = build_account(http, segments=10, members=300, prefix="lower-")  # 30 pages
    registry = LimiterRegistry()

    async def run() -> tuple[Membership, Any, str]:
        found: Membership = {s: set() for s in truth}
        async with client_for(
            running, account["private_api_key"], limiter=registry, retry=FAST_RETRIES
        ) as client:
            lowered = False
            async for page in client.iter_members_many(list(truth), concurrency=10):
                found[page.group_id].update(m.profile_id for m in page.members)
                if not lowered:
                    # Klaviyo's limits drop to a tenth under the running extraction (L: 7/s, 75/min).
                    await asyncio.to_thread(http.put, "/_sandbox/rate-limits", json={"mode": "x0.1"})
                    lowered = True
            return found, client.stats, client.limiter_key

    found, stats, key = asyncio.run(run())
    assert found == truth
    learned = registry.snapshot(key)["L"]
    assert (learned["burst"], learned["steady"]) == (7, 75)
    assert stats.throttled <= 10  # at most the requests already on their way when the limits dropped


def test_lower_server_limits_are_learned_by_a_probe_before_any_burst(start: Callable[..., Any]) -> None:
    running, http = start(rate_limits="x0.1")  # the table says 75/s; the server allows 7/s
    account, truth = build_account(http, segments=10, members=200, prefix="probe-")  # 20 pages
    registry = LimiterRegistry()
    client = client_for(running, account["private_api_key"], limiter=registry, max_concurrency=10)
    assert asyncio.run(extract(client, list(truth))) == truth
    # The server's own limiter admitted every request: it never saw more than 7 in a second.
    assert client.stats.throttled == 0
    assert (
        http.get("/_sandbox/requests", params={"account_id": account["id"], "status": "429"}).json()["data"]
        == []
    )
    learned = registry.snapshot(client.limiter_key)["L"]
    assert (learned["burst"], learned["steady"]) == (7, 75)


# ---------------------------------------------------------------------------- two accounts at once


def test_two_accounts_at_once_never_cross(start: Callable[..., Any]) -> None:
    running, http = start(rate_limits="x10")
    shop_a, truth_a = build_account(http, segments=5, members=150, prefix="a-")
    shop_b, truth_b = build_account(http, segments=5, members=150, prefix="b-")
    http.delete("/_sandbox/requests")
    registry = LimiterRegistry()  # one process, one registry: two quotas in it

    async def one_shop(key: str, truth: Membership) -> tuple[Any, Membership, list[str], Any]:
        async with client_for(running, key, limiter=registry, max_concurrency=4) as client:
            me, found = await asyncio.gather(client.get_account(), extract(client, list(truth)))
            some = sorted(next(iter(truth.values())))[:20]
            emails = [p.email for p in await client.get_profiles(some)]
            return me, found, emails, client.stats

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                one_shop(shop_a["private_api_key"], truth_a), one_shop(shop_b["private_api_key"], truth_b)
            )
        )

    (me_a, found_a, emails_a, stats_a), (me_b, found_b, emails_b, stats_b) = asyncio.run(both())
    assert (me_a.id, me_b.id) == (shop_a["id"], shop_b["id"])
    assert found_a == truth_a and found_b == truth_b
    assert all(e.startswith("a-") for e in emails_a) and all(e.startswith("b-") for e in emails_b)

    # The sandbox logged every request with the account its credential belongs to.
    everything = http.get("/_sandbox/requests").json()["data"]
    assert len(everything) == stats_a.api_calls + stats_b.api_calls
    for shop, truth, stats, foreign in (
        (shop_a, truth_a, stats_a, truth_b),
        (shop_b, truth_b, stats_b, truth_a),
    ):
        rows = [r for r in everything if r["account_id"] == shop["id"]]
        assert len(rows) == stats.api_calls
        assert all(r["status"] == 200 for r in rows)
        for row in rows:
            if row["path"].startswith("/api/segments/"):
                segment_id = row["path"].split("/")[3]
                assert segment_id in truth and segment_id not in foreign
    assert {k.split("|")[1] for k in registry.limiter_keys()} == {
        PrivateKeyCredentials(shop_a["private_api_key"]).limiter_key,
        PrivateKeyCredentials(shop_b["private_api_key"]).limiter_key,
    }


def test_limiter_key_is_per_account_and_hides_the_key() -> None:
    one, same, other = (
        PrivateKeyCredentials("pk_one"),
        PrivateKeyCredentials("pk_one"),
        PrivateKeyCredentials("pk_2"),
    )
    assert one.limiter_key == same.limiter_key != other.limiter_key
    assert one.limiter_key.startswith("account:") and "pk_one" not in one.limiter_key + repr(one)


# ---------------------------------------------------------------------------- at the ceiling


@pytest.mark.integration
def test_many_segments_at_klaviyos_real_limits_complete_without_a_429(start: Callable[..., Any]) -> None:
    """400 pages at Klaviyo's own limits: complete and never throttled (speed: bench/extract_members.py)."""
    running, http = start(rate_limits="klaviyo")
    account, truth = build_account(http, segments=40, members=1000, prefix="ceil-")  # 400 pages
    client = client_for(running, account["private_api_key"])
    assert asyncio.run(extract(client, list(truth))) == truth
    assert client.stats.throttled == 0
