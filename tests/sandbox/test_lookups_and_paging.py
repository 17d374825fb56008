"""Identifier lookups and filtered membership pages: the same answers as a full scan, without one.

A benchmark pages large segments incrementally (``joined_group_at`` windows) and looks profiles up
by email or id, so those paths must cost O(page) or O(values), not O(members) per request. The
"no scan" tests count filter evaluations inside the (in-process) server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from klaviyo_sandbox import filters
from klaviyo_sandbox.store import Segment
from klaviyo_sandbox.testing import api_client


@pytest.fixture(scope="module")
def api(sandbox):
    client = api_client(sandbox)
    yield client
    client.close()


@pytest.fixture
def world(sandbox):
    account = next(iter(sandbox.sandbox.store.accounts.values()))
    segment = max(account.segments.values(), key=lambda s: len(s.members))
    return account, segment


def _ids(api, path, params):
    return [item["id"] for page in api.iter_pages(path, params=params) for item in page["data"]]


def _z(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def count_matches(monkeypatch):
    """How often ``filters.matches`` runs in the given resource modules during the test."""
    calls = {"n": 0}

    def counting(conditions, get):
        calls["n"] += 1
        return filters.matches(conditions, get)

    from klaviyo_sandbox.resources import events, groups, profiles

    for module in (events, groups, profiles):
        monkeypatch.setattr(module, "matches", counting)
    return calls


def test_filtered_membership_pages_equal_a_full_scan(api, world):
    account, segment = world
    ordered = sorted((at, pid) for pid, at in segment.members.items())
    mid, late = ordered[len(ordered) // 2][0], ordered[(3 * len(ordered)) // 4][0]
    some = [pid for _, pid in ordered[::97]][:5]
    outsider = next(pid for pid in account.profiles if pid not in segment.members)
    emails = [account.profiles[pid].email for pid in some if account.profiles[pid].email][:3]
    cases = [
        (f"greater-than(joined_group_at,{_z(mid)})", lambda at, pid: at > mid),
        (
            f"greater-or-equal(joined_group_at,{_z(mid)}),less-than(joined_group_at,{_z(late)})",
            lambda at, pid: mid <= at < late,
        ),
        (f"less-or-equal(joined_group_at,{_z(mid)})", lambda at, pid: at <= mid),
        (
            "any(profile_id,[" + ",".join(f'"{p}"' for p in [*some, outsider]) + "])",
            lambda at, pid: pid in some,
        ),
        (
            "any(email,[" + ",".join(f'"{e.upper()}"' for e in emails) + ',"nobody@example.com"])',
            lambda at, pid: account.profiles[pid].email in emails,
        ),
        (
            f'any(profile_id,["{some[0]}","{some[-1]}"]),greater-than(joined_group_at,{_z(mid)})',
            lambda at, pid: pid in (some[0], some[-1]) and at > mid,
        ),
    ]
    # The ids endpoint pages exactly like the profiles endpoint (same code) and is cheap to validate.
    for filter_, keep in cases:
        expected = [pid for at, pid in ordered if keep(at, pid)]
        size = "3" if len(expected) < 10 else "100"  # several pages either way
        for sort in ("joined_group_at", "-joined_group_at"):
            params = {"filter": filter_, "sort": sort, "page[size]": size}
            got = _ids(api, f"/api/segments/{segment.id}/relationships/profiles", params)
            assert got == (expected if sort == "joined_group_at" else expected[::-1]), (filter_, sort)
    filter_, keep = cases[-2]
    params = {"filter": filter_, "sort": "-joined_group_at", "page[size]": "2"}
    got = _ids(api, f"/api/segments/{segment.id}/profiles", params)
    assert got == [pid for at, pid in reversed(ordered) if keep(at, pid)]


def test_membership_filters_do_not_test_every_member(api, world, count_matches):
    _, segment = world
    ordered = sorted((at, pid) for pid, at in segment.members.items())
    mid = ordered[len(ordered) // 2][0]
    path = f"/api/segments/{segment.id}/profiles"
    page = api.get(path, params={"filter": f"greater-than(joined_group_at,{_z(mid)})", "page[size]": "20"})
    assert len(page.json()["data"]) == 20
    page = api.get(path, params={"filter": f'equals(profile_id,"{ordered[5][1]}")'})
    assert [m["id"] for m in page.json()["data"]] == [ordered[5][1]]
    assert count_matches["n"] == 0  # bisections and index lookups only


def test_profile_lookups_use_the_identifier_indexes(api, world, count_matches):
    account, _ = world
    people = list(account.profiles.values())[100:104]
    by_email = api.get("/api/profiles", params={"filter": f'equals(email,"{people[0].email.upper()}")'})
    assert [p["id"] for p in by_email.json()["data"]] == [people[0].id]
    phone = next(p for p in account.profiles.values() if p.phone_number)
    by_phone = api.get("/api/profiles", params={"filter": f'equals(phone_number,"{phone.phone_number}")'})
    assert [p["id"] for p in by_phone.json()["data"]] == [phone.id]
    by_external = api.get("/api/profiles", params={"filter": f'any(external_id,["{people[1].external_id}"])'})
    assert [p["id"] for p in by_external.json()["data"]] == [people[1].id]
    assert api.get("/api/profiles", params={"filter": 'equals(id,"NOPE")'}).json()["data"] == []
    assert count_matches["n"] == 0
    # An indexed condition narrows the candidates; the others are tested on those only.
    wanted = sorted(p.id for p in people[:3])
    old = _z(datetime(2000, 1, 1, tzinfo=UTC))
    both = api.get(
        "/api/profiles",
        params={
            "filter": "any(id,[" + ",".join(f'"{i}"' for i in wanted) + f"]),greater-than(created,{old})"
        },
    )
    assert [p["id"] for p in both.json()["data"]] == wanted
    assert count_matches["n"] == 3


def test_has_profile_and_metric_keep_events_on_the_index(api, world, count_matches):
    account, _ = world
    counts: dict[str, int] = {}
    for event in account.events.values():
        counts[event.metric_id] = counts.get(event.metric_id, 0) + 1
    metric = min(counts, key=counts.__getitem__)  # the smallest: pages are validated against the spec
    plain = _ids(api, "/api/events", {"filter": f'equals(metric_id,"{metric}")', "page[size]": "5"})
    both = _ids(
        api,
        "/api/events",
        {"filter": f'equals(metric_id,"{metric}"),has(profile),has(metric)', "page[size]": "5"},
    )
    assert both == plain and plain
    assert count_matches["n"] == 0


def test_member_cache_stays_sorted_through_adds_and_removes():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    segment = Segment(id="s", name="s", created=start, updated=start)
    for n in range(50):
        segment.add_member(f"p{n:02d}", start + timedelta(minutes=(n * 7) % 50))
    assert segment.ordered_members() == sorted((at, pid) for pid, at in segment.members.items())
    for n in range(0, 50, 3):
        segment.remove_member(f"p{n:02d}")
    for n in range(50, 70):
        segment.add_member(f"p{n:02d}", start + timedelta(minutes=n % 13))  # joins in the past, too
    assert not segment.add_member("p01", start)  # already a member: unchanged
    assert segment.ordered_members() == sorted((at, pid) for pid, at in segment.members.items())
    # A bulk change (more inner edits than are worth making) drops the cache and re-sorts once.
    for n in range(5000):
        segment.add_member(f"b{n:04d}", start + timedelta(seconds=(n * 7919) % 5000))
    for n in range(0, 5000, 2):
        segment.remove_member(f"b{n:04d}")
    assert segment.ordered_members() == sorted((at, pid) for pid, at in segment.members.items())


def test_profiles_sort_by_list_suppression_time(make_sandbox, control):
    running = make_sandbox("empty", rate_limits="off")
    api = api_client(running)
    ctl = control(running)
    account = next(iter(running.sandbox.store.accounts.values())).id
    first, second = (
        api.post("/api/profiles", json={"data": {"type": "profile", "attributes": {"email": email}}}).json()[
            "data"
        ]["id"]
        for email in ("a@example.com", "b@example.com")
    )
    klist = ctl.post(f"/_sandbox/accounts/{account}/lists", json={"name": "L", "members": [first, second]})
    list_id = klist.json()["data"]["id"]
    for email in ("b@example.com", "a@example.com"):  # the second profile is suppressed first
        body = {
            "data": {
                "type": "profile-subscription-bulk-delete-job",
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                "type": "profile",
                                "attributes": {
                                    "email": email,
                                    "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}},
                                },
                            }
                        ]
                    }
                },
                "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
            }
        }
        assert api.post("/api/profile-subscription-bulk-delete-jobs", json=body).status_code == 202
    sort = "subscriptions.email.marketing.list_suppressions.timestamp"
    assert [p["id"] for p in api.get("/api/profiles", params={"sort": sort}).json()["data"]] == [
        second,
        first,
    ]
    assert [p["id"] for p in api.get("/api/profiles", params={"sort": "-" + sort}).json()["data"]] == [
        first,
        second,
    ]
