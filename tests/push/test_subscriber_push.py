"""The subscriber push against the sandbox: consent-safe, incremental, with rejections and splitting."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from connectors.klaviyo.push_settings import PushSettingsError
from orchestration.subscriber_push import (
    PushAborted,
    ledger_of_connection,
    push_connected_account,
    read_desired_state,
)

CONSENT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def push_through_the_entry_point(world, **options):
    """The push as the Dagster asset and the CLI run it (``push_connected_account``): its result."""
    with world.klaviyo.store() as store:
        return asyncio.run(
            push_connected_account(
                world.klaviyo.settings(), store, world.recart_account_id, world.warehouse, **options
            )
        )[1]


def email_subscriber(n: int, **extra) -> dict:
    """A Recart subscriber with email consent (and its consent time)."""
    return {
        "subscriber_id": f"s{n}",
        "email": f"Person{n}@Example.com ",
        "email_consent": True,
        "email_consent_at": CONSENT + timedelta(minutes=n),
        **extra,
    }


def sms_subscriber(n: int, **extra) -> dict:
    """A Recart subscriber with SMS consent and a national US number."""
    return {
        "subscriber_id": f"p{n}",
        "phone": f"(415) 555-{n:04d}",
        "sms_consent": True,
        "sms_consent_at": CONSENT + timedelta(minutes=n),
        **extra,
    }


def test_double_opt_in_list_gets_no_confirmation_email(make_push_world):
    world = make_push_world()
    doi = world.create_list("Newsletter (double opt-in)", "double_opt_in")
    world.configure(email_list_id=doi)
    world.land_subscribers(*(email_subscriber(n) for n in range(3)))

    _plan, result = world.push()

    assert result.subscribed == 3 and result.historical_import_lists == [doi]
    assert world.confirmation_emails() == []
    assert world.members(doi) == {f"person{n}@example.com" for n in range(3)}
    state = world.profile("person1@example.com")
    assert state["email_marketing"]["consent"] == "SUBSCRIBED" and state["pending_lists"] == []
    # The Recart consent time travels as Klaviyo's consent timestamp.
    assert state["email_marketing"]["consent_timestamp"].startswith("2026-03-01T12:01:00")
    [job] = world.subscription_jobs()
    assert job["historical_import"] is True and job["list_id"] == doi and job["profile_count"] == 3


def test_single_opt_in_list_is_subscribed_without_historical_import(make_push_world):
    world = make_push_world()
    soi = world.create_list("VIP (single opt-in)")
    world.configure(email_list_id=soi)
    world.land_subscribers(email_subscriber(1))

    _, result = world.push()

    assert result.historical_import_lists == []  # so the shop's "Added to List" flows still run
    [job] = world.subscription_jobs()
    assert job["historical_import"] is False and job["custom_source"] == "Recart"
    assert world.members(soi) == {"person1@example.com"}


def test_unchanged_rerun_makes_no_api_call_and_dry_run_sends_nothing(make_push_world):
    world = make_push_world()
    soi = world.create_list("Everyone")
    world.configure(email_list_id=soi)
    world.land_subscribers(*(email_subscriber(n) for n in range(5)))

    calls_before = len(world.api_calls("/api/"))
    plan, result = world.push(dry_run=True)
    assert result is None and plan.summary()["subscribe"] == {soi: 5}
    assert len(world.api_calls("/api/")) == calls_before and world.ledger() == {}
    assert "subscribe into" in plan.render()

    world.push()
    calls_after_first = len(world.api_calls("/api/"))
    # Someone else's change to a subscriber (not their consent) does not make a push.
    world.land_subscribers(email_subscriber(2, source="popup", updated_at=datetime.now(UTC)))
    plan, result = world.push()

    assert plan.is_empty and plan.unchanged == 5
    assert result.api_calls == 0 and len(world.api_calls("/api/")) == calls_after_first


def test_unsubscribe_in_klaviyo_is_not_lifted_while_recart_consent_is_unchanged(make_push_world, control):
    world = make_push_world()
    soi = world.create_list("Everyone")
    world.configure(email_list_id=soi)
    world.land_subscribers(email_subscriber(1), email_subscriber(2))
    world.push()
    # The person unsubscribes in a Klaviyo email.
    _unsubscribe_at_klaviyo(world, "person1@example.com")
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"

    world.land_subscribers(email_subscriber(1, source="checkout", updated_at=datetime.now(UTC)))
    _, result = world.push()

    assert result.api_calls == 0
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"

    # They consent again in Recart (a new consent time): that is evidence, and it is pushed.
    world.land_subscribers(
        email_subscriber(1, email_consent_at=datetime(2026, 5, 1, tzinfo=UTC), updated_at=datetime.now(UTC))
    )
    _, result = world.push()
    assert result.subscribed == 1
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "SUBSCRIBED"


def _unsubscribe_at_klaviyo(world, email: str) -> None:
    import asyncio

    async def run() -> None:
        with world.klaviyo.store() as store:
            async with world.klaviyo.client(store, world.recart_account_id) as client:
                await client.bulk_unsubscribe(None, emails=[email])

    asyncio.run(run())


def test_recart_opt_outs_reach_klaviyo(make_push_world):
    world = make_push_world()
    emails, texts = world.create_list("Email"), world.create_list("SMS")
    world.configure(email_list_id=emails, sms_list_id=texts)
    world.land_subscribers(email_subscriber(1), sms_subscriber(1), email_subscriber(2))
    world.push()
    assert world.profile("+14155550001")["sms_marketing"]["consent"] == "SUBSCRIBED"

    later = datetime.now(UTC)
    world.land_subscribers(
        email_subscriber(1, email_consent=False, email_opted_out_at=later, updated_at=later),
        sms_subscriber(1, sms_opted_out_at=later, updated_at=later),  # SMS STOP
    )
    # Someone who opted out long before the push existed and was never pushed is left alone: they
    # may have consented in Klaviyo itself since.
    world.land_subscribers(
        {
            "subscriber_id": "old",
            "email": "old@example.com",
            "email_opted_out_at": datetime(2020, 1, 1, tzinfo=UTC),
        }
    )
    plan, result = world.push()

    assert result.unsubscribed == 2 and result.unsubscribe_jobs == 1
    assert plan.not_pushed == {"opt-out before the push was enabled, never pushed": 1}
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"
    assert world.profile("+14155550001")["sms_marketing"]["consent"] == "UNSUBSCRIBED"
    assert world.profile("person2@example.com")["email_marketing"]["consent"] == "SUBSCRIBED"
    assert world.profile("old@example.com") is None
    ledger = world.ledger()
    assert ledger[("email", "person1@example.com")].state == "unsubscribed"
    assert world.push()[1].api_calls == 0


def test_withdrawn_consent_reaches_klaviyo_also_without_an_opt_out_time_or_after_deletion(make_push_world):
    world = make_push_world()
    emails, texts = world.create_list("Email"), world.create_list("SMS")
    world.configure(email_list_id=emails, sms_list_id=texts)
    world.land_subscribers(email_subscriber(1), email_subscriber(2), sms_subscriber(3), email_subscriber(4))
    world.push()

    later = datetime.now(UTC)
    world.land_subscribers(
        # consent switched off, no opt-out time: withdrawn when this change was made
        email_subscriber(1, email_consent=False, updated_at=later),
        # "opt me out and erase me": the deletion carries the opt-out
        sms_subscriber(3, sms_opted_out_at=later, deleted=True, updated_at=later),
        # deleted without an opt-out: not an opt-out, and never subscribed again
        email_subscriber(4, deleted=True, updated_at=later),
        # a phone that never had SMS consent: nothing to withdraw, never unsubscribed
        {"subscriber_id": "never", "phone": "(415) 555-0099", "updated_at": later},
    )
    _plan, result = world.push()

    assert result.unsubscribed == 2 and result.subscribed == 0
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"
    assert world.profile("+14155550003")["sms_marketing"]["consent"] == "UNSUBSCRIBED"
    assert world.profile("person2@example.com")["email_marketing"]["consent"] == "SUBSCRIBED"
    assert world.profile("person4@example.com")["email_marketing"]["consent"] == "SUBSCRIBED"
    assert world.profile("+14155550099") is None
    withdrawn = world.ledger()[("email", "person1@example.com")]
    assert withdrawn.state == "unsubscribed" and withdrawn.decided_at == later
    assert world.push()[1].api_calls == 0  # settled: nothing sent again
    # An unrelated change later does not move the withdrawal: still nothing to send.
    world.land_subscribers(
        email_subscriber(1, email_consent=False, updated_at=later + timedelta(hours=1), source="import")
    )
    assert world.push()[1].api_calls == 0
    assert world.ledger()[("email", "person1@example.com")].decided_at == later


def test_consent_given_again_after_an_opt_out_then_withdrawn_is_withdrawn_in_klaviyo(make_push_world):
    world = make_push_world()
    world.configure(email_list_id=world.create_list("Email"))
    opted_out = CONSENT + timedelta(days=1)
    again = CONSENT + timedelta(days=2)
    world.land_subscribers(
        email_subscriber(1, email_opted_out_at=opted_out, email_consent_at=again, updated_at=again)
    )
    world.push()
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "SUBSCRIBED"

    withdrawn = datetime.now(UTC)
    world.land_subscribers(
        email_subscriber(
            1, email_consent=False, email_opted_out_at=opted_out, email_consent_at=again, updated_at=withdrawn
        )
    )
    _, result = world.push()
    assert result.unsubscribed == 1
    assert world.ledger()[("email", "person1@example.com")].decided_at == withdrawn


def test_a_shop_that_switches_klaviyo_accounts_gets_everyone_pushed_to_the_new_one(make_push_world):
    world = make_push_world(account_index=0)
    first_list = world.create_list("Newsletter")
    world.configure(email_list_id=first_list)
    world.land_subscribers(*(email_subscriber(n) for n in range(3)))
    world.push()

    world.switch_klaviyo_account(1)
    with world.klaviyo.store() as store:  # lists of the old account do not exist in the new one
        assert store.push_settings(world.recart_account_id) is None
    second_list = world.create_list("Newsletter")
    world.configure(email_list_id=second_list)
    plan, result = world.push()

    assert result.subscribed == 3 and plan.moves == {} and world.rejections() == []
    assert world.members(second_list) == {f"person{n}@example.com" for n in range(3)}
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "SUBSCRIBED"

    # Back to the first account: what it accepted is still known, so nothing is sent again (a
    # second subscribe would lift an unsubscribe made in Klaviyo since).
    world.switch_klaviyo_account(0)
    world.configure(email_list_id=first_list)
    plan, result = world.push()
    assert result.api_calls == 0 and plan.unchanged == 3


def test_one_push_of_a_shop_at_a_time(make_push_world):
    """A second push of the shop (the schedule and the landing sensor may both start one) waits
    for the first to finish, then plans from the ledger the first left: nothing is sent twice."""
    import threading

    world = make_push_world()
    world.configure(email_list_id=world.create_list("Everyone"))
    world.land_subscribers(*(email_subscriber(n) for n in range(3)))
    results: list = []

    with world.klaviyo.store() as store, store.push_lock(world.recart_account_id):  # a push running
        waiting = threading.Thread(target=lambda: results.append(push_through_the_entry_point(world)))
        waiting.start()
        waiting.join(timeout=1.5)
        assert waiting.is_alive() and world.subscription_jobs() == []  # held back, nothing sent
    waiting.join(timeout=60)
    assert not waiting.is_alive() and results[0].subscribed == 3
    results.append(push_through_the_entry_point(world))  # the next one finds all three accepted
    assert results[1].api_calls == 0 and len(world.subscription_jobs()) == 1


def test_an_opt_out_reaches_klaviyo_after_the_shop_stopped_pushing_its_channel(make_push_world):
    world = make_push_world()
    emails, texts = world.create_list("Email"), world.create_list("SMS")
    world.configure(email_list_id=emails, sms_list_id=texts)
    world.land_subscribers(sms_subscriber(1), sms_subscriber(2))
    world.push()
    # The shop goes email-only; then someone the push subscribed to SMS texts STOP.
    world.configure(email_list_id=emails)
    later = datetime.now(UTC)
    world.land_subscribers(
        sms_subscriber(1, sms_opted_out_at=later, updated_at=later),
        # never pushed to SMS: its STOP is not ours to send (its consent, if any, is Klaviyo's own)
        sms_subscriber(7, sms_consent=False, sms_consent_at=None, sms_opted_out_at=later, updated_at=later),
    )

    plan, result = world.push()

    assert result.unsubscribed == 1
    assert plan.not_pushed == {
        "no sms list chosen": 1,  # the other consent: no list to go to
        "opt-out of a channel not pushed, for someone never pushed": 1,
    }
    assert world.profile("+14155550007") is None
    assert world.profile("+14155550001")["sms_marketing"]["consent"] == "UNSUBSCRIBED"
    assert world.profile("+14155550002")["sms_marketing"]["consent"] == "SUBSCRIBED"
    assert world.ledger()[("sms", "+14155550001")].state == "unsubscribed"


def test_a_switched_off_push_sends_opt_outs_and_nothing_else(make_push_world):
    world = make_push_world()
    emails = world.create_list("Email")
    world.configure(email_list_id=emails)
    world.land_subscribers(email_subscriber(1), email_subscriber(2))
    world.push()
    world.configure(email_list_id=emails, enabled=False)
    later = datetime.now(UTC)
    world.land_subscribers(
        email_subscriber(1, email_consent=False, email_opted_out_at=later, updated_at=later),
        email_subscriber(3),  # new consent: held back while the push is off
    )

    plan, result = world.push()

    assert result.unsubscribed == 1 and result.subscribed == 0
    assert plan.not_pushed == {"push switched off": 1}
    assert world.profile("person1@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"
    assert world.profile("person3@example.com") is None
    world.configure(email_list_id=emails, enabled=True)  # on again: the held-back consent goes out
    assert world.push()[1].subscribed == 1


def test_same_list_carries_both_channels_in_one_profile_and_jobs_are_ceil_n_over_1000(make_push_world):
    world = make_push_world()
    both = world.create_list("Email and SMS", "double_opt_in")
    world.configure(email_list_id=both, sms_list_id=both)
    people = [
        {
            **email_subscriber(n),
            "phone": f"+1415555{n:04d}",
            "sms_consent": True,
            "sms_consent_at": CONSENT + timedelta(hours=n),
        }
        for n in range(2500)
    ]
    world.land_subscribers(*people)

    plan, result = world.push()

    assert plan.jobs_per_list() == {both: 3}
    assert result.subscribe_jobs == {both: 3} and result.subscribed == 5000
    assert sorted(j["profile_count"] for j in world.subscription_jobs()) == [500, 1000, 1000]
    state = world.profile("person7@example.com")
    assert state["phone_number"] == "+14155550007"
    assert (
        state["email_marketing"]["consent"] == "SUBSCRIBED"
        and state["sms_marketing"]["consent"] == "SUBSCRIBED"
    )
    # Each channel carries its own consent time.
    assert state["sms_marketing"]["consent_timestamp"].startswith("2026-03-01T19:00:00")
    assert world.confirmation_emails() == []


def test_separate_lists_get_their_own_channel(make_push_world):
    world = make_push_world()
    emails, texts = world.create_list("Email"), world.create_list("SMS")
    world.configure(email_list_id=emails, sms_list_id=texts)
    world.land_subscribers(
        {**email_subscriber(1), "phone": "+14155550001", "sms_consent": True, "sms_consent_at": CONSENT}
    )

    plan, _result = world.push()

    assert plan.jobs_per_list() == {emails: 1, texts: 1}
    assert world.members(emails) == {"person1@example.com"}
    sms_job = next(j for j in world.subscription_jobs() if j["list_id"] == texts)
    assert sms_job["profile_count"] == 1
    state = world.profile("+14155550001")
    assert texts in state["lists"] and state["sms_marketing"]["consent"] == "SUBSCRIBED"
    # The desired-state view says which list each row goes to (the push mirrors the settings).
    desired = read_desired_state(world.warehouse, world.recart_account_id)
    assert {(d.channel, d.list_id) for d in desired} == {("email", emails), ("sms", texts)}


def test_bad_rows_are_rejected_with_reasons_and_the_good_rows_still_go(make_push_world):
    world = make_push_world()  # the first sandbox account's SMS covers US and CA only
    both = world.create_list("Everyone")
    world.configure(email_list_id=both, sms_list_id=both, sms_countries=["US", "CA", "GB"])
    world.land_subscribers(
        email_subscriber(1),
        {
            "subscriber_id": "bad-email",
            "email": "not-an-address",
            "email_consent": True,
            "email_consent_at": CONSENT,
        },
        {"subscriber_id": "bad-phone", "phone": "12", "sms_consent": True, "sms_consent_at": CONSENT},
        {"subscriber_id": "no-time", "email": "notime@example.com", "email_consent": True},
        {"subscriber_id": "german", "phone": "+49 30 901820", "sms_consent": True, "sms_consent_at": CONSENT},
        {
            "subscriber_id": "fake-range",
            "phone": "+1 (555) 010-0000",
            "sms_consent": True,
            "sms_consent_at": CONSENT,
        },
        # Klaviyo refuses this one (GB is outside this account's SMS setup); their email still goes.
        {
            **email_subscriber(9),
            "subscriber_id": "british",
            "phone": "+44 7400 123456",
            "sms_consent": True,
            "sms_consent_at": CONSENT,
        },
        sms_subscriber(3),
    )

    _, result = world.push()

    reasons = {(sub, channel): (reason, stage) for sub, channel, reason, stage in world.rejections()}
    assert reasons[("bad-email", "email")] == ("not an email address", "plan")
    assert reasons[("bad-phone", "sms")][1] == "plan"
    assert reasons[("no-time", "email")] == ("consent without a consent time (no evidence to push)", "plan")
    assert reasons[("german", "sms")][0].startswith("SMS not supported in DE")
    assert reasons[("fake-range", "sms")] == ("not a valid phone number (no such number range)", "validation")
    assert reasons[("british", "sms")][1] == "klaviyo" and "GB" in reasons[("british", "sms")][0]
    assert len(reasons) == 6
    assert result.rejected_by_klaviyo == 1
    assert world.members(both) == {"person1@example.com", "person9@example.com", "+14155550003"}
    # The refused row is remembered: the next run neither retries it nor forgets its rejection.
    _, again = world.push()
    assert again.api_calls == 0 and len(world.rejections()) == 6


def test_a_batch_refused_without_a_pointer_is_split_until_the_bad_row_is_isolated(make_push_world):
    world = make_push_world()
    both = world.create_list("Everyone")
    world.configure(email_list_id=both, sms_list_id=both)
    good = [email_subscriber(n) for n in range(40)]
    british = {
        "subscriber_id": "uk",
        "phone": "+447400123456",
        "sms_consent": True,
        "sms_consent_at": CONSENT,
    }
    world.land_subscribers(*good, british)
    # The first job is refused as a whole with no source pointer (Klaviyo does this for some bodies).
    world.control.put(
        "/_sandbox/faults",
        json={"fail_next": 1, "statuses": [400], "path_prefix": "/api/profile-subscription-bulk-create-jobs"},
    )

    _, result = world.push()

    assert result.subscribed == 40 and result.rejected_by_klaviyo == 1
    assert result.refused_jobs >= 2  # the injected refusal, then the half holding the British number
    assert len(world.members(both)) == 40
    assert [r[0] for r in world.rejections()] == ["uk"]


def test_too_many_refusals_stop_the_run_and_are_sent_again_once_the_setup_is_fixed(make_push_world):
    world = make_push_world(account_index=0)
    texts = world.create_list("SMS")
    world.configure(sms_list_id=texts, sms_countries=["GB", "US"])
    world.land_subscribers(
        *(
            {
                "subscriber_id": f"uk{n}",
                "phone": f"+4474001{n:05d}",
                "sms_consent": True,
                "sms_consent_at": CONSENT,
            }
            for n in range(5)
        )
    )
    with pytest.raises(PushAborted, match="refused 3 rows"):
        world.push(max_klaviyo_rejections=2, concurrency=1)
    assert len(world.rejections()) == 3  # written although the run failed
    # A setup problem, not bad rows: the refused rows are not marked rejected (their intents are
    # withdrawn); the two never answered keep their intent.
    states = sorted((e.state, e.pending_state) for e in world.ledger().values())
    assert states == [("none", "subscribed")] * 2

    # The shop enables SMS to the UK in Klaviyo: the next run sends all five again.
    world.running.sandbox.store.accounts[world.account_id].sms_countries.append("GB")
    _, result = world.push()
    assert result.subscribed == 5 and result.rejected_by_klaviyo == 0
    assert {e.state for e in world.ledger().values()} == {"subscribed"}
    assert len(world.members(texts)) == 5 and world.rejections() == []


def test_a_stopped_push_is_retried_hourly_by_the_schedule_until_one_finishes(make_push_world):
    from orchestration.sensors.push import pushable_accounts

    world = make_push_world(account_index=0)
    world.configure(sms_list_id=world.create_list("SMS"), sms_countries=["GB", "US"])
    world.land_subscribers(
        *(
            {
                "subscriber_id": f"uk{n}",
                "phone": f"+4474001{n:05d}",
                "sms_consent": True,
                "sms_consent_at": CONSENT,
            }
            for n in range(3)
        )
    )
    with pytest.raises(PushAborted):
        push_through_the_entry_point(world, max_klaviyo_rejections=1, concurrency=1)
    with world.klaviyo.store() as store:
        stopped = store.push_settings(world.recart_account_id)
    assert stopped is not None and "refused 2 rows" in (stopped.stopped_reason or "")
    account = {world.recart_account_id}
    push, skipped = pushable_accounts(world.klaviyo, account)
    assert push == [] and "retried hourly" in skipped[0]
    assert pushable_accounts(world.klaviyo, account, now=stopped.stopped_at + timedelta(minutes=61))[0] == [
        world.recart_account_id
    ]

    world.running.sandbox.store.accounts[world.account_id].sms_countries.append("GB")  # fixed
    assert push_through_the_entry_point(world).subscribed == 3  # run by hand: goes at once
    with world.klaviyo.store() as store:
        assert store.push_settings(world.recart_account_id).stopped_at is None  # type: ignore[union-attr]
    assert pushable_accounts(world.klaviyo, account)[0] == [world.recart_account_id]


def test_settings_are_validated_against_the_accounts_real_lists(make_push_world):
    world = make_push_world()
    real = world.create_list("Real")
    with pytest.raises(PushSettingsError, match="'NoSuch' does not exist"):
        world.configure(email_list_id=real, sms_list_id="NoSuch")
    with pytest.raises(PushSettingsError, match="choose a list"):
        world.configure()
    saved = world.configure(email_list_id=real, sms_list_id=real)
    assert saved.same_list and saved.list_names == {real: "Real"} and saved.enabled_since is not None
    again = world.configure(email_list_id=real)
    assert again.enabled_since == saved.enabled_since and not again.same_list


def test_a_crashed_push_is_settled_with_klaviyo_before_anything_is_sent_again(make_push_world):
    import asyncio

    from connectors.klaviyo.models import SubscribeProfile
    from warehouse.push_ledger import LedgerEntry

    world = make_push_world()
    doi = world.create_list("Newsletter", "double_opt_in")
    world.configure(email_list_id=doi)
    world.land_subscribers(*(email_subscriber(n) for n in (1, 2, 3)))
    consent = {n: CONSENT + timedelta(minutes=n) for n in (1, 2, 3)}
    # A run crashed after asking Klaviyo for all three (its intents are in the ledger) and before
    # recording the answer; Klaviyo had applied 1 and 2 only.
    with world.klaviyo.store() as store, ledger_of_connection(store, world.recart_account_id) as ledger:
        ledger.intend(
            world.recart_account_id,
            [
                LedgerEntry("email", f"person{n}@example.com", f"s{n}", "subscribed", doi, consent[n])
                for n in (1, 2, 3)
            ],
        )

    async def applied_before_the_crash() -> None:
        with world.klaviyo.store() as store:
            async with world.klaviyo.client(store, world.recart_account_id) as client:
                await client.subscribe_job(
                    doi,
                    [
                        SubscribeProfile(
                            email=f"person{n}@example.com", email_consent=True, email_consented_at=consent[n]
                        )
                        for n in (1, 2)
                    ],
                    historical_import=True,
                )

    asyncio.run(applied_before_the_crash())
    # Then person 2 unsubscribed in a Klaviyo email, before the next run.
    _unsubscribe_at_klaviyo(world, "person2@example.com")
    jobs_before = len(world.subscription_jobs())

    _, result = world.push()

    settled = result.reconciled
    assert (settled.accepted, settled.unsubscribed_since, settled.not_applied) == (1, 1, 1)
    # Only person 3, whom Klaviyo never got, is sent again; person 2's unsubscribe stands.
    [job] = world.subscription_jobs()[jobs_before:]
    assert job["profile_count"] == 1 and result.subscribed == 1
    assert world.profile("person2@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"
    # (A global unsubscribe leaves list membership alone: Klaviyo just stops sending.)
    assert world.members(doi) == {f"person{n}@example.com" for n in (1, 2, 3)}
    [(subscriber, _, reason, stage)] = world.rejections()
    assert subscriber == "s2" and stage == "klaviyo" and "unsubscribed in Klaviyo" in reason
    assert all(e.pending_state is None for e in world.ledger().values())
    assert world.push()[1].api_calls == 0


def test_a_new_list_gets_the_subscribers_without_touching_their_consent(make_push_world):
    world = make_push_world()
    old, new = world.create_list("Old"), world.create_list("New", "double_opt_in")
    world.configure(email_list_id=old)
    world.land_subscribers(*(email_subscriber(n) for n in (1, 2, 3)))
    world.push()
    _unsubscribe_at_klaviyo(world, "person2@example.com")
    world.configure(email_list_id=new)
    jobs_before = len(world.subscription_jobs())

    plan, result = world.push()

    assert plan.summary()["move_to_new_list"] == {new: 3} and result.moved == 3
    # No subscribe job (it would lift person 2's unsubscribe), no confirmation email.
    assert len(world.subscription_jobs()) == jobs_before and world.confirmation_emails() == []
    assert world.members(new) == {f"person{n}@example.com" for n in (1, 2, 3)}
    assert world.profile("person2@example.com")["email_marketing"]["consent"] == "UNSUBSCRIBED"
    assert {e.list_id for e in world.ledger().values()} == {new}
    assert world.push()[1].api_calls == 0
