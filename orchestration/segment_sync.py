"""One account's Klaviyo segment and list sync: extract through the connector, then load atomically.

Plain Python (no Dagster): the asset in ``assets/klaviyo.py`` calls ``sync_account`` and turns the
result into metadata and checks. The order of work is what makes it cheap and safe:

1. Read the catalog (segments and lists) and what the warehouse already holds (watermarks and
   current member counts) — a short read-only window.
2. Extract, all outside any warehouse lock and concurrently within the account's quota:
   groups never synced (or forced) are read whole; the others only from their ``joined_group_at``
   watermark, and their Klaviyo ``profile_count`` tells whether anyone left — only then is the
   group read whole again (a sweep). Nobody is re-read when nothing changed.
3. Load everything in one short transaction (``warehouse.klaviyo_membership``). If any step
   before it fails, nothing is written and the last good snapshot stays as it was.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from connectors.klaviyo.client import KlaviyoClient
from connectors.klaviyo.models import KlaviyoList, Member, Segment
from warehouse.klaviyo_membership import (
    GroupChange,
    GroupExtract,
    GroupRow,
    GroupState,
    MemberRow,
    group_states,
    load_account_sync,
    needs_sweep,
    outdated_groups,
    table_exists,
)

ConnectionFactory = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


@dataclass
class SyncResult:
    """What one account's sync did, for metadata and checks."""

    account_id: str
    as_of: datetime
    groups_in_catalog: int
    groups_synced: int
    full_reads: int
    sweeps: int
    outdated_skipped: int
    changes: list[GroupChange]
    # group id -> (members now in the warehouse, Klaviyo's profile_count or None)
    counts: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    api: dict[str, int | float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def members(self) -> int:
        """Current members over all synced groups."""
        return sum(change.member_count for change in self.changes)

    @property
    def joins(self) -> int:
        """Membership spells opened by this sync."""
        return sum(change.joins for change in self.changes)

    @property
    def leaves(self) -> int:
        """Membership spells closed by this sync."""
        return sum(change.leaves for change in self.changes)


def _catalog_row(group: Segment | KlaviyoList) -> GroupRow:
    if isinstance(group, Segment):
        return GroupRow(
            group.id,
            "segment",
            group.name,
            None,
            group.is_active,
            group.profile_count,
            group.created,
            group.updated,
        )
    return GroupRow(
        group.id,
        "list",
        group.name,
        group.opt_in_process,
        None,
        group.profile_count,
        group.created,
        group.updated,
    )


def _member_row(member: Member) -> MemberRow:
    return MemberRow(
        member.profile_id, member.email, member.phone_number, member.external_id, member.joined_group_at
    )


async def _read_groups(
    client: KlaviyoClient, kind: str, group_ids: list[str], joined_after: dict[str, datetime | None]
) -> dict[str, list[MemberRow]]:
    """Members of many groups at once (whole, or after each group's watermark)."""
    found: dict[str, list[MemberRow]] = defaultdict(list)
    if not group_ids:
        return found
    async with aclosing(client.iter_members_many(group_ids, kind, joined_after=joined_after)) as pages:
        async for page in pages:
            found[page.group_id].extend(_member_row(m) for m in page.members)
    for group_id in group_ids:
        found.setdefault(group_id, [])
    return found


async def _profile_counts(client: KlaviyoClient, groups: list[tuple[str, str]]) -> dict[str, int | None]:
    """Klaviyo's ``profile_count`` of each (kind, id); these calls have their own 1/s limit."""

    async def one(kind: str, group_id: str) -> tuple[str, int | None]:
        group = (
            await client.get_segment(group_id, with_profile_count=True)
            if kind == "segment"
            else await client.get_list(group_id, with_profile_count=True)
        )
        return group_id, group.profile_count

    return dict(await asyncio.gather(*(one(kind, group_id) for kind, group_id in groups)))


def _open_members(
    conn: duckdb.DuckDBPyConnection, account_id: str, group_id: str, profile_ids: Iterable[str]
) -> set[str]:
    ids = list(profile_ids)
    if not ids or not table_exists(conn, "raw_group_members"):
        return set()
    rows = conn.execute(
        """
        select profile_id from klaviyo.raw_group_members
        where account_id = ? and group_id = ? and valid_to is null and profile_id in (select unnest(?))
        """,
        [account_id, group_id, ids],
    ).fetchall()
    return {row[0] for row in rows}


async def sync_account(
    client: KlaviyoClient,
    account_id: str,
    read: ConnectionFactory,
    write: ConnectionFactory,
    *,
    only_groups: set[str] | None = None,
    force_full: bool = False,
    include_outdated: bool = False,
    include_lists: bool = True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SyncResult:
    """Sync one account's segments and lists (all of them, or ``only_groups``) into the warehouse."""
    started = time.monotonic()
    as_of = now()
    segments = [s async for s in client.iter_segments()]
    lists = [item async for item in client.iter_lists()] if include_lists else []
    catalog = [_catalog_row(group) for group in (*segments, *lists)]
    kinds = {row.group_id: row.group_kind for row in catalog}
    if only_groups is not None:
        unknown = sorted(only_groups - set(kinds))
        if unknown:
            raise ValueError(
                f"account {account_id}: no segment or list with id {', '.join(unknown)} at Klaviyo"
            )
    with read() as conn:
        states: dict[str, GroupState] = group_states(conn, account_id)
        outdated = set() if include_outdated else outdated_groups(conn, account_id)
    # Outdated groups stop syncing; asking for one by id (a resync) still reads it.
    wanted = [
        row.group_id
        for row in catalog
        if (only_groups is None and row.group_id not in outdated)
        or (only_groups is not None and row.group_id in only_groups)
    ]
    fresh = [g for g in wanted if force_full or g not in states]
    known = [g for g in wanted if g not in fresh]

    by_kind: dict[str, list[str]] = defaultdict(list)
    for group_id in known:
        by_kind[kinds[group_id]].append(group_id)
    fresh_by_kind: dict[str, list[str]] = defaultdict(list)
    for group_id in fresh:
        fresh_by_kind[kinds[group_id]].append(group_id)

    # Incremental reads, counts of the known groups and whole reads of new groups, concurrently.
    watermarks = {g: states[g].joined_watermark for g in known}
    reads = [_read_groups(client, kind, ids, watermarks) for kind, ids in by_kind.items()]
    full_reads = [_read_groups(client, kind, ids, {}) for kind, ids in fresh_by_kind.items()]
    results = await asyncio.gather(
        _profile_counts(client, [(kinds[g], g) for g in known]), *reads, *full_reads
    )
    counts: dict[str, int | None] = results[0]
    incremental: dict[str, list[MemberRow]] = {}
    for part in results[1 : 1 + len(reads)]:
        incremental.update(part)
    whole: dict[str, list[MemberRow]] = {}
    for part in results[1 + len(reads) :]:
        whole.update(part)

    # Did anyone leave? previous members + genuinely new joins must equal Klaviyo's count.
    with read() as conn:
        to_sweep = []
        for group_id in known:
            incoming = {m.profile_id for m in incremental[group_id]}
            new_joins = len(incoming - _open_members(conn, account_id, group_id, incoming))
            if needs_sweep(states[group_id].member_count, new_joins, counts.get(group_id)):
                to_sweep.append(group_id)
    sweep_by_kind: dict[str, list[str]] = defaultdict(list)
    for group_id in to_sweep:
        sweep_by_kind[kinds[group_id]].append(group_id)
    for part in await asyncio.gather(*(_read_groups(client, k, ids, {}) for k, ids in sweep_by_kind.items())):
        whole.update(part)

    extracts = [
        GroupExtract(g, kinds[g], whole[g], full=True, profile_count=counts.get(g))
        if g in whole
        else GroupExtract(g, kinds[g], incremental[g], profile_count=counts.get(g))
        for g in wanted
    ]
    with write() as conn:
        changes = load_account_sync(conn, account_id, catalog, extracts, as_of)
    result = SyncResult(
        account_id=account_id,
        as_of=as_of,
        groups_in_catalog=len(catalog),
        groups_synced=len(wanted),
        full_reads=len(fresh),
        sweeps=len(to_sweep),
        outdated_skipped=len([g for g in outdated if g in kinds and g not in wanted]),
        changes=changes,
        counts={c.group_id: (c.member_count, counts.get(c.group_id)) for c in changes},
        api=dict(client.stats.as_metadata()),
        seconds=time.monotonic() - started,
    )
    return result


def summarize(result: SyncResult) -> dict[str, Any]:
    """Numeric figures of a sync (Dagster plots numeric metadata over time)."""
    return {
        "segments": result.groups_synced,
        "groups_in_catalog": result.groups_in_catalog,
        "members": result.members,
        "joins": result.joins,
        "leaves": result.leaves,
        "full_reads": result.full_reads,
        "sweeps": result.sweeps,
        "outdated_skipped": result.outdated_skipped,
        "api_calls": int(result.api.get("api_calls", 0)),
        "retries": int(result.api.get("retries", 0)),
        "throttled_429s": int(result.api.get("throttled", 0)),
        "seconds": round(result.seconds, 3),
    }
