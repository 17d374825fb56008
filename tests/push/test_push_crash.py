"""Crash safety: ``recart-klaviyo push`` killed with SIGKILL at random points, then run again.

After every kill the ledger must not claim anything Klaviyo does not hold; after the final run the
sandbox must hold exactly the plan (every planned subscription and opt-out, no one else in the
lists), and one more run must make no API call.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestration.subscriber_push import read_desired_state

ENTRY_POINT = Path(sys.executable).with_name("recart-klaviyo")
KILLS = 22


def _sandbox_truth(world) -> tuple[dict[tuple[str, str], str], dict[str, set[str]]]:
    """(channel, contact) → consent at the sandbox, and each list's members as contacts.

    Read straight from the in-process sandbox store while no push runs (faster than 5,000 calls).
    """
    account = world.running.sandbox.store.accounts[world.account_id]
    consent: dict[tuple[str, str], str] = {}
    # Atomic copies (the sandbox's loop runs in another thread), lists first: a profile is stored
    # before it joins a list, so every member found has its profile in the later copy.
    lists = {list_id: list(klist.members) for list_id, klist in dict(account.lists).items()}
    profiles = dict(account.profiles)
    for profile in profiles.values():
        if profile.email:
            consent[("email", profile.email)] = profile.email_marketing.consent
        if profile.phone_number:
            consent[("sms", profile.phone_number)] = profile.sms_marketing.consent
    members = {
        list_id: {
            contact
            for pid in member_ids
            for contact in (profiles[pid].email, profiles[pid].phone_number)
            if contact
        }
        for list_id, member_ids in lists.items()
    }
    return consent, members


def _holds(consent: dict, members: dict, channel: str, contact: str, state: str, list_id: str | None) -> bool:
    if state == "subscribed":
        return consent.get((channel, contact)) == "SUBSCRIBED" and contact in members[list_id]
    if state == "unsubscribed":
        # Unsubscribed, or never known to Klaviyo (an opt-out of someone it never had).
        return consent.get((channel, contact), "UNSUBSCRIBED") == "UNSUBSCRIBED"
    return True  # none / rejected claim nothing about Klaviyo


def _ledger_is_true(world) -> tuple[int, int]:
    """Assert the ledger claims nothing Klaviyo does not hold: its accepted state holds, or, for a
    row with a change in flight when the process died, the state asked for. Returns (rows, in flight)."""
    consent, members = _sandbox_truth(world)
    ledger = world.ledger()
    for (channel, contact), e in ledger.items():
        held = _holds(consent, members, channel, contact, e.state, e.list_id)
        if e.pending_state is not None:
            asked = "subscribed" if e.pending_state == "moved" else e.pending_state
            held = held or _holds(consent, members, channel, contact, asked, e.pending_list_id)
        assert held, (channel, contact, e)
    return len(ledger), sum(e.pending_state is not None for e in ledger.values())


def _wait_until_sandbox_is_idle(world, timeout: float = 60) -> None:
    """Requests of a killed client that had arrived are still applied (as at Klaviyo): wait until
    the sandbox has answered every one before reading its store."""
    deadline = time.monotonic() + timeout
    while world.running.sandbox.in_flight:
        assert time.monotonic() < deadline, "the sandbox kept working for a minute"
        time.sleep(0.02)


def _env(world) -> dict[str, str]:
    k = world.klaviyo
    return {
        **os.environ,
        "KLAVIYO_BASE_URL": k.base_url,
        "KLAVIYO_AUTHORIZE_URL": k.authorize_url,
        "KLAVIYO_CLIENT_ID": k.client_id,
        "KLAVIYO_CLIENT_SECRET": k.client_secret,
        "KLAVIYO_REDIRECT_URI": k.redirect_uri,
        "RECART_STATE_DB": k.state_db,
        "RECART_ENCRYPTION_KEY": k.encryption_key,
        "WAREHOUSE_DUCKDB_PATH": str(world.warehouse),
    }


def _people(start: int, count: int, consent_at: datetime) -> list[dict]:
    """Subscribers with email consent; every third also with SMS consent on a US number."""
    rows = []
    for n in range(start, start + count):
        row = {
            "subscriber_id": f"s{n}",
            "email": f"crash{n}@example.com",
            "email_consent": True,
            "email_consent_at": consent_at,
        }
        if n % 3 == 0:
            row |= {"phone": f"+1415{2_000_000 + n:07d}", "sms_consent": True, "sms_consent_at": consent_at}
        rows.append(row)
    return rows


def test_kill_9_at_random_points_then_rerun_converges_to_the_plan(make_push_world):
    world = make_push_world()
    emails = world.create_list("Newsletter", "double_opt_in")
    texts = world.create_list("Texts")
    world.configure(email_list_id=emails, sms_list_id=texts)
    consent_at = datetime(2026, 6, 1, tzinfo=UTC)
    world.land_subscribers(*_people(0, 4000, consent_at))
    # Slow the sandbox's subscription endpoints so a push lasts long enough to be cut anywhere.
    world.control.put(
        "/_sandbox/faults", json={"latency_ms": 100, "path_prefix": "/api/profile-subscription"}
    )
    rng = random.Random(20261129)
    env = _env(world)
    command = [str(ENTRY_POINT), "push", world.recart_account_id]
    killed_mid_push = 0
    in_flight_after_kills = 0
    next_person = 4000
    log = world.running.sandbox.request_log

    def subscription_calls() -> int:
        return sum(1 for r in list(log) if r["path"].startswith("/api/profile-subscription"))

    for _ in range(KILLS):
        # Between crashes Recart keeps collecting: new consents and opt-outs of people pushed before
        # (about five jobs per run: 1,000 emails, 333 phones, 250 opt-outs at 100 per job).
        now = datetime.now(UTC)
        world.land_subscribers(*_people(next_person, 1000, now - timedelta(seconds=5)))
        next_person += 1000
        # A change row carries the whole subscriber (their phone and SMS consent stay as they were).
        world.land_subscribers(
            *(
                _people(n, 1, consent_at)[0]
                | {"email_consent": False, "email_opted_out_at": now, "updated_at": now}
                for n in rng.sample(range(next_person - 1000), 250)
            )
        )
        # Kill after a random number of answered subscription calls, plus a random moment: in
        # flight, between Klaviyo's answer and the ledger write, or inside a ledger transaction.
        before = subscription_calls()
        kill_after, extra = rng.randint(1, 4), rng.uniform(0.0, 0.2)
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while process.poll() is None and subscription_calls() - before < kill_after:
            assert time.monotonic() < deadline, "the push made no progress"
            time.sleep(0.005)
        time.sleep(extra)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_mid_push += 1
        process.wait(timeout=60)
        _wait_until_sandbox_is_idle(world)
        # The ledger never claims what Klaviyo does not hold.
        in_flight_after_kills += _ledger_is_true(world)[1]

    assert killed_mid_push >= 20, f"only {killed_mid_push} of {KILLS} runs were cut mid-way"
    assert in_flight_after_kills > 0  # some kills did land between sending and recording

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    assert world.rejections() == []
    desired = read_desired_state(world.warehouse, world.recart_account_id)
    consent, members = _sandbox_truth(world)
    planned_subscribed = {(d.channel, d.contact) for d in desired if d.desired_state == "subscribed"}
    planned_unsubscribed = {(d.channel, d.contact) for d in desired if d.desired_state == "unsubscribed"}
    assert len(planned_subscribed) > 4000 and len(planned_unsubscribed) > 500
    assert {k for k, v in consent.items() if v == "SUBSCRIBED"} == planned_subscribed
    assert {k for k, v in consent.items() if v == "UNSUBSCRIBED"} <= planned_unsubscribed
    assert all(consent.get(k, "UNSUBSCRIBED") == "UNSUBSCRIBED" for k in planned_unsubscribed)
    # Opted-out emails were taken out of marketing; list membership holds exactly the subscribed.
    assert members[texts] == {c for ch, c in planned_subscribed if ch == "sms"}
    assert {c for c in members[emails]} >= {c for ch, c in planned_subscribed if ch == "email"}
    assert world.confirmation_emails() == []
    assert _ledger_is_true(world) == (len(planned_subscribed) + len(planned_unsubscribed), 0)

    again = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert '"api_calls": 0' in again.stdout
