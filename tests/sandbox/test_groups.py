"""Lists and segments: catalogs, counts, membership pages with joined_group_at, membership writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from klaviyo_sandbox.testing import api_client


@pytest.fixture(scope="module")
def api(sandbox):
    client = api_client(sandbox)
    yield client
    client.close()


def _all(api, path, **params):
    return [item for page in api.iter_pages(path, params=params or None) for item in page["data"]]


def test_segment_catalog_pages_ten_at_a_time_and_is_complete(api):
    first = api.get("/api/segments").json()
    assert len(first["data"]) <= 10
    segments = _all(api, "/api/segments")
    assert len(segments) >= 8
    assert len({s["id"] for s in segments}) == len(segments)
    assert all(s["type"] == "segment" and "is_active" in s["attributes"] for s in segments)


def test_lists_carry_opt_in_process(api):
    lists = _all(api, "/api/lists")
    assert {"double_opt_in", "single_opt_in"} <= {item["attributes"]["opt_in_process"] for item in lists}


def test_profile_count_matches_membership_pages(api):
    segments = _all(api, "/api/segments")
    segment = segments[0]["id"]
    counted = api.get(f"/api/segments/{segment}", params={"additional-fields[segment]": "profile_count"})
    count = counted.json()["data"]["attributes"]["profile_count"]
    members = _all(api, f"/api/segments/{segment}/profiles", **{"page[size]": "100"})
    assert count == len(members) == len({m["id"] for m in members})
    plain = api.get(f"/api/segments/{segment}").json()["data"]["attributes"]
    assert "profile_count" not in plain


def test_members_come_ordered_by_joined_group_at_and_descending_on_request(api):
    segment = max(_all(api, "/api/segments"), key=lambda s: s["attributes"]["name"])["id"]
    ascending = _all(api, f"/api/segments/{segment}/profiles", **{"page[size]": "100"})
    times = [m["attributes"]["joined_group_at"] for m in ascending]
    assert times == sorted(times)
    descending = _all(
        api, f"/api/segments/{segment}/profiles", **{"page[size]": "100", "sort": "-joined_group_at"}
    )
    assert [m["id"] for m in descending] == [m["id"] for m in ascending][::-1]


def test_incremental_read_by_joined_group_at(api):
    segment = _all(api, "/api/segments")[1]["id"]
    everyone = _all(api, f"/api/segments/{segment}/profiles", **{"page[size]": "100"})
    middle = sorted(m["attributes"]["joined_group_at"] for m in everyone)[len(everyone) // 2]
    cutoff = datetime.fromisoformat(middle).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    later = _all(
        api,
        f"/api/segments/{segment}/profiles",
        **{"page[size]": "100", "filter": f"greater-than(joined_group_at,{cutoff})"},
    )
    expected = [
        m
        for m in everyone
        if datetime.fromisoformat(m["attributes"]["joined_group_at"]) > datetime.fromisoformat(cutoff)
    ]
    assert {m["id"] for m in later} == {m["id"] for m in expected}
    assert 0 < len(later) < len(everyone)


def test_segment_profile_id_filter_and_list_rejects_it(api):
    segment = _all(api, "/api/segments")[0]["id"]
    member = api.get(f"/api/segments/{segment}/profiles").json()["data"][0]["id"]
    found = api.get(f"/api/segments/{segment}/profiles", params={"filter": f'equals(profile_id,"{member}")'})
    assert [m["id"] for m in found.json()["data"]] == [member]
    list_id = _all(api, "/api/lists")[0]["id"]
    rejected = api.get(f"/api/lists/{list_id}/profiles", params={"filter": f'equals(profile_id,"{member}")'})
    assert rejected.status_code == 400


def test_sparse_member_fields_keep_joined_group_at(api):
    segment = _all(api, "/api/segments")[0]["id"]
    page = api.get(
        f"/api/segments/{segment}/profiles",
        params={"fields[profile]": "email,phone_number,external_id,joined_group_at"},
    ).json()
    assert set(page["data"][0]["attributes"]) <= {"email", "phone_number", "external_id", "joined_group_at"}
    assert "joined_group_at" in page["data"][0]["attributes"]


def test_member_ids_relationship_matches_members(api):
    segment = _all(api, "/api/segments")[2]["id"]
    ids = [
        i["id"] for i in _all(api, f"/api/segments/{segment}/relationships/profiles", **{"page[size]": "100"})
    ]
    members = [m["id"] for m in _all(api, f"/api/segments/{segment}/profiles", **{"page[size]": "100"})]
    assert ids == members


def test_membership_changes_between_pages_never_skip_or_repeat(sandbox, control):
    api = api_client(sandbox)
    ctl = control(sandbox)
    account = ctl.get("/_sandbox/accounts").json()["data"][0]["id"]
    people = [p["id"] for p in api.get("/api/profiles", params={"page[size]": "30"}).json()["data"]]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    segment = ctl.post(
        f"/_sandbox/accounts/{account}/segments",
        json={"name": "Paging test", "members": people[:20], "joined_at": base.isoformat()},
    ).json()
    first = api.get(f"/api/segments/{segment['data']['id']}/profiles", params={"page[size]": "10"}).json()
    # someone from the first page leaves and ten newcomers join later, before page two is read
    ctl.post(
        f"/_sandbox/accounts/{account}/segments/{segment['data']['id']}/members",
        json={
            "remove": [first["data"][0]["id"]],
            "add": people[20:],
            "joined_at": (base + timedelta(days=1)).isoformat(),
        },
    )
    rest = [m["id"] for page in api.iter_pages(first["links"]["next"]) for m in page["data"]]
    seen = [m["id"] for m in first["data"]] + rest
    # 10 served + the 10 originals not yet served + the 10 newcomers; nothing twice
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == set(people)


def test_add_and_remove_profiles_to_list_changes_membership_not_consent(make_sandbox, control):
    running = make_sandbox(rate_limits="off")
    api = api_client(running)
    ctl = control(running)
    account = ctl.get("/_sandbox/accounts").json()["data"][0]["id"]
    created = api.post(
        "/api/lists", json={"data": {"type": "list", "attributes": {"name": "Relationship test"}}}
    )
    assert created.status_code == 201
    list_id = created.json()["data"]["id"]
    people = [p["id"] for p in api.get("/api/profiles", params={"page[size]": "5"}).json()["data"]]
    before = [
        ctl.get(f"/_sandbox/accounts/{account}/profiles/{p}").json()["data"]["email_marketing"]
        for p in people
    ]
    body = {"data": [{"type": "profile", "id": p} for p in people]}
    response = api.post(f"/api/lists/{list_id}/relationships/profiles", json=body)
    assert response.status_code == 204 and response.content == b""
    members = _all(api, f"/api/lists/{list_id}/profiles")
    assert {m["id"] for m in members} == set(people)
    after = [
        ctl.get(f"/_sandbox/accounts/{account}/profiles/{p}").json()["data"]["email_marketing"]
        for p in people
    ]
    assert after == before
    api.delete(f"/api/lists/{list_id}/relationships/profiles", json={"data": body["data"][:2]})
    assert {m["id"] for m in _all(api, f"/api/lists/{list_id}/profiles")} == set(people[2:])
    too_many = {"data": [{"type": "profile", "id": people[0]}] * 1001}
    assert api.post(f"/api/lists/{list_id}/relationships/profiles", json=too_many).status_code == 400


def test_another_accounts_segment_is_not_found(sandbox):
    first, second = api_client(sandbox, 0), api_client(sandbox, 1)
    segment = first.get("/api/segments").json()["data"][0]["id"]
    assert second.get(f"/api/segments/{segment}").status_code == 404
    assert second.get(f"/api/segments/{segment}/profiles").status_code == 404
