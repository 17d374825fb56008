"""The push desired-state view's one data test (``push_desired_state_is_well_formed``) fails on
each of its rules and names the rule.

The view cannot produce a bad row from raw data (that is what it is for), so a table of rows takes
its place in the warehouse and ``dbt test`` runs the project's test on it, as a build would.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from orchestration.dbt_manifest import run_dbt

TEST_NAME = "klaviyo_push_desired_state_is_well_formed"
COLUMNS = "account_id, channel, contact, subscriber_id, desired_state, rejection_reason"

FINE = [
    ("acme", "email", "ann@example.com", "s1", "subscribed", None),
    ("acme", "sms", "+14155550100", "s1", "unsubscribed", None),
    ("other", "email", "ann@example.com", "s1", "subscribed", None),  # the same contact in another account
    # Rejected rows: no state, and neither an unreadable contact twice nor a rejected copy of a
    # pushable contact is a duplicate.
    ("acme", "email", None, "s2", None, "not an email address"),
    ("acme", "email", None, "s3", None, "not an email address"),
    ("acme", "email", "ann@example.com", "s4", None, "consent without a consent time (no evidence to push)"),
]
BROKEN = {
    "duplicate (account_id, channel, contact) among pushable rows": [
        ("acme", "email", "dup@example.com", "s10", "subscribed", None),
        ("acme", "email", "dup@example.com", "s11", "unsubscribed", None),
    ],
    "account_id is null": [(None, "email", "a@example.com", "s12", "subscribed", None)],
    "channel is null": [("acme", None, "b@example.com", "s13", "subscribed", None)],
    "subscriber_id is null": [("acme", "email", "c@example.com", None, "subscribed", None)],
    "channel not in accepted values": [("acme", "push", "d@example.com", "s14", "subscribed", None)],
    "desired_state not in accepted values": [("acme", "email", "e@example.com", "s15", "pending", None)],
}


def _warehouse_with(path: Path, rows: list[tuple]) -> None:
    """Make ``path``'s push.klaviyo_push_desired_state a table holding ``rows``."""
    conn = duckdb.connect(str(path))
    try:
        conn.execute("create schema if not exists push")
        conn.execute(
            "create or replace table push.klaviyo_push_desired_state (account_id varchar, channel varchar,"
            " contact varchar, subscriber_id varchar, desired_state varchar, decided_at timestamptz,"
            " list_id varchar, contact_as_given varchar, rejection_reason varchar)"
        )
        conn.executemany(
            f"insert into push.klaviyo_push_desired_state ({COLUMNS}) values (?, ?, ?, ?, ?, ?)", rows
        )
    finally:
        conn.close()


def _test_the_view(database: Path, work: Path) -> tuple[str, list[tuple]]:
    """``dbt test`` of the view: dbt's output, and the rows of the test's query (rule, subscriber_id)."""
    done = run_dbt(["test", "--select", "klaviyo_push_desired_state"], database, work)
    compiled = next((work / "target" / "compiled").rglob(f"{TEST_NAME}.sql")).read_text()
    conn = duckdb.connect(str(database), read_only=True)
    try:
        rows = conn.execute(f"select rule, subscriber_id from ({compiled}) order by all").fetchall()
    finally:
        conn.close()
    return done.stdout + done.stderr, rows


def test_well_formed_rows_pass_and_each_rule_fails_with_its_name(tmp_path: Path):
    database = tmp_path / "warehouse.duckdb"
    _warehouse_with(database, FINE)
    output, rows = _test_the_view(database, tmp_path)
    assert f"PASS {TEST_NAME}" in output, output[-3000:]
    assert rows == []

    _warehouse_with(database, FINE + [row for broken in BROKEN.values() for row in broken])
    output, rows = _test_the_view(database, tmp_path)
    assert f"Failure in test {TEST_NAME}" in output, output[-3000:]
    assert f"Got {len(BROKEN)} results" in output, output[-3000:]
    # One row per violation, naming its rule; a duplicated key once (its first subscriber).
    assert rows == sorted((rule, broken[0][3]) for rule, broken in BROKEN.items())
