"""The subscriber push's ledger: what Klaviyo accepted, per account, channel and contact point.

Embedded default: tables in the SQLite state file (``RECART_STATE_DB``), beside the connections.
SQLite, not the DuckDB warehouse, because the ledger is written once per accepted batch by many
account processes at once and must never wait for a long dbt build's hold on the warehouse.

The rule that keeps it honest, a write-ahead intent per batch:

1. before a batch is sent, its rows get ``pending_state`` (what is being asked of Klaviyo), in one
   transaction; their accepted ``state`` is left as it was;
2. after Klaviyo's 202 the batch's rows move to ``state = pending_state`` and the intent is
   cleared, in one transaction (after a 400 naming a row, that row becomes ``rejected``).

So ``state`` is only ever what Klaviyo accepted, and a row with an intent says "Klaviyo holds
either ``state`` or ``pending_state``": a crash between Klaviyo's answer and step 2 leaves exactly
that, and the next run, which plans from ``state``, sends the batch again (Klaviyo takes the same
subscription twice as one).

Intents: ``subscribed``, ``unsubscribed``, ``moved`` (an already subscribed contact being added to
the shop's new list ``pending_list_id``, consent untouched).

Scope: a ledger opened for a Klaviyo account (``PushLedger(path, klaviyo_account_id)``) holds
what that Klaviyo account accepted, apart from what another Klaviyo account the shop was connected
to before accepted: after a shop switches Klaviyo accounts everyone is pushed to the new one, and
on switching back the old account's rows still guard against lifting unsubscribes made there.
Rows written before the scope existed (or by a ledger opened without one) have the empty scope
``''``; ``adopt_unscoped`` gives them to the account the shop is connected to.

States: ``none`` (nothing accepted yet, only an intent), ``subscribed`` (into ``list_id`` with the
consent at ``decided_at``), ``unsubscribed`` (the opt-out at ``decided_at``), ``rejected``
(Klaviyo refused the row for ``reason``; not retried until the person's consent changes). A run
that Klaviyo refuses too many rows is stopped as a setup problem, and its refused rows are not
marked ``rejected`` (their intents are withdrawn): they are sent again once the setup is fixed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["LedgerEntry", "PushLedger"]

_SCHEMA = """
create table if not exists push_ledger (
    recart_account_id text not null,
    klaviyo_account_id text not null default '',
    channel text not null check (channel in ('email', 'sms')),
    contact text not null,
    subscriber_id text not null,
    state text not null check (state in ('none', 'subscribed', 'unsubscribed', 'rejected')),
    list_id text,
    decided_at text,
    reason text,
    pushed_at text,
    run_id text,
    pending_state text check (pending_state in ('subscribed', 'unsubscribed', 'moved')),
    pending_list_id text,
    pending_decided_at text,
    pending_since text,
    primary key (recart_account_id, klaviyo_account_id, channel, contact)
);
"""
# The columns every version of the table has, in the order of _SCHEMA (for the scope migration).
_COLUMNS_BEFORE_SCOPE = (
    "recart_account_id, channel, contact, subscriber_id, state, list_id, decided_at, reason, pushed_at,"
    " run_id, pending_state, pending_list_id, pending_decided_at, pending_since"
)
_BUSY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class LedgerEntry:
    """One contact point's last state accepted (or refused) by Klaviyo, and any change in flight."""

    channel: str
    contact: str
    subscriber_id: str
    state: str
    list_id: str | None
    decided_at: datetime | None
    reason: str | None = None
    pending_state: str | None = None  # asked of Klaviyo, answer not recorded (a crash, or in flight)
    pending_list_id: str | None = None
    pending_decided_at: datetime | None = None
    pending_since: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(channel, contact)``: the ledger's key within an account."""
        return self.channel, self.contact


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class PushLedger:
    """The ledger on a SQLite file (WAL, busy timeout): safe for many processes at once."""

    def __init__(self, path: str | Path, klaviyo_account_id: str | None = None) -> None:
        """Open (creating if needed) the ledger tables in the SQLite file at ``path``, scoped to
        what ``klaviyo_account_id`` accepted (None: the empty scope, rows of no known account)."""
        self.path = Path(path)
        self.scope = klaviyo_account_id or ""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        self._db.execute(f"pragma busy_timeout = {int(_BUSY_TIMEOUT_SECONDS * 1000)}")
        self._db.execute("pragma journal_mode = wal")
        # FULL: a batch Klaviyo accepted stays recorded even if the machine loses power right after.
        self._db.execute("pragma synchronous = full")
        self._add_missing_columns()
        self._db.executescript(_SCHEMA)

    def _add_missing_columns(self) -> None:
        """A ledger written by an older version gains the columns added since: the intent columns
        (nullable, additive), then the Klaviyo account scope, which is part of the primary key, so
        the table is rebuilt with its rows in the empty scope (one transaction)."""
        have = {row[1] for row in self._db.execute("pragma table_info(push_ledger)")}
        if not have:
            return  # a new file: _SCHEMA creates the current table
        for name in ("pending_state", "pending_list_id", "pending_decided_at", "pending_since"):
            if name not in have:
                self._db.execute(f"alter table push_ledger add column {name} text")
        if "klaviyo_account_id" not in have:
            with self._write() as db:
                if "klaviyo_account_id" in {row[1] for row in db.execute("pragma table_info(push_ledger)")}:
                    return  # another process migrated it meanwhile
                db.execute("alter table push_ledger rename to push_ledger_before_scope")
                db.execute(_SCHEMA)  # one statement (executescript would commit half-way)
                db.execute(
                    f"insert into push_ledger ({_COLUMNS_BEFORE_SCOPE}) select {_COLUMNS_BEFORE_SCOPE}"
                    " from push_ledger_before_scope"
                )
                db.execute("drop table push_ledger_before_scope")

    def adopt_unscoped(self, recart_account_id: str) -> int:
        """Give an account's rows of the empty scope (written before the scope existed) to this
        ledger's Klaviyo account, unless it has rows of its own; returns how many moved."""
        unscoped = self._db.execute(
            "select 1 from push_ledger where recart_account_id = ? and klaviyo_account_id = '' limit 1",
            (recart_account_id,),
        ).fetchone()
        if not self.scope or not unscoped:
            return 0  # the usual case: no write transaction on every push
        with self._write() as db:
            owned = db.execute(
                "select 1 from push_ledger where recart_account_id = ? and klaviyo_account_id = ? limit 1",
                (recart_account_id, self.scope),
            ).fetchone()
            if owned:
                return 0
            return db.execute(
                "update push_ledger set klaviyo_account_id = ?"
                " where recart_account_id = ? and klaviyo_account_id = ''",
                (self.scope, recart_account_id),
            ).rowcount

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._db.close()

    def __enter__(self) -> PushLedger:
        """Use as a context manager; closes on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the ledger."""
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("begin immediate")
        try:
            yield self._db
            self._db.execute("commit")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("rollback")
            raise

    def entries(self, recart_account_id: str) -> dict[tuple[str, str], LedgerEntry]:
        """Every ledger row of one account, by ``(channel, contact)``."""
        rows = self._db.execute(
            "select channel, contact, subscriber_id, state, list_id, decided_at, reason, pending_state,"
            " pending_list_id, pending_decided_at, pending_since"
            " from push_ledger where recart_account_id = ? and klaviyo_account_id = ?",
            (recart_account_id, self.scope),
        ).fetchall()
        return {
            (row[0], row[1]): LedgerEntry(
                *row[:5],
                _parse(row[5]),
                row[6],
                row[7],
                row[8],
                _parse(row[9]),
                _parse(row[10]),
            )
            for row in rows
        }

    # Both writes bind the same eleven values (numbered): ?1 account, ?2 channel, ?3 contact,
    # ?4 subscriber, ?5 state, ?6 list id, ?7 decided at, ?8 reason, ?9 now, ?10 run id, ?11 scope.
    _INTEND_SQL = (
        "insert into push_ledger (recart_account_id, channel, contact, subscriber_id, state,"
        " pending_state, pending_list_id, pending_decided_at, pending_since, run_id, klaviyo_account_id)"
        " values (?1, ?2, ?3, ?4, 'none', ?5, ?6, ?7, ?9, ?10, ?11)"
        " on conflict (recart_account_id, klaviyo_account_id, channel, contact) do update set"
        " pending_state = excluded.pending_state, pending_list_id = excluded.pending_list_id,"
        " pending_decided_at = excluded.pending_decided_at,"
        " pending_since = excluded.pending_since, run_id = excluded.run_id"
    )
    _RECORD_SQL = (
        "insert into push_ledger (recart_account_id, channel, contact, subscriber_id, state, list_id,"
        " decided_at, reason, pushed_at, run_id, klaviyo_account_id)"
        " values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        " on conflict (recart_account_id, klaviyo_account_id, channel, contact) do update set"
        " subscriber_id = excluded.subscriber_id, state = excluded.state, list_id = excluded.list_id,"
        " decided_at = excluded.decided_at, reason = excluded.reason, pushed_at = excluded.pushed_at,"
        " run_id = excluded.run_id,"
        " pending_state = null, pending_list_id = null, pending_decided_at = null, pending_since = null"
    )

    def intend(
        self, recart_account_id: str, entries: Iterable[LedgerEntry], run_id: str | None = None
    ) -> int:
        """Step 1: record what is about to be asked of Klaviyo (``entries``' state), before sending."""
        return self._write_entries(self._INTEND_SQL, recart_account_id, entries, run_id)

    def record(
        self, recart_account_id: str, entries: Iterable[LedgerEntry], run_id: str | None = None
    ) -> int:
        """Step 2: record what Klaviyo just accepted (or refused) for one batch, in one transaction,
        clearing the batch's intent."""
        return self._write_entries(self._RECORD_SQL, recart_account_id, entries, run_id)

    def _write_entries(
        self, sql: str, recart_account_id: str, entries: Iterable[LedgerEntry], run_id: str | None
    ) -> int:
        now = _iso(datetime.now(UTC))
        rows = [
            (
                recart_account_id,
                e.channel,
                e.contact,
                e.subscriber_id,
                e.state,
                e.list_id,
                _iso(e.decided_at) if e.decided_at else None,
                e.reason,
                now,
                run_id,
                self.scope,
            )
            for e in entries
        ]
        if rows:
            with self._write() as db:
                db.executemany(sql, rows)
        return len(rows)

    def withdraw_intents(self, recart_account_id: str, entries: Iterable[LedgerEntry]) -> int:
        """Clear the intents of rows whose batch Klaviyo refused (a 400 changes nothing there): each
        row is back to its last accepted state, and a row that never had one is dropped."""
        keys = [(recart_account_id, self.scope, e.channel, e.contact) for e in entries]
        if keys:
            with self._write() as db:
                db.executemany(
                    "update push_ledger set pending_state = null, pending_list_id = null,"
                    " pending_decided_at = null, pending_since = null"
                    " where recart_account_id = ? and klaviyo_account_id = ? and channel = ? and contact = ?",
                    keys,
                )
                db.executemany(
                    "delete from push_ledger where recart_account_id = ? and klaviyo_account_id = ?"
                    " and channel = ? and contact = ? and state = 'none'",
                    keys,
                )
        return len(keys)

    def counts(self, recart_account_id: str) -> dict[str, int]:
        """How many contact points the ledger holds per state for one account."""
        counts = dict(
            self._db.execute(
                "select state, count(*) from push_ledger where recart_account_id = ?"
                " and klaviyo_account_id = ? and state != 'none' group by state",
                (recart_account_id, self.scope),
            ).fetchall()
        )
        counts["pending"] = self._db.execute(
            "select count(*) from push_ledger where recart_account_id = ? and klaviyo_account_id = ?"
            " and pending_state is not null",
            (recart_account_id, self.scope),
        ).fetchone()[0]
        return counts

    def forget(self, recart_account_id: str) -> int:
        """Drop an account's ledger in this scope (its next push sends everything the plan holds again)."""
        with self._write() as db:
            return db.execute(
                "delete from push_ledger where recart_account_id = ? and klaviyo_account_id = ?",
                (recart_account_id, self.scope),
            ).rowcount
