"""The subscriber push of one account: Recart's consented subscribers into the shop's Klaviyo lists.

Plan, then push:

1. **Desired state** — the dbt view ``push.klaviyo_push_desired_state``: per channel and contact
   point, subscribed (with the Recart consent time) or unsubscribed (with the opt-out time), and
   the list it goes to.
2. **Plan** — that desired state against the ledger (``warehouse.push_ledger``) of what Klaviyo
   accepted before: only the difference is sent, so an unchanged re-run makes no API call. A
   contact whose consent time has not changed since its last push is never subscribed again (bulk
   subscribe would lift an unsubscribe the person made in Klaviyo since).
3. **Push** — bulk subscribe jobs of at most 1,000 profiles per list (email consent for emails, SMS
   consent for E.164 phones; one job carries both channels when the shop uses one list); a double
   opt-in list gets ``historical_import`` with the Recart consent time, so nobody receives a
   confirmation email. Recart opt-outs go out as bulk unsubscribe jobs (100 per job, no list:
   Klaviyo then withdraws the channel's marketing consent, the consent the push once gave).
   A shop that chose another list gets its already pushed contacts added to it as members
   (consent untouched).
4. **Ledger** — a batch's rows are recorded as an intent before it is sent and as accepted after
   Klaviyo's 202, one transaction each (``warehouse.push_ledger``); a run that finds intents of a
   crashed run settles them with Klaviyo first (``reconcile_interrupted``). A 400 naming one
   profile rejects that row (and only it, the rest is sent again); a 400 naming no profile splits
   the batch in halves until the bad rows are isolated. A run with more refusals than
   ``max_klaviyo_rejections`` stops as a setup problem and marks none of them rejected: they go
   out again once the shop fixed its Klaviyo setup.

Opt-outs need no list: one goes out for every contact the push subscribed, also after the shop
stopped pushing that channel to a list, and also while the shop has the push switched off (then
nothing else is sent). On a channel the shop pushes, an opt-out made since the push was enabled
goes out for anyone.

Rejections (unreadable contacts, consent without a time, phones that are not valid E.164 or in a
country outside the account's SMS setup, rows Klaviyo refused) are written to the warehouse table
``klaviyo_push.rejections`` with their reason, replaced per account on every run.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import phonenumbers

from connectors.klaviyo import filters
from connectors.klaviyo.client import (
    MAX_IDS_PER_FILTER,
    MAX_LIST_MEMBERS_PER_CALL,
    MAX_SUBSCRIBE_PER_JOB,
    MAX_UNSUBSCRIBE_PER_JOB,
    KlaviyoClient,
)
from connectors.klaviyo.config import KlaviyoSettings
from connectors.klaviyo.connections import ConnectionStore
from connectors.klaviyo.errors import InvalidRequestError, KlaviyoError
from connectors.klaviyo.models import SubscribeProfile
from connectors.klaviyo.oauth import KlaviyoOAuth, held_in_own_thread
from connectors.klaviyo.push_settings import PushSettings
from warehouse.duckdb_file import read_connection, write_connection
from warehouse.push_ledger import LedgerEntry, PushLedger

__all__ = [
    "DESIRED_STATE_RELATION",
    "DesiredContact",
    "PushAborted",
    "PushNotConfigured",
    "PushPlan",
    "PushResult",
    "Rejection",
    "execute_plan",
    "ledger_of_connection",
    "make_plan",
    "mirror_account_lists",
    "push_account",
    "push_connected_account",
    "read_desired_state",
    "reconcile_interrupted",
    "write_rejections",
]

DESIRED_STATE_RELATION = "push.klaviyo_push_desired_state"
REJECTIONS_TABLE = "klaviyo_push.rejections"
CUSTOM_SOURCE = "Recart"
# More Klaviyo rejections than this in one run means a setup problem (SMS not configured, a list
# that refuses everyone), not bad rows: stop and say so instead of isolating rows one by one.
DEFAULT_MAX_KLAVIYO_REJECTIONS = 100
_Resend = Callable[[list[list["Change"]]], Awaitable[None]]
_ITEM_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")


class PushAborted(KlaviyoError):
    """The push stopped on purpose (too many rejections): what was accepted so far is in the ledger."""


class PushNotConfigured(KlaviyoError):
    """The push cannot run until someone sets it up: the account has no push settings (lists), or
    the warehouse lacks the desired-state view (dbt has not built it yet)."""


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class DesiredContact:
    """One row of the desired state (``push.klaviyo_push_desired_state``)."""

    channel: str
    contact: str | None
    subscriber_id: str
    desired_state: str | None
    decided_at: datetime | None
    contact_as_given: str | None
    rejection_reason: str | None
    list_id: str | None = None  # as the last push run mirrored the settings (the plan uses the settings)


@dataclass(frozen=True)
class Rejection:
    """A row the push cannot send, with the reason (``klaviyo_push.rejections``)."""

    subscriber_id: str
    channel: str
    contact_as_given: str | None
    contact: str | None
    reason: str
    stage: str  # plan (dbt), validation (before sending) or klaviyo (Klaviyo refused it)


@dataclass(frozen=True)
class Change:
    """One contact point to change at Klaviyo, and the ledger entry it becomes once accepted."""

    channel: str
    contact: str
    subscriber_id: str
    decided_at: datetime
    list_id: str | None  # the target list (subscribe); None for an unsubscribe


@dataclass
class PushPlan:
    """What a push of one account will send: the difference between desired state and ledger."""

    recart_account_id: str
    settings: PushSettings
    subscribes: dict[str, list[Change]] = field(default_factory=dict)  # by list id
    # Pushed before into another list, consent unchanged: added to the new list without a subscribe
    # (which would lift an unsubscribe made in Klaviyo since), by list id.
    moves: dict[str, list[Change]] = field(default_factory=dict)
    unsubscribes: list[Change] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    unchanged: int = 0
    not_pushed: Counter[str] = field(default_factory=Counter)  # reason → rows left alone on purpose

    def jobs_per_list(self) -> dict[str, int]:
        """Subscribe jobs each list needs: ⌈profiles / 1,000⌉ (one profile may carry both channels)."""
        return {
            list_id: -(-len(self._profiles(changes)) // MAX_SUBSCRIBE_PER_JOB)
            for list_id, changes in self.subscribes.items()
        }

    def _profiles(self, changes: Sequence[Change]) -> list[list[Change]]:
        return _group_profiles(changes, self.settings.same_list)

    def summary(self) -> dict[str, Any]:
        """Counts for logs, metadata and the dry run."""
        return {
            "subscribe": {list_id: len(changes) for list_id, changes in sorted(self.subscribes.items())},
            "subscribe_jobs": self.jobs_per_list(),
            "unsubscribe": len(self.unsubscribes),
            "unsubscribe_jobs": -(-len(self.unsubscribes) // MAX_UNSUBSCRIBE_PER_JOB),
            "move_to_new_list": {list_id: len(changes) for list_id, changes in sorted(self.moves.items())},
            "unchanged": self.unchanged,
            "rejected": len(self.rejections),
            "not_pushed": dict(sorted(self.not_pushed.items())),
        }

    def render(self, sample: int = 10) -> str:
        """A human-readable plan (``recart-klaviyo push --dry-run``)."""
        s = self.settings
        lines = [
            f"Subscriber push plan for {self.recart_account_id}",
            f"  email list: {s.email_list_id or '-'}  SMS list: {s.sms_list_id or '-'}"
            + ("  (same list)" if s.same_list else ""),
        ]
        for list_id, changes in sorted(self.subscribes.items()):
            by_channel = Counter(c.channel for c in changes)
            lines.append(
                f"  subscribe into {list_id} ({s.list_names.get(list_id, '?')}): "
                + ", ".join(f"{n} {ch}" for ch, n in sorted(by_channel.items()))
                + f" in {self.jobs_per_list()[list_id]} job(s)"
            )
            lines += [
                f"      {c.channel:5} {c.contact}  consent {c.decided_at.isoformat()}"
                for c in changes[:sample]
            ]
        for list_id, changes in sorted(self.moves.items()):
            lines.append(
                f"  add to the new list {list_id} ({s.list_names.get(list_id, '?')}), consent untouched: "
                f"{len(changes)}"
            )
        lines.append(f"  unsubscribe: {len(self.unsubscribes)}")
        lines += [
            f"      {c.channel:5} {c.contact}  opted out {c.decided_at.isoformat()}"
            for c in self.unsubscribes[:sample]
        ]
        lines.append(f"  unchanged since the last push: {self.unchanged}")
        for reason, n in sorted(self.not_pushed.items()):
            lines.append(f"  not pushed ({reason}): {n}")
        lines.append(f"  rejected: {len(self.rejections)}")
        by_reason = Counter(r.reason for r in self.rejections)
        lines += [f"      {n} × {reason}" for reason, n in by_reason.most_common(sample)]
        return "\n".join(lines)

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to send."""
        return not self.unsubscribes and not any(self.subscribes.values()) and not any(self.moves.values())


def read_desired_state(warehouse_path: str | Path, recart_account_id: str) -> list[DesiredContact]:
    """The account's rows of ``push.klaviyo_push_desired_state`` (waits while a dbt build writes)."""
    with read_connection(warehouse_path) as conn:
        try:
            rows = conn.execute(
                "select channel, contact, subscriber_id, desired_state, decided_at, contact_as_given,"
                f" rejection_reason, list_id from {DESIRED_STATE_RELATION} where account_id = ?"
                " order by channel, contact, subscriber_id",
                [recart_account_id],
            ).fetchall()
        except duckdb.CatalogException as exc:
            raise PushNotConfigured(
                f"{DESIRED_STATE_RELATION} is missing from {warehouse_path}: build it with dbt "
                "(materialize push/klaviyo_push_desired_state in Dagster, or make demo)"
            ) from exc
    return [
        DesiredContact(channel, contact, subscriber, state, _aware(decided), as_given, reason, list_id)
        for channel, contact, subscriber, state, decided, as_given, reason, list_id in rows
    ]


ACCOUNT_LISTS_TABLE = "klaviyo_push.account_lists"


def mirror_account_lists(warehouse_path: str | Path, settings: PushSettings) -> None:
    """Write the account's chosen lists into ``klaviyo_push.account_lists`` (created by dbt with the
    desired-state view), so the view states which list each row goes to."""
    with write_connection(warehouse_path) as conn:
        conn.execute("begin")
        try:
            conn.execute(
                f"delete from {ACCOUNT_LISTS_TABLE} where account_id = ?", [settings.recart_account_id]
            )
            conn.execute(
                f"insert into {ACCOUNT_LISTS_TABLE} values (?, ?, ?, now())",
                [settings.recart_account_id, settings.email_list_id, settings.sms_list_id],
            )
            conn.execute("commit")
        except duckdb.CatalogException as exc:
            conn.execute("rollback")
            raise PushNotConfigured(
                f"{ACCOUNT_LISTS_TABLE} is missing from {warehouse_path}: build "
                "push/klaviyo_push_desired_state with dbt first"
            ) from exc
        except BaseException:
            conn.execute("rollback")
            raise


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def validation_problem(row: DesiredContact, settings: PushSettings) -> str | None:
    """Why a subscribe row cannot be sent to Klaviyo (checked before sending), or None.

    Phones must be valid E.164 numbers (phonenumbers' metadata, stricter than dbt's shape check)
    in a country the account's SMS covers. Unsubscribes are not checked against SMS countries:
    an opt-out is always worth recording.
    """
    if row.channel != "sms" or row.contact is None:
        return None
    try:
        number = phonenumbers.parse(row.contact, None)
    except phonenumbers.NumberParseException as exc:
        return f"not a phone number Klaviyo can read ({exc})"
    if phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != row.contact:
        return "not in E.164 form"
    if not phonenumbers.is_valid_number(number):
        return "not a valid phone number (no such number range)"
    if row.desired_state == "subscribed":
        region = phonenumbers.region_code_for_number(number)
        if region not in settings.sms_countries:
            supported = ", ".join(settings.sms_countries)
            return f"SMS not supported in {region} for this account (supported: {supported})"
    return None


def make_plan(
    settings: PushSettings,
    desired: Iterable[DesiredContact],
    ledger: dict[tuple[str, str], LedgerEntry],
) -> PushPlan:
    """The difference between the desired state and the ledger: what this push must send."""
    plan = PushPlan(settings.recart_account_id, settings)
    subscribes: dict[str, list[Change]] = defaultdict(list)
    moves: dict[str, list[Change]] = defaultdict(list)
    for row in desired:
        if row.rejection_reason is not None or row.contact is None or row.desired_state is None:
            plan.rejections.append(
                Rejection(
                    row.subscriber_id,
                    row.channel,
                    row.contact_as_given,
                    row.contact,
                    row.rejection_reason or "no desired state",
                    "plan",
                )
            )
            continue
        assert row.decided_at is not None
        # Only subscribes need a list: an opt-out goes out without one (it withdraws the channel's
        # consent), also after the shop stopped pushing that channel to a list.
        list_id = settings.list_for(row.channel)
        if list_id is None and row.desired_state == "subscribed":
            plan.not_pushed[f"no {row.channel} list chosen"] += 1
            continue
        before = ledger.get((row.channel, row.contact))
        if before is not None and before.state == "none":
            before = None  # only an intent from a crashed run: nothing known to be accepted
        change = Change(row.channel, row.contact, row.subscriber_id, row.decided_at, None)
        if row.desired_state == "subscribed":
            if before is not None and before.decided_at == row.decided_at and before.state != "unsubscribed":
                # Consent unchanged since Klaviyo took (or refused) it: never subscribe again.
                if before.state == "subscribed" and before.list_id != list_id:
                    # The shop chose another list: membership only, consent untouched.
                    if not settings.enabled:
                        plan.not_pushed["push switched off"] += 1
                        continue
                    moves[list_id].append(
                        Change(row.channel, row.contact, row.subscriber_id, row.decided_at, list_id)
                    )
                    continue
                plan.unchanged += 1
                if before.state == "rejected":
                    plan.rejections.append(
                        Rejection(
                            row.subscriber_id,
                            row.channel,
                            row.contact_as_given,
                            row.contact,
                            before.reason or "refused by Klaviyo",
                            "klaviyo",
                        )
                    )
                continue
            if before is not None and before.state == "unsubscribed" and row.decided_at <= before.decided_at:
                plan.unchanged += 1  # an opt-out newer than this consent already went out
                continue
            if not settings.enabled:
                # Switched off: no consent goes out, but opt-outs still do (below): the consent
                # the push gave before must not outlive the person's opt-out.
                plan.not_pushed["push switched off"] += 1
            elif _passes_validation(plan, row, settings):
                subscribes[list_id].append(
                    Change(row.channel, row.contact, row.subscriber_id, row.decided_at, list_id)
                )
        else:
            if before is not None and before.state == "unsubscribed" and before.decided_at == row.decided_at:
                plan.unchanged += 1
                continue
            pushed_before = before is not None and before.state == "subscribed"
            if not pushed_before and (list_id is None or not settings.enabled):
                # A channel the shop does not push (now): only the consent the push gave is ours
                # to withdraw; anyone else's consent there was given to Klaviyo, not through us.
                plan.not_pushed["opt-out of a channel not pushed, for someone never pushed"] += 1
                continue
            since = settings.enabled_since
            if not pushed_before and (since is None or row.decided_at < since):
                # An opt-out older than the push, for someone it never subscribed: Klaviyo may hold
                # newer consent given directly there, which this stale opt-out must not overrule.
                plan.not_pushed["opt-out before the push was enabled, never pushed"] += 1
                continue
            if _passes_validation(plan, row, settings):
                plan.unsubscribes.append(change)
    plan.subscribes = dict(subscribes)
    plan.moves = dict(moves)
    return plan


def _passes_validation(plan: PushPlan, row: DesiredContact, settings: PushSettings) -> bool:
    """Validate a row that is about to be sent (only those: phonenumbers' checks are the slow part
    of planning, and an unchanged row was valid when it was sent); a failure becomes a rejection."""
    problem = validation_problem(row, settings)
    if problem is not None:
        plan.rejections.append(
            Rejection(
                row.subscriber_id, row.channel, row.contact_as_given, row.contact, problem, "validation"
            )
        )
    return problem is None


def _group_profiles(changes: Sequence[Change], same_list: bool) -> list[list[Change]]:
    """Changes as Klaviyo profiles: with one list for both channels, a subscriber's email and phone
    travel in one profile (one job, one profile at Klaviyo); otherwise one change per profile."""
    if not same_list:
        return [[c] for c in changes]
    # A subscriber has one email and one phone, and the desired state has one row per contact
    # point, so a group never holds two changes of one channel.
    by_subscriber: dict[str, list[Change]] = {}
    for change in changes:
        by_subscriber.setdefault(change.subscriber_id, []).append(change)
    return list(by_subscriber.values())


# ---------------------------------------------------------------------------- the push


@dataclass
class PushResult:
    """What a push did (asset metadata, CLI output, the benchmark)."""

    recart_account_id: str
    plan: dict[str, Any]
    subscribed: int = 0
    unsubscribed: int = 0
    moved: int = 0  # already subscribed, added to the shop's new list
    rejected_by_klaviyo: int = 0
    subscribe_jobs: Counter[str] = field(default_factory=Counter)  # by list id, accepted jobs
    unsubscribe_jobs: int = 0
    refused_jobs: int = 0  # 400s while isolating bad rows
    historical_import_lists: list[str] = field(default_factory=list)
    api_calls: int = 0
    seconds: float = 0.0
    rejections: list[Rejection] = field(default_factory=list)
    reconciled: Reconciled | None = None  # intents of a crashed run, settled first

    def as_metadata(self) -> dict[str, Any]:
        """Numeric figures for Dagster metadata."""
        return {
            "subscribed": self.subscribed,
            "unsubscribed": self.unsubscribed,
            "moved_to_new_list": self.moved,
            "rejected": len(self.rejections),
            "rejected_by_klaviyo": self.rejected_by_klaviyo,
            "subscribe_jobs": sum(self.subscribe_jobs.values()),
            "unsubscribe_jobs": self.unsubscribe_jobs,
            "refused_jobs": self.refused_jobs,
            "api_calls": self.api_calls,
            "unchanged": int(self.plan.get("unchanged", 0)),
            "interrupted_found_accepted": self.reconciled.accepted if self.reconciled else 0,
            "interrupted_unsubscribed_since": self.reconciled.unsubscribed_since if self.reconciled else 0,
            "seconds": round(self.seconds, 3),
        }


def _ledger_entries(
    changes: Iterable[Change], state: str, list_id: str | None, reason: str | None = None
) -> list[LedgerEntry]:
    """Ledger rows (or intents) for changes: each contact point with ``state`` in ``list_id``."""
    return [
        LedgerEntry(c.channel, c.contact, c.subscriber_id, state, list_id, c.decided_at, reason)
        for c in changes
    ]


_CONTACT_FIELDS = {"email": "email", "sms": "phone_number"}


async def _profiles_by_contact(
    client: KlaviyoClient, contacts: Iterable[tuple[str, str]], *, with_subscriptions: bool = False
) -> tuple[dict[tuple[str, str], Any], int]:
    """Klaviyo profiles of ``(channel, contact)`` pairs, looked up 100 per call; and the calls made."""
    found: dict[tuple[str, str], Any] = {}
    calls = 0
    wanted = set(contacts)
    for channel, field_name in _CONTACT_FIELDS.items():
        values = sorted(contact for ch, contact in wanted if ch == channel)
        for start in range(0, len(values), MAX_IDS_PER_FILTER):
            calls += 1
            chunk = filters.any_of(field_name, values[start : start + MAX_IDS_PER_FILTER])
            async for profile in client.iter_profiles(chunk, with_subscriptions=with_subscriptions):
                found[(channel, getattr(profile, field_name))] = profile
    return found, calls


class _Pusher:
    """Sends one plan's batches (a few at a time; the client's limiter keeps to the quota)."""

    def __init__(
        self,
        client: KlaviyoClient,
        ledger: PushLedger,
        plan: PushPlan,
        result: PushResult,
        run_id: str | None,
        concurrency: int,
        max_rejections: int,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.plan = plan
        self.result = result
        self.run_id = run_id
        self.slots = asyncio.Semaphore(concurrency)
        self.max_rejections = max_rejections
        self.now = datetime.now(UTC)
        # Rows Klaviyo refused, held back from the ledger until the run ends: only then is it known
        # whether they were bad rows or the victims of a setup problem (see _reject).
        self.refused: list[LedgerEntry] = []

    def _reject(self, changes: Sequence[Change], reason: str) -> None:
        """Klaviyo refused these rows (a 400): their intents are withdrawn at once (nothing changed
        at Klaviyo), and they are marked ``rejected`` at the end of the run (``record_refused``).

        More than ``max_rejections`` in one run is a setup problem (SMS not configured, a list that
        refuses everyone), not bad rows: the run stops, and its refused rows are not marked, so that
        they go out again once the shop fixed its setup instead of being lost until their consent
        changes.
        """
        entries = _ledger_entries(changes, "rejected", None, reason)
        self.ledger.withdraw_intents(self.plan.recart_account_id, entries)
        self.refused += entries
        self.result.rejected_by_klaviyo += len(changes)
        self.result.rejections += [
            Rejection(c.subscriber_id, c.channel, None, c.contact, reason, "klaviyo") for c in changes
        ]
        if self.result.rejected_by_klaviyo > self.max_rejections:
            raise PushAborted(
                f"Klaviyo refused {self.result.rejected_by_klaviyo} rows of {self.plan.recart_account_id} "
                f"in one run (last: {reason}); check the account's lists and SMS setup. The refused "
                "rows were not marked rejected: the next run sends them again."
            )

    def record_refused(self) -> None:
        """Mark the rows Klaviyo refused ``rejected`` (not sent again until their consent changes)."""
        self.ledger.record(self.plan.recart_account_id, self.refused, self.run_id)
        self.refused = []

    async def _job(
        self,
        state: str,
        list_id: str | None,
        profiles: list[list[Change]],
        send: Callable[[], Awaitable[None]],
        resend: _Resend,
    ) -> bool:
        """One bulk job: its intent in the ledger, the call, then Klaviyo's answer in the ledger.

        On a 400 the bad profile is isolated (or the batch halved) and the rest goes through
        ``resend``; returns True when this very batch was accepted.
        """
        changes = [c for profile in profiles for c in profile]
        account = self.plan.recart_account_id
        self.ledger.intend(account, _ledger_entries(changes, state, list_id), self.run_id)
        try:
            async with self.slots:
                self.result.api_calls += 1
                await send()
        except InvalidRequestError as exc:
            self.result.refused_jobs += 1
            await self._isolate(exc, profiles, resend)
            return False
        self.ledger.record(account, _ledger_entries(changes, state, list_id), self.run_id)
        return True

    async def subscribe(self, list_id: str, profiles: list[list[Change]], historical_import: bool) -> None:
        """One subscribe job into ``list_id``."""
        accepted = await self._job(
            "subscribed",
            list_id,
            profiles,
            lambda: self.client.subscribe_job(
                list_id,
                [self._profile(p, historical_import) for p in profiles],
                historical_import=historical_import,
                custom_source=CUSTOM_SOURCE,
            ),
            lambda rest: self.subscribe(list_id, rest, historical_import),
        )
        if accepted:
            self.result.subscribed += sum(len(p) for p in profiles)
            self.result.subscribe_jobs[list_id] += 1

    async def move(self, list_id: str, changes: list[Change]) -> None:
        """Add already-subscribed contacts to the shop's new list: find their profiles (100 per
        call), then add them (one call of up to 1,000). Consent is not touched."""
        account = self.plan.recart_account_id
        self.ledger.intend(account, _ledger_entries(changes, "moved", list_id), self.run_id)
        async with self.slots:
            found, calls = await _profiles_by_contact(self.client, [(c.channel, c.contact) for c in changes])
        self.result.api_calls += calls
        present = [c for c in changes if (c.channel, c.contact) in found]
        gone = [c for c in changes if (c.channel, c.contact) not in found]
        if present:
            async with self.slots:
                self.result.api_calls += 1
                await self.client.add_to_list(
                    list_id, sorted({found[(c.channel, c.contact)].id for c in present})
                )
        # A profile deleted in Klaviyo since the push has nothing to add (a new consent pushes it again).
        reason = "no Klaviyo profile any more: not added to the new list"
        self.ledger.record(
            account,
            _ledger_entries(present, "subscribed", list_id)
            + _ledger_entries(gone, "rejected", list_id, reason),
            self.run_id,
        )
        self.result.moved += len(present)
        self.result.rejections += [
            Rejection(c.subscriber_id, c.channel, None, c.contact, reason, "klaviyo") for c in gone
        ]

    async def unsubscribe(self, profiles: list[list[Change]]) -> None:
        """One unsubscribe job (no list: the channel's marketing consent is withdrawn)."""
        accepted = await self._job(
            "unsubscribed",
            None,
            profiles,
            lambda: self.client.unsubscribe_job(None, [(c.channel, c.contact) for p in profiles for c in p]),
            self.unsubscribe,
        )
        if accepted:
            self.result.unsubscribed += sum(len(p) for p in profiles)
            self.result.unsubscribe_jobs += 1

    async def _isolate(self, exc: InvalidRequestError, profiles: list[list[Change]], resend: _Resend) -> None:
        """Klaviyo refused a batch: drop the profile its error points at, or split the batch."""
        reason = exc.detail or str(exc)
        match = _ITEM_POINTER.match(exc.pointer or "")
        if match and int(match.group(1)) < len(profiles):
            index = int(match.group(1))
            bad = profiles[index]
            rest = profiles[:index] + profiles[index + 1 :]
            if len(bad) > 1:
                rest += [[c] for c in bad]  # email and SMS in one profile: find out which one is bad
            else:
                self._reject(bad, reason)
            if rest:
                await resend(rest)
        elif len(profiles) > 1:
            middle = len(profiles) // 2
            await asyncio.gather(resend(profiles[:middle]), resend(profiles[middle:]))
        elif len(profiles[0]) > 1:
            await resend([[c] for c in profiles[0]])
        else:
            self._reject(profiles[0], reason)

    def _profile(self, profile: Sequence[Change], historical_import: bool) -> SubscribeProfile:
        # Klaviyo wants consent times in the past; a Recart clock a little ahead must not fail a batch.
        latest = self.now - timedelta(seconds=1)
        email = next((c for c in profile if c.channel == "email"), None)
        sms = next((c for c in profile if c.channel == "sms"), None)
        return SubscribeProfile(
            email=email.contact if email else None,
            phone_number=sms.contact if sms else None,
            email_consent=email is not None,
            sms_consent=sms is not None,
            email_consented_at=min(email.decided_at, latest) if email and historical_import else None,
            sms_consented_at=min(sms.decided_at, latest) if sms and historical_import else None,
        )


async def execute_plan(
    client: KlaviyoClient,
    ledger: PushLedger,
    plan: PushPlan,
    *,
    run_id: str | None = None,
    concurrency: int = 4,
    max_klaviyo_rejections: int = DEFAULT_MAX_KLAVIYO_REJECTIONS,
    result: PushResult | None = None,
) -> PushResult:
    """Send a plan: subscribe jobs per list (``historical_import`` for double opt-in lists), then
    unsubscribe jobs; each accepted batch lands in the ledger at once.

    ``result`` (optional) is filled as the push goes, so a caller still has the figures and the
    rejections so far when a batch fails.
    """
    started = time.monotonic()
    if result is None:
        result = PushResult(plan.recart_account_id, plan.summary(), rejections=list(plan.rejections))
    pusher = _Pusher(client, ledger, plan, result, run_id, concurrency, max_klaviyo_rejections)
    tasks = []
    for list_id, changes in sorted(plan.subscribes.items()):
        if not changes:
            continue
        result.api_calls += 1
        target = await client.get_list(list_id)
        historical = target.is_double_opt_in
        if historical:
            result.historical_import_lists.append(list_id)
        profiles = _group_profiles(changes, plan.settings.same_list)
        tasks += [
            pusher.subscribe(list_id, profiles[i : i + MAX_SUBSCRIBE_PER_JOB], historical)
            for i in range(0, len(profiles), MAX_SUBSCRIBE_PER_JOB)
        ]
    for list_id, changes in sorted(plan.moves.items()):
        tasks += [
            pusher.move(list_id, changes[i : i + MAX_LIST_MEMBERS_PER_CALL])
            for i in range(0, len(changes), MAX_LIST_MEMBERS_PER_CALL)
        ]
    singles = [[c] for c in plan.unsubscribes]
    tasks += [
        pusher.unsubscribe(singles[i : i + MAX_UNSUBSCRIBE_PER_JOB])
        for i in range(0, len(singles), MAX_UNSUBSCRIBE_PER_JOB)
    ]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    result.seconds = time.monotonic() - started
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if not any(isinstance(failure, PushAborted) for failure in failures):
        pusher.record_refused()
    if failures:
        raise failures[0]
    return result


# ---------------------------------------------------------------------------- after a crash

# A Klaviyo consent time within this of ours, or of the intent, is taken as our job's doing.
_CLOCK_SLACK = timedelta(seconds=5)


@dataclass
class Reconciled:
    """What ``reconcile_interrupted`` found for subscribe intents a crashed run left behind."""

    accepted: int = 0  # Klaviyo holds our subscription: recorded, not sent again
    unsubscribed_since: int = 0  # the person unsubscribed in Klaviyo afterwards: never re-subscribed
    not_applied: int = 0  # Klaviyo has no trace of it: the plan sends it again
    api_calls: int = 0


async def reconcile_interrupted(
    client: KlaviyoClient, ledger: PushLedger, recart_account_id: str, run_id: str | None = None
) -> Reconciled:
    """Settle subscribe intents left by a crashed run before planning, by asking Klaviyo.

    Sending such a batch again blindly would be wrong in one case: Klaviyo applied it, and the
    person then unsubscribed in Klaviyo before this run; a second bulk subscribe would lift that
    unsubscribe. So each pending contact's profile is read (100 per call, with subscriptions):

    - consent SUBSCRIBED at our consent time (historical import) or since the intent: recorded as
      accepted, not sent again;
    - consent UNSUBSCRIBED since the intent: recorded as ``rejected`` with that reason (it shows in
      the rejections and is not retried until Recart's consent changes);
    - anything else (no profile, older consent): not applied; the plan sends it again.
    """
    pending = {
        e.key: e for e in ledger.entries(recart_account_id).values() if e.pending_state == "subscribed"
    }
    outcome = Reconciled()
    if not pending:
        return outcome
    found, outcome.api_calls = await _profiles_by_contact(client, pending, with_subscriptions=True)
    accepted, refused = [], []
    for (channel, contact), intent in sorted(pending.items()):
        profile = found.get((channel, contact))
        consent, at = profile.marketing_consent(channel) if profile is not None else (None, None)
        ours = intent.pending_decided_at
        since = (intent.pending_since or datetime.now(UTC)) - _CLOCK_SLACK
        if consent == "SUBSCRIBED" and at is not None and (at >= since or _near(at, ours)):
            state, reason = "subscribed", None
        elif consent == "UNSUBSCRIBED" and at is not None and at >= since:
            state = "rejected"
            reason = (
                f"unsubscribed in Klaviyo at {at.isoformat()}, after an interrupted push;"
                " not re-subscribed until Recart's consent changes"
            )
        else:
            outcome.not_applied += 1
            continue
        settled = LedgerEntry(
            channel, contact, intent.subscriber_id, state, intent.pending_list_id, ours, reason
        )
        (accepted if state == "subscribed" else refused).append(settled)
    ledger.record(recart_account_id, [*accepted, *refused], run_id)
    outcome.accepted, outcome.unsubscribed_since = len(accepted), len(refused)
    return outcome


def _near(at: datetime, ours: datetime | None) -> bool:
    return ours is not None and abs(at - ours) <= _CLOCK_SLACK


# ---------------------------------------------------------------------------- rejections table


_REJECTIONS_DDL = f"""
create schema if not exists klaviyo_push;
create table if not exists {REJECTIONS_TABLE} (
    account_id varchar not null,
    subscriber_id varchar not null,
    channel varchar not null,
    contact_as_given varchar,
    contact varchar,
    reason varchar not null,
    stage varchar not null,
    rejected_at timestamptz not null,
    run_id varchar
);
"""


def write_rejections(
    warehouse_path: str | Path, recart_account_id: str, rejections: Sequence[Rejection], run_id: str | None
) -> None:
    """Replace the account's rows of ``klaviyo_push.rejections`` with this run's, in one transaction."""
    frame = pd.DataFrame(
        {
            "account_id": [recart_account_id] * len(rejections),
            "subscriber_id": [r.subscriber_id for r in rejections],
            "channel": [r.channel for r in rejections],
            "contact_as_given": [r.contact_as_given for r in rejections],
            "contact": [r.contact for r in rejections],
            "reason": [r.reason for r in rejections],
            "stage": [r.stage for r in rejections],
        },
        dtype="object",
    )
    with write_connection(warehouse_path) as conn:
        conn.execute(_REJECTIONS_DDL)
        conn.execute("begin")
        try:
            conn.execute(f"delete from {REJECTIONS_TABLE} where account_id = ?", [recart_account_id])
            if rejections:
                conn.register("incoming_rejections", frame)
                conn.execute(
                    f"insert into {REJECTIONS_TABLE} select account_id, subscriber_id, channel,"
                    " contact_as_given, contact, reason, stage, now(), ? from incoming_rejections",
                    [run_id],
                )
                conn.unregister("incoming_rejections")
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise


# ---------------------------------------------------------------------------- one account, end to end


async def push_account(
    client: KlaviyoClient,
    ledger: PushLedger,
    settings: PushSettings,
    warehouse_path: str | Path,
    *,
    run_id: str | None = None,
    dry_run: bool = False,
    concurrency: int = 4,
    max_klaviyo_rejections: int = DEFAULT_MAX_KLAVIYO_REJECTIONS,
) -> tuple[PushPlan, PushResult | None]:
    """Plan and (unless ``dry_run``) push one account; returns the plan and what was done.

    The rejections table is written after the push (also when it failed half-way: what was
    refused so far is kept). A dry run reads only: no API call, no ledger or warehouse write
    (``push_connected_account`` may first give an old ledger's unscoped rows to the connected
    Klaviyo account, so that the plan it shows is the one a real push would make).
    """
    reconciled = None
    if not dry_run:
        await asyncio.to_thread(mirror_account_lists, warehouse_path, settings)
        reconciled = await reconcile_interrupted(client, ledger, settings.recart_account_id, run_id)
    desired = await asyncio.to_thread(read_desired_state, warehouse_path, settings.recart_account_id)
    plan = make_plan(settings, desired, ledger.entries(settings.recart_account_id))
    if dry_run:
        return plan, None
    result = PushResult(settings.recart_account_id, plan.summary(), rejections=list(plan.rejections))
    if reconciled is not None:
        result.reconciled = reconciled
        result.api_calls += reconciled.api_calls
    try:
        if not plan.is_empty:
            await execute_plan(
                client,
                ledger,
                plan,
                run_id=run_id,
                concurrency=concurrency,
                max_klaviyo_rejections=max_klaviyo_rejections,
                result=result,
            )
    finally:
        await asyncio.to_thread(
            write_rejections, warehouse_path, settings.recart_account_id, result.rejections, run_id
        )
    return plan, result


def ledger_of_connection(store: ConnectionStore, recart_account_id: str) -> PushLedger:
    """The push ledger (beside the connection store) of what the Klaviyo account the shop is
    connected to now accepted; rows from before ledgers had a Klaviyo account are given to it."""
    ledger = PushLedger(store.path, store.require(recart_account_id).klaviyo_account_id)
    ledger.adopt_unscoped(recart_account_id)
    return ledger


async def push_connected_account(
    klaviyo: KlaviyoSettings,
    store: ConnectionStore,
    recart_account_id: str,
    warehouse_path: str | Path,
    *,
    max_concurrency: int = 16,
    **options: Any,
) -> tuple[PushPlan, PushResult | None]:
    """``push_account`` for a connected account: its settings, its OAuth client, the ledger beside
    the connection store. The one entry point of the Dagster asset and ``recart-klaviyo push``.

    Raises ``PushNotConfigured`` when the shop chose no list, and the connector's errors when the
    connection is inactive or needs re-authorization (no call is made). A push the shop switched
    off still runs, for opt-outs only (``make_plan``). A push stopped for too many refusals
    (``PushAborted``) is recorded in the push settings (``stopped_at``), cleared by the next push
    that finishes.
    """
    oauth = KlaviyoOAuth(klaviyo, store)
    # One push of a shop at a time (see ConnectionStore.push_lock); settings and ledger are read
    # inside it, so a push that waited uses what holds when it starts.
    async with held_in_own_thread(lambda: store.push_lock(recart_account_id)):
        settings = store.push_settings(recart_account_id)
        if settings is None:
            raise PushNotConfigured(
                f"{recart_account_id} has no push settings: choose its lists with "
                f"`recart-klaviyo push-settings {recart_account_id} --list LIST_ID`"
            )
        with ledger_of_connection(store, recart_account_id) as ledger:
            # Bound to the ledger's Klaviyo account: a reconnect to another one mid-push stops it
            # (ConnectionReplaced) instead of sending the rest there under this ledger.
            credentials = oauth.credentials(recart_account_id, ledger.scope or None)
            async with KlaviyoClient(klaviyo, credentials, max_concurrency=max_concurrency) as client:
                try:
                    plan, result = await push_account(client, ledger, settings, warehouse_path, **options)
                except PushAborted as aborted:
                    # A setup problem: the schedule backs off (sensors/push.py) until the shop
                    # changes its settings or a push finishes.
                    store.set_push_stopped(recart_account_id, str(aborted))
                    raise
        if result is not None and settings.stopped_at is not None:
            store.set_push_stopped(recart_account_id, None)  # it finished: the schedule resumes
        return plan, result
