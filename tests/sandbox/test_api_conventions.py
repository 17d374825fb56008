"""Klaviyo's API conventions as the sandbox enforces them: revision, auth, errors, parameters, bodies.

Every response body here passes through ``KlaviyoTestClient``, which validates it against the
spec's schema for that operation (or the spec's error body).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from klaviyo_sandbox.testing import KlaviyoTestClient, api_client


@pytest.fixture(scope="module")
def api(sandbox):
    client = api_client(sandbox)
    yield client
    client.close()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["status"] == status
    return error


def test_revision_header_is_required(sandbox):
    client = api_client(sandbox, revision=None)
    error = _error(client.get("/api/lists"), 400)
    assert error["source"] == {"parameter": "revision"}


@pytest.mark.parametrize("revision", ["2026-7-15", "yesterday", "2026-13-01"])
def test_malformed_revision_is_rejected(sandbox, revision):
    error = _error(api_client(sandbox, revision=revision).get("/api/lists"), 400)
    assert "revision" in error["detail"]


def test_revision_outside_the_support_window_is_rejected(sandbox):
    error = _error(api_client(sandbox, revision="2022-10-17").get("/api/lists"), 400)
    assert "no longer supported" in error["detail"]


@pytest.mark.parametrize("revision", ["2026-10-15", "2025-01-15", "2026-07-15.pre"])
def test_supported_and_newer_revisions_are_accepted(sandbox, revision):
    assert api_client(sandbox, revision=revision).get("/api/lists").status_code == 200


def test_missing_and_wrong_credentials_answer_401(sandbox):
    assert _error(KlaviyoTestClient(sandbox.base_url, None).get("/api/lists"), 401)
    error = _error(KlaviyoTestClient(sandbox.base_url, "Klaviyo-API-Key pk_nope").get("/api/lists"), 401)
    assert error["code"] == "authentication_failed"
    assert _error(KlaviyoTestClient(sandbox.base_url, "Basic Zm9vOmJhcg==").get("/api/lists"), 401)


def test_unknown_route_is_404_and_wrong_method_405(api):
    assert _error(api.get("/api/no-such-thing"), 404)["code"] == "not_found"
    assert _error(api.request("PUT", "/api/lists"), 405)


def test_malformed_id_is_400_and_unknown_id_404(api):
    error = _error(api.get("/api/lists/bad%20id!"), 400)
    assert error["source"] == {"parameter": "id"}
    error = _error(api.get("/api/lists/XXXXXX"), 404)
    assert error["detail"] == "List with id XXXXXX not found."


def test_wrong_content_type_is_415(api):
    response = api.post("/api/profiles", content=b"email=a@b.co", headers={"content-type": "text/plain"})
    assert _error(response, 415)


def test_malformed_json_is_400(api):
    response = api.post(
        "/api/profiles", content=b'{"data": ', headers={"content-type": "application/vnd.api+json"}
    )
    assert "Malformed JSON" in _error(response, 400)["detail"]


def test_unknown_attribute_and_wrong_type_are_400_with_pointer(api):
    body = {"data": {"type": "profile", "attributes": {"email": "x@example.com", "favourite_colour": "red"}}}
    error = _error(api.post("/api/profiles", json=body), 400)
    assert "favourite_colour" in error["detail"]
    assert error["source"]["pointer"] == "/data/attributes"
    body = {"data": {"type": "profile", "attributes": {"email": 12345}}}
    error = _error(api.post("/api/profiles", json=body), 400)
    assert error["source"]["pointer"] == "/data/attributes/email"


def test_body_over_5_mb_is_413(api):
    huge = {
        "data": {
            "type": "profile",
            "attributes": {"email": "a@example.com", "properties": {"blob": "x" * (5 * 1024 * 1024)}},
        }
    }
    assert _error(api.post("/api/profiles", json=huge), 413)


def test_unknown_query_parameter_is_400(api):
    assert _error(api.get("/api/lists", params={"colour": "red"}), 400)["source"] == {"parameter": "colour"}


@pytest.mark.parametrize("size", ["0", "11", "abc"])
def test_page_size_outside_the_endpoint_bounds_is_400(api, size):
    error = _error(api.get("/api/lists", params={"page[size]": size}), 400)
    assert error["source"] == {"parameter": "page[size]"}


def test_page_size_bounds_differ_per_endpoint(api):
    segment = api.get("/api/segments").json()["data"][0]["id"]
    assert api.get(f"/api/segments/{segment}/profiles", params={"page[size]": "100"}).status_code == 200
    assert _error(api.get(f"/api/segments/{segment}/profiles", params={"page[size]": "101"}), 400)


def test_invalid_sparse_fieldset_include_and_sort_are_400(api):
    assert _error(api.get("/api/lists", params={"fields[list]": "name,colour"}), 400)
    assert _error(api.get("/api/lists", params={"include": "colours"}), 400)
    assert _error(api.get("/api/lists", params={"sort": "colour"}), 400)


def test_filter_on_a_field_or_operator_the_endpoint_does_not_allow_is_400(api):
    error = _error(api.get("/api/lists", params={"filter": 'equals(colour,"red")'}), 400)
    assert error["source"] == {"parameter": "filter"}
    assert "colour" in error["detail"]
    assert _error(api.get("/api/lists", params={"filter": 'contains(name,"News")'}), 400)
    assert _error(api.get("/api/lists", params={"filter": 'or(equals(name,"a"),equals(name,"b"))'}), 400)


def test_links_are_absolute_and_next_keeps_every_parameter(sandbox, api):
    response = api.get("/api/lists", params={"page[size]": "1", "fields[list]": "name"})
    links = response.json()["links"]
    assert links["self"].startswith(sandbox.base_url + "/api/lists")
    assert links["next"].startswith(sandbox.base_url + "/api/lists?")
    query = parse_qs(urlsplit(links["next"]).query)
    assert query["page[size]"] == ["1"] and query["fields[list]"] == ["name"] and "page[cursor]" in query
    item = response.json()["data"][0]
    assert item["links"]["self"] == f"{sandbox.base_url}/api/lists/{item['id']}/"
    assert set(item["attributes"]) == {"name"}
    assert "relationships" not in item  # a sparse fieldset drops relationships, as at Klaviyo


def test_trailing_slash_and_none_are_the_same_resource(api):
    list_id = api.get("/api/lists").json()["data"][0]["id"]
    assert api.get(f"/api/lists/{list_id}").json()["data"] == api.get(f"/api/lists/{list_id}/").json()["data"]


def test_unimplemented_operation_answers_501_naming_it(api):
    error = _error(api.get("/api/templates"), 501)
    assert "get_templates" in error["detail"]


def test_request_log_records_calls(sandbox, api, control):
    api.get("/api/lists", params={"page[size]": "2"})
    rows = control(sandbox).get("/_sandbox/requests", params={"path_prefix": "/api/lists"}).json()["data"]
    assert rows and rows[-1]["operation_id"] == "get_lists" and rows[-1]["status"] == 200
