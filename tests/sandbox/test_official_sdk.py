"""Klaviyo's official Python SDK (``klaviyo-api``, revision 2026-10-15) works against the sandbox unchanged.

Only ``test_host=`` differs from production use: proof that third-party clients need no changes.
"""

from __future__ import annotations

from typing import Any

import pytest
from klaviyo_api import KlaviyoAPI


def as_dict(model: Any) -> dict[str, Any]:
    """The SDK parses every answer into its pydantic models (a strict check of its own); compare as dicts."""
    return model if isinstance(model, dict) else model.to_dict()


@pytest.fixture
def sdk(make_sandbox):
    running = make_sandbox(rate_limits="off")
    account = next(iter(running.sandbox.store.accounts.values()))
    return KlaviyoAPI(account.private_api_key, max_delay=1, max_retries=1, test_host=running.base_url)


def test_sdk_reads_segments_members_and_lists(sdk):
    segments = as_dict(sdk.Segments.get_segments())
    assert 8 <= len(segments["data"]) <= 10
    segment = segments["data"][0]["id"]
    members = as_dict(sdk.Segments.get_profiles_for_segment(segment, page_size=100))
    assert 0 < len(members["data"]) <= 100
    assert all("joined_group_at" in m["attributes"] for m in members["data"])
    counted = as_dict(sdk.Segments.get_segment(segment, additional_fields_segment=["profile_count"]))
    assert counted["data"]["attributes"]["profile_count"] >= len(members["data"])
    lists = as_dict(sdk.Lists.get_lists())
    assert {item["attributes"]["opt_in_process"] for item in lists["data"]} >= {
        "double_opt_in",
        "single_opt_in",
    }


def test_sdk_follows_cursor_pages(sdk):
    first = as_dict(sdk.Profiles.get_profiles(page_size=5))
    cursor = first["links"]["next"]  # a full URL: the SDK extracts the cursor itself
    second = as_dict(sdk.Profiles.get_profiles(page_size=5, page_cursor=cursor))
    assert len(first["data"]) == len(second["data"]) == 5
    assert {p["id"] for p in first["data"]}.isdisjoint({p["id"] for p in second["data"]})


def test_sdk_creates_a_profile_and_gets_409_for_a_duplicate(sdk):
    from openapi_client.exceptions import ApiException

    body = {"data": {"type": "profile", "attributes": {"email": "sdk.user@example.com", "first_name": "Sdk"}}}
    created = as_dict(sdk.Profiles.create_profile(body))
    assert created["data"]["attributes"]["email"] == "sdk.user@example.com"
    with pytest.raises(ApiException) as raised:
        sdk.Profiles.create_profile(body)
    assert raised.value.status == 409


def test_sdk_bulk_subscribe(sdk):
    lists = as_dict(sdk.Lists.get_lists())["data"]
    single = next(item["id"] for item in lists if item["attributes"]["opt_in_process"] == "single_opt_in")
    job = {
        "data": {
            "type": "profile-subscription-bulk-create-job",
            "attributes": {
                "profiles": {
                    "data": [
                        {
                            "type": "profile",
                            "attributes": {
                                "email": "sdk.sub@example.com",
                                "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}},
                            },
                        }
                    ]
                }
            },
            "relationships": {"list": {"data": {"type": "list", "id": single}}},
        }
    }
    sdk.Profiles.bulk_subscribe_profiles(job)
    found = as_dict(
        sdk.Profiles.get_profiles(
            filter='equals(email,"sdk.sub@example.com")', additional_fields_profile=["subscriptions"]
        )
    )
    assert found["data"][0]["attributes"]["subscriptions"]["email"]["marketing"]["consent"] == "SUBSCRIBED"
