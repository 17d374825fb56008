"""``KlaviyoClient`` against the sandbox over real HTTP: every operation, pagination edges,
incremental extraction, and errors by meaning.

Tests that change state create their own account in the session sandbox (``POST /_sandbox/accounts``)
and read back through the control API; each test gets a fresh limiter registry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from connectors.klaviyo import filters
from connectors.klaviyo.client import (
    KlaviyoClient,
    PrivateKeyCredentials,
    RetryPolicy,
    StaticBearerCredentials,
)
from connectors.klaviyo.errors import (
    AuthenticationError,
    ConnectionInactive,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
)
from connectors.klaviyo.models import Member, SubscribeProfile
from connectors.klaviyo.ratelimit import LimiterRegistry
from klaviyo_sandbox.server import RunningSandbox

REDIRECT_URI = "http://127.0.0.1:9/klaviyo/callback"


# ---------------------------------------------------------------------------- helpers


@pytest.fixture
def http(sandbox: RunningSandbox) -> Iterator[httpx2.Client]:
    """Control-API client of the session sandbox."""
    with httpx2.Client(base_url=sandbox.base_url, timeout=60, follow_redirects=False) as client:
        yield client


def client_for(running: RunningSandbox, key: str, **options: Any) -> KlaviyoClient:
    """A client with its own limiter registry (tests must not share quota knowledge)."""
    options.setdefault("limiter", LimiterRegistry())
    return KlaviyoClient(running.base_url, PrivateKeyCredentials(key), **options)


def new_account(http: httpx2.Client, **options: Any) -> dict[str, Any]:
    """A fresh, empty account in the sandbox (its own data, its own quota)."""
    response = http.post("/_sandbox/accounts", json={"name": f"Test shop {secrets.token_hex(3)}", **options})
    assert response.status_code == 201, response.text
    return response.json()["data"]


def make_profiles(http: httpx2.Client, account_id: str, count: int, prefix: str) -> list[str]:
    """``count`` profiles with distinct emails; their ids in order."""
    people = [{"email": f"{prefix}{i}@test.example"} for i in range(count)]
    response = http.post(f"/_sandbox/accounts/{account_id}/profiles", json={"profiles": people})
    assert response.status_code == 201, response.text
    return response.json()["data"]["profile_ids"]


def make_group(
    http: httpx2.Client,
    account_id: str,
    kind: str,
    members: list[str],
    joined_at: datetime | None = None,
    **extra: Any,
) -> str:
    """A list or segment with exactly these members."""
    body: dict[str, Any] = {"name": f"{kind} {secrets.token_hex(2)}", "members": members, **extra}
    if joined_at is not None:
        body["joined_at"] = joined_at.isoformat()
    response = http.post(f"/_sandbox/accounts/{account_id}/{kind}", json=body)
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


def control_members(http: httpx2.Client, account_id: str, kind: str, group_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/_sandbox/accounts/{account_id}/{kind}/{group_id}/members")
    assert response.status_code == 200, response.text
    return response.json()["data"]["members"]


def request_log(http: httpx2.Client, account_id: str, path_prefix: str = "") -> list[dict[str, Any]]:
    params = {"account_id": account_id}
    if path_prefix:
        params["path_prefix"] = path_prefix
    return http.get("/_sandbox/requests", params=params).json()["data"]


def demo_account(http: httpx2.Client, index: int = 0) -> dict[str, Any]:
    return http.get("/_sandbox/accounts").json()["data"][index]


def collect(iterator: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [item async for item in iterator]

    return asyncio.run(run())


def oauth_token(base_url: str, account_id: str, scopes: list[str]) -> tuple[str, str]:
    """A bearer token for ``scopes`` obtained non-interactively (consent form POST, code exchange)."""
    with httpx2.Client(base_url=base_url, timeout=30, follow_redirects=False) as http:
        app = http.post(
            "/_sandbox/oauth/clients",
            json={"name": "Recart connector test", "redirect_uris": [REDIRECT_URI], "scopes": scopes},
        ).json()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        consent = http.post(
            "/oauth/authorize",
            data={
                "response_type": "code",
                "client_id": app["client_id"],
                "redirect_uri": REDIRECT_URI,
                "scope": " ".join(scopes),
                "state": "state-" + secrets.token_hex(4),
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "account_id": account_id,
                "decision": "allow",
            },
        )
        assert consent.status_code == 302, consent.text
        code = parse_qs(urlsplit(consent.headers["location"]).query)["code"][0]
        token = http.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "redirect_uri": REDIRECT_URI,
            },
            auth=(app["client_id"], app["client_secret"]),
        )
        assert token.status_code == 200, token.text
        return token.json()["access_token"], app["client_id"]


# ---------------------------------------------------------------------------- account, lists, segments


def test_account_lists_and_segments(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = demo_account(http)
    store = sandbox.sandbox.store.accounts[account["id"]]

    async def run() -> tuple[Any, ...]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            me = await client.get_account()
            lists = [x async for x in client.iter_lists()]
            segments = [x async for x in client.iter_segments()]
            one_list = await client.get_list(lists[0].id, with_profile_count=True)
            one_segment = await client.get_segment(segments[0].id, with_profile_count=True)
            plain = await client.get_segment(segments[0].id)
            return me, lists, segments, one_list, one_segment, plain, client.stats

    me, lists, segments, one_list, one_segment, plain, stats = asyncio.run(run())
    assert me.id == account["id"] and me.name == account["name"]
    assert {x.id for x in lists} == set(store.lists)
    assert {x.id for x in segments} == set(store.segments)
    assert len(segments) > 10  # more than one page of 10
    assert one_list.profile_count == len(store.lists[one_list.id].members)
    assert one_list.opt_in_process in ("single_opt_in", "double_opt_in")
    assert one_segment.profile_count == len(store.segments[one_segment.id].members)
    assert plain.profile_count is None
    assert stats.api_calls == stats.pages + 4 - 0 and stats.retries == 0


# ---------------------------------------------------------------------------- members and pagination


@pytest.fixture(scope="module")
def paged_world(sandbox: RunningSandbox) -> dict[str, Any]:
    """An account with segments of exactly 0, 1, 100, 101, 200 and 201 members, and a list of 101."""
    with httpx2.Client(base_url=sandbox.base_url, timeout=60) as http:
        account = new_account(http)
        pool = make_profiles(http, account["id"], 201, "paged-")
        sizes = [0, 1, 100, 101, 200, 201]
        segments = {size: make_group(http, account["id"], "segments", pool[:size]) for size in sizes}
        the_list = make_group(http, account["id"], "lists", pool[50:151])
        return {"account": account, "pool": pool, "segments": segments, "list": the_list}


def _ids(members: list[Member]) -> list[str]:
    return [m.profile_id for m in members]


def test_member_pages_at_every_boundary(
    sandbox: RunningSandbox, http: httpx2.Client, paged_world: dict
) -> None:
    account = paged_world["account"]
    expected_pages = {0: 1, 1: 1, 100: 1, 101: 2, 200: 2, 201: 3}

    async def run() -> dict[int, list[Member]]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            return {
                size: [m async for m in client.iter_segment_members(segment_id)]
                for size, segment_id in paged_world["segments"].items()
            }

    got = asyncio.run(run())
    for size, segment_id in paged_world["segments"].items():
        truth = control_members(http, account["id"], "segments", segment_id)
        members = got[size]
        assert len(members) == size
        assert _ids(members) == [row["profile_id"] for row in truth]
        assert [m.email for m in members] == [row["email"] for row in truth]
        assert [m.joined_group_at for m in members] == sorted(m.joined_group_at for m in members)
        pages = request_log(http, account["id"], f"/api/segments/{segment_id}/profiles")
        assert len(pages) == expected_pages[size], size
        query = parse_qs(pages[0]["query"])
        assert query["page[size]"] == ["100"]
        assert query["fields[profile]"] == ["email,phone_number,external_id,joined_group_at"]
        assert query["sort"] == ["joined_group_at"]
        # every later page is the server's own next link, cursor and all
        assert all("page[cursor]" in parse_qs(p["query"]) for p in pages[1:])


def test_list_members(sandbox: RunningSandbox, http: httpx2.Client, paged_world: dict) -> None:
    account = paged_world["account"]
    members = collect(client_for(sandbox, account["private_api_key"]).iter_list_members(paged_world["list"]))
    truth = control_members(http, account["id"], "lists", paged_world["list"])
    assert _ids(members) == [row["profile_id"] for row in truth]
    assert len(members) == 101


def test_iter_members_many_equals_one_by_one(
    sandbox: RunningSandbox, http: httpx2.Client, paged_world: dict
) -> None:
    account = paged_world["account"]
    segments = paged_world["segments"]

    async def run() -> list[Any]:
        async with client_for(sandbox, account["private_api_key"], max_concurrency=3) as client:
            return [page async for page in client.iter_members_many(segments.values(), kind="segment")]

    pages = asyncio.run(run())
    for size, segment_id in segments.items():
        own = [p for p in pages if p.group_id == segment_id]
        assert [p.page_number for p in own] == list(range(1, len(own) + 1))
        assert [p.is_last for p in own] == [False] * (len(own) - 1) + [True]
        members = [m for p in own for m in p.members]
        truth = control_members(http, account["id"], "segments", segment_id)
        assert sorted(_ids(members)) == sorted(row["profile_id"] for row in truth), size
        assert all(p.kind == "segment" for p in own)

    lists = collect(
        client_for(sandbox, account["private_api_key"]).iter_members_many([paged_world["list"]], "list")
    )
    assert sum(len(p.members) for p in lists) == 101


def test_iter_members_many_stops_cleanly_when_the_consumer_stops(
    sandbox: RunningSandbox, paged_world: dict
) -> None:
    account = paged_world["account"]

    async def run() -> int:
        client = client_for(sandbox, account["private_api_key"], max_concurrency=4)
        async with client:
            iterator = client.iter_members_many(paged_world["segments"].values())
            first = await anext(iterator)
            await iterator.aclose()  # cancels the workers still fetching
            return len(first.members)

    assert asyncio.run(run()) >= 0


def test_incremental_extraction_by_joined_group_at(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = new_account(http)
    pool = make_profiles(http, account["id"], 8, "incr-")
    first_join = datetime.now(UTC) - timedelta(days=2)
    later_join = datetime.now(UTC) - timedelta(hours=1)
    groups = {}
    for kind in ("segments", "lists"):
        group_id = make_group(http, account["id"], kind, pool[:5], joined_at=first_join)
        response = http.post(
            f"/_sandbox/accounts/{account['id']}/{kind}/{group_id}/members",
            json={"add": pool[5:], "joined_at": later_join.isoformat()},
        )
        assert response.status_code == 200, response.text
        groups[kind] = group_id

    async def run() -> dict[str, Any]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            return {
                "all": [m async for m in client.iter_segment_members(groups["segments"])],
                "new": [
                    m async for m in client.iter_segment_members(groups["segments"], joined_after=first_join)
                ],
                "none": [
                    m async for m in client.iter_segment_members(groups["segments"], joined_after=later_join)
                ],
                "list_new": [
                    m async for m in client.iter_list_members(groups["lists"], joined_after=first_join)
                ],
                "many": [
                    page
                    async for page in client.iter_members_many(
                        [groups["segments"]], "segment", joined_after={groups["segments"]: first_join}
                    )
                ],
            }

    got = asyncio.run(run())
    assert len(got["all"]) == 8
    assert sorted(_ids(got["new"])) == sorted(pool[5:])
    assert all(m.joined_group_at > first_join for m in got["new"])
    assert got["none"] == []
    assert sorted(_ids(got["list_new"])) == sorted(pool[5:])
    assert sorted(m.profile_id for p in got["many"] for m in p.members) == sorted(pool[5:])
    log = request_log(http, account["id"], f"/api/segments/{groups['segments']}/profiles")
    assert parse_qs(log[1]["query"])["filter"] == [f"greater-than(joined_group_at,{first_join.isoformat()})"]


# ---------------------------------------------------------------------------- profiles and consent


def test_get_profiles_in_batches_of_100(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = new_account(http)
    ids = make_profiles(http, account["id"], 150, "batch-")
    unknown = "01" + "Z" * 24

    async def run() -> tuple[list[Any], list[Any]]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            profiles = await client.get_profiles([*reversed(ids), unknown])
            subscribed = await client.get_profiles(ids[:3], with_subscriptions=True)
            return profiles, subscribed

    profiles, subscribed = asyncio.run(run())
    assert [p.id for p in profiles] == list(reversed(ids))
    assert profiles[0].email == "batch-149@test.example"
    assert all(p.subscriptions is None for p in profiles)
    assert subscribed[0].email_marketing_consent == "NEVER_SUBSCRIBED"
    calls = request_log(http, account["id"], "/api/profiles")
    assert len(calls) == 3
    for call in calls[:2]:
        id_filter = parse_qs(call["query"])["filter"][0]
        assert id_filter.startswith("any(id,[") and id_filter.count('"') <= 2 * 100


def test_iter_profiles_with_filter(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = new_account(http)
    make_profiles(http, account["id"], 3, "find-")
    found = collect(
        client_for(sandbox, account["private_api_key"]).iter_profiles(
            filters.any_of("email", ["find-1@test.example", "nobody@test.example"])
        )
    )
    assert [p.email for p in found] == ["find-1@test.example"]


def test_bulk_subscribe_in_jobs_of_1000(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = new_account(http)
    list_id = make_group(http, account["id"], "lists", [], opt_in_process="single_opt_in")
    people = [SubscribeProfile(email=f"sub-{i}@test.example", email_consent=True) for i in range(1003)]
    people.append(
        SubscribeProfile(
            email="both@test.example", phone_number="+12025550147", email_consent=True, sms_consent=True
        )
    )
    consented = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    historical = [
        SubscribeProfile(email="old@test.example", email_consent=True, email_consented_at=consented)
    ]

    async def run() -> tuple[int, int]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            jobs = await client.bulk_subscribe(list_id, people, custom_source="Recart")
            more = await client.bulk_subscribe(list_id, historical, historical_import=True)
            with pytest.raises(ValueError, match="consent time"):
                await client.bulk_subscribe(list_id, people[:1], historical_import=True)
            return jobs, more

    assert asyncio.run(run()) == (2, 1)
    jobs = http.get(f"/_sandbox/accounts/{account['id']}/subscription-jobs").json()["data"]
    assert [(j["profile_count"], j["historical_import"]) for j in jobs] == [
        (1000, False),
        (4, False),
        (1, True),
    ]
    assert jobs[0]["custom_source"] == "Recart"
    members = control_members(http, account["id"], "lists", list_id)
    assert len(members) == 1005
    state = http.get(f"/_sandbox/accounts/{account['id']}/profiles/both@test.example").json()["data"]
    assert state["email_marketing"]["consent"] == "SUBSCRIBED"
    assert state["sms_marketing"]["consent"] == "SUBSCRIBED"
    old = http.get(f"/_sandbox/accounts/{account['id']}/profiles/old@test.example").json()["data"]
    assert old["email_marketing"]["consent_timestamp"].startswith("2024-05-01T12:00:00")
    assert http.get(f"/_sandbox/accounts/{account['id']}/confirmation-emails").json()["data"] == []


def test_bulk_unsubscribe_in_jobs_of_100(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = new_account(http)
    list_id = make_group(http, account["id"], "lists", [], opt_in_process="single_opt_in")
    emails = [f"unsub-{i}@test.example" for i in range(140)]

    async def run() -> int:
        async with client_for(sandbox, account["private_api_key"]) as client:
            await client.bulk_subscribe(
                list_id, [SubscribeProfile(email=e, email_consent=True) for e in emails]
            )
            await client.bulk_subscribe(
                list_id,
                [SubscribeProfile(phone_number="+12025550100", sms_consent=True, email="sms@test.example")],
            )
            return await client.bulk_unsubscribe(None, emails=emails, phone_numbers=["+12025550100"])

    assert asyncio.run(run()) == 2
    jobs = http.get(f"/_sandbox/accounts/{account['id']}/subscription-jobs").json()["data"]
    assert [j["profile_count"] for j in jobs if j["kind"] == "unsubscribe"] == [100, 41]
    state = http.get(f"/_sandbox/accounts/{account['id']}/profiles/unsub-7@test.example").json()["data"]
    assert state["email_marketing"]["consent"] == "UNSUBSCRIBED"
    sms = http.get(f"/_sandbox/accounts/{account['id']}/profiles/sms@test.example").json()["data"]
    assert sms["sms_marketing"]["consent"] == "UNSUBSCRIBED"


def test_bulk_import_job(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = new_account(http)
    list_id = make_group(http, account["id"], "lists", [])

    async def run() -> tuple[Any, Any]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            job = await client.create_bulk_import(
                [{"email": f"imp-{i}@test.example", "first_name": "Imp"} for i in range(3)],
                list_ids=[list_id],
            )
            return job, await client.get_bulk_import(job.id)

    job, again = asyncio.run(run())
    assert job.total_count == 3 and again.id == job.id
    assert again.is_done and again.completed_count == 3
    assert len(control_members(http, account["id"], "lists", list_id)) == 3


# ------------------------------------------------------------------------ metrics, events, flows, campaigns


def test_metrics_and_events(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = demo_account(http)
    store = sandbox.sandbox.store.accounts[account["id"]]
    until = datetime.now(UTC) + timedelta(days=1)
    since = until - timedelta(days=90)

    async def run() -> tuple[Any, ...]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            metrics = [m async for m in client.iter_metrics()]
            received = next(m for m in metrics if m.name == "Received Email")
            big = [e async for e in client.iter_events(received.id, since, until)]
            small = [e async for e in client.iter_events(received.id, since, until, page_size=333)]
            return metrics, received, big, small

    metrics, received, big, small = asyncio.run(run())
    assert {m.id for m in metrics} == set(store.metrics)
    assert received.integration_name == "Klaviyo"
    assert big and [e.id for e in big] == [e.id for e in small]
    assert all(e.metric_id == received.id and since <= e.datetime < until for e in big)
    assert [e.datetime for e in big] == sorted(e.datetime for e in big)
    flow_events = [e for e in big if e.is_flow_event]
    campaign_events = [e for e in big if not e.is_flow_event]
    assert flow_events and campaign_events
    assert all(e.flow_id in store.flows and e.message_id for e in flow_events)
    assert all(e.message_id in store.campaigns for e in campaign_events)


def test_flows_and_campaigns(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = demo_account(http)
    store = sandbox.sandbox.store.accounts[account["id"]]

    async def run() -> tuple[Any, ...]:
        async with client_for(sandbox, account["private_api_key"]) as client:
            flows = [f async for f in client.iter_flows()]
            actions = {f.id: [a async for a in client.iter_flow_actions(f.id)] for f in flows}
            sending = next(a for acts in actions.values() for a in acts if a.action_type == "send-email")
            messages = [m async for m in client.iter_flow_messages(sending.id)]
            message = await client.get_flow_message(messages[0].id)
            campaigns = [c async for c in client.iter_campaigns("email")]
            sms_campaigns = [c async for c in client.iter_campaigns("sms")]
            campaign_messages = await client.get_campaign_messages(campaigns[0].id)
            return flows, actions, sending, messages, message, campaigns, sms_campaigns, campaign_messages

    flows, actions, sending, messages, message, campaigns, sms_campaigns, campaign_messages = asyncio.run(
        run()
    )
    assert {f.id for f in flows} == set(store.flows)
    assert all(a.flow_id == f_id for f_id, acts in actions.items() for a in acts)
    assert message == messages[0] and message.flow_action_id == sending.id
    assert message.channel == "Email" and message.subject
    assert {c.id for c in campaigns}.isdisjoint({c.id for c in sms_campaigns})
    assert {c.id for c in campaigns} | {c.id for c in sms_campaigns} <= set(store.campaigns)
    assert campaign_messages and campaign_messages[0].campaign_id == campaigns[0].id


def test_webhooks_lifecycle(make_sandbox: Callable[..., RunningSandbox]) -> None:
    # x20: the Webhooks API is XS (1/s, 15/min); the client learns the scaled limits from headers.
    running = make_sandbox(seed="empty", rate_limits="x20")
    with httpx2.Client(base_url=running.base_url, timeout=30) as http:
        kdp = new_account(http, advanced_kdp=True)
        plain = new_account(http)

    async def run() -> tuple[Any, ...]:
        async with client_for(running, kdp["private_api_key"]) as client:
            topics = await client.list_webhook_topics()
            ids = [t.id for t in topics]
            created = await client.create_webhook(
                "Recart flow triggers",
                "http://127.0.0.1:9/webhooks/klaviyo",
                "s" * 32,
                ["event:klaviyo.received_email", "event:klaviyo.clicked_email"],
                description="email events",
            )
            listed = await client.list_webhooks()
            updated = await client.update_webhook(
                created.id, name="Renamed", enabled=False, topics=["event:klaviyo.clicked_email"]
            )
            await client.delete_webhook(created.id)
            after = await client.list_webhooks()
            with pytest.raises(NotFoundError):
                await client.delete_webhook(created.id)
            with pytest.raises(TypeError):
                await client.update_webhook(created.id, colour="red")
        async with client_for(running, plain["private_api_key"]) as other:
            with pytest.raises(PermissionDeniedError) as denied:
                await other.list_webhooks()
        return ids, created, listed, updated, after, denied.value, client.stats

    ids, created, listed, updated, after, denied, stats = asyncio.run(run())
    assert "event:klaviyo.received_email" in ids
    assert created.name == "Recart flow triggers" and created.enabled
    assert created.endpoint_url and "*****" in created.endpoint_url  # masked, as Klaviyo shows it
    assert set(created.topics or ()) == {"event:klaviyo.received_email", "event:klaviyo.clicked_email"}
    assert [w.id for w in listed] == [created.id]
    assert (
        updated.name == "Renamed"
        and not updated.enabled
        and updated.topics == ("event:klaviyo.clicked_email",)
    )
    assert after == []
    assert denied.status == 403 and denied.code == "permission_denied"
    assert stats.throttled == 0


# ---------------------------------------------------------------------------- errors by meaning


def test_not_found_names_the_endpoint_and_klaviyos_error(
    sandbox: RunningSandbox, http: httpx2.Client
) -> None:
    account = demo_account(http)
    client = client_for(sandbox, account["private_api_key"])
    with pytest.raises(NotFoundError) as caught:
        asyncio.run(client.get_segment("AAAAAA"))
    error = caught.value
    assert error.status == 404 and error.code == "not_found" and error.error_id
    assert error.endpoint == "GET /api/segments/AAAAAA"
    assert "GET /api/segments/AAAAAA" in str(error) and "AAAAAA" in (error.detail or "")
    assert client.stats.api_calls == 1 and client.stats.retries == 0  # never retried


def test_bad_filter_is_an_invalid_request(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = demo_account(http)
    client = client_for(sandbox, account["private_api_key"])
    with pytest.raises(InvalidRequestError) as caught:
        collect(client.iter_profiles(filters.contains("email", "x")))  # email allows any/equals only
    assert caught.value.status == 400 and caught.value.code == "invalid"
    assert "filter" in (caught.value.detail or "")
    assert caught.value.endpoint == "GET /api/profiles"
    assert client.stats.retries == 0


def test_bad_key_is_an_authentication_error(sandbox: RunningSandbox) -> None:
    client = client_for(sandbox, "pk_not_a_real_key")
    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(client.get_account())
    assert caught.value.status == 401 and caught.value.code in ("authentication_failed", "not_authenticated")
    assert client.stats.api_calls == 1


class RotatingCredentials:
    """A bad credential first; after the 401 it 'refreshes' to a good one (counts refreshes)."""

    def __init__(self, good_key: str, refresh_result: bool = True) -> None:
        self.limiter_key = "account:rotating"
        self.current = "Klaviyo-API-Key pk_expired"
        self.good = f"Klaviyo-API-Key {good_key}"
        self.refresh_result = refresh_result
        self.refreshes = 0

    async def authorization(self) -> str:
        return self.current

    async def refresh_after_unauthorized(self) -> bool:
        self.refreshes += 1
        if self.refresh_result:
            self.current = self.good
        return self.refresh_result


def test_a_401_refreshes_once_then_retries(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = demo_account(http)
    creds = RotatingCredentials(account["private_api_key"])
    client = KlaviyoClient(sandbox.base_url, creds, limiter=LimiterRegistry())
    assert asyncio.run(client.get_account()).id == account["id"]
    assert creds.refreshes == 1 and client.stats.api_calls == 2

    stuck = RotatingCredentials(account["private_api_key"], refresh_result=False)
    client = KlaviyoClient(sandbox.base_url, stuck, limiter=LimiterRegistry())
    with pytest.raises(AuthenticationError):
        asyncio.run(client.get_account())
    assert stuck.refreshes == 1 and client.stats.api_calls == 1


def test_token_without_a_scope_is_permission_denied(sandbox: RunningSandbox, http: httpx2.Client) -> None:
    account = demo_account(http)
    token, client_id = oauth_token(sandbox.base_url, account["id"], ["accounts:read"])
    creds = StaticBearerCredentials(token, limiter_key=f"oauth:{client_id}:recart-1")

    async def run() -> tuple[Any, PermissionDeniedError]:
        async with KlaviyoClient(sandbox.base_url, creds, limiter=LimiterRegistry()) as client:
            me = await client.get_account()
            with pytest.raises(PermissionDeniedError) as denied:
                await client.get_segment("AAAAAA")
            return me, denied.value

    me, denied = asyncio.run(run())
    assert me.id == account["id"]
    assert denied.status == 403 and denied.code == "permission_denied"
    assert "segments:read" in (denied.detail or "")


class InactiveCredentials:
    limiter_key = "oauth:x:inactive"

    async def authorization(self) -> str:
        raise ConnectionInactive("recart-9", "switched off by the shop")

    async def refresh_after_unauthorized(self) -> bool:  # pragma: no cover - never reached
        return False


def test_connection_state_errors_come_before_any_http_call() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"no request expected, got {request.method} {request.url}")

    client = KlaviyoClient(
        "https://a.klaviyo.test",
        InactiveCredentials(),
        transport=httpx2.MockTransport(handler),
        limiter=LimiterRegistry(),
    )
    with pytest.raises(ConnectionInactive):
        asyncio.run(client.get_account())
    assert client.stats.api_calls == 0


def _mock_client(routes: dict[str, httpx2.Response]) -> KlaviyoClient:
    """A client whose transport answers exactly these paths and raises on anything else."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path not in routes:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        assert request.headers["revision"] and request.headers["accept"] == "application/vnd.api+json"
        return routes[request.url.path]

    return KlaviyoClient(
        "https://a.klaviyo.test",
        PrivateKeyCredentials("pk_mock"),
        transport=httpx2.MockTransport(handler),
        limiter=LimiterRegistry(),
        retry=RetryPolicy(max_attempts=1),
    )


def test_malformed_responses_name_the_endpoint() -> None:
    # Bodies the sandbox never produces: 2xx that is not JSON:API, a resource missing a member,
    # HTML, and a next link to another host.
    client = _mock_client(
        {
            "/api/segments": httpx2.Response(200, json={"segments": []}),
            "/api/segments/abc123": httpx2.Response(200, json={"data": {"type": "segment", "id": "abc123"}}),
            "/api/lists": httpx2.Response(200, text="<html>maintenance</html>"),
            "/api/metrics": httpx2.Response(
                200, json={"data": [], "links": {"next": "https://evil.example/api/metrics?page[cursor]=x"}}
            ),
        }
    )
    with pytest.raises(MalformedResponseError) as no_data:
        collect(client.iter_segments())
    assert no_data.value.endpoint == "GET /api/segments" and "data" in str(no_data.value)
    with pytest.raises(MalformedResponseError) as no_name:
        asyncio.run(client.get_segment("abc123"))
    assert no_name.value.endpoint == "GET /api/segments/abc123" and "'name'" in str(no_name.value)
    with pytest.raises(MalformedResponseError, match="not JSON"):
        collect(client.iter_lists())
    with pytest.raises(MalformedResponseError, match="points elsewhere"):
        collect(client.iter_metrics())
