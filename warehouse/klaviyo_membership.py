"""Klaviyo segment and list membership in DuckDB, kept as history (SCD type 2).

Tables (schema ``klaviyo``; every row carries ``account_id``):

- ``raw_groups`` — the catalog: each segment and list with name, opt-in process, Klaviyo's
  ``profile_count`` where fetched, and ``synced_at`` (the time the data is from).
- ``raw_group_members`` — one row per membership *spell*: a profile's stay in a group from
  ``valid_from`` (its ``joined_group_at``) to ``valid_to`` (NULL while still a member).
  "Who left segment X yesterday" is ``valid_to`` in yesterday; "who is in X" is ``valid_to is null``.
- ``group_sync_status`` — per group: last synced at, the ``joined_group_at`` watermark for the
  next incremental read, member counts, joins and leaves of the last sync, last full sweep.

Extraction happens before any of this (outside the write window). ``load_account_sync`` then
applies one account's whole extract in ONE transaction: a failure rolls everything back, so
readers only ever see the previous complete snapshot or the new complete one.

How leaves are found without re-reading everything: members come incrementally by
``joined_group_at``; Klaviyo's ``profile_count`` then says whether anyone left
(``previous members + new joins - profile_count``). Only when someone did is the group swept
(ids only) to find who. ``needs_sweep`` holds that rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import pandas as pd

SCHEMA_SQL = """
create schema if not exists klaviyo;

create table if not exists klaviyo.raw_groups (
    account_id varchar not null,
    group_id varchar not null,
    group_kind varchar not null,          -- 'segment' | 'list'
    name varchar,
    opt_in_process varchar,               -- lists only
    is_active boolean,                    -- segments only
    profile_count integer,                -- Klaviyo's count when fetched this sync, else null
    created_at timestamptz,
    updated_at timestamptz,
    synced_at timestamptz not null,
    primary key (account_id, group_id)
);

create table if not exists klaviyo.raw_group_members (
    account_id varchar not null,
    group_kind varchar not null,
    group_id varchar not null,
    profile_id varchar not null,
    email varchar,
    phone_number varchar,
    external_id varchar,
    joined_group_at timestamptz,
    valid_from timestamptz not null,
    valid_to timestamptz,                 -- null: still a member
    left_detected_at timestamptz,         -- the sync that noticed the leave
    loaded_at timestamptz not null
);

create table if not exists klaviyo.group_sync_status (
    account_id varchar not null,
    group_id varchar not null,
    group_kind varchar not null,
    last_synced_at timestamptz not null,
    joined_watermark timestamptz,
    member_count integer not null,
    klaviyo_profile_count integer,
    joins integer not null,
    leaves integer not null,
    last_full_sweep_at timestamptz,
    primary key (account_id, group_id)
);
"""


@dataclass(frozen=True)
class GroupRow:
    """One segment or list of the catalog."""

    group_id: str
    group_kind: str  # "segment" | "list"
    name: str | None
    opt_in_process: str | None = None
    is_active: bool | None = None
    profile_count: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class MemberRow:
    """A member as Klaviyo lists it, with the time it (most recently) joined."""

    profile_id: str
    email: str | None
    phone_number: str | None
    external_id: str | None
    joined_group_at: datetime | None


@dataclass
class GroupExtract:
    """Everything fetched for one group in one run.

    ``members`` are the members that joined after the watermark (all members when ``full``).
    ``swept_ids`` is the complete current membership from an ids-only sweep, when one was made.
    """

    group_id: str
    group_kind: str
    members: list[MemberRow] = field(default_factory=list)
    full: bool = False
    swept_ids: set[str] | None = None
    profile_count: int | None = None


@dataclass(frozen=True)
class GroupChange:
    """What one sync changed in one group."""

    group_id: str
    joins: int
    leaves: int
    member_count: int


@dataclass(frozen=True)
class GroupState:
    """What the warehouse knows of a group before a sync (for deciding how to read it)."""

    group_id: str
    joined_watermark: datetime | None
    member_count: int
    last_synced_at: datetime | None


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the tables if they are missing (idempotent)."""
    conn.execute(SCHEMA_SQL)


def table_exists(conn: duckdb.DuckDBPyConnection, table: str, schema: str = "klaviyo") -> bool:
    """True when ``schema.table`` exists (before the first sync it does not)."""
    found = conn.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(found and found[0])


def group_states(conn: duckdb.DuckDBPyConnection, account_id: str) -> dict[str, GroupState]:
    """Watermarks and current member counts of an account's groups (works on read-only connections)."""
    if not table_exists(conn, "group_sync_status"):
        return {}
    rows = conn.execute(
        """
        select group_id, joined_watermark, member_count, last_synced_at
        from klaviyo.group_sync_status
        where account_id = ?
        """,
        [account_id],
    ).fetchall()
    return {row[0]: GroupState(row[0], row[1], row[2], row[3]) for row in rows}


def outdated_groups(conn: duckdb.DuckDBPyConnection, account_id: str) -> set[str]:
    """Groups dbt marks outdated (no draft/active flow or scheduled campaign used them for 14 days).

    Read from ``marts.klaviyo_group_usage``; before dbt has built it, nothing is outdated.
    """
    if not table_exists(conn, "klaviyo_group_usage", schema="marts"):
        return set()
    rows = conn.execute(
        "select group_id from marts.klaviyo_group_usage where account_id = ? and is_outdated",
        [account_id],
    ).fetchall()
    return {row[0] for row in rows}


def needs_sweep(previous_members: int, new_joins: int, klaviyo_profile_count: int | None) -> bool:
    """True when someone must have left (or the count is unknown): then sweep the ids.

    ``new_joins`` counts members read incrementally that were not already current members.
    """
    if klaviyo_profile_count is None:
        return True
    return previous_members + new_joins != klaviyo_profile_count


def _members_frame(members: Sequence[MemberRow]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "profile_id": pd.Series([m.profile_id for m in members], dtype="string"),
            "email": pd.Series([m.email for m in members], dtype="string"),
            "phone_number": pd.Series([m.phone_number for m in members], dtype="string"),
            "external_id": pd.Series([m.external_id for m in members], dtype="string"),
            "joined_group_at": pd.to_datetime([m.joined_group_at for m in members], utc=True),
        }
    )


def _apply_group(
    conn: duckdb.DuckDBPyConnection, account_id: str, extract: GroupExtract, as_of: datetime
) -> GroupChange:
    key = [account_id, extract.group_id]
    incoming = _members_frame(
        # one row per profile: the latest join wins if a page boundary repeated someone
        sorted(
            {
                m.profile_id: m
                for m in sorted(extract.members, key=lambda m: (m.joined_group_at is None, m.joined_group_at))
            }.values(),
            key=lambda m: m.profile_id,
        )
    )
    conn.register("incoming_members", incoming)
    try:
        closed = 0
        # 1. who left: with a full read or a sweep, every open spell not seen now is closed.
        present: pd.DataFrame | None = None
        if extract.full:
            present = incoming[["profile_id"]]
        elif extract.swept_ids is not None:
            present = pd.DataFrame({"profile_id": pd.Series(sorted(extract.swept_ids), dtype="string")})
        if present is not None:
            conn.register("present_members", present)
            closed += conn.execute(
                """
                update klaviyo.raw_group_members
                set valid_to = ?, left_detected_at = ?
                where account_id = ? and group_id = ? and valid_to is null
                  and profile_id not in (select profile_id from present_members)
                """,
                [as_of, as_of, *key],
            ).fetchone()[0]
            conn.unregister("present_members")
        # 2. re-joins: an open spell with an older join time ended when the new one began.
        rejoined = conn.execute(
            """
            update klaviyo.raw_group_members as spell
            set valid_to = incoming.joined_group_at, left_detected_at = ?
            from incoming_members as incoming
            where spell.account_id = ? and spell.group_id = ? and spell.valid_to is null
              and spell.profile_id = incoming.profile_id
              and incoming.joined_group_at is not null
              and (spell.joined_group_at is null or incoming.joined_group_at > spell.joined_group_at)
            """,
            [as_of, *key],
        ).fetchone()[0]
        # 3. identifiers of current members may change (a profile's email was edited).
        conn.execute(
            """
            update klaviyo.raw_group_members as spell
            set email = incoming.email, phone_number = incoming.phone_number,
                external_id = incoming.external_id
            from incoming_members as incoming
            where spell.account_id = ? and spell.group_id = ? and spell.valid_to is null
              and spell.profile_id = incoming.profile_id
            """,
            key,
        )
        # 4. joins: incoming members without an open spell open one.
        opened = conn.execute(
            """
            insert into klaviyo.raw_group_members
            select ?, ?, ?, incoming.profile_id, incoming.email, incoming.phone_number,
                   incoming.external_id, incoming.joined_group_at,
                   coalesce(incoming.joined_group_at, ?), null, null, ?
            from incoming_members as incoming
            where not exists (
                select 1 from klaviyo.raw_group_members as spell
                where spell.account_id = ? and spell.group_id = ? and spell.valid_to is null
                  and spell.profile_id = incoming.profile_id
            )
            """,
            [account_id, extract.group_kind, extract.group_id, as_of, as_of, *key],
        ).fetchone()[0]
    finally:
        conn.unregister("incoming_members")
    member_count = conn.execute(
        "select count(*) from klaviyo.raw_group_members"
        " where account_id = ? and group_id = ? and valid_to is null",
        key,
    ).fetchone()[0]
    watermark = max((m.joined_group_at for m in extract.members if m.joined_group_at), default=None)
    swept = extract.full or extract.swept_ids is not None
    conn.execute(
        """
        insert into klaviyo.group_sync_status as status
        values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        on conflict (account_id, group_id) do update set
            group_kind = excluded.group_kind,
            last_synced_at = excluded.last_synced_at,
            joined_watermark = greatest(status.joined_watermark, excluded.joined_watermark),
            member_count = excluded.member_count,
            klaviyo_profile_count = excluded.klaviyo_profile_count,
            joins = excluded.joins,
            leaves = excluded.leaves,
            last_full_sweep_at = coalesce(excluded.last_full_sweep_at, status.last_full_sweep_at)
        """,
        [
            account_id,
            extract.group_id,
            extract.group_kind,
            as_of,
            watermark,
            member_count,
            extract.profile_count,
            opened,
            closed + rejoined,
            as_of if swept else None,
        ],
    )
    return GroupChange(extract.group_id, joins=opened, leaves=closed + rejoined, member_count=member_count)


def load_account_sync(
    conn: duckdb.DuckDBPyConnection,
    account_id: str,
    catalog: Iterable[GroupRow],
    extracts: Iterable[GroupExtract],
    as_of: datetime,
    *,
    replace_catalog: bool = True,
) -> list[GroupChange]:
    """Apply one account's sync atomically: the catalog and every group's membership changes.

    ``as_of`` is when the extraction started: the time the data is from.
    """
    ensure_schema(conn)
    conn.execute("begin transaction")
    try:
        catalog = list(catalog)
        if replace_catalog:
            conn.execute("delete from klaviyo.raw_groups where account_id = ?", [account_id])
        for row in catalog:
            conn.execute(
                """
                insert or replace into klaviyo.raw_groups
                values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    account_id,
                    row.group_id,
                    row.group_kind,
                    row.name,
                    row.opt_in_process,
                    row.is_active,
                    row.profile_count,
                    row.created_at,
                    row.updated_at,
                    as_of,
                ],
            )
        changes = [_apply_group(conn, account_id, extract, as_of) for extract in extracts]
        conn.execute("commit")
    except BaseException:
        conn.execute("rollback")
        raise
    return changes
