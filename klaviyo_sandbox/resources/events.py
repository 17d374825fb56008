"""Events: ``GET /api/events`` (filters, sort, cursor pages, ``include=metric,profile``), one event,
its metric and profile (and their ids), and ``POST /api/events`` (202, no body).

An account holds tens of thousands of events, so reads never scan or sort per request: a per-account
index keeps every event sorted by ``(datetime, id)`` plus the same order per metric and per profile.
``metric_id``/``profile_id`` pick one of those lists, ``datetime``/``timestamp`` bounds become two
bisections, and a page is one more bisection from the cursor. The index is rebuilt lazily when the
account's events change behind our back (seed, control API) and updated in place by ``create_event``.

Email events carry their send context in ``event_properties`` as Klaviyo does: ``$flow`` (flow id,
flow sends only) and ``$message`` (flow-message id, or the campaign id for campaign sends).
"""

from __future__ import annotations

import bisect
import heapq
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import find_or_404, invalid, not_found
from klaviyo_sandbox.filters import Condition, matches
from klaviyo_sandbox.jsonapi import (
    Context,
    decode_cursor,
    dedupe,
    encode_cursor,
    iso,
    page_link,
    parse_datetime,
    relationship,
    require_linkage,
    resource,
    single,
    sort_key_value,
)
from klaviyo_sandbox.resources.metrics import get_account_metric, render_metric
from klaviyo_sandbox.resources.profiles import check_identifiers, render_profile
from klaviyo_sandbox.store import Account, Event, Metric, Profile, utcnow

IDENTIFIERS = ("email", "phone_number", "external_id")
_PROFILE_ATTRIBUTES = ("first_name", "last_name", "organization", "locale", "title", "image")
#: The integration Klaviyo gives metrics created through the API.
_ALWAYS_SET = ("profile", "metric")
API_INTEGRATION = {"object": "integration", "id": "7FtS4J", "key": "api", "name": "API", "category": "API"}


# ---------------------------------------------------------------------------- index


def _event_key(event: Event) -> tuple[datetime, str]:
    return (event.datetime, event.id)


def _event_datetime(event: Event) -> datetime:
    return event.datetime


def _event_timestamp(event: Event) -> int:
    return event.timestamp


@dataclass
class EventIndex:
    """Every event of one account sorted by ``(datetime, id)``, overall, per metric and per profile."""

    fingerprint: tuple[int, str | None]
    ordered: list[Event] = field(default_factory=list)
    by_metric: dict[str, list[Event]] = field(default_factory=dict)
    by_profile: dict[str, list[Event]] = field(default_factory=dict)

    @classmethod
    def build(cls, account: Account) -> EventIndex:
        """Index the account's events from scratch (one sort, one grouping pass)."""
        index = cls(fingerprint=_fingerprint(account))
        index.ordered = sorted(account.events.values(), key=_event_key)
        for event in index.ordered:
            index.by_metric.setdefault(event.metric_id, []).append(event)
            index.by_profile.setdefault(event.profile_id, []).append(event)
        return index

    def add(self, account: Account, event: Event) -> None:
        """Record one new event (already stored in ``account.events``) in every ordering."""
        bisect.insort(self.ordered, event, key=_event_key)
        bisect.insort(self.by_metric.setdefault(event.metric_id, []), event, key=_event_key)
        bisect.insort(self.by_profile.setdefault(event.profile_id, []), event, key=_event_key)
        self.fingerprint = _fingerprint(account)


def _fingerprint(account: Account) -> tuple[int, str | None]:
    # Events are only ever added in insertion order; count + newest key detects any change cheaply.
    return len(account.events), next(reversed(account.events), None)


_INDEXES: dict[int, tuple[weakref.ref[Account], EventIndex]] = {}


def event_index(account: Account) -> EventIndex:
    """The (cached, lazily refreshed) event index of an account."""
    cached = _INDEXES.get(id(account))
    if cached is not None and cached[0]() is account and cached[1].fingerprint == _fingerprint(account):
        return cached[1]
    index = EventIndex.build(account)
    key = id(account)
    _INDEXES[key] = (weakref.ref(account, lambda _ref: _INDEXES.pop(key, None)), index)
    return index


def forget_event_index(account: Account | None = None) -> None:
    """Drop the cached index (of one account, or all): call after editing events in place."""
    if account is None:
        _INDEXES.clear()
    else:
        _INDEXES.pop(id(account), None)


# ---------------------------------------------------------------------------- rendering


def event_attributes(event: Event) -> dict[str, Any]:
    """The attributes of an event as Klaviyo renders them."""
    return {
        "timestamp": event.timestamp,
        "event_properties": dict(event.event_properties),
        "datetime": iso(event.datetime),
        "uuid": event.uuid,
    }


def render_event(ctx: Context, event: Event) -> dict[str, Any]:
    """An event resource object: profile and metric linkage always, attributions when included."""
    base = f"/api/events/{event.id}"
    attributions = relationship(ctx, f"{base}/relationships/attributions/", f"{base}/attributions/")
    if "attributions" in ctx.include:
        attributions = {"data": [], **attributions}
    relationships = {
        "profile": relationship(
            ctx,
            f"{base}/relationships/profile/",
            f"{base}/profile/",
            {"type": "profile", "id": event.profile_id},
        ),
        "metric": relationship(
            ctx, f"{base}/relationships/metric/", f"{base}/metric/", {"type": "metric", "id": event.metric_id}
        ),
        "attributions": attributions,
    }
    return resource(
        ctx, "event", event.id, event_attributes(event), relationships=relationships, path="/api/events"
    )


def _included(ctx: Context, events: Sequence[Event]) -> list[dict[str, Any]]:
    """Metrics and profiles of these events, once each, when ``include`` asks (attributions: none)."""
    account = ctx.account
    out: list[dict[str, Any]] = []
    if "metric" in ctx.include:
        metric_ids = dict.fromkeys(e.metric_id for e in events)
        out.extend(render_metric(ctx, account.metrics[m]) for m in metric_ids if m in account.metrics)
    if "profile" in ctx.include:
        profile_ids = dict.fromkeys(e.profile_id for e in events)
        out.extend(render_profile(ctx, account.profiles[p]) for p in profile_ids if p in account.profiles)
    return out


def get_account_event(account: Account, event_id: str) -> Event:
    """The event with this id in the caller's account, or 404."""
    return find_or_404(account.events, event_id, "Event")


# ---------------------------------------------------------------------------- query


def _merge(lists: list[list[Event]]) -> list[Event]:
    if len(lists) == 1:
        return lists[0]
    return list(heapq.merge(*lists, key=_event_key))


def _bounds(items: list[Event], conditions: list[Condition]) -> tuple[int, int]:
    """The slice of ``items`` (sorted by datetime) inside every datetime/timestamp bound."""
    lo, hi = 0, len(items)
    for condition in conditions:
        key: Callable[[Event], Any] = _event_datetime if condition.field == "datetime" else _event_timestamp
        value = condition.value
        if condition.operator == "greater-than":
            lo = max(lo, bisect.bisect_right(items, value, key=key))
        elif condition.operator == "greater-or-equal":
            lo = max(lo, bisect.bisect_left(items, value, key=key))
        elif condition.operator == "less-than":
            hi = min(hi, bisect.bisect_left(items, value, key=key))
        elif condition.operator == "less-or-equal":
            hi = min(hi, bisect.bisect_right(items, value, key=key))
    return lo, max(lo, hi)


def select_events(account: Account, conditions: list[Condition]) -> list[Event]:
    """The account's events matching ``conditions``, sorted by ``(datetime, id)``, without a full scan
    whenever a metric, profile or time window narrows the search."""
    index = event_index(account)
    window = [c for c in conditions if c.field in ("datetime", "timestamp")]
    # Every sandbox event has a profile and a metric, so has(profile)/has(metric) hold for all:
    # dropping them keeps such requests on the indexed path instead of testing every event.
    rest = [
        c
        for c in conditions
        if c.field not in ("datetime", "timestamp") and not (c.operator == "has" and c.field in _ALWAYS_SET)
    ]
    options: list[tuple[Condition, list[Event]]] = []
    for condition in rest:
        if condition.field == "metric_id" and condition.operator == "equals":
            wanted = condition.value if isinstance(condition.value, list) else [condition.value]
            options.append((condition, _merge([index.by_metric.get(m, []) for m in dict.fromkeys(wanted)])))
        elif condition.field == "profile_id" and condition.operator == "equals":
            options.append((condition, index.by_profile.get(condition.value, [])))
    items = index.ordered
    if options:
        chosen, items = min(options, key=lambda option: len(option[1]))
        rest = [c for c in rest if c is not chosen]
    lo, hi = _bounds(items, window)
    if not rest:
        return items[lo:hi]
    return [event for event in items[lo:hi] if matches(rest, _event_getter(event))]


def _event_getter(event: Event) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        if name == "metric_id" or name == "metric":
            return event.metric_id
        if name == "profile_id" or name == "profile":
            return event.profile_id
        if name == "datetime":
            return event.datetime
        if name == "timestamp":
            return event.timestamp
        return None

    return get


def _cursor_key(cursor: str) -> tuple[datetime, str]:
    after = decode_cursor(cursor)
    try:
        when = datetime.strptime(str(after[0]), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
        return when, str(after[1])
    except (IndexError, ValueError) as exc:
        raise invalid("Invalid page cursor.", parameter="page[cursor]") from exc


def page_of_events(ctx: Context, items: list[Event], default_size: int) -> tuple[list[Event], str | None]:
    """One page of ``items`` (sorted ascending) in the requested order after the cursor, and the next link."""
    size = ctx.page_size or default_size
    descending = (ctx.sort or "").startswith("-")
    if descending:
        end = len(items)
        if ctx.cursor:
            end = bisect.bisect_left(items, _cursor_key(ctx.cursor), key=_event_key)
        start = max(0, end - size)
        page = items[start:end][::-1]
        more = start > 0
    else:
        start = 0
        if ctx.cursor:
            start = bisect.bisect_right(items, _cursor_key(ctx.cursor), key=_event_key)
        page = items[start : start + size]
        more = start + size < len(items)
    next_link = None
    if more and page:
        last = page[-1]
        next_link = page_link(ctx, encode_cursor([sort_key_value(last.datetime), last.id]))
    return page, next_link


# ---------------------------------------------------------------------------- reads


@handler("get_events")
def get_events(ctx: Context) -> tuple[int, Any]:
    """``GET /api/events``: oldest first unless ``sort=-datetime``/``-timestamp``; pages of 200 by default."""
    items = select_events(ctx.account, ctx.filters)
    page, next_link = page_of_events(ctx, items, ctx.op.page_size[0] if ctx.op.page_size else 200)
    doc: dict[str, Any] = {
        "data": [render_event(ctx, event) for event in page],
        "links": {"self": ctx.self_link(), "next": next_link, "prev": None},
    }
    if ctx.include:
        doc["included"] = dedupe(_included(ctx, page))
    return 200, doc


@handler("get_event")
def get_event(ctx: Context) -> tuple[int, Any]:
    """``GET /api/events/{id}`` with optional ``include=metric,profile,attributions``."""
    event = get_account_event(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_event(ctx, event), _included(ctx, [event]))


@handler("get_metric_for_event")
def get_metric_for_event(ctx: Context) -> tuple[int, Any]:
    """``GET /api/events/{id}/metric``."""
    event = get_account_event(ctx.account, ctx.path_params["id"])
    metric = get_account_metric(ctx.account, event.metric_id)
    return 200, single(ctx, render_metric(ctx, metric))


@handler("get_profile_for_event")
def get_profile_for_event(ctx: Context) -> tuple[int, Any]:
    """``GET /api/events/{id}/profile``."""
    event = get_account_event(ctx.account, ctx.path_params["id"])
    profile = ctx.account.profiles.get(event.profile_id)
    if profile is None:
        raise not_found("Profile", event.profile_id)
    return 200, single(ctx, render_profile(ctx, profile))


@handler("get_metric_id_for_event")
def get_metric_id_for_event(ctx: Context) -> tuple[int, Any]:
    """``GET /api/events/{id}/relationships/metric``."""
    event = get_account_event(ctx.account, ctx.path_params["id"])
    return 200, {"data": {"type": "metric", "id": event.metric_id}, "links": {"self": ctx.self_link()}}


@handler("get_profile_id_for_event")
def get_profile_id_for_event(ctx: Context) -> tuple[int, Any]:
    """``GET /api/events/{id}/relationships/profile``."""
    event = get_account_event(ctx.account, ctx.path_params["id"])
    return 200, {"data": {"type": "profile", "id": event.profile_id}, "links": {"self": ctx.self_link()}}


# ---------------------------------------------------------------------------- create


def metric_named(ctx: Context, name: str, now: datetime) -> Metric:
    """The account's metric with this name, created (API integration) when missing."""
    metric = ctx.account.metric_by_name(name)
    if metric is None:
        metric = Metric(
            id=_fresh_id(ctx, ctx.account.metrics, "short"),
            name=name,
            created=now,
            updated=now,
            integration=dict(API_INTEGRATION),
        )
        ctx.account.metrics[metric.id] = metric
    return metric


def _fresh_id(ctx: Context, taken: dict[str, Any], kind: str) -> str:
    while True:
        new = ctx.store.new_id(kind)
        if new not in taken:
            return new


def _set_identifier(account: Account, profile: Profile, name: str, value: str | None) -> None:
    """Change one identifier of a profile and keep the account's index in step (O(1))."""
    index = {
        "email": account.by_email,
        "phone_number": account.by_phone,
        "external_id": account.by_external_id,
    }[name]
    old = getattr(profile, name)
    old_key = old.lower() if name == "email" and old else old
    if old_key and index.get(old_key) == profile.id:
        del index[old_key]
    setattr(profile, name, value)
    if value:
        index[value.lower() if name == "email" else value] = profile.id


def _event_profile(ctx: Context, data: dict[str, Any], now: datetime) -> Profile:
    """Resolve (or create) the event's profile and apply the attributes sent with it."""
    pointer = "/data/attributes/profile/data"
    attributes = data.get("attributes") or {}
    check_identifiers(attributes, f"{pointer}/attributes")
    account = ctx.account
    profile: Profile | None = None
    if data.get("id"):
        profile = account.profiles.get(data["id"])
        if profile is None:
            raise invalid(f"Profile with id {data['id']} does not exist.", pointer=f"{pointer}/id")
    else:
        if not any(attributes.get(name) for name in (*IDENTIFIERS, "anonymous_id", "_kx")):
            raise invalid(
                "A profile identifier (id, email, phone_number or external_id) is required.",
                pointer=f"{pointer}/attributes",
            )
        profile = account.find_profile(
            attributes.get("email"), attributes.get("phone_number"), attributes.get("external_id")
        )
    if profile is None:
        profile = account.add_profile(
            Profile(id=_fresh_id(ctx, account.profiles, "ulid"), created=now, updated=now)
        )
    changed = False
    for name in IDENTIFIERS:
        value = attributes.get(name)
        if value and value != getattr(profile, name):
            owner = account.find_profile(**{name: value})
            if owner is None or owner.id == profile.id:  # never steal another profile's identifier
                _set_identifier(account, profile, name, value)
                changed = True
    for name in _PROFILE_ATTRIBUTES:
        if attributes.get(name) is not None:
            setattr(profile, name, attributes[name])
            changed = True
    if attributes.get("location"):
        profile.location = {
            **profile.location,
            **{k: v for k, v in attributes["location"].items() if v is not None},
        }
        changed = True
    if attributes.get("properties"):
        profile.properties = {**profile.properties, **attributes["properties"]}
        changed = True
    if changed:
        profile.updated = now
    return profile


@handler("create_event")
def create_event(ctx: Context) -> tuple[int, Any]:
    """``POST /api/events`` → 202, no body.

    The metric is found by name (created when new); the profile by id, email, phone number or
    external id (created when new). A second event with the same profile, metric and
    ``unique_id`` (default: the event time to the second) is accepted but not recorded again.
    """
    data = require_linkage(ctx.body, "event")
    attributes = data.get("attributes") or {}
    now = utcnow()
    when = now
    if attributes.get("time") is not None:
        when = parse_datetime(attributes["time"], "/data/attributes/time")
    metric_data = attributes["metric"]["data"]
    name = (metric_data.get("attributes") or {}).get("name", "").strip()
    if not name:
        raise invalid(
            "The metric name must not be blank.", pointer="/data/attributes/metric/data/attributes/name"
        )
    profile = _event_profile(ctx, attributes["profile"]["data"], now)
    metric = metric_named(ctx, name, now)
    account = ctx.account
    index = event_index(account)

    unique_id = attributes.get("unique_id") or str(int(when.timestamp()))
    for existing in index.by_profile.get(profile.id, []):
        if existing.metric_id == metric.id and str(existing.event_properties.get("$event_id")) == unique_id:
            return 202, None

    properties = dict(attributes.get("properties") or {})
    properties["$event_id"] = unique_id
    if attributes.get("value") is not None:
        properties["$value"] = attributes["value"]
    if attributes.get("value_currency"):
        properties["$value_currency"] = attributes["value_currency"]
    event = Event(
        id=_fresh_id(ctx, account.events, "event"),
        metric_id=metric.id,
        profile_id=profile.id,
        datetime=when,
        uuid=str(uuid.UUID(int=ctx.store.rng.getrandbits(128), version=4)),
        event_properties=properties,
    )
    account.events[event.id] = event
    index.add(account, event)
    if profile.last_event_date is None or when > profile.last_event_date:
        profile.last_event_date = when
    _notify_webhooks(ctx, event)
    return 202, None


def _notify_webhooks(ctx: Context, event: Event) -> None:
    """Queue the new event for the account's system webhooks subscribed to its topic."""
    dispatcher = getattr(ctx.app, "webhooks", None)
    if dispatcher is not None:
        dispatcher.publish(ctx.account, [event], base_url=ctx.base_url)
