"""The push ledger on its own: intents, accepted state, accounts (Recart and Klaviyo) kept apart, and
older files upgraded."""

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
    # The Klaviyo account scope came with a rebuilt table: the row is in the empty scope, and the
    # new primary key holds the scope.
    check = sqlite3.connect(path)
    assert check.execute("select klaviyo_account_id from push_ledger").fetchall() == [("",)]
    key = [row[1] for row in check.execute("pragma table_info(push_ledger)") if row[5]]
    assert key == ["recart_account_id", "klaviyo_account_id", "channel", "contact"]
    assert check.execute("select name from sqlite_master where name like '%before_scope'").fetchall() == []
    check.close()


def test_each_klaviyo_account_has_its_own_ledger_and_old_rows_go_to_the_connected_one(tmp_path):
    path = tmp_path / "state.db"
    subscribed = [LedgerEntry("email", "a@example.com", "s1", "subscribed", "L1", AT)]
    with PushLedger(path) as unscoped:  # rows from before the scope existed
        unscoped.record("shop-1", subscribed)

    with PushLedger(path, "K1") as first:
        assert first.entries("shop-1") == {}
        assert first.adopt_unscoped("shop-1") == 1
        assert list(first.entries("shop-1")) == [("email", "a@example.com")]
    # The shop switches to Klaviyo account K2: nothing is known to be accepted there.
    with PushLedger(path, "K2") as second:
        assert second.adopt_unscoped("shop-1") == 0 and second.entries("shop-1") == {}
        second.record("shop-1", [LedgerEntry("email", "a@example.com", "s1", "unsubscribed", None, AT)])
        assert second.counts("shop-1") == {"unsubscribed": 1, "pending": 0}
    # Back on K1: what K1 accepted is still known (and guards unsubscribes made there).
    with PushLedger(path, "K1") as first_again:
        [entry] = first_again.entries("shop-1").values()
        assert (entry.state, entry.list_id) == ("subscribed", "L1")
        assert first_again.forget("shop-1") == 1
    with PushLedger(path, "K2") as second_again:
        assert second_again.counts("shop-1") == {"unsubscribed": 1, "pending": 0}
