"""The subscriber push's ledger: what Klaviyo accepted, per account, channel and contact point.

Embedded default: tables in the SQLite state file (``RECART_STATE_DB``), beside the connections.
SQLite, not the DuckDB warehouse, because the ledger is written once per accepted batch by many
account processes at once and must never wait for a long dbt build's hold on the warehouse.

The rule that keeps it honest: a row is written only after Klaviyo answered 202 for the batch
that carried it (or 400 for that very row: ``rejected``), in one transaction per batch. A crash
between Klaviyo's answer and the write loses the row, never invents one; the next run sends that
batch again, which Klaviyo takes as the same subscription.

States: ``subscribed`` (into ``list_id`` with the consent at ``decided_at``), ``unsubscribed`` (the
opt-out at ``decided_at``), ``rejected`` (Klaviyo refused the row for ``reason``; not retried
until the person's consent changes).
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
    channel text not null check (channel in ('email', 'sms')),
    contact text not null,
    subscriber_id text not null,
    state text not null check (state in ('subscribed', 'unsubscribed', 'rejected')),
    list_id text,
    decided_at text not null,
    reason text,
    pushed_at text not null,
    run_id text,
    primary key (recart_account_id, channel, contact)
);
"""
_BUSY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class LedgerEntry:
    """One contact point's last state accepted (or refused) by Klaviyo."""

    channel: str
    contact: str
    subscriber_id: str
    state: str
    list_id: str | None
    decided_at: datetime
    reason: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(channel, contact)``: the ledger's key within an account."""
        return self.channel, self.contact


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class PushLedger:
    """The ledger on a SQLite file (WAL, busy timeout): safe for many processes at once."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating if needed) the ledger tables in the SQLite file at ``path``."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
        self._db.execute(f"pragma busy_timeout = {int(_BUSY_TIMEOUT_SECONDS * 1000)}")
        self._db.execute("pragma journal_mode = wal")
        # FULL: a batch Klaviyo accepted stays recorded even if the machine loses power right after.
        self._db.execute("pragma synchronous = full")
        self._db.executescript(_SCHEMA)

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
            "select channel, contact, subscriber_id, state, list_id, decided_at, reason"
            " from push_ledger where recart_account_id = ?",
            (recart_account_id,),
        ).fetchall()
        return {
            (channel, contact): LedgerEntry(
                channel, contact, subscriber, state, list_id, datetime.fromisoformat(decided), reason
            )
            for channel, contact, subscriber, state, list_id, decided, reason in rows
        }

    def record(
        self, recart_account_id: str, entries: Iterable[LedgerEntry], run_id: str | None = None
    ) -> int:
        """Record what Klaviyo just accepted (or refused) for one batch, in one transaction."""
        now = _iso(datetime.now(UTC))
        rows = [
            (
                recart_account_id,
                e.channel,
                e.contact,
                e.subscriber_id,
                e.state,
                e.list_id,
                _iso(e.decided_at),
                e.reason,
                now,
                run_id,
            )
            for e in entries
        ]
        if not rows:
            return 0
        with self._write() as db:
            db.executemany(
                "insert into push_ledger (recart_account_id, channel, contact, subscriber_id, state, list_id,"
                " decided_at, reason, pushed_at, run_id) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " on conflict (recart_account_id, channel, contact) do update set"
                " subscriber_id = excluded.subscriber_id, state = excluded.state, list_id = excluded.list_id,"
                " decided_at = excluded.decided_at, reason = excluded.reason, pushed_at = excluded.pushed_at,"
                " run_id = excluded.run_id",
                rows,
            )
        return len(rows)

    def counts(self, recart_account_id: str) -> dict[str, int]:
        """How many contact points the ledger holds per state for one account."""
        return dict(
            self._db.execute(
                "select state, count(*) from push_ledger where recart_account_id = ? group by state",
                (recart_account_id,),
            ).fetchall()
        )

    def forget(self, recart_account_id: str) -> int:
        """Drop an account's ledger (its next push sends everything the plan holds again)."""
        with self._write() as db:
            return db.execute(
                "delete from push_ledger where recart_account_id = ?", (recart_account_id,)
            ).rowcount
