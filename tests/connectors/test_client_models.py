"""Pure unit tests of the client's building blocks: the filter builder, the typed models, and the
hard-coded operation table (checked against the bundled Klaviyo spec, so it cannot drift)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from connectors.klaviyo import filters
from connectors.klaviyo.client import OPERATIONS, ClientStats, RetryPolicy
from connectors.klaviyo.errors import MalformedResponseError
from connectors.klaviyo.models import (
    Account,
    Campaign,
    Event,
    KlaviyoList,
    Member,
    Profile,
    Segment,
    SubscribeProfile,
    Webhook,
)
from connectors.klaviyo.ratelimit import EXTRA_TIERS, TIERS
from klaviyo_sandbox import spec
from klaviyo_sandbox.filters import compile_filter

# ---------------------------------------------------------------------------- filters


def test_filter_values_render_in_klaviyos_grammar() -> None:
    when = datetime(2024, 11, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    assert str(filters.equals("metric_id", "UmeLw3")) == 'equals(metric_id,"UmeLw3")'
    assert str(filters.any_of("id", ["a", "b"])) == 'any(id,["a","b"])'
    assert (
        str(filters.greater_than("joined_group_at", when))
        == "greater-than(joined_group_at,2024-11-01T06:30:00+00:00)"
    )
    assert (
        str(filters.greater_or_equal("datetime", when))
        == "greater-or-equal(datetime,2024-11-01T06:30:00+00:00)"
    )
    assert str(filters.less_than("timestamp", 1700000000)) == "less-than(timestamp,1700000000)"
    assert str(filters.less_or_equal("updated", date(2024, 1, 2))) == "less-or-equal(updated,2024-01-02)"
    assert str(filters.equals("archived", False)) == "equals(archived,false)"
    assert str(filters.equals("x", None)) == "equals(x,null)"
    assert str(filters.has("profile")) == "has(profile)"
    assert str(filters.contains("name", "Sale")) == 'contains(name,"Sale")'


def test_strings_are_quoted_and_escaped() -> None:
    assert str(filters.equals("name", 'say "hi" \\ bye')) == r'equals(name,"say \"hi\" \\ bye")'


def test_and_joins_with_commas_and_skips_none() -> None:
    combined = filters.and_(filters.equals("metric_id", "m1"), None, filters.has("profile"))
    assert str(combined) == 'equals(metric_id,"m1"),has(profile)'
    with pytest.raises(ValueError):
        filters.and_()


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        filters.greater_than("datetime", datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        filters.equals("bad field)", "x")
    with pytest.raises(ValueError):
        filters.any_of("id", [])
    with pytest.raises(TypeError):
        filters.equals("x", object())  # type: ignore[arg-type]


def test_built_filters_parse_in_the_sandboxs_klaviyo_grammar() -> None:
    # The sandbox implements Klaviyo's grammar and the spec's per-endpoint filter rules.
    when = datetime(2024, 11, 1, tzinfo=UTC)
    members = spec.operation_by_id("get_profiles_for_segment").filters
    events = spec.operation_by_id("get_events").filters
    profiles = spec.operation_by_id("get_profiles").filters
    tricky = 'o"brien\\x'
    assert compile_filter(str(filters.greater_than("joined_group_at", when)), members)[0].value == when
    parsed = compile_filter(
        str(
            filters.and_(
                filters.equals("metric_id", "m1"),
                filters.greater_or_equal("datetime", when),
                filters.less_than("datetime", when + timedelta(days=1)),
            )
        ),
        events,
    )
    assert [c.operator for c in parsed] == ["equals", "greater-or-equal", "less-than"]
    assert compile_filter(str(filters.any_of("email", [tricky, "b@c.d"])), profiles)[0].value == [
        tricky,
        "b@c.d",
    ]


# ---------------------------------------------------------------------------- models


def _resource(type_: str, id_: str = "X1", **attributes: object) -> dict:
    return {"type": type_, "id": id_, "attributes": attributes}


def test_member_needs_joined_group_at_and_names_the_endpoint() -> None:
    good = _resource("profile", "01P", email="a@b.c", joined_group_at="2026-09-04T13:40:19.268993+00:00")
    member = Member.from_resource(good, "GET /api/segments/S1/profiles")
    assert member.joined_group_at == datetime(2026, 9, 4, 13, 40, 19, 268993, tzinfo=UTC)
    assert member.phone_number is None
    with pytest.raises(MalformedResponseError) as caught:
        Member.from_resource(_resource("profile", "01P", email="a@b.c"), "GET /api/segments/S1/profiles")
    assert caught.value.endpoint == "GET /api/segments/S1/profiles" and "joined_group_at" in str(caught.value)
    with pytest.raises(MalformedResponseError, match="got type 'list'"):
        Member.from_resource(_resource("list"), "GET /api/lists/L/profiles")
    with pytest.raises(MalformedResponseError, match="not a datetime"):
        Member.from_resource(_resource("profile", joined_group_at="yesterday"), "E")
    with pytest.raises(MalformedResponseError, match="without an id"):
        Member.from_resource({"type": "profile", "attributes": {}}, "E")
    with pytest.raises(MalformedResponseError, match="email"):
        Member.from_resource(_resource("profile", email=5, joined_group_at="2026-01-01T00:00:00+00:00"), "E")


def test_groups_and_profiles_parse() -> None:
    the_list = KlaviyoList.from_resource(
        _resource(
            "list",
            name="VIP",
            opt_in_process="double_opt_in",
            created="2024-01-01T00:00:00+00:00",
            profile_count=3,
        )
    )
    assert the_list.is_double_opt_in and the_list.profile_count == 3 and the_list.updated is None
    # Not said (null): the account's default applies, which may be double opt-in, so no confirmation
    # may go out because of us either; only a list that says single opt-in is one.
    assert KlaviyoList.from_resource(_resource("list", name="L", opt_in_process=None)).is_double_opt_in
    single = KlaviyoList.from_resource(_resource("list", name="L", opt_in_process="single_opt_in"))
    assert not single.is_double_opt_in
    segment = Segment.from_resource(_resource("segment", name="S", is_active=True, is_processing=False))
    assert segment.profile_count is None and segment.is_active
    with pytest.raises(MalformedResponseError, match="'name'"):
        Segment.from_resource(_resource("segment"), "GET /api/segments")
    with pytest.raises(MalformedResponseError, match="profile_count"):
        Segment.from_resource(_resource("segment", name="S", profile_count=True), "GET /api/segments/X1")
    profile = Profile.from_resource(
        _resource(
            "profile",
            email="a@b.c",
            properties={"tier": "gold"},
            subscriptions={"email": {"marketing": {"consent": "SUBSCRIBED"}}, "sms": None},
        )
    )
    assert profile.email_marketing_consent == "SUBSCRIBED" and profile.sms_marketing_consent is None
    assert profile.properties == {"tier": "gold"}
    account = Account.from_resource(
        _resource("account", "ACC1", test_account=False, contact_information={"organization_name": "Acme"})
    )
    assert account.name == "Acme"


def test_event_flow_attribution() -> None:
    base = {
        "type": "event",
        "id": "E1",
        "attributes": {"timestamp": 1, "datetime": "2026-01-01T00:00:00+00:00", "event_properties": {}},
        "relationships": {
            "metric": {"data": {"type": "metric", "id": "M1"}},
            "profile": {"data": {"type": "profile", "id": "P1"}},
        },
    }
    campaign = Event.from_resource(
        {**base, "attributes": {**base["attributes"], "event_properties": {"$message": "C1"}}}
    )
    flow = Event.from_resource(
        {**base, "attributes": {**base["attributes"], "event_properties": {"$flow": "F1", "$message": "FM1"}}}
    )
    assert (campaign.is_flow_event, campaign.flow_id, campaign.message_id) == (False, None, "C1")
    assert (flow.is_flow_event, flow.flow_id, flow.message_id) == (True, "F1", "FM1")
    assert flow.metric_id == "M1" and flow.profile_id == "P1"
    with pytest.raises(MalformedResponseError, match="timestamp"):
        Event.from_resource(
            {**base, "attributes": {**base["attributes"], "timestamp": "soon"}}, "GET /api/events"
        )


def test_webhook_and_campaign_parse() -> None:
    hook = Webhook.from_resource(
        {
            **_resource("webhook", "W1", name="n", enabled=True, endpoint_url="https://h/*****"),
            "relationships": {
                "webhook-topics": {"data": [{"type": "webhook-topic", "id": "event:klaviyo.clicked_email"}]}
            },
        }
    )
    assert hook.topics == ("event:klaviyo.clicked_email",)
    assert Webhook.from_resource(_resource("webhook", name="n")).topics is None
    campaign = Campaign.from_resource(
        _resource("campaign", name="C", audiences={"included": ["L1"], "excluded": []})
    )
    assert campaign.included_audiences == ("L1",)


def test_subscribe_profile_needs_consent_evidence() -> None:
    with pytest.raises(ValueError):
        SubscribeProfile(email="a@b.c")  # no consent at all
    with pytest.raises(ValueError):
        SubscribeProfile(phone_number=None, sms_consent=True)
    with pytest.raises(ValueError):
        SubscribeProfile(email="a@b.c", email_consent=True, email_consented_at=datetime(2024, 1, 1))
    assert SubscribeProfile(email="a@b.c", email_consent=True).sms_consent is False


# ---------------------------------------------------------------------------- operations and policy


@pytest.mark.parametrize("operation_id", sorted(OPERATIONS))
def test_operation_table_matches_the_spec(operation_id: str) -> None:
    ours = OPERATIONS[operation_id]
    theirs = spec.operation_by_id(operation_id)
    assert (ours.method, ours.path) == (theirs.method, theirs.path)
    tier = TIERS[ours.tier]
    assert (tier.burst, tier.steady) == (theirs.rate_limit.burst, theirs.rate_limit.steady)
    assert set(ours.extra) == set(theirs.extra_limits)
    for name in ours.extra:
        limit = theirs.extra_limits[name]
        assert (EXTRA_TIERS[name].burst, EXTRA_TIERS[name].steady) == (limit.burst, limit.steady)
    expected_page = theirs.page_size[2] if theirs.page_size else None
    assert ours.page_size == expected_page
    # Non-GET operations we retry must be idempotent in effect; creating a webhook is not.
    if operation_id == "create_webhook":
        assert not ours.idempotent


def test_stats_and_policy() -> None:
    stats = ClientStats(api_calls=3, throttled=1)
    assert stats.as_metadata()["api_calls"] == 3 and stats.as_metadata()["throttled"] == 1
    assert all(isinstance(v, int | float) for v in stats.as_metadata().values())
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_profile_marketing_consent_reads_each_channels_consent_and_time():
    profile = Profile.from_resource(
        {
            "type": "profile",
            "id": "01ABC",
            "attributes": {
                "email": "a@b.c",
                "subscriptions": {
                    "email": {
                        "marketing": {"consent": "SUBSCRIBED", "consent_timestamp": "2026-03-01T12:00:00Z"}
                    },
                    "sms": {
                        "marketing": {"consent": "UNSUBSCRIBED", "consent_timestamp": "2026-03-02T08:00:00"}
                    },
                },
            },
        }
    )
    assert profile.marketing_consent("email") == ("SUBSCRIBED", datetime(2026, 3, 1, 12, tzinfo=UTC))
    assert profile.marketing_consent("sms") == ("UNSUBSCRIBED", datetime(2026, 3, 2, 8, tzinfo=UTC))
    assert profile.marketing_consent("whatsapp") == (None, None)
