"""The push ledger on its own: intents, accepted state, accounts kept apart, and older files upgraded."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from warehouse.push_ledger import LedgerEntry, PushLedger

AT = datetime(2026, 3, 1, tzinfo=UTC)


def test_an_intent_never_becomes_an_accepted_state_by_itself(tmp_path):
    with PushLedger(tmp_path / "state.db") as ledger:
        asked = [LedgerEntry("email", "a@example.com", "s1", "subscribed", "L1", AT)]
        ledger.intend("shop-1", asked, run_id="r1")
        [entry] = ledger.entries("shop-1").values()
        assert (entry.state, entry.pending_state, entry.pending_list_id, entry.pending_decided_at) == (
            "none",
            "subscribed",
            "L1",
            AT,
        )
        assert ledger.counts("shop-1") == {"pending": 1}

        ledger.record("shop-1", asked, run_id="r1")
        [entry] = ledger.entries("shop-1").values()
        assert (entry.state, entry.list_id, entry.decided_at, entry.pending_state) == (
            "subscribed",
            "L1",
            AT,
            None,
        )

        # A later opt-out in flight keeps the accepted subscription until Klaviyo answers.
        ledger.intend("shop-1", [LedgerEntry("email", "a@example.com", "s1", "unsubscribed", None, AT)])
        [entry] = ledger.entries("shop-1").values()
        assert (entry.state, entry.pending_state) == ("subscribed", "unsubscribed")
        assert ledger.entries("shop-2") == {}


def test_a_ledger_written_by_an_older_version_gains_the_new_columns(tmp_path):
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.execute(
        "create table push_ledger (recart_account_id text not null, channel text not null,"
        " contact text not null, subscriber_id text not null, state text not null, list_id text,"
        " decided_at text, reason text,"
        " pushed_at text, run_id text, primary key (recart_account_id, channel, contact))"
    )
    old.execute(
        "insert into push_ledger values ('shop-1', 'sms', '+14155550100', 'p1', 'subscribed', 'L2',"
        " '2026-03-01T00:00:00+00:00', null, '2026-03-02T00:00:00+00:00', 'r0')"
    )
    old.commit()
    old.close()

    with PushLedger(path) as ledger:
        [entry] = ledger.entries("shop-1").values()
    assert (entry.key, entry.state, entry.decided_at, entry.pending_state) == (
        ("sms", "+14155550100"),
        "subscribed",
        AT,
        None,
    )
