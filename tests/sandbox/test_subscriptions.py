"""Bulk subscribe and unsubscribe jobs: single vs double opt-in, historical imports, suppressions, SMS."""

from __future__ import annotations

import pytest

from klaviyo_sandbox.testing import api_client


@pytest.fixture
def world(make_sandbox, control):
    """A fresh demo sandbox: (api client of account 0, control client, account summary, lists by opt-in)."""
    running = make_sandbox(rate_limits="off")
    api = api_client(running)
    ctl = control(running)
    account = ctl.get("/_sandbox/accounts").json()["data"][0]
    lists = {}
    for page in api.iter_pages("/api/lists"):
        for item in page["data"]:
            lists.setdefault(item["attributes"]["opt_in_process"], item["id"])
    return api, ctl, account, lists


def _job(profiles, list_id=None, historical=None, kind="create"):
    attributes = {"profiles": {"data": [{"type": "profile", "attributes": p} for p in profiles]}}
    if historical is not None:
        attributes["historical_import"] = historical
    data = {"type": f"profile-subscription-bulk-{kind}-job", "attributes": attributes}
    if list_id:
        data["relationships"] = {"list": {"data": {"type": "list", "id": list_id}}}
    return {"data": data}


def _email(address, consented_at=None):
    marketing = {"consent": "SUBSCRIBED"}
    if consented_at:
        marketing["consented_at"] = consented_at
    return {"email": address, "subscriptions": {"email": {"marketing": marketing}}}


def _state(ctl, account, ref):
    return ctl.get(f"/_sandbox/accounts/{account['id']}/profiles/{ref}").json()["data"]


def test_single_opt_in_subscribes_at_once(world):
    api, ctl, account, lists = world
    response = api.post(
        "/api/profile-subscription-bulk-create-jobs",
        json=_job([_email("new.soi@example.com")], lists["single_opt_in"]),
    )
    assert response.status_code == 202 and response.content == b""
    state = _state(ctl, account, "new.soi@example.com")
    assert state["email_marketing"]["consent"] == "SUBSCRIBED"
    assert state["lists"] == [lists["single_opt_in"]]
    assert ctl.get(f"/_sandbox/accounts/{account['id']}/confirmation-emails").json()["data"] == []


def test_double_opt_in_holds_pending_and_sends_a_confirmation_email(world):
    api, ctl, account, lists = world
    doi = lists["double_opt_in"]
    assert (
        api.post(
            "/api/profile-subscription-bulk-create-jobs", json=_job([_email("new.doi@example.com")], doi)
        ).status_code
        == 202
    )
    state = _state(ctl, account, "new.doi@example.com")
    assert state["email_marketing"]["consent"] == "NEVER_SUBSCRIBED"
    assert state["pending_lists"] == [doi] and state["lists"] == []
    emails = ctl.get(f"/_sandbox/accounts/{account['id']}/confirmation-emails").json()["data"]
    assert [e["email"] for e in emails] == ["new.doi@example.com"]
    members = {
        m["attributes"]["email"]
        for page in api.iter_pages(f"/api/lists/{doi}/profiles")
        for m in page["data"]
    }
    assert "new.doi@example.com" not in members  # not a member until confirmed
    ctl.post(
        f"/_sandbox/accounts/{account['id']}/lists/{doi}/confirm", json={"profiles": ["new.doi@example.com"]}
    )
    state = _state(ctl, account, "new.doi@example.com")
    assert (
        state["email_marketing"]["consent"] == "SUBSCRIBED"
        and state["email_marketing"]["double_optin"] is True
    )
    assert state["lists"] == [doi]


def test_historical_import_skips_double_opt_in_and_keeps_the_consent_time(world):
    api, ctl, account, lists = world
    job = _job(
        [_email("hist@example.com", "2025-03-01T10:00:00+00:00")], lists["double_opt_in"], historical=True
    )
    assert api.post("/api/profile-subscription-bulk-create-jobs", json=job).status_code == 202
    state = _state(ctl, account, "hist@example.com")
    assert state["email_marketing"]["consent"] == "SUBSCRIBED"
    assert state["email_marketing"]["consent_timestamp"].startswith("2025-03-01T10:00:00")
    assert state["lists"] == [lists["double_opt_in"]]
    assert ctl.get(f"/_sandbox/accounts/{account['id']}/confirmation-emails").json()["data"] == []


@pytest.mark.parametrize(
    ("profile", "historical", "detail"),
    [
        (_email("a@example.com", "2025-01-01T00:00:00+00:00"), None, "historical_import"),
        (_email("a@example.com"), True, "required"),
        (_email("a@example.com", "2099-01-01T00:00:00+00:00"), True, "past"),
    ],
)
def test_consented_at_rules(world, profile, historical, detail):
    api, _, _, lists = world
    response = api.post(
        "/api/profile-subscription-bulk-create-jobs",
        json=_job([profile], lists["single_opt_in"], historical=historical),
    )
    assert response.status_code == 400 and detail in response.json()["errors"][0]["detail"]


def test_more_than_1000_profiles_is_400(world):
    api, _, _, lists = world
    profiles = [_email(f"p{i}@example.com") for i in range(1001)]
    response = api.post(
        "/api/profile-subscription-bulk-create-jobs", json=_job(profiles, lists["single_opt_in"])
    )
    assert response.status_code == 400


def test_sms_needs_e164_and_rejects_the_whole_batch(world):
    api, ctl, account, lists = world
    good = {
        "email": "sms.ok@example.com",
        "phone_number": "+14155552671",
        "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}},
    }
    bad = {"phone_number": "4155552671", "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}}}
    response = api.post(
        "/api/profile-subscription-bulk-create-jobs", json=_job([good, bad], lists["single_opt_in"])
    )
    error = response.json()["errors"][0]
    assert response.status_code == 400 and error["source"]["pointer"].startswith(
        "/data/attributes/profiles/data/1"
    )
    assert ctl.get(f"/_sandbox/accounts/{account['id']}/profiles/sms.ok@example.com").status_code == 404
    assert (
        api.post(
            "/api/profile-subscription-bulk-create-jobs", json=_job([good], lists["single_opt_in"])
        ).status_code
        == 202
    )
    assert _state(ctl, account, "+14155552671")["sms_marketing"]["consent"] == "SUBSCRIBED"


def test_sms_in_an_unsupported_region_is_400(world):
    api, _, _, lists = world
    french = {
        "phone_number": "+33612345678",
        "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}},
    }
    response = api.post(
        "/api/profile-subscription-bulk-create-jobs", json=_job([french], lists["single_opt_in"])
    )
    error = response.json()["errors"][0]
    assert response.status_code == 400 and "region" in error["detail"]
    assert error["source"] == {"pointer": "/data/attributes/profiles/data/0"}  # as observed (S14)


def test_sms_needs_an_sms_enabled_account(make_sandbox, control):
    running = make_sandbox(rate_limits="off")
    ctl = control(running)
    accounts = ctl.get("/_sandbox/accounts").json()["data"]
    index = next(i for i, a in enumerate(accounts) if not a["sms_enabled"])
    api = api_client(running, index)
    profile = {
        "phone_number": "+14155552671",
        "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}},
    }
    list_id = api.get("/api/lists").json()["data"][0]["id"]
    response = api.post("/api/profile-subscription-bulk-create-jobs", json=_job([profile], list_id))
    assert response.status_code == 400 and "SMS" in response.json()["errors"][0]["detail"]


def test_subscribe_lifts_unsubscribe_but_not_bounce_suppressions(world):
    api, ctl, account, lists = world
    for address in ("lift.me@example.com", "bounced@example.com"):
        api.post(
            "/api/profile-subscription-bulk-create-jobs", json=_job([_email(address)], lists["single_opt_in"])
        )
    unsubscribe = _job([_email("lift.me@example.com")], kind="delete")
    unsubscribe["data"]["attributes"]["profiles"]["data"][0]["attributes"]["subscriptions"]["email"][
        "marketing"
    ] = {"consent": "UNSUBSCRIBED"}
    assert api.post("/api/profile-subscription-bulk-delete-jobs", json=unsubscribe).status_code == 202
    state = _state(ctl, account, "lift.me@example.com")
    assert state["email_marketing"]["consent"] == "UNSUBSCRIBED"
    assert [s["reason"] for s in state["suppressions"]] == ["UNSUBSCRIBE"]
    # a re-push overrides the opt-out: this is why the subscriber push must never re-push blindly
    api.post(
        "/api/profile-subscription-bulk-create-jobs",
        json=_job([_email("lift.me@example.com")], lists["single_opt_in"]),
    )
    state = _state(ctl, account, "lift.me@example.com")
    assert state["suppressions"] == [] and state["email_marketing"]["consent"] == "SUBSCRIBED"


def test_without_a_list_a_new_email_never_becomes_a_profile(world):
    api, ctl, account, _ = world
    assert (
        api.post(
            "/api/profile-subscription-bulk-create-jobs", json=_job([_email("nolist@example.com")])
        ).status_code
        == 202
    )
    assert ctl.get(f"/_sandbox/accounts/{account['id']}/profiles/nolist@example.com").status_code == 404


def test_unsubscribe_is_limited_to_100(world):
    api, _, _, _ = world
    body = _job(
        [
            {
                "email": f"u{i}@example.com",
                "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}},
            }
            for i in range(101)
        ],
        kind="delete",
    )
    assert api.post("/api/profile-subscription-bulk-delete-jobs", json=body).status_code == 400


def test_jobs_are_recorded_for_inspection(world):
    api, ctl, account, lists = world
    api.post(
        "/api/profile-subscription-bulk-create-jobs",
        json=_job([_email("rec@example.com")], lists["single_opt_in"]),
    )
    jobs = ctl.get(f"/_sandbox/accounts/{account['id']}/subscription-jobs").json()["data"]
    assert jobs[-1]["kind"] == "subscribe" and jobs[-1]["profile_count"] == 1
