"""Profiles: get, list, create (409 on duplicates), patch, profile-import, and a profile's lists/segments."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import phonenumbers

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import find_or_404, invalid
from klaviyo_sandbox.filters import Condition, matches
from klaviyo_sandbox.jsonapi import (
    Context,
    conflict,
    iso,
    paginate,
    relationship,
    require_linkage,
    resource,
    single,
    sort_key_value,
)
from klaviyo_sandbox.store import Account, ChannelConsent, Profile, utcnow

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
IDENTIFIERS = ("email", "phone_number", "external_id")
_PLAIN_ATTRIBUTES = ("first_name", "last_name", "organization", "locale", "title", "image")


# ---------------------------------------------------------------------------- validation


def valid_email(value: str) -> bool:
    """A syntactically plausible email address (Klaviyo rejects obviously broken ones with 400)."""
    return bool(_EMAIL.match(value)) and len(value) <= 254


def valid_e164(value: str) -> bool:
    """True for a valid phone number written in E.164 (``+15005550006``)."""
    if not value.startswith("+"):
        return False
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return False
    return (
        phonenumbers.is_valid_number(number)
        and phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == value
    )


def check_identifiers(attributes: dict[str, Any], pointer: str) -> None:
    """400 for an invalid email or a phone number that is not valid E.164."""
    email = attributes.get("email")
    if email is not None and not valid_email(email):
        raise invalid(f"Invalid email address: '{email}'.", pointer=f"{pointer}/email")
    phone = attributes.get("phone_number")
    if phone is not None and not valid_e164(phone):
        raise invalid(
            f"Invalid phone number format (must be E.164): '{phone}'.", pointer=f"{pointer}/phone_number"
        )


# ---------------------------------------------------------------------------- rendering


def _consent_block(consent: ChannelConsent, can_receive_key: str, can_receive: bool) -> dict[str, Any]:
    block: dict[str, Any] = {
        can_receive_key: can_receive,
        "consent": consent.consent,
        "consent_timestamp": iso(consent.consent_timestamp),
        "last_updated": iso(consent.last_updated),
        "method": consent.method,
        "method_detail": consent.method_detail,
    }
    return block


def can_receive_email(profile: Profile) -> bool:
    """Klaviyo's ``can_receive_email_marketing``: subscribed and not globally suppressed."""
    return (
        profile.email_marketing.consent == "SUBSCRIBED" and not profile.suppressions and bool(profile.email)
    )


def subscriptions(profile: Profile) -> dict[str, Any]:
    """The ``subscriptions`` additional field."""
    email = _consent_block(profile.email_marketing, "can_receive_email_marketing", can_receive_email(profile))
    email["custom_method_detail"] = profile.email_marketing.custom_method_detail
    email["double_optin"] = profile.email_marketing.double_optin
    email["suppression"] = [{"reason": s.reason, "timestamp": iso(s.timestamp)} for s in profile.suppressions]
    email["list_suppressions"] = [
        {"list_id": list_id, "reason": s.reason, "timestamp": iso(s.timestamp)}
        for list_id, s in profile.list_suppressions.items()
    ]
    sms_ok = profile.sms_marketing.consent == "SUBSCRIBED" and bool(profile.phone_number)
    sms_tx_ok = profile.sms_transactional.consent == "SUBSCRIBED" and bool(profile.phone_number)
    return {
        "email": {"marketing": email},
        "sms": {
            "marketing": _consent_block(profile.sms_marketing, "can_receive_sms_marketing", sms_ok),
            "transactional": _consent_block(
                profile.sms_transactional, "can_receive_sms_transactional", sms_tx_ok
            ),
        },
    }


_PROFILE_FIELDS: dict[str, Any] = {
    "email": lambda p: p.email,
    "phone_number": lambda p: p.phone_number,
    "external_id": lambda p: p.external_id,
    "first_name": lambda p: p.first_name,
    "last_name": lambda p: p.last_name,
    "organization": lambda p: p.organization,
    "locale": lambda p: p.locale,
    "title": lambda p: p.title,
    "image": lambda p: p.image,
    "created": lambda p: iso(p.created),
    "updated": lambda p: iso(p.updated),
    "last_event_date": lambda p: iso(p.last_event_date),
    "location": lambda p: dict(p.location),
    "properties": lambda p: dict(p.properties),
}


def profile_attributes(
    ctx: Context, profile: Profile, joined_group_at: datetime | None = None
) -> dict[str, Any]:
    """The attributes of a profile as Klaviyo renders them (plus ``joined_group_at`` for members).

    With a sparse fieldset only the requested top-level attributes are built: extraction asks for
    four fields of every member, and building all of them dominated the sandbox's page cost.
    """
    wanted = ctx.fields.get("profile")
    names = _PROFILE_FIELDS.keys() if wanted is None else {w.split(".", 1)[0] for w in wanted}
    attributes: dict[str, Any] = {
        name: _PROFILE_FIELDS[name](profile) for name in names if name in _PROFILE_FIELDS
    }
    if joined_group_at is not None and (wanted is None or "joined_group_at" in names):
        attributes["joined_group_at"] = iso(joined_group_at)
    if ctx.wants("profile", "subscriptions") and (wanted is None or "subscriptions" in names):
        attributes["subscriptions"] = subscriptions(profile)
    if ctx.wants("profile", "predictive_analytics") and (wanted is None or "predictive_analytics" in names):
        attributes["predictive_analytics"] = predictive_analytics(profile)
    return attributes


def predictive_analytics(profile: Profile) -> dict[str, Any]:
    """Deterministic stand-in predictive figures (Klaviyo computes these from order history)."""
    seed = sum(ord(ch) for ch in profile.id)
    orders = seed % 7
    aov = 20 + seed % 80
    return {
        "historic_clv": float(orders * aov),
        "predicted_clv": float((seed % 5) * aov / 2),
        "total_clv": float(orders * aov + (seed % 5) * aov / 2),
        "historic_number_of_orders": float(orders),
        "predicted_number_of_orders": round((seed % 10) / 10, 2),
        "average_days_between_orders": float(30 + seed % 90) if orders > 1 else None,
        "average_order_value": float(aov) if orders else 0.0,
        "churn_probability": round((seed % 100) / 100, 2),
        "expected_date_of_next_order": None,
        "ranked_channel_affinity": ["EMAIL", "SMS"] if profile.phone_number else ["EMAIL"],
    }


def render_profile(
    ctx: Context, profile: Profile, joined_group_at: datetime | None = None, *, relationships: bool = True
) -> dict[str, Any]:
    """A profile resource object (the one renderer every endpoint uses)."""
    rels = None
    if relationships:
        rels = {
            name: relationship(
                ctx,
                f"/api/profiles/{profile.id}/relationships/{name}/",
                f"/api/profiles/{profile.id}/{name}/",
            )
            for name in ("lists", "segments", "push-tokens")
        }
    return resource(
        ctx,
        "profile",
        profile.id,
        profile_attributes(ctx, profile, joined_group_at),
        relationships=rels,
        path="/api/profiles",
    )


def profile_getter(profile: Profile) -> Any:
    """Field accessor for filters over profiles."""

    def get(name: str) -> Any:
        if name == "id" or name == "profile_id":
            return profile.id
        if name == "email":
            return profile.email.lower() if profile.email else None
        if name.startswith("subscriptions.email.marketing.suppression."):
            key = name.rsplit(".", 1)[1]
            return [getattr(s, key) for s in profile.suppressions]
        if name.startswith("subscriptions.email.marketing.list_suppressions."):
            key = name.rsplit(".", 1)[1]
            if key == "list_id":
                return list(profile.list_suppressions)
            return [getattr(s, key) for s in profile.list_suppressions.values()]
        return getattr(profile, name, None)

    return get


# Filter fields answered by the account's identifier indexes (exact matches, as ``matches`` does).
_INDEXED_FIELDS = ("id", "profile_id", "email", "phone_number", "external_id")


def _lookup(account: Account, field: str, value: str) -> str | None:
    if field in ("id", "profile_id"):
        return value if value in account.profiles else None
    if field == "email":
        return account.by_email.get(value.lower())
    if field == "phone_number":
        return account.by_phone.get(value)
    return account.by_external_id.get(value)


def narrow_by_identifiers(
    account: Account, conditions: list[Condition]
) -> tuple[set[str] | None, list[Condition]]:
    """Profile ids that can satisfy the identifier conditions, and the conditions still to check.

    ``equals``/``any`` on an id, email, phone number or external id are answered from the
    account's indexes in O(values) instead of testing every profile; the ids returned satisfy
    those conditions exactly. ``None`` means no condition narrowed the search.
    """
    candidates: set[str] | None = None
    rest: list[Condition] = []
    for condition in conditions:
        if condition.field in _INDEXED_FIELDS and condition.operator in ("equals", "any"):
            values = condition.value if isinstance(condition.value, list) else [condition.value]
            if all(isinstance(value, str) for value in values):
                found = {pid for value in values if (pid := _lookup(account, condition.field, value))}
                candidates = found if candidates is None else candidates & found
                continue
        rest.append(condition)
    return candidates, rest


def lower_email_filters(ctx: Context) -> None:
    # Klaviyo matches emails case-insensitively; profiles are compared lower-cased.
    ctx.filters = [
        Condition(
            c.operator,
            c.field,
            [v.lower() for v in c.value] if isinstance(c.value, list) else c.value.lower(),
        )
        if c.field == "email" and c.value is not None
        else c
        for c in ctx.filters
    ]


def get_account_profile(account: Account, profile_id: str) -> Profile:
    """The profile with this id in the caller's account, or 404."""
    return find_or_404(account.profiles, profile_id, "Profile")


# ---------------------------------------------------------------------------- reads

_PROFILE_SORTS = {
    "created": lambda p: (sort_key_value(p.created), p.id),
    "updated": lambda p: (sort_key_value(p.updated), p.id),
    "email": lambda p: ((p.email or "").lower(), p.id),
    "id": lambda p: (p.id,),
}


@handler("get_profiles")
def get_profiles(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profiles`` with filters, sort and cursor pages."""
    lower_email_filters(ctx)
    sort = (ctx.sort or "id").lstrip("-")
    key = _PROFILE_SORTS.get(sort)
    if key is None:  # suppression timestamps: the earliest global or list suppression, as sorted on

        def key(p: Profile) -> tuple[Any, ...]:
            found = p.list_suppressions.values() if "list_suppressions" in sort else p.suppressions
            earliest = min((s.timestamp for s in found), default=None)
            return (sort_key_value(earliest), p.id)

    account = ctx.account
    candidates, rest = narrow_by_identifiers(account, ctx.filters)
    pool = account.profiles.values() if candidates is None else [account.profiles[p] for p in candidates]
    items = [p for p in pool if matches(rest, profile_getter(p))] if rest else list(pool)
    return 200, paginate(
        ctx, items, key, lambda p: render_profile(ctx, p), descending=(ctx.sort or "").startswith("-")
    )


@handler("get_profile")
def get_profile(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profiles/{id}``, optionally including its lists and segments."""
    profile = get_account_profile(ctx.account, ctx.path_params["id"])
    included = []
    data = render_profile(ctx, profile)
    from klaviyo_sandbox.resources.groups import render_list, render_segment

    for name, groups, render in (
        ("lists", ctx.account.lists, render_list),
        ("segments", ctx.account.segments, render_segment),
    ):
        if name in ctx.include:
            member_of = [g for g in groups.values() if profile.id in g.members]
            data.setdefault("relationships", {}).setdefault(name, {})["data"] = [
                {"type": name[:-1], "id": g.id} for g in member_of
            ]
            included.extend(render(ctx, g) for g in member_of)
    return 200, single(ctx, data, included)


def _groups_of(ctx: Context, kind: str) -> list[Any]:
    profile = get_account_profile(ctx.account, ctx.path_params["id"])
    groups = ctx.account.lists if kind == "list" else ctx.account.segments
    return [g for g in groups.values() if profile.id in g.members]


@handler("get_lists_for_profile", "get_segments_for_profile")
def get_groups_for_profile(ctx: Context) -> tuple[int, Any]:
    """The lists or segments a profile belongs to."""
    from klaviyo_sandbox.resources.groups import render_list, render_segment

    kind = "list" if ctx.op.operation_id == "get_lists_for_profile" else "segment"
    render = render_list if kind == "list" else render_segment
    groups = _groups_of(ctx, kind)
    return 200, {
        "data": [render(ctx, g) for g in groups],
        "links": {"self": ctx.self_link(), "next": None, "prev": None},
    }


@handler("get_list_ids_for_profile", "get_segment_ids_for_profile")
def get_group_ids_for_profile(ctx: Context) -> tuple[int, Any]:
    """Ids of the lists or segments a profile belongs to."""
    kind = "list" if ctx.op.operation_id == "get_list_ids_for_profile" else "segment"
    groups = _groups_of(ctx, kind)
    return 200, {
        "data": [{"type": kind, "id": g.id} for g in groups],
        "links": {"self": ctx.self_link(), "next": None, "prev": None},
    }


# ---------------------------------------------------------------------------- writes


def apply_attributes(profile: Profile, attributes: dict[str, Any], *, partial: bool) -> None:
    """Write request attributes onto a profile (``partial``: merge location and properties).

    The caller re-indexes identifiers with ``account.index_profile`` afterwards.
    """
    for name in (*IDENTIFIERS, *_PLAIN_ATTRIBUTES):
        if name in attributes:
            setattr(profile, name, attributes[name])
    if "location" in attributes:
        location = attributes["location"] or {}
        profile.location = {**profile.location, **location} if partial else dict(location)
        profile.location = {k: v for k, v in profile.location.items() if v is not None}
    if "properties" in attributes:
        properties = attributes["properties"] or {}
        profile.properties = {**profile.properties, **properties} if partial else dict(properties)
    profile.updated = utcnow()


def apply_patch_properties(profile: Profile, meta: dict[str, Any] | None) -> None:
    """Apply ``meta.patch_properties`` (append, unappend, unset) to custom properties."""
    patch = (meta or {}).get("patch_properties") or {}
    for key, value in (patch.get("append") or {}).items():
        current = profile.properties.get(key)
        current = current if isinstance(current, list) else ([] if current is None else [current])
        profile.properties[key] = [*current, value]
    for key, value in (patch.get("unappend") or {}).items():
        current = profile.properties.get(key)
        if isinstance(current, list):
            profile.properties[key] = [v for v in current if v != value]
    unset = patch.get("unset") or []
    for key in [unset] if isinstance(unset, str) else unset:
        profile.properties.pop(key, None)


def duplicate_of(account: Account, attributes: dict[str, Any], exclude: str | None = None) -> Profile | None:
    """Another profile already holding one of these identifiers (``exclude``: the one being updated)."""
    for name in IDENTIFIERS:
        value = attributes.get(name)
        if not value:
            continue
        found = account.find_profile(**{name: value})
        if found is not None and found.id != exclude:
            return found
    return None


def new_profile(ctx: Context, attributes: dict[str, Any]) -> Profile:
    """Create, index and return a profile from request attributes (consent stays never-subscribed)."""
    now = utcnow()
    profile = Profile(id=ctx.store.new_id("ulid"), created=now, updated=now)
    apply_attributes(profile, attributes, partial=False)
    return ctx.account.add_profile(profile)


@handler("create_profile")
def create_profile(ctx: Context) -> tuple[int, Any]:
    """``POST /api/profiles``: 201, or 409 ``duplicate_profile`` naming the existing profile."""
    data = require_linkage(ctx.body, "profile")
    attributes = data.get("attributes") or {}
    if not any(attributes.get(name) for name in IDENTIFIERS):
        raise invalid("One of email, phone_number or external_id is required.", pointer="/data/attributes")
    check_identifiers(attributes, "/data/attributes")
    duplicate = duplicate_of(ctx.account, attributes)
    if duplicate is not None:
        raise conflict(
            "A profile already exists with one of these identifiers.", {"duplicate_profile_id": duplicate.id}
        )
    profile = new_profile(ctx, attributes)
    return 201, single(ctx, render_profile(ctx, profile))


@handler("update_profile")
def update_profile(ctx: Context) -> tuple[int, Any]:
    """``PATCH /api/profiles/{id}``: absent leaves a field, ``null`` clears it."""
    data = require_linkage(ctx.body, "profile")
    profile_id = ctx.path_params["id"]
    if data.get("id") != profile_id:
        raise invalid("The id in the body must match the id in the URL.", pointer="/data/id")
    profile = get_account_profile(ctx.account, profile_id)
    attributes = data.get("attributes") or {}
    check_identifiers(attributes, "/data/attributes")
    duplicate = duplicate_of(ctx.account, attributes, exclude=profile.id)
    if duplicate is not None:
        raise conflict(
            "A profile already exists with one of these identifiers.", {"duplicate_profile_id": duplicate.id}
        )
    apply_attributes(profile, attributes, partial=True)
    apply_patch_properties(profile, data.get("meta"))
    ctx.account.index_profile(profile)
    return 200, single(ctx, render_profile(ctx, profile))


@handler("create_or_update_profile")
def create_or_update_profile(ctx: Context) -> tuple[int, Any]:
    """``POST /api/profile-import``: 201 when created, 200 when an existing profile was updated."""
    data = require_linkage(ctx.body, "profile")
    attributes = data.get("attributes") or {}
    check_identifiers(attributes, "/data/attributes")
    profile = None
    if data.get("id"):
        profile = get_account_profile(ctx.account, data["id"])
    else:
        if not any(attributes.get(name) for name in IDENTIFIERS):
            raise invalid(
                "One of email, phone_number or external_id is required.", pointer="/data/attributes"
            )
        profile = duplicate_of(ctx.account, attributes)
    if profile is None:
        profile = new_profile(ctx, attributes)
        apply_patch_properties(profile, data.get("meta"))
        return 201, single(ctx, render_profile(ctx, profile))
    duplicate = duplicate_of(ctx.account, attributes, exclude=profile.id)
    if duplicate is not None:
        raise conflict(
            "A profile already exists with one of these identifiers.", {"duplicate_profile_id": duplicate.id}
        )
    apply_attributes(profile, attributes, partial=True)
    apply_patch_properties(profile, data.get("meta"))
    ctx.account.index_profile(profile)
    return 200, single(ctx, render_profile(ctx, profile))
