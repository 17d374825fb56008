"""The seeds: determinism, the shared demo people, and the internal consistency of the demo data."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path

import phonenumbers
import pytest

from klaviyo_sandbox import ids
from klaviyo_sandbox.seed import (
    DEMO_ACCOUNTS,
    DEMO_OAUTH_CLIENT_ID,
    DEMO_OAUTH_CLIENT_SECRET,
    DEMO_REDIRECT_URIS,
    KLAVIYO_INTEGRATION,
    KLAVIYO_SCOPES,
    SHOPIFY_INTEGRATION,
    DemoPerson,
    demo_people,
    describe_store,
    seed_store,
)
from klaviyo_sandbox.store import Account, Store

NOW = datetime(2026, 7, 20, tzinfo=UTC)
SPEC_PATH = Path(__file__).parents[2] / "klaviyo_sandbox" / "spec" / "klaviyo-openapi.json"
EMAIL_METRICS = ("Received Email", "Opened Email", "Clicked Email", "Bounced Email", "Unsubscribed")


@pytest.fixture(scope="module")
def demo() -> Store:
    return seed_store(Store(), "demo", now=NOW)


@pytest.fixture(scope="module")
def accounts(demo: Store) -> list[Account]:
    return list(demo.accounts.values())


@pytest.fixture(scope="module")
def main_accounts(accounts: list[Account]) -> list[Account]:
    """The full-size demo accounts (the ones the brief asks thousands of profiles for)."""
    return [a for a in accounts if len(a.profiles) >= 1000]


def _fingerprint(store: Store) -> str:
    """A digest of everything a test or a client could observe about a seeded store."""
    parts: list[object] = []
    for account in store.accounts.values():
        parts.append(
            (account.id, account.private_api_key, account.public_api_key, account.created.isoformat())
        )
        parts.extend(
            (
                p.id,
                p.email,
                p.phone_number,
                p.external_id,
                p.updated.isoformat(),
                p.email_marketing.consent,
                json.dumps(p.properties, sort_keys=True),
            )
            for p in account.profiles.values()
        )
        for group in [*account.lists.values(), *account.segments.values()]:
            members = sorted((pid, at.isoformat()) for pid, at in group.members.items())
            parts.append((group.id, group.name, members, sorted(getattr(group, "pending", {}))))
        parts.extend(account.metrics)
        parts.extend((f.id, f.action_ids) for f in account.flows.values())
        parts.extend(account.flow_messages)
        parts.extend((c.id, c.message_ids, c.included_audiences) for c in account.campaigns.values())
        parts.extend(
            (
                e.id,
                e.uuid,
                e.profile_id,
                e.metric_id,
                e.datetime.isoformat(),
                json.dumps(e.event_properties, sort_keys=True),
            )
            for e in account.events.values()
        )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# ---------------------------------------------------------------------------- seeds in general


def test_unknown_seed_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown seed"):
        seed_store(Store(), "full", now=NOW)


def test_seeding_twice_into_one_store_is_rejected() -> None:
    store = seed_store(Store(), "empty", now=NOW)
    with pytest.raises(ValueError, match="already holds"):
        seed_store(store, "empty", now=NOW)


def test_oauth_app_allows_every_klaviyo_scope(demo: Store) -> None:
    spec = json.loads(SPEC_PATH.read_text())
    spec_scopes = {
        scope
        for operations in spec["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict)
        for scope in operation.get("x-klaviyo-scopes", [])
    }
    assert len(KLAVIYO_SCOPES) == len(set(KLAVIYO_SCOPES)) == 46
    assert set(KLAVIYO_SCOPES) == spec_scopes

    for store in (seed_store(Store(), "empty", now=NOW), demo):
        client = store.oauth_clients[DEMO_OAUTH_CLIENT_ID]
        assert client.client_secret == DEMO_OAUTH_CLIENT_SECRET
        assert set(client.scopes) == spec_scopes
        assert (
            {
                "http://127.0.0.1:8000/oauth/klaviyo/callback",
                "http://localhost:8000/oauth/klaviyo/callback",
            }
            <= set(client.redirect_uris)
            == set(DEMO_REDIRECT_URIS)
        )


def test_empty_seed_has_two_bare_accounts_with_the_demo_identities() -> None:
    store = seed_store(Store(), "empty", now=NOW)
    assert len(store.accounts) == 2
    expected = [a for a in DEMO_ACCOUNTS if a.in_empty_seed]
    for account, described in zip(store.accounts.values(), expected, strict=True):
        assert (account.id, account.name, account.private_api_key) == (
            described.account_id,
            described.name,
            described.private_api_key,
        )
        assert ids.SHORT_ID_PATTERN.match(account.id)
        assert re.fullmatch(r"pk_[0-9a-f]{32}", account.private_api_key)
        assert len(account.public_api_key) == 6
        assert account.timezone and account.website_url and account.sender_email
        for collection in (
            account.profiles,
            account.lists,
            account.segments,
            account.metrics,
            account.events,
            account.flows,
            account.campaigns,
            account.webhooks,
        ):
            assert not collection


def test_account_identities_do_not_depend_on_now_or_seed(accounts: list[Account]) -> None:
    other_day = seed_store(Store(), "empty", now=NOW + timedelta(days=3))
    keys = {a.id: a.private_api_key for a in accounts}
    for account in other_day.accounts.values():
        assert keys[account.id] == account.private_api_key
    assert [(a.id, a.private_api_key, a.public_api_key) for a in accounts] == [
        (d.account_id, d.private_api_key, d.public_api_key) for d in DEMO_ACCOUNTS
    ]
    assert len({a.private_api_key for a in accounts}) == len(accounts)


def test_naive_now_is_taken_as_utc() -> None:
    naive = seed_store(Store(), "empty", now=NOW.replace(tzinfo=None))
    aware = seed_store(Store(), "empty", now=NOW)
    assert [a.created for a in naive.accounts.values()] == [a.created for a in aware.accounts.values()]


# ---------------------------------------------------------------------------- determinism


def test_demo_is_deterministic_for_a_fixed_now(demo: Store) -> None:
    random.seed(1234)  # the global random state must not matter
    again = seed_store(Store(), "demo", now=NOW)
    assert _fingerprint(again) == _fingerprint(demo)
    for first, second in zip(demo.accounts.values(), again.accounts.values(), strict=True):
        assert list(first.profiles) == list(second.profiles)
        assert [p.email for p in first.profiles.values()] == [p.email for p in second.profiles.values()]
        assert {g.id: g.members for g in first.segments.values()} == {
            g.id: g.members for g in second.segments.values()
        }
        assert {g.id: g.members for g in first.lists.values()} == {
            g.id: g.members for g in second.lists.values()
        }
        assert list(first.events) == list(second.events)


def test_demo_does_not_depend_on_the_hash_seed(demo: Store) -> None:
    # String seeds and dict orders must not depend on PYTHONHASHSEED (set iteration would).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from datetime import datetime, UTC; "
        "from klaviyo_sandbox.seed import seed_store; from klaviyo_sandbox.store import Store; "
        "import test_seed; "
        "print(test_seed._fingerprint(seed_store(Store(), 'demo', now=datetime(2026, 7, 20, tzinfo=UTC))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        cwd=Path(__file__).parents[2],
    )
    assert result.stdout.strip() == _fingerprint(demo)


def test_a_different_now_shifts_the_data_but_keeps_the_people(demo: Store) -> None:
    later = seed_store(Store(), "demo", now=NOW + timedelta(days=1))
    for first, second in zip(demo.accounts.values(), later.accounts.values(), strict=True):
        assert [p.email for p in first.profiles.values()] == [p.email for p in second.profiles.values()]
        assert max(e.datetime for e in second.events.values()) > max(
            e.datetime for e in first.events.values()
        )


# ---------------------------------------------------------------------------- demo people


def test_demo_people_is_a_stable_pure_function() -> None:
    first = list(demo_people("acme-outdoor", 300))
    random.seed(99)
    assert list(demo_people("acme-outdoor", 300)) == first
    assert list(demo_people("acme-outdoor", 120)) == first[:120]  # prefix-stable
    assert list(demo_people("acme-outdoor", 300, seed=1)) != first
    assert [p.email for p in demo_people("bloom-beauty", 50)] != [p.email for p in first[:50]]
    assert list(demo_people("acme-outdoor", 0)) == []
    with pytest.raises(ValueError):
        list(demo_people("acme-outdoor", -1))
    assert all(isinstance(p, DemoPerson) and p.index == i for i, p in enumerate(first))


def test_demo_people_identifiers_are_unique_and_plausible() -> None:
    people = list(demo_people("acme-outdoor", 5000))
    emails = [p.email for p in people]
    phones = [p.phone_number for p in people if p.phone_number]
    assert len(set(emails)) == len(emails)
    assert len(set(phones)) == len(phones)
    assert len({p.external_id for p in people}) == len(people)
    assert all(re.fullmatch(r"[a-z0-9._]+@[a-z0-9.]+\.[a-z]{2,}", e) for e in emails)
    assert all(re.fullmatch(r"shopify:\d{7}", p.external_id) for p in people)
    assert 0.70 <= len(phones) / len(people) <= 0.80
    assert {p.country_code for p in people} == {"US", "CA", "GB", "AU"}
    assert all(timedelta(0) < p.signup_age <= timedelta(days=366) for p in people)
    for person in people:
        if person.phone_number:  # the number belongs to the person's country (not e.g. Jersey for GB)
            region = phonenumbers.region_code_for_number(phonenumbers.parse(person.phone_number))
            assert region == person.country_code, person


def test_seeded_profiles_are_exactly_the_demo_people(accounts: list[Account]) -> None:
    for account, described in zip(accounts, DEMO_ACCOUNTS, strict=True):
        people = list(demo_people(described.slug, described.profile_count))
        profiles = list(account.profiles.values())
        assert [(p.email, p.phone_number, p.external_id, p.first_name, p.last_name) for p in profiles] == [
            (h.email, h.phone_number, h.external_id, h.first_name, h.last_name) for h in people
        ]
        assert all(p.created == NOW - h.signup_age for p, h in zip(profiles, people, strict=True))
        assert all(
            p.location["city"] == h.city and p.location["zip"] == h.zip
            for p, h in zip(profiles, people, strict=True)
        )
        # The identifier indexes are filled.
        assert len(account.by_email) == len(profiles)
        assert len(account.by_external_id) == len(profiles)
        assert len(account.by_phone) == sum(1 for p in profiles if p.phone_number)


def test_every_phone_is_valid_e164(accounts: list[Account]) -> None:
    for account in accounts:
        phones = [p.phone_number for p in account.profiles.values() if p.phone_number]
        assert 0.70 <= len(phones) / len(account.profiles) <= 0.80
        for phone in phones:
            parsed = phonenumbers.parse(phone)
            assert phonenumbers.is_valid_number(parsed), phone
            assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == phone
            assert phonenumbers.region_code_for_number(parsed) in ("US", "CA", "GB", "AU"), phone


# ---------------------------------------------------------------------------- accounts and profiles


def test_demo_accounts(accounts: list[Account], main_accounts: list[Account]) -> None:
    assert len(main_accounts) >= 2
    assert [a.advanced_kdp for a in accounts] == [True] + [False] * (len(accounts) - 1)
    assert len(accounts[0].profiles) >= 4000
    for account in accounts:
        assert ids.SHORT_ID_PATTERN.match(account.id)
        assert account.website_url.startswith("https://") and "@" in account.sender_email
        assert account.timezone and account.preferred_currency and account.industry


def test_an_account_without_sms(accounts: list[Account]) -> None:
    no_sms = [a for a in accounts if not a.sms_enabled]
    assert len(no_sms) == 1
    account = no_sms[0]
    assert 100 <= len(account.profiles) < 1000
    assert all(p.sms_marketing.consent == "NEVER_SUBSCRIBED" for p in account.profiles.values())
    assert all(c.channel == "email" for c in account.campaigns.values())
    assert account.metric_by_name("Received SMS") is None


def test_profiles_look_real(accounts: list[Account]) -> None:
    for account in accounts:
        profiles = list(account.profiles.values())
        assert all(ids.ULID_PATTERN.match(p.id) for p in profiles)
        assert all(NOW - timedelta(days=366) <= p.created <= p.updated <= NOW for p in profiles)
        assert all(p.email == p.email.lower() for p in profiles if p.email)
        assert all({"city", "country", "region", "zip", "timezone"} <= set(p.location) for p in profiles)
        assert all({"loyalty_tier", "favorite_category", "vip"} <= set(p.properties) for p in profiles)
        assert any(p.properties["vip"] for p in profiles)
        assert all(p.locale for p in profiles)


def test_consent_and_suppressions_are_consistent(accounts: list[Account]) -> None:
    for account in accounts:
        profiles = list(account.profiles.values())
        consents = Counter(p.email_marketing.consent for p in profiles)
        assert consents["SUBSCRIBED"] > 0.7 * len(profiles)
        assert consents["UNSUBSCRIBED"] > 0 and consents["NEVER_SUBSCRIBED"] > 0
        suppressed = [p for p in profiles if p.suppressions]
        assert 0.01 * len(profiles) <= len(suppressed) <= 0.12 * len(profiles)
        for p in profiles:
            reasons = {s.reason for s in p.suppressions}
            if p.email_marketing.consent == "UNSUBSCRIBED":
                assert reasons & {"UNSUBSCRIBE", "SPAM_COMPLAINT"}
            if reasons & {"UNSUBSCRIBE", "SPAM_COMPLAINT"}:
                assert p.email_marketing.consent == "UNSUBSCRIBED"
            if p.email_marketing.consent == "SUBSCRIBED":
                assert p.email_marketing.method and p.email_marketing.consent_timestamp
            if p.sms_marketing.consent != "NEVER_SUBSCRIBED":
                assert p.phone_number
                assert phonenumbers.region_code_for_number(phonenumbers.parse(p.phone_number)) in (
                    account.sms_countries
                )
        if account.sms_enabled:
            sms = [p for p in profiles if p.sms_marketing.consent == "SUBSCRIBED"]
            assert 0.15 * len(profiles) < len(sms) < 0.6 * len(profiles)
    reasons = Counter(s.reason for a in accounts for p in a.profiles.values() for s in p.suppressions)
    assert {"HARD_BOUNCE", "UNSUBSCRIBE", "SPAM_COMPLAINT", "USER_SUPPRESSED"} <= set(reasons)


# ---------------------------------------------------------------------------- lists and segments


def test_lists(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        processes = Counter(group.opt_in_process for group in account.lists.values())
        assert processes["double_opt_in"] >= 1 and processes["single_opt_in"] >= 1
        for group in account.lists.values():
            assert ids.SHORT_ID_PATTERN.match(group.id)
            assert len(group.members) >= 10
            assert set(group.members) <= set(account.profiles)
            assert all(at <= NOW for at in group.members.values())


def test_segments_overlap_and_range_from_tens_to_thousands(
    accounts: list[Account], main_accounts: list[Account]
) -> None:
    for account in main_accounts:
        segments = list(account.segments.values())
        assert len(segments) > 10  # more than one page of GET /api/segments
        sizes = sorted(len(s.members) for s in segments)
        assert sizes[0] < 100 and sizes[-1] >= 2000
        overlapping = [
            (a.name, b.name) for a, b in combinations(segments, 2) if set(a.members) & set(b.members)
        ]
        assert len(overlapping) >= len(segments)
        for segment in segments:
            assert ids.SHORT_ID_PATTERN.match(segment.id)
            assert segment.definition["condition_groups"]
            assert all(group["conditions"] for group in segment.definition["condition_groups"])
            assert set(segment.members) <= set(account.profiles)
            assert all(at <= NOW for at in segment.members.values())
    first = max(accounts[0].segments.values(), key=lambda s: len(s.members))
    assert first.name == "Engaged 90 days" and len(first.members) >= 3000
    names = {s.name for s in accounts[0].segments.values()}
    assert {"Engaged 30 days", "Engaged 90 days", "VIP customers", "Abandoned cart 7 days"} <= names


def test_behavioural_segments_follow_the_events(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        by_name = {s.name: s for s in account.segments.values()}
        metric = {m.name: m.id for m in account.metrics.values()}
        by_profile: dict[str, set[str]] = defaultdict(set)
        for event in account.events.values():
            by_profile[event.profile_id].add(event.metric_id)
        for pid in by_name["Engaged 30 days"].members:
            assert by_profile[pid] & {
                metric["Opened Email"],
                metric["Clicked Email"],
                metric["Viewed Product"],
                metric["Placed Order"],
            }
        assert set(by_name["Engaged 30 days"].members) <= set(by_name["Engaged 90 days"].members)
        for pid in by_name["Clicked email, no purchase"].members:
            assert metric["Clicked Email"] in by_profile[pid]
            assert metric["Placed Order"] not in by_profile[pid]
        for pid in by_name["Abandoned cart 7 days"].members:
            assert metric["Started Checkout"] in by_profile[pid]
        for pid in by_name["Browse abandonment 14 days"].members:
            assert metric["Viewed Product"] in by_profile[pid]
        for pid in by_name["Never purchased"].members:
            assert metric["Placed Order"] not in by_profile[pid]
            assert account.profiles[pid].properties["lifetime_orders"] == 0
        for pid in by_name["SMS subscribers"].members:
            assert account.profiles[pid].sms_marketing.consent == "SUBSCRIBED"


# ---------------------------------------------------------------------------- metrics, flows, campaigns


def test_metrics(accounts: list[Account]) -> None:
    for account in accounts:
        by_name = {m.name: m for m in account.metrics.values()}
        for name in (
            "Received Email",
            "Opened Email",
            "Clicked Email",
            "Bounced Email",
            "Unsubscribed",
            "Subscribed to List",
        ):
            assert by_name[name].integration == KLAVIYO_INTEGRATION
        for name in ("Placed Order", "Started Checkout", "Viewed Product"):
            assert by_name[name].integration == SHOPIFY_INTEGRATION
        assert all(ids.SHORT_ID_PATTERN.match(m.id) for m in by_name.values())


def test_flows_actions_and_messages_are_consistent(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        flows = {f.name: f for f in account.flows.values()}
        assert flows["Abandoned Cart"].trigger_type == "Metric"
        assert flows["Back in Stock"].trigger_type == "Metric"
        assert flows["Welcome Series"].trigger_type == "Added to List"
        assert all(flows[n].status == "live" for n in ("Abandoned Cart", "Back in Stock", "Welcome Series"))
        assert any(f.status == "draft" for f in flows.values())
        for flow in account.flows.values():
            assert ids.SHORT_ID_PATTERN.match(flow.id) and flow.action_ids
            for action_id in flow.action_ids:
                action = account.flow_actions[action_id]
                assert action.flow_id == flow.id and action.id.isdigit()
                assert action.action_type in ("SEND_EMAIL", "TIME_DELAY")
                assert (
                    action.definition["type"]
                    == {"SEND_EMAIL": "send-email", "TIME_DELAY": "time-delay"}[action.action_type]
                )
                if action.action_type == "SEND_EMAIL":
                    assert len(action.message_ids) == 1
                    message = account.flow_messages[action.message_ids[0]]
                    assert message.action_id == action.id and message.channel == "email"
                    assert ids.SHORT_ID_PATTERN.match(message.id)
                    assert set(message.definition["content"]) >= {
                        "subject",
                        "preview_text",
                        "from_email",
                        "from_label",
                    }
                    assert action.definition["data"]["message"]["id"] == message.id
                else:
                    assert not action.message_ids
        assert {a.flow_id for a in account.flow_actions.values()} <= set(account.flows)
        assert sum(len(f.action_ids) for f in account.flows.values()) == len(account.flow_actions)
        assert {m.action_id for m in account.flow_messages.values()} <= set(account.flow_actions)


def test_campaigns(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        campaigns = list(account.campaigns.values())
        email = [c for c in campaigns if c.channel == "email"]
        sent = [c for c in email if c.status == "Sent"]
        assert len(sent) >= 3
        assert all(c.send_time and NOW - timedelta(days=28) <= c.send_time < NOW for c in sent)
        assert any(c.status == "Scheduled" and c.send_time and c.send_time > NOW for c in email)
        assert any(c.status == "Draft" and c.send_time is None for c in email)
        assert sum(1 for c in campaigns if c.channel == "sms") == 1
        for campaign in campaigns:
            assert ids.ULID_PATTERN.match(campaign.id)
            assert len(campaign.message_ids) == 1
            message = account.campaign_messages[campaign.message_ids[0]]
            assert message.campaign_id == campaign.id and message.channel == campaign.channel
            assert ids.ULID_PATTERN.match(message.id)
            assert campaign.included_audiences
            assert all(account.group(g) is not None for g in campaign.included_audiences)


def test_record_timestamps_are_in_the_past_and_ordered(accounts: list[Account]) -> None:
    for account in accounts:
        assert account.created < NOW - timedelta(days=366)
        stamped = [
            *((g.created, g.updated) for g in [*account.lists.values(), *account.segments.values()]),
            *((m.created, m.updated) for m in account.metrics.values()),
            *((f.created, f.updated) for f in account.flows.values()),
            *((a.created, a.updated) for a in account.flow_actions.values()),
            *((m.created, m.updated) for m in account.flow_messages.values()),
            *((c.created_at, c.updated_at) for c in account.campaigns.values()),
            *((m.created_at, m.updated_at) for m in account.campaign_messages.values()),
        ]
        assert all(account.created <= created <= updated <= NOW for created, updated in stamped)
        for campaign in account.campaigns.values():
            if campaign.scheduled_at is not None:
                assert campaign.created_at <= campaign.scheduled_at <= NOW
                assert campaign.send_time is not None and campaign.scheduled_at <= campaign.send_time


# ---------------------------------------------------------------------------- events


def test_event_volume_and_shape(accounts: list[Account]) -> None:
    assert 20_000 <= len(accounts[0].events) <= 40_000
    assert all(len(a.events) < len(accounts[0].events) for a in accounts[1:])
    for account in accounts:
        last_event: dict[str, datetime] = {}
        previous = None
        for event in account.events.values():
            assert len(event.id) == 11 and event.id.isalnum()
            assert uuid.UUID(event.uuid).version == 4
            assert event.datetime.tzinfo is not None and event.datetime.utcoffset() == timedelta(0)
            assert NOW - timedelta(days=28) <= event.datetime < NOW
            assert event.metric_id in account.metrics and event.profile_id in account.profiles
            assert previous is None or previous <= event.datetime  # stored in time order
            previous = event.datetime
            last_event[event.profile_id] = event.datetime  # events are in time order
        assert len({e.uuid for e in account.events.values()}) == len(account.events)
        for profile in account.profiles.values():
            assert profile.last_event_date == last_event.get(profile.id)


def test_email_events_carry_klaviyo_attribution(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        metric_names = {m.id: m.name for m in account.metrics.values()}
        seen = Counter()
        for event in account.events.values():
            name = metric_names[event.metric_id]
            if name not in EMAIL_METRICS:
                continue
            props = event.event_properties
            assert props.keys() >= {
                "$message",
                "Subject",
                "Campaign Name",
                "$message_send_cohort",
                "Email Domain",
            }
            assert props["Email Domain"] == account.profiles[event.profile_id].email.split("@")[1]
            if name == "Clicked Email":
                assert props["URL"].startswith("https://")
            if "$flow" in props:
                flow = account.flows[props["$flow"]]
                message = account.flow_messages[props["$message"]]
                action = account.flow_actions[message.action_id]
                assert action.flow_id == flow.id and action.id in flow.action_ids
                assert message.id in action.message_ids
                assert props["Campaign Name"] == message.name
                seen[("flow", name)] += 1
            else:
                campaign = account.campaigns[props["$message"]]
                assert campaign.channel == "email" and campaign.status == "Sent"
                assert campaign.send_time is not None and event.datetime >= campaign.send_time
                assert props["Campaign Name"] == campaign.name
                seen[("campaign", name)] += 1
        for source in ("flow", "campaign"):
            for name in ("Received Email", "Opened Email", "Clicked Email"):
                assert seen[(source, name)] > 0, (source, name)
        assert (
            seen[("campaign", "Received Email")]
            > seen[("campaign", "Opened Email")]
            > seen[("campaign", "Clicked Email")]
        )


def test_email_is_only_sent_to_people_who_can_receive_it(accounts: list[Account]) -> None:
    for account in accounts:
        received = account.metric_by_name("Received Email")
        assert received is not None
        for event in account.events.values():
            if event.metric_id != received.id:
                continue
            profile = account.profiles[event.profile_id]
            consent = profile.email_marketing
            assert consent.consent_timestamp is not None and consent.consent_timestamp <= event.datetime
            assert all(s.timestamp > event.datetime for s in profile.suppressions)


def test_recent_churn_has_its_events(accounts: list[Account]) -> None:
    for account in accounts:
        metric_names = {m.id: m.name for m in account.metrics.values()}
        logged = {(metric_names[e.metric_id], e.profile_id, e.datetime) for e in account.events.values()}
        for profile in account.profiles.values():
            for suppression in profile.suppressions:
                if suppression.timestamp < NOW - timedelta(days=28):
                    continue
                expected = {"UNSUBSCRIBE": "Unsubscribed", "HARD_BOUNCE": "Bounced Email"}[suppression.reason]
                assert (expected, profile.id, suppression.timestamp) in logged


def test_shop_events_carry_order_details(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        placed = account.metric_by_name("Placed Order")
        checkout = account.metric_by_name("Started Checkout")
        assert placed is not None and checkout is not None
        orders = [e for e in account.events.values() if e.metric_id == placed.id]
        assert orders and any(e.metric_id == checkout.id for e in account.events.values())
        assert len({e.event_properties["$event_id"] for e in orders}) == len(orders)
        for event in orders:
            props = event.event_properties
            assert props["$value"] > 0 and props["OrderId"] == props["$event_id"]
            assert props["Items"] and all(item["Quantity"] >= 1 for item in props["Items"])
            assert props["$value"] == pytest.approx(sum(item["RowTotal"] for item in props["Items"]))


def test_campaign_sms_events(main_accounts: list[Account]) -> None:
    for account in main_accounts:
        received_sms = account.metric_by_name("Received SMS")
        assert received_sms is not None
        events = [e for e in account.events.values() if e.metric_id == received_sms.id]
        assert events
        for event in events:
            assert "$flow" not in event.event_properties
            assert account.campaigns[event.event_properties["$message"]].channel == "sms"
            assert account.profiles[event.profile_id].sms_marketing.consent_timestamp is not None


# ---------------------------------------------------------------------------- summary and persistence


def test_describe_store(demo: Store) -> None:
    summary = describe_store(demo)
    assert [s["id"] for s in summary] == list(demo.accounts)
    first = summary[0]
    account = demo.accounts[first["id"]]
    assert first["private_api_key"] == account.private_api_key
    assert first["public_api_key"] == account.public_api_key
    assert (first["profiles"], first["events"], first["segments"]) == (
        len(account.profiles),
        len(account.events),
        len(account.segments),
    )
    assert {"lists", "flows", "campaigns", "metrics", "name"} <= set(first)
    json.dumps(summary)


def test_seeded_state_survives_save_and_load(demo: Store, tmp_path: Path) -> None:
    # The small account only, to keep the test fast: same codec as the full state.
    small = next(a for a in demo.accounts.values() if not a.sms_enabled)
    store = Store(accounts={small.id: small}, oauth_clients=demo.oauth_clients)
    store.save(tmp_path / "state.json")
    loaded = Store.load(tmp_path / "state.json")
    assert loaded.accounts[small.id] == small
    assert loaded.oauth_clients == store.oauth_clients
