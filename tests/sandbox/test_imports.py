"""Bulk profile import jobs over real HTTP: the job lifecycle, upserts, list membership, import errors.

Every body passes ``KlaviyoTestClient``, which validates it against the spec's closed schema.
"""

from __future__ import annotations

from typing import Any

import pytest

from klaviyo_sandbox.testing import api_client

JOBS = "/api/profile-bulk-import-jobs"


@pytest.fixture
def fresh(make_sandbox):
    """A sandbox with two bare accounts (``empty`` seed) and a client for the first one."""
    running = make_sandbox(seed="empty", rate_limits="off")
    client = api_client(running, 0)
    yield running, client
    client.close()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["errors"][0]


def _new_list(api, name: str) -> str:
    response = api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": name}}})
    assert response.status_code == 201, response.text
    return response.json()["data"]["id"]


def _job_body(profiles: list[dict[str, Any]], list_ids: tuple[str, ...] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "profile-bulk-import-job",
        "attributes": {"profiles": {"data": [{"type": "profile", **p} for p in profiles]}},
    }
    if list_ids:
        data["relationships"] = {"lists": {"data": [{"type": "list", "id": i} for i in list_ids]}}
    return {"data": data}


def _sparse_get(api, operation_id: str, path: str, params: dict[str, str]) -> dict:
    """GET with a sparse fieldset; the shared client validates it as a sparse answer of ``operation_id``."""
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _all(api, path: str, **params: str) -> list[dict]:
    return [item for page in api.iter_pages(path, params=params or None) for item in page["data"]]


def test_import_job_lifecycle(fresh):
    _running, api = fresh
    list_id = _new_list(api, "Imported customers")
    existing = api.post(
        "/api/profiles", json={"data": {"type": "profile", "attributes": {"email": "old@example.com"}}}
    ).json()["data"]["id"]
    profiles = [
        {"attributes": {"email": "new@example.com", "first_name": "Nia", "properties": {"tier": "gold"}}},
        {"attributes": {"email": "OLD@example.com", "last_name": "Updated", "location": {"city": "Austin"}}},
        {"attributes": {"phone_number": "+15005550006", "external_id": "ext-1"}},
    ]
    response = api.post(JOBS, json=_job_body(profiles, (list_id,)))
    assert response.status_code == 202
    job = response.json()["data"]
    attributes = job["attributes"]
    assert attributes["status"] == "complete"
    assert (attributes["total_count"], attributes["completed_count"], attributes["failed_count"]) == (3, 3, 0)
    assert attributes["expires_at"] > attributes["created_at"]
    assert set(job["relationships"]) == {"lists", "profiles", "import-errors"}
    assert set(job["relationships"]["import-errors"]["links"]) == {"related"}

    fetched = api.get(f"{JOBS}/{job['id']}", params={"include": "lists"}).json()
    assert fetched["data"]["attributes"] == attributes
    assert fetched["data"]["relationships"]["lists"]["data"] == [{"type": "list", "id": list_id}]
    assert [i["id"] for i in fetched["included"]] == [list_id]

    imported = _all(api, f"{JOBS}/{job['id']}/profiles")
    assert len(imported) == 3 and existing in {p["id"] for p in imported}
    updated = next(p for p in imported if p["id"] == existing)
    assert updated["attributes"]["last_name"] == "Updated"
    assert updated["attributes"]["location"]["city"] == "Austin"
    assert updated["attributes"]["email"] == "OLD@example.com"
    ids = _all(api, f"{JOBS}/{job['id']}/relationships/profiles")
    assert ids == [{"type": "profile", "id": p["id"]} for p in imported]
    assert len(api.get("/api/profiles").json()["data"]) == 3  # one updated, two created

    assert [item["id"] for item in api.get(f"{JOBS}/{job['id']}/lists").json()["data"]] == [list_id]
    assert api.get(f"{JOBS}/{job['id']}/relationships/lists").json()["data"] == [
        {"type": "list", "id": list_id}
    ]
    members = _all(api, f"/api/lists/{list_id}/profiles")
    assert {m["id"] for m in members} == {p["id"] for p in imported}
    assert api.get(f"{JOBS}/{job['id']}/import-errors").json()["data"] == []


def test_import_never_changes_consent(fresh):
    _running, api = fresh
    list_id = _new_list(api, "Newsletter")
    api.post(
        JOBS,
        json=_job_body(
            [{"attributes": {"email": "quiet@example.com", "phone_number": "+15005550006"}}], (list_id,)
        ),
    )
    profile = api.get("/api/profiles", params={"additional-fields[profile]": "subscriptions"}).json()["data"][
        0
    ]
    subscriptions = profile["attributes"]["subscriptions"]
    assert subscriptions["email"]["marketing"]["consent"] == "NEVER_SUBSCRIBED"
    assert subscriptions["sms"]["marketing"]["consent"] == "NEVER_SUBSCRIBED"


def test_rejected_profiles_become_import_errors(fresh):
    _running, api = fresh
    profiles = [
        {"attributes": {"email": "fine@example.com"}},
        {"attributes": {"email": "not-an-email"}},
        {"attributes": {"phone_number": "555-0100"}},
        {"attributes": {"first_name": "No identifier"}},
        {"id": "01ZZZZZZZZZZZZZZZZZZZZZZZZ", "attributes": {"first_name": "Ghost"}},
        {"attributes": {"email": "also.fine@example.com"}},
    ]
    job = api.post(JOBS, json=_job_body(profiles)).json()["data"]
    assert (job["attributes"]["completed_count"], job["attributes"]["failed_count"]) == (2, 4)
    pages = list(api.iter_pages(f"{JOBS}/{job['id']}/import-errors", params={"page[size]": "3"}))
    errors = [e for page in pages for e in page["data"]]
    assert len(pages) == 2 and len(errors) == len({e["id"] for e in errors}) == 4
    pointers = [e["attributes"]["source"]["pointer"] for e in errors]
    assert pointers == [
        "/data/attributes/profiles/data/1/attributes/email",
        "/data/attributes/profiles/data/2/attributes/phone_number",
        "/data/attributes/profiles/data/3/attributes",
        "/data/attributes/profiles/data/4/id",
    ]
    assert errors[0]["attributes"]["original_payload"] == {"type": "profile", **profiles[1]}
    assert "E.164" in errors[1]["attributes"]["detail"]
    assert {e["attributes"]["code"] for e in errors} == {"invalid", "not_found"}
    imported = _all(api, f"{JOBS}/{job['id']}/profiles")
    assert {p["attributes"]["email"] for p in imported} == {"fine@example.com", "also.fine@example.com"}


def test_identifier_owned_by_another_profile_is_an_error(fresh):
    _running, api = fresh
    for email, phone in (("a@example.com", "+15005550006"), ("b@example.com", None)):
        attributes = {"email": email, **({"phone_number": phone} if phone else {})}
        api.post("/api/profiles", json={"data": {"type": "profile", "attributes": attributes}})
    job = api.post(
        JOBS, json=_job_body([{"attributes": {"email": "b@example.com", "phone_number": "+15005550006"}}])
    ).json()["data"]
    assert job["attributes"]["failed_count"] == 1
    error = api.get(f"{JOBS}/{job['id']}/import-errors").json()["data"][0]
    assert error["attributes"]["code"] == "duplicate_profile"
    assert error["attributes"]["source"]["pointer"].endswith("/phone_number")


def test_job_limits_and_unknown_lists(fresh):
    _running, api = fresh
    too_many = [{"attributes": {"email": f"p{i}@example.com"}} for i in range(10_001)]
    error = _error(api.post(JOBS, json=_job_body(too_many)), 400)
    assert error["source"]["pointer"] == "/data/attributes/profiles/data" and "10000" in error["detail"]
    assert _error(api.post(JOBS, json=_job_body([])), 400)
    unknown = _job_body([{"attributes": {"email": "x@example.com"}}], ("NOPE01",))
    assert (
        _error(api.post(JOBS, json=unknown), 400)["source"]["pointer"]
        == "/data/relationships/lists/data/0/id"
    )
    assert api.get("/api/profiles").json()["data"] == []  # nothing imported by rejected requests
    exactly = too_many[:10_000]
    job = api.post(JOBS, json=_job_body(exactly)).json()["data"]
    assert job["attributes"]["completed_count"] == 10_000


def test_job_listing_filter_sort_and_pages(fresh):
    _running, api = fresh
    made = [
        api.post(JOBS, json=_job_body([{"attributes": {"email": f"j{i}@example.com"}}])).json()["data"]["id"]
        for i in range(3)
    ]
    pages = list(api.iter_pages(JOBS, params={"page[size]": "2"}))
    assert len(pages) == 2
    assert [j["id"] for page in pages for j in page["data"]] == made
    newest_first = _all(api, JOBS, sort="-created_at")
    assert [j["id"] for j in newest_first] == made[::-1]
    assert len(_all(api, JOBS, filter="equals(status,'complete')")) == 3
    assert _all(api, JOBS, filter="any(status,['queued','processing'])") == []
    assert _error(api.get(JOBS, params={"filter": "equals(status,'done')"}), 400)
    assert _error(api.get(JOBS, params={"page[size]": "101"}), 400)
    sparse = _sparse_get(
        api, "get_bulk_import_profiles_jobs", JOBS, {"fields[profile-bulk-import-job]": "status"}
    )
    sparse = sparse["data"]
    assert all(j["attributes"] == {"status": "complete"} for j in sparse)


def test_jobs_are_private_to_their_account(fresh):
    running, api = fresh
    job = api.post(JOBS, json=_job_body([{"attributes": {"email": "mine@example.com"}}])).json()["data"]["id"]
    other = api_client(running, 1)
    try:
        assert other.get(JOBS).json()["data"] == []
        for path in (
            "",
            "/import-errors",
            "/profiles",
            "/lists",
            "/relationships/profiles",
            "/relationships/lists",
        ):
            assert _error(other.get(f"{JOBS}/{job}{path}"), 404)
    finally:
        other.close()
    assert _error(api.get(f"{JOBS}/NOSUCHJOB"), 404)
