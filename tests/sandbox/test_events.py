"""Events over real HTTP: filters, sort, cursor pages, includes, attribution, and ``POST /api/events``.

Every body passes ``KlaviyoTestClient``, which validates it against the spec's closed schema.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from klaviyo_sandbox.testing import api_client


@pytest.fixture(scope="module")
def api(sandbox):
    client = api_client(sandbox, 0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def account(sandbox):
    return next(iter(sandbox.sandbox.store.accounts.values()))


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["errors"][0]


def _metric_id(account, name: str) -> str:
    return next(m.id for m in account.metrics.values() if m.name == name)


def _zulu(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _collect(api, **params: str) -> tuple[list[dict], int]:
    pages = list(api.iter_pages("/api/events", params=params))
    return [e for page in pages for e in page["data"]], len(pages)


def _in_window(
    metric_id: str, start: datetime, end: datetime, lower: str = "greater-or-equal", upper: str = "less-than"
) -> str:
    """A filter for one metric's events inside a datetime window."""
    return f"equals(metric_id,'{metric_id}'),{lower}(datetime,{_zulu(start)}),{upper}(datetime,{_zulu(end)})"


def _window(account, days: int) -> tuple[datetime, datetime]:
    latest = max(e.datetime for e in account.events.values())
    end = latest.replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=days), end


# ---------------------------------------------------------------------------- reads


def test_default_page_is_200_oldest_first(api, account):
    body = api.get("/api/events").json()
    assert len(body["data"]) == 200 and body["links"]["next"]
    times = [e["attributes"]["datetime"] for e in body["data"]]
    assert times == sorted(times)
    oldest = min(account.events.values(), key=lambda e: (e.datetime, e.id))
    assert body["data"][0]["id"] == oldest.id
    event = body["data"][0]
    assert event["attributes"]["timestamp"] == int(
        datetime.fromisoformat(event["attributes"]["datetime"]).timestamp()
    )
    assert event["relationships"]["metric"]["data"]["type"] == "metric"
    assert event["relationships"]["profile"]["data"]["type"] == "profile"


@pytest.mark.parametrize("size", ["0", "1001", "many"])
def test_page_size_bounds(api, size):
    assert _error(api.get("/api/events", params={"page[size]": size}), 400)["source"] == {
        "parameter": "page[size]"
    }


def test_page_size_up_to_1000(api):
    assert len(api.get("/api/events", params={"page[size]": "1000"}).json()["data"]) == 1000


def test_metric_and_datetime_window_pages_completely(api, account):
    received = _metric_id(account, "Received Email")
    start, end = _window(account, 3)
    expected = sorted(
        (e for e in account.events.values() if e.metric_id == received and start <= e.datetime < end),
        key=lambda e: (e.datetime, e.id),
    )
    assert len(expected) > 150
    query = (
        f"and(equals(metric_id,'{received}'),"
        f"greater-or-equal(datetime,{_zulu(start)}),less-than(datetime,{_zulu(end)}))"
    )
    events, pages = _collect(api, filter=query, **{"page[size]": "50"})
    assert pages >= 4
    assert [e["id"] for e in events] == [e.id for e in expected]
    assert all(e["relationships"]["metric"]["data"]["id"] == received for e in events)


def test_descending_sort_is_the_reverse_and_pages_agree(api, account):
    opened = _metric_id(account, "Opened Email")
    start, end = _window(account, 2)
    query = _in_window(opened, start, end, "greater-than", "less-or-equal")
    ascending, _ = _collect(api, filter=query, **{"page[size]": "40"})
    descending, _ = _collect(api, filter=query, sort="-datetime", **{"page[size]": "40"})
    assert len(ascending) > 40
    assert [e["id"] for e in descending] == [e["id"] for e in ascending][::-1]
    by_timestamp, _ = _collect(api, filter=query, sort="-timestamp", **{"page[size]": "40"})
    assert [e["id"] for e in by_timestamp] == [e["id"] for e in descending]


def test_timestamp_filter_matches_datetime_filter(api, account):
    start, end = _window(account, 1)
    by_datetime, _ = _collect(
        api,
        filter=f"greater-or-equal(datetime,{_zulu(start)}),less-than(datetime,{_zulu(end)})",
        **{"page[size]": "500"},
    )
    by_timestamp, _ = _collect(
        api,
        filter=f"greater-or-equal(timestamp,{int(start.timestamp())}),less-than(timestamp,{int(end.timestamp())})",
        **{"page[size]": "500"},
    )
    assert by_datetime and [e["id"] for e in by_datetime] == [e["id"] for e in by_timestamp]
    assert all(start <= datetime.fromisoformat(e["attributes"]["datetime"]) < end for e in by_datetime)


def test_profile_filter_and_metric_list(api, account):
    counts: dict[str, int] = {}
    for event in account.events.values():
        counts[event.profile_id] = counts.get(event.profile_id, 0) + 1
    busy = max(counts, key=lambda pid: counts[pid])
    events, _ = _collect(api, filter=f"equals(profile_id,'{busy}'),has(profile),has(metric)")
    assert len(events) == counts[busy]
    assert {e["relationships"]["profile"]["data"]["id"] for e in events} == {busy}
    opened, clicked = _metric_id(account, "Opened Email"), _metric_id(account, "Clicked Email")
    both, _ = _collect(api, filter=f'equals(profile_id,"{busy}"),equals(metric_id,["{opened}","{clicked}"])')
    expected = {
        e.id for e in account.events.values() if e.profile_id == busy and e.metric_id in (opened, clicked)
    }
    assert {e["id"] for e in both} == expected


@pytest.mark.parametrize(
    "bad",
    [
        "equals(uuid,'x')",
        "contains(metric_id,'abc')",
        "greater-than(datetime,'yesterday')",
        "equals(datetime,2024-01-01T00:00:00Z)",
        "any(profile_id,['a','b'])",
    ],
)
def test_disallowed_filters_are_400(api, bad):
    assert _error(api.get("/api/events", params={"filter": bad}), 400)["source"] == {"parameter": "filter"}


def test_include_metric_and_profile(api, account):
    body = api.get("/api/events", params={"include": "metric,profile", "page[size]": "100"}).json()
    included = {(i["type"], i["id"]): i for i in body["included"]}
    assert len(included) == len(body["included"])  # each related resource once
    wanted = {("metric", e["relationships"]["metric"]["data"]["id"]) for e in body["data"]}
    wanted |= {("profile", e["relationships"]["profile"]["data"]["id"]) for e in body["data"]}
    assert set(included) == wanted
    profile = next(i for key, i in included.items() if key[0] == "profile")
    assert profile["attributes"]["email"] == account.profiles[profile["id"]].email
    metric = next(i for key, i in included.items() if key[0] == "metric")
    assert metric["attributes"]["name"] == account.metrics[metric["id"]].name
    assert "included" not in api.get("/api/events").json()


def test_include_with_sparse_fieldsets(api):
    params = {
        "include": "profile,attributions",
        "fields[profile]": "email",
        "fields[event]": "datetime",
        "page[size]": "20",
    }
    body = api.get("/api/events", params=params).json()
    assert all(set(e["attributes"]) == {"datetime"} and "relationships" not in e for e in body["data"])
    profiles = [i for i in body["included"] if i["type"] == "profile"]
    assert profiles and all(set(p["attributes"]) <= {"email"} for p in profiles)
    assert {i["type"] for i in body["included"]} == {"profile"}


def test_get_event_and_its_related_resources(api, account):
    event = next(iter(account.events.values()))
    body = api.get(f"/api/events/{event.id}", params={"include": "metric,profile,attributions"}).json()
    data = body["data"]
    assert data["attributes"]["event_properties"] == event.event_properties
    assert data["attributes"]["uuid"] == event.uuid
    assert data["relationships"]["attributions"]["data"] == []
    assert {(i["type"], i["id"]) for i in body["included"]} == {
        ("metric", event.metric_id),
        ("profile", event.profile_id),
    }
    assert api.get(f"/api/events/{event.id}/metric").json()["data"]["id"] == event.metric_id
    assert api.get(f"/api/events/{event.id}/profile").json()["data"]["id"] == event.profile_id
    assert api.get(f"/api/events/{event.id}/relationships/metric").json()["data"] == {
        "type": "metric",
        "id": event.metric_id,
    }
    assert api.get(f"/api/events/{event.id}/relationships/profile").json()["data"] == {
        "type": "profile",
        "id": event.profile_id,
    }
    assert _error(api.get("/api/events/NOPE0000000"), 404)["detail"] == "Event with id NOPE0000000 not found."
    assert _error(api.get("/api/events/NOPE0000000/metric"), 404)


def test_another_accounts_key_cannot_read_the_event(sandbox, account):
    event_id = next(iter(account.events))
    other = api_client(sandbox, 1)
    try:
        assert _error(other.get(f"/api/events/{event_id}"), 404)
        assert event_id not in {e["id"] for e in other.get("/api/events").json()["data"]}
    finally:
        other.close()


def test_flow_and_campaign_attribution_in_email_events(api, account):
    """``$flow`` present: a flow send (``$message`` is one of that flow's messages); absent: a campaign."""
    received = _metric_id(account, "Received Email")
    start, end = _window(account, 7)
    query = _in_window(received, start, end)
    events, _ = _collect(api, filter=query, **{"page[size]": "1000"})
    flow_sends = [e for e in events if "$flow" in e["attributes"]["event_properties"]]
    campaign_sends = [e for e in events if "$flow" not in e["attributes"]["event_properties"]]
    assert flow_sends and campaign_sends
    checked_flows: set[tuple[str, str]] = set()
    for event in flow_sends:
        props = event["attributes"]["event_properties"]
        checked_flows.add((props["$flow"], props["$message"]))
    for flow_id, message_id in sorted(checked_flows):
        action = api.get(f"/api/flow-messages/{message_id}/flow-action").json()["data"]
        assert api.get(f"/api/flow-actions/{action['id']}/flow").json()["data"]["id"] == flow_id
    for campaign_id in sorted({e["attributes"]["event_properties"]["$message"] for e in campaign_sends}):
        campaign = api.get(f"/api/campaigns/{campaign_id}").json()["data"]
        assert campaign["attributes"]["status"] == "Sent"


# ---------------------------------------------------------------------------- create


def _event_body(metric: str, profile: dict, **attributes: object) -> dict:
    return {
        "data": {
            "type": "event",
            "attributes": {
                "properties": attributes.pop("properties", {"Item": "Tent"}),
                "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                "profile": {"data": {"type": "profile", **profile}},
                **attributes,
            },
        }
    }


@pytest.fixture
def fresh(make_sandbox):
    running = make_sandbox(seed="empty", rate_limits="off")
    client = api_client(running, 0)
    yield running, client
    client.close()


def test_create_event_makes_metric_profile_and_event(fresh):
    _running, api = fresh
    body = _event_body(
        "Viewed Product",
        {"attributes": {"email": "Ada@Example.com", "first_name": "Ada"}},
        value=19.5,
        unique_id="view-1",
        time="2026-03-01T10:00:00+00:00",
    )
    response = api.post("/api/events", json=body)
    assert response.status_code == 202 and response.content == b""
    metrics = api.get("/api/metrics").json()["data"]
    metric = next(m for m in metrics if m["attributes"]["name"] == "Viewed Product")
    assert metric["attributes"]["integration"]["key"] == "api"
    events = api.get(
        "/api/events", params={"filter": f"equals(metric_id,'{metric['id']}')", "include": "profile"}
    ).json()
    assert len(events["data"]) == 1
    event = events["data"][0]
    assert event["attributes"]["datetime"] == "2026-03-01T10:00:00+00:00"
    assert event["attributes"]["timestamp"] == int(datetime(2026, 3, 1, 10, tzinfo=UTC).timestamp())
    assert event["attributes"]["event_properties"] == {"Item": "Tent", "$event_id": "view-1", "$value": 19.5}
    profile = events["included"][0]
    assert (
        profile["attributes"]["email"] == "Ada@Example.com" and profile["attributes"]["first_name"] == "Ada"
    )
    assert profile["attributes"]["last_event_date"] == "2026-03-01T10:00:00+00:00"


def test_create_event_dedupes_on_profile_metric_and_unique_id(fresh):
    _running, api = fresh
    who = {"attributes": {"email": "bob@example.com"}}
    for unique_id in ("a", "a", "b"):
        assert (
            api.post(
                "/api/events", json=_event_body("Started Checkout", who, unique_id=unique_id)
            ).status_code
            == 202
        )
    other = {"attributes": {"phone_number": "+15005550006"}}
    assert (
        api.post("/api/events", json=_event_body("Started Checkout", other, unique_id="a")).status_code == 202
    )
    same_second = _event_body("Placed Order", who, time="2026-03-01T10:00:00Z")
    assert api.post("/api/events", json=same_second).status_code == 202
    assert api.post("/api/events", json=same_second).status_code == 202  # default unique id: the time
    events = api.get("/api/events", params={"include": "profile,metric"}).json()
    by_metric: dict[str, list[dict]] = {}
    metrics = {i["id"]: i["attributes"]["name"] for i in events["included"] if i["type"] == "metric"}
    for event in events["data"]:
        by_metric.setdefault(metrics[event["relationships"]["metric"]["data"]["id"]], []).append(event)
    assert sorted(
        e["attributes"]["event_properties"]["$event_id"] for e in by_metric["Started Checkout"]
    ) == ["a", "a", "b"]
    assert len(by_metric["Placed Order"]) == 1
    profiles = {i["id"] for i in events["included"] if i["type"] == "profile"}
    assert len(profiles) == 2


def test_create_event_resolves_existing_profiles(fresh):
    _running, api = fresh
    created = api.post(
        "/api/profiles",
        json={
            "data": {"type": "profile", "attributes": {"email": "cy@example.com", "external_id": "cust-9"}}
        },
    )
    assert created.status_code == 201
    profile_id = created.json()["data"]["id"]
    for profile in (
        {"attributes": {"email": "CY@example.com"}},
        {"attributes": {"external_id": "cust-9"}},
        {"id": profile_id, "attributes": {}},
    ):
        body = _event_body("Clicked Email", profile, properties={}, time="2026-02-02T12:00:00+00:00")
        assert api.post("/api/events", json=body).status_code == 202
    events = api.get("/api/events", params={"filter": f"equals(profile_id,'{profile_id}')"}).json()["data"]
    assert len(events) == 1  # same profile, metric and second: deduplicated to one
    assert len(api.get("/api/profiles").json()["data"]) == 1


def test_create_event_validation(fresh):
    _running, api = fresh
    no_identifier = _event_body("Viewed Product", {"attributes": {"first_name": "Nobody"}})
    assert _error(api.post("/api/events", json=no_identifier), 400)["source"]["pointer"].startswith(
        "/data/attributes/profile"
    )
    bad_phone = _event_body("Viewed Product", {"attributes": {"phone_number": "555-0100"}})
    assert _error(api.post("/api/events", json=bad_phone), 400)["source"]["pointer"].endswith("/phone_number")
    unknown = _event_body("Viewed Product", {"id": "01ZZZZZZZZZZZZZZZZZZZZZZZZ", "attributes": {}})
    assert _error(api.post("/api/events", json=unknown), 400)
    no_metric = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {},
                "profile": {"data": {"type": "profile", "attributes": {"email": "x@example.com"}}},
            },
        }
    }
    assert _error(api.post("/api/events", json=no_metric), 400)
    bad_time = _event_body("Viewed Product", {"attributes": {"email": "x@example.com"}}, time="not a time")
    assert _error(api.post("/api/events", json=bad_time), 400)
    assert api.get("/api/events").json()["data"] == []


def test_created_events_join_the_ordered_index(make_sandbox):
    running = make_sandbox(seed="demo", rate_limits="off")
    api = api_client(running, 0)
    try:
        account = next(iter(running.sandbox.store.accounts.values()))
        before = api.get("/api/events", params={"sort": "-datetime", "page[size]": "1"}).json()["data"][0]
        latest = datetime.fromisoformat(before["attributes"]["datetime"])
        profile = next(iter(account.profiles.values()))
        body = _event_body(
            "Opened Email",
            {"id": profile.id, "attributes": {}},
            time=(latest + timedelta(minutes=1)).isoformat(),
            properties={"$message": "X"},
        )
        assert api.post("/api/events", json=body).status_code == 202
        newest = api.get("/api/events", params={"sort": "-datetime", "page[size]": "1"}).json()["data"][0]
        assert newest["attributes"]["event_properties"]["$message"] == "X"
        opened = _metric_id(account, "Opened Email")
        mine = api.get(
            "/api/events",
            params={
                "filter": f"equals(profile_id,'{profile.id}'),equals(metric_id,'{opened}')",
                "sort": "-timestamp",
            },
        ).json()["data"]
        assert mine[0]["id"] == newest["id"]
        assert len(account.metrics) == len({m.name for m in account.metrics.values()})  # no duplicate metric
    finally:
        api.close()
