"""Simulated flow and campaign sends (``/_sandbox/accounts/{id}/flows|campaigns/{id}/send``): the
email events they create, their attribution (``$flow``/``$message``), and the control API's errors.

Events are read back through the Events API (every body validated against the spec by
``KlaviyoTestClient``); webhook delivery of these events is covered in ``test_webhooks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from klaviyo_sandbox.server import RunningSandbox, create_sandbox, running_sandbox
from klaviyo_sandbox.simulate import can_receive_campaign_email
from klaviyo_sandbox.store import Account, Flow, FlowMessage
from klaviyo_sandbox.testing import KlaviyoTestClient, api_client


@pytest.fixture(scope="module")
def running() -> Iterator[RunningSandbox]:
    """A demo sandbox of this module's own: sends add events and mark campaigns sent."""
    with running_sandbox(create_sandbox("demo", rate_limits="off")) as run:
        yield run


@pytest.fixture(scope="module")
def ctl(running: RunningSandbox) -> Iterator[httpx2.Client]:
    """Control-API client."""
    with httpx2.Client(base_url=running.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def api(running: RunningSandbox) -> Iterator[KlaviyoTestClient]:
    """Private-key client of the first demo account."""
    client = api_client(running, 0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def account(running: RunningSandbox) -> Account:
    """The first demo account (read-only use from the test thread)."""
    return next(iter(running.sandbox.store.accounts.values()))


def email_messages(account: Account, flow: Flow) -> list[FlowMessage]:
    """A flow's email messages in action order."""
    return [
        account.flow_messages[message_id]
        for action_id in flow.action_ids
        for message_id in account.flow_actions[action_id].message_ids
    ]


def welcome(account: Account) -> Flow:
    """The Welcome Series (three emails)."""
    return next(f for f in account.flows.values() if f.name == "Welcome Series")


def emailable(account: Account, count: int, skip: int = 0) -> list[Any]:
    """``count`` profiles with an email address."""
    return [p for p in account.profiles.values() if p.email][skip : skip + count]


def event_of(api: KlaviyoTestClient, event_id: str) -> dict[str, Any]:
    """An event as the Events API returns it."""
    response = api.get(f"/api/events/{event_id}", params={"include": "metric"})
    assert response.status_code == 200, response.text
    return response.json()


def _send(ctl: httpx2.Client, path: str, body: Any, status: int = 200) -> Any:
    response = ctl.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


# ---------------------------------------------------------------------------- flows


def test_flow_send_creates_attributed_email_events(
    ctl: httpx2.Client, api: KlaviyoTestClient, account: Account
) -> None:
    flow = welcome(account)
    first = email_messages(account, flow)[0]
    people = emailable(account, 4)
    at = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    body = {
        "profiles": [people[0].id, people[1].email, people[2].id, people[3].email.upper()],
        "opened_rate": 0.5,
        "clicked_rate": 0.25,
        "at": at.isoformat(),
        "url": "https://shop.example.com/collections/new",
    }
    events = _send(ctl, f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send", body)["data"]["events"]
    metrics = [e["metric"] for e in events]
    assert metrics == ["Received Email"] * 4 + ["Opened Email"] * 2 + ["Clicked Email"]
    assert [e["profile_id"] for e in events] == [p.id for p in people] + [
        people[0].id,
        people[1].id,
        people[0].id,
    ]

    for created in events:
        document = event_of(api, created["id"])
        event = document["data"]
        props = event["attributes"]["event_properties"]
        assert document["included"][0]["attributes"]["name"] == created["metric"]
        assert event["relationships"]["profile"]["data"]["id"] == created["profile_id"]
        assert props["$flow"] == flow.id
        assert props["$message"] == first.id
        assert props["Campaign Name"] == first.name
        assert props["Subject"] == first.definition["content"]["subject"]
        assert props["$message_send_cohort"] == f"{first.id}:2026-03-02"
        assert props["Email Domain"] == account.profiles[created["profile_id"]].email.split("@")[1].lower()
        sent = datetime.fromisoformat(event["attributes"]["datetime"])
        assert at <= sent <= at + timedelta(seconds=5)
        assert event["attributes"]["timestamp"] == int(sent.timestamp())
        if created["metric"] == "Clicked Email":
            assert props["URL"] == "https://shop.example.com/collections/new"
        if created["metric"] != "Received Email":
            assert props["Client Name"]  # opens and clicks carry the email client, as Klaviyo's do


def test_flow_send_events_are_listed_by_the_events_api(
    ctl: httpx2.Client, api: KlaviyoTestClient, account: Account
) -> None:
    flow = welcome(account)
    person = emailable(account, 1, skip=10)[0]
    events = _send(ctl, f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send", {"profiles": [person.id]})[
        "data"
    ]["events"]
    assert [e["metric"] for e in events] == [
        "Received Email",
        "Opened Email",
    ]  # defaults: all open, none click
    listed = api.get(
        "/api/events", params={"filter": f'equals(profile_id,"{person.id}")', "sort": "-datetime"}
    )
    assert [e["id"] for e in listed.json()["data"][:2]] == [events[1]["id"], events[0]["id"]]
    profile = api.get(f"/api/profiles/{person.id}").json()["data"]
    assert profile["attributes"]["last_event_date"] == listed.json()["data"][0]["attributes"]["datetime"]


def test_flow_send_of_a_chosen_message(ctl: httpx2.Client, api: KlaviyoTestClient, account: Account) -> None:
    flow = welcome(account)
    third = email_messages(account, flow)[2]
    person = emailable(account, 1, skip=20)[0]
    events = _send(
        ctl,
        f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send",
        {"profiles": [person.email], "message_id": third.id, "opened_rate": 0},
    )["data"]["events"]
    assert len(events) == 1
    props = event_of(api, events[0]["id"])["data"]["attributes"]["event_properties"]
    assert (props["$flow"], props["$message"], props["Campaign Name"]) == (flow.id, third.id, third.name)


# ---------------------------------------------------------------------------- campaigns


def test_campaign_send_to_its_audience_has_campaign_attribution(
    running: RunningSandbox, ctl: httpx2.Client
) -> None:
    account = list(running.sandbox.store.accounts.values())[2]  # the small demo account
    campaign = next(c for c in account.campaigns.values() if c.status == "Draft" and c.channel == "email")
    expected = []
    for group_id in campaign.included_audiences:
        for _, profile_id in account.group(group_id).ordered_members():
            profile = account.profiles[profile_id]
            if can_receive_campaign_email(profile, group_id) and profile_id not in expected:
                expected.append(profile_id)
    assert len(expected) > 0
    members = {pid for g in campaign.included_audiences for pid in account.group(g).members}
    assert len(expected) < len(members), "the demo list has suppressed members, who are skipped"

    at = datetime(2026, 4, 1, 15, 0, tzinfo=UTC)
    data = _send(
        ctl,
        f"/_sandbox/accounts/{account.id}/campaigns/{campaign.id}/send",
        {"opened_rate": 0, "at": at.isoformat().replace("+00:00", "Z")},
    )["data"]
    assert [e["profile_id"] for e in data["events"]] == expected
    assert {e["metric"] for e in data["events"]} == {"Received Email"}
    assert campaign.status == "Sent" and campaign.send_time == at

    other_api = api_client(running, 2)
    props = other_api.get(f"/api/events/{data['events'][0]['id']}").json()["data"]["attributes"][
        "event_properties"
    ]
    other_api.close()
    assert "$flow" not in props
    assert props["$message"] == campaign.id and props["Campaign Name"] == campaign.name
    subject = account.campaign_messages[campaign.message_ids[0]].content["subject"]
    assert props["Subject"] == subject


def test_campaign_send_to_chosen_profiles(
    ctl: httpx2.Client, api: KlaviyoTestClient, account: Account
) -> None:
    campaign = next(c for c in account.campaigns.values() if c.channel == "email")
    people = emailable(account, 2, skip=30)
    events = _send(
        ctl,
        f"/_sandbox/accounts/{account.id}/campaigns/{campaign.id}/send",
        {"profiles": [p.id for p in people], "opened_rate": 1, "clicked_rate": 1},
    )["data"]["events"]
    assert [e["metric"] for e in events] == ["Received Email"] * 2 + ["Opened Email"] * 2 + [
        "Clicked Email"
    ] * 2
    click = event_of(api, events[-1]["id"])["data"]["attributes"]["event_properties"]
    assert "$flow" not in click and click["$message"] == campaign.id and click["URL"]


# ---------------------------------------------------------------------------- errors


def test_unknown_things_answer_404(ctl: httpx2.Client, account: Account) -> None:
    flow = welcome(account)
    campaign = next(iter(account.campaigns.values()))
    person = emailable(account, 1)[0]
    cases = [
        (f"/_sandbox/accounts/NOPE00/flows/{flow.id}/send", {"profiles": [person.id]}, "account"),
        (f"/_sandbox/accounts/{account.id}/flows/NOPE00/send", {"profiles": [person.id]}, "flow"),
        (f"/_sandbox/accounts/{account.id}/campaigns/NOPE00/send", {}, "campaign"),
        (
            f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send",
            {"profiles": ["ghost@example.com"]},
            "profile",
        ),
        (f"/_sandbox/accounts/{account.id}/campaigns/{campaign.id}/send", {"profiles": ["ghost"]}, "profile"),
        (
            f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send",
            {"profiles": [person.id], "message_id": "NOPE00"},
            "message",
        ),
    ]
    for path, body, word in cases:
        error = _send(ctl, path, body, status=404)["error"]
        assert word in error


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "'profiles'"),
        ({"profiles": "someone"}, "'profiles'"),
        ({"profiles": [], "opened_rate": 1.5}, "opened_rate"),
        ({"profiles": [], "clicked_rate": -0.1}, "clicked_rate"),
        ({"profiles": [], "opened_rate": "half"}, "opened_rate"),
        ({"profiles": [], "at": "yesterday"}, "'at'"),
        ({"profiles": [], "url": 5}, "'url'"),
    ],
)
def test_malformed_send_bodies_answer_400(
    ctl: httpx2.Client, account: Account, body: Any, words: str
) -> None:
    flow = welcome(account)
    error = _send(ctl, f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send", body, status=400)["error"]
    assert words in error


def test_non_json_and_sms_campaign_sends_answer_400(ctl: httpx2.Client, account: Account) -> None:
    flow = welcome(account)
    response = ctl.post(f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send", content=b"{not json")
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]
    response = ctl.post(f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send", json=["a"])
    assert response.status_code == 400
    sms = next(c for c in account.campaigns.values() if c.channel == "sms")
    error = _send(ctl, f"/_sandbox/accounts/{account.id}/campaigns/{sms.id}/send", {}, status=400)["error"]
    assert "only email" in error


def test_an_empty_send_creates_nothing(ctl: httpx2.Client, account: Account) -> None:
    flow = welcome(account)
    before = len(account.events)
    data = _send(ctl, f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send", {"profiles": []})["data"]
    assert data == {"events": []} and len(account.events) == before
