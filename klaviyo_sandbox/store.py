"""The sandbox's state: accounts and everything in them, OAuth apps, grants and tokens.

One ``Store`` holds the whole simulated Klaviyo. It lives in memory and is mutated only from the
server's event loop (handlers are ``async`` and never await while mutating), so it needs no locks.
``--state FILE`` persists it as JSON (see ``save``/``load``) so a restarted sandbox keeps its data.

Every record is a plain dataclass; the HTTP layer (``resources``) turns them into JSON:API
documents. Nothing here knows about HTTP.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import os
import random
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from klaviyo_sandbox import ids


def utcnow() -> datetime:
    """Current time in UTC (the one clock of the sandbox)."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------- consent records


@dataclass
class Suppression:
    """An email suppression (``HARD_BOUNCE``, ``UNSUBSCRIBE``, ``SPAM_COMPLAINT``, ``USER_SUPPRESSED``, …)."""

    reason: str
    timestamp: datetime


@dataclass
class ChannelConsent:
    """One consent record (email marketing, SMS marketing or SMS transactional)."""

    consent: str = "NEVER_SUBSCRIBED"  # SUBSCRIBED | UNSUBSCRIBED | NEVER_SUBSCRIBED
    consent_timestamp: datetime | None = None
    last_updated: datetime | None = None
    method: str | None = None
    method_detail: str | None = None
    custom_method_detail: str | None = None
    double_optin: bool | None = None


# ---------------------------------------------------------------------------- profiles


@dataclass
class Profile:
    """A Klaviyo profile with its identifiers, attributes and consent."""

    id: str
    created: datetime
    updated: datetime
    email: str | None = None
    phone_number: str | None = None
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    organization: str | None = None
    locale: str | None = None
    title: str | None = None
    image: str | None = None
    last_event_date: datetime | None = None
    location: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    email_marketing: ChannelConsent = field(default_factory=ChannelConsent)
    sms_marketing: ChannelConsent = field(default_factory=ChannelConsent)
    sms_transactional: ChannelConsent = field(default_factory=ChannelConsent)
    suppressions: list[Suppression] = field(default_factory=list)
    # list_id -> suppression (unsubscribed from one list only)
    list_suppressions: dict[str, Suppression] = field(default_factory=dict)


# ---------------------------------------------------------------------------- groups

# Edits inside a group's sorted-member cache (each an O(n) memmove) allowed before dropping it.
_MAX_INNER_EDITS = 2048


@dataclass
class Group:
    """A list or a segment: a named set of profiles, each with the time it (last) joined.

    ``members`` maps profile id -> joined_group_at. ``ordered`` is a cache of
    ``(joined_group_at, profile_id)`` pairs sorted ascending, built lazily and then kept in step
    by ``add_member``/``remove_member``, so paging a large segment is a bisect rather than a sort
    per request, even while its membership changes.
    """

    id: str
    name: str
    created: datetime
    updated: datetime
    members: dict[str, datetime] = field(default_factory=dict)
    _ordered: list[tuple[datetime, str]] | None = field(default=None, repr=False, compare=False)
    _inner_edits: int = field(default=0, repr=False, compare=False)

    def add_member(self, profile_id: str, at: datetime) -> bool:
        """Add a profile (no-op if already a member); True when it was added."""
        if profile_id in self.members:
            return False
        self.members[profile_id] = at
        ordered = self._ordered
        if ordered is not None:  # keep the cache: one insort, not a re-sort on the next read
            member = (at, profile_id)
            if not ordered or ordered[-1] < member:
                ordered.append(member)  # the usual case: joining now
            else:
                self._edit_inside(lambda: bisect.insort(ordered, member))
        return True

    def remove_member(self, profile_id: str) -> bool:
        """Remove a profile; True when it was a member."""
        at = self.members.pop(profile_id, None)
        if at is None:
            return False
        ordered = self._ordered
        if ordered is not None:
            where = bisect.bisect_left(ordered, (at, profile_id))
            if where < len(ordered) and ordered[where] == (at, profile_id):
                self._edit_inside(lambda: ordered.__delitem__(where))
            else:  # cannot happen while every change goes through these methods; stay correct anyway
                self._ordered = None
        return True

    def _edit_inside(self, edit: Any) -> None:
        """Apply an edit that moves part of the cache (O(n) memmove), or drop the cache instead.

        One such edit is far cheaper than re-sorting, but a bulk change (replacing a large
        segment) would make thousands of them; past ``_MAX_INNER_EDITS`` a re-sort wins.
        """
        self._inner_edits += 1
        if self._inner_edits > _MAX_INNER_EDITS:
            self._ordered = None
        else:
            edit()

    def ordered_members(self) -> list[tuple[datetime, str]]:
        """Members as ``(joined_group_at, profile_id)`` ascending (cached, kept up to date)."""
        if self._ordered is None:
            self._ordered = sorted((at, pid) for pid, at in self.members.items())
            self._inner_edits = 0
        return self._ordered

    def members_after(self, key: tuple[datetime, str] | None) -> int:
        """Index in ``ordered_members()`` of the first member strictly after ``key``."""
        ordered = self.ordered_members()
        return 0 if key is None else bisect.bisect_right(ordered, key)


@dataclass
class KList(Group):
    """A Klaviyo list. ``pending`` holds double-opt-in profiles awaiting confirmation."""

    opt_in_process: str = "single_opt_in"  # single_opt_in | double_opt_in
    pending: dict[str, datetime] = field(default_factory=dict)


@dataclass
class Segment(Group):
    """A Klaviyo segment; membership is set through the control API (no rule engine)."""

    definition: dict[str, Any] = field(default_factory=lambda: {"condition_groups": []})
    is_active: bool = True
    is_processing: bool = False
    is_starred: bool = False


# ---------------------------------------------------------------------------- metrics, events


@dataclass
class Metric:
    """A metric (event type) such as ``Received Email``."""

    id: str
    name: str
    created: datetime
    updated: datetime
    integration: dict[str, Any] = field(default_factory=dict)


@dataclass
class Event:
    """One event of a profile on a metric; ``event_properties`` carries ``$flow``/``$message``."""

    id: str
    metric_id: str
    profile_id: str
    datetime: datetime
    uuid: str
    event_properties: dict[str, Any] = field(default_factory=dict)

    @property
    def timestamp(self) -> int:
        """Epoch seconds, as Klaviyo's ``attributes.timestamp``."""
        return int(self.datetime.timestamp())


# ---------------------------------------------------------------------------- flows, campaigns


@dataclass
class FlowMessage:
    """An email (or SMS) message sent by a flow action."""

    id: str
    action_id: str
    name: str
    channel: str  # "email" | "sms"
    created: datetime
    updated: datetime
    definition: dict[str, Any] = field(default_factory=dict)


@dataclass
class FlowAction:
    """A step of a flow (``SEND_EMAIL``, ``TIME_DELAY``, …)."""

    id: str
    flow_id: str
    action_type: str
    status: str  # disabled | draft | live | manual
    created: datetime
    updated: datetime
    definition: dict[str, Any] = field(default_factory=dict)
    message_ids: list[str] = field(default_factory=list)


@dataclass
class Flow:
    """A flow (abandoned cart, back in stock, welcome, …)."""

    id: str
    name: str
    status: str  # draft | manual | live
    archived: bool
    created: datetime
    updated: datetime
    trigger_type: str
    action_ids: list[str] = field(default_factory=list)


@dataclass
class CampaignMessage:
    """The message of a campaign for one channel."""

    id: str
    campaign_id: str
    channel: str
    label: str
    created_at: datetime
    updated_at: datetime
    content: dict[str, Any] = field(default_factory=dict)


@dataclass
class Campaign:
    """A campaign; ``channel`` is the channel of its messages (the mandatory filter)."""

    id: str
    name: str
    status: str  # Draft | Scheduled | Sending | Sent | Cancelled
    archived: bool
    channel: str
    created_at: datetime
    updated_at: datetime
    scheduled_at: datetime | None = None
    send_time: datetime | None = None
    included_audiences: list[str] = field(default_factory=list)
    excluded_audiences: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- webhooks, jobs


@dataclass
class Webhook:
    """A system webhook of one account (at most ten per account)."""

    id: str
    name: str
    endpoint_url: str
    secret_key: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    topics: list[str] = field(default_factory=list)


@dataclass
class WebhookDelivery:
    """One attempt to POST a batch to a webhook endpoint (the delivery log)."""

    id: str
    webhook_id: str
    attempt: int
    at: datetime
    event_ids: list[str]
    status_code: int | None
    error: str | None
    delivered: bool


@dataclass
class BulkImportJob:
    """A profile bulk import job (``/api/profile-bulk-import-jobs``)."""

    id: str
    status: str  # queued | processing | complete | cancelled
    created_at: datetime
    total_count: int
    completed_count: int = 0
    failed_count: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    list_ids: list[str] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SubscriptionJob:
    """A bulk subscribe or unsubscribe job, recorded for inspection (Klaviyo has no GET for it)."""

    id: str
    kind: str  # subscribe | unsubscribe
    at: datetime
    list_id: str | None
    historical_import: bool
    profile_count: int
    custom_source: str | None = None


@dataclass
class ConfirmationEmail:
    """A double-opt-in confirmation email the sandbox 'sent' (never wanted from Recart)."""

    profile_id: str
    email: str
    list_id: str
    at: datetime


# ---------------------------------------------------------------------------- account


@dataclass
class Account:
    """One Klaviyo account and everything in it. Nothing here is ever shared across accounts."""

    id: str
    name: str
    private_api_key: str
    public_api_key: str
    created: datetime
    timezone: str = "America/New_York"
    preferred_currency: str = "USD"
    industry: str = "Retail"
    locale: str = "en-US"
    test_account: bool = False
    website_url: str = ""
    sender_email: str = ""
    sms_enabled: bool = True
    sms_countries: list[str] = field(default_factory=lambda: ["US", "CA", "GB", "AU"])
    default_opt_in_process: str = "single_opt_in"
    advanced_kdp: bool = False  # private keys may use the Webhooks API only with Advanced KDP

    profiles: dict[str, Profile] = field(default_factory=dict)
    lists: dict[str, KList] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    flows: dict[str, Flow] = field(default_factory=dict)
    flow_actions: dict[str, FlowAction] = field(default_factory=dict)
    flow_messages: dict[str, FlowMessage] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    campaign_messages: dict[str, CampaignMessage] = field(default_factory=dict)
    webhooks: dict[str, Webhook] = field(default_factory=dict)
    bulk_import_jobs: dict[str, BulkImportJob] = field(default_factory=dict)
    subscription_jobs: list[SubscriptionJob] = field(default_factory=list)
    confirmation_emails: list[ConfirmationEmail] = field(default_factory=list)
    webhook_deliveries: list[WebhookDelivery] = field(default_factory=list)

    # identifier indexes (lower-cased email, E.164 phone, external id) -> profile id
    by_email: dict[str, str] = field(default_factory=dict)
    by_phone: dict[str, str] = field(default_factory=dict)
    by_external_id: dict[str, str] = field(default_factory=dict)

    # profile id -> the index keys it holds, so re-indexing one profile is O(1)
    _indexed: dict[str, tuple[str | None, str | None, str | None]] = field(default_factory=dict, repr=False)

    def index_profile(self, profile: Profile) -> None:
        """(Re)index a profile's identifiers (lower-cased email, E.164 phone, external id)."""
        old = self._indexed.get(profile.id, (None, None, None))
        for index, key in zip((self.by_email, self.by_phone, self.by_external_id), old, strict=True):
            if key is not None and index.get(key) == profile.id:
                del index[key]
        new = (
            profile.email.lower() if profile.email else None,
            profile.phone_number or None,
            profile.external_id or None,
        )
        for index, key in zip((self.by_email, self.by_phone, self.by_external_id), new, strict=True):
            if key is not None:
                index[key] = profile.id
        self._indexed[profile.id] = new

    def add_profile(self, profile: Profile) -> Profile:
        """Store a new profile and index it."""
        self.profiles[profile.id] = profile
        self.index_profile(profile)
        return profile

    def find_profile(
        self, email: str | None = None, phone_number: str | None = None, external_id: str | None = None
    ) -> Profile | None:
        """The profile matching any of the identifiers (email first, as Klaviyo resolves)."""
        for index, key in (
            (self.by_email, email.lower() if email else None),
            (self.by_phone, phone_number),
            (self.by_external_id, external_id),
        ):
            if key and key in index:
                return self.profiles[index[key]]
        return None

    def metric_by_name(self, name: str) -> Metric | None:
        """The metric with this name, if the account has one."""
        return next((m for m in self.metrics.values() if m.name == name), None)

    def group(self, group_id: str) -> KList | Segment | None:
        """A list or segment by id."""
        return self.lists.get(group_id) or self.segments.get(group_id)


# ---------------------------------------------------------------------------- OAuth


@dataclass
class OAuthClient:
    """A registered OAuth app: client id and secret, redirect URIs, the scopes it may request."""

    client_id: str
    client_secret: str
    name: str
    redirect_uris: list[str]
    scopes: list[str]


@dataclass
class AuthorizationCode:
    """A single-use authorization code bound to its PKCE challenge and redirect URI."""

    code: str
    client_id: str
    account_id: str
    redirect_uri: str
    scopes: list[str]
    code_challenge: str
    expires_at: datetime
    used: bool = False


@dataclass
class Grant:
    """An installed app on an account: the refresh token and its current access tokens."""

    id: str
    client_id: str
    account_id: str
    scopes: list[str]
    refresh_token: str
    created_at: datetime
    last_used_at: datetime
    revoked: bool = False


@dataclass
class AccessToken:
    """A bearer token of one grant."""

    token: str
    grant_id: str
    expires_at: datetime


# ---------------------------------------------------------------------------- the store


@dataclass
class Store:
    """All sandbox state. ``rng`` drives every generated id so runs from one seed are repeatable."""

    accounts: dict[str, Account] = field(default_factory=dict)
    oauth_clients: dict[str, OAuthClient] = field(default_factory=dict)
    authorization_codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    access_token_ttl_seconds: int = 3600
    rng: random.Random = field(default_factory=lambda: random.Random(20260715))

    def account_by_private_key(self, key: str) -> Account | None:
        """The account whose private API key this is."""
        return next((a for a in self.accounts.values() if a.private_api_key == key), None)

    def grant_by_refresh_token(self, refresh_token: str) -> Grant | None:
        """The grant holding this refresh token."""
        return next((g for g in self.grants.values() if g.refresh_token == refresh_token), None)

    # ------------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """Write the whole state as JSON, atomically (temp file + rename)."""
        payload = {
            "version": 2,
            "access_token_ttl_seconds": self.access_token_ttl_seconds,
            "rng_state": self.rng.getstate(),
            "accounts": list(self.accounts.values()),
            "oauth_clients": list(self.oauth_clients.values()),
            "authorization_codes": list(self.authorization_codes.values()),
            "grants": list(self.grants.values()),
            "access_tokens": list(self.access_tokens.values()),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(_dumps(payload))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Store:
        """Read a state file written by ``save``."""
        payload = orjson.loads(path.read_bytes())
        store = cls(access_token_ttl_seconds=payload["access_token_ttl_seconds"])
        store.rng.setstate(_decode_rng(payload["rng_state"]))
        for raw in payload["accounts"]:
            account = _decode(Account, raw)
            account.by_email, account.by_phone, account.by_external_id = {}, {}, {}
            for profile in account.profiles.values():
                account.index_profile(profile)
            store.accounts[account.id] = account
        for raw in payload["oauth_clients"]:
            client = _decode(OAuthClient, raw)
            store.oauth_clients[client.client_id] = client
        for raw in payload["authorization_codes"]:
            code = _decode(AuthorizationCode, raw)
            store.authorization_codes[code.code] = code
        for raw in payload["grants"]:
            grant = _decode(Grant, raw)
            store.grants[grant.id] = grant
        for raw in payload["access_tokens"]:
            access = _decode(AccessToken, raw)
            store.access_tokens[access.token] = access
        return store

    def new_id(self, kind: str) -> str:
        """A fresh id of the given kind: ``ulid``, ``short``, ``event``, ``numeric``, ``job``."""
        if kind == "ulid":
            return ids.ulid(self.rng, utcnow())
        return {"short": ids.short_id, "event": ids.event_id, "numeric": ids.numeric_id, "job": ids.job_id}[
            kind
        ](self.rng)


# ---------------------------------------------------------------------------- JSON codec
#
# orjson writes dataclasses (minus private caches), dicts, lists and datetimes in C; on load,
# the dataclass field types say where datetimes and nested records are, so nothing is tagged.


def _dataclass_fields(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value):
        return {name: getattr(value, name) for name, _ in _field_hints(type(value))}
    raise TypeError(f"cannot store {type(value).__name__}")


def _dumps(payload: Any) -> bytes:
    return orjson.dumps(
        payload, default=_dataclass_fields, option=orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS
    )


@functools.cache
def _field_hints(cls: type) -> tuple[tuple[str, Any], ...]:
    import typing

    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if not f.name.startswith("_"))


def _decode(cls: type, raw: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {
        name: _decode_typed(hint, raw[name]) for name, hint in _field_hints(cls) if name in raw
    }
    return cls(**kwargs)


def _decode_typed(hint: Any, value: Any) -> Any:
    import typing

    if value is None:
        return None
    if hint is datetime:
        return datetime.fromisoformat(value)
    if dataclasses.is_dataclass(hint):
        return _decode(hint, value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is dict and args and args[1] is not Any:
        return {k: _decode_typed(args[1], v) for k, v in value.items()}
    if origin is list and args and args[0] is not Any:
        return [_decode_typed(args[0], v) for v in value]
    if origin is tuple and args:
        return tuple(_decode_typed(a, v) for a, v in zip(args, value, strict=False))
    if origin in (typing.Union, type(int | None)):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _decode_typed(inner[0], value)
    return value


def _decode_rng(value: Any) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
