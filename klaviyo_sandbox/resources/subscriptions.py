"""Bulk subscribe (≤ 1,000) and bulk unsubscribe (≤ 100) jobs, with Klaviyo's consent rules.

What the sandbox reproduces, because the subscriber push depends on it:
- a double-opt-in list holds profiles that are not yet subscribed as *pending* and "sends" a
  confirmation email (recorded, inspectable) unless ``historical_import`` is set;
- ``consented_at`` is only allowed with ``historical_import`` (then required, in the past);
- subscribing lifts ``UNSUBSCRIBE``, ``SPAM_COMPLAINT`` and ``USER_SUPPRESSED`` suppressions (not
  bounces or invalid addresses) — which is why a careless re-push can override an opt-out;
- SMS consent needs a valid E.164 number in a country the account's SMS setup supports, otherwise
  the whole batch is rejected with 400 pointing at the profile;
- without a list and without ``historical_import`` a brand-new email never becomes a profile.
Klaviyo processes these jobs asynchronously (about a minute); the sandbox applies them before
answering 202, which keeps tests deterministic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import phonenumbers

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import ApiError, invalid
from klaviyo_sandbox.jsonapi import Context, parse_datetime, require_linkage
from klaviyo_sandbox.resources.profiles import new_profile, valid_e164, valid_email
from klaviyo_sandbox.store import ConfirmationEmail, KList, Profile, SubscriptionJob, Suppression, utcnow

MAX_SUBSCRIBE = 1000
MAX_UNSUBSCRIBE = 100
LIFTED_SUPPRESSIONS = {"UNSUBSCRIBE", "SPAM_COMPLAINT", "SPAM_REPORT", "USER_SUPPRESSED"}


def _profiles(attributes: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    profiles = (attributes.get("profiles") or {}).get("data") or []
    if not profiles:
        raise invalid("At least one profile is required.", pointer="/data/attributes/profiles/data")
    if len(profiles) > limit:
        raise invalid(
            f"At most {limit} profiles may be given per job; got {len(profiles)}.",
            pointer="/data/attributes/profiles/data",
        )
    return profiles


def _list_of(ctx: Context, data: dict[str, Any]) -> KList | None:
    linkage = ((data.get("relationships") or {}).get("list") or {}).get("data")
    if not linkage:
        return None
    klist = ctx.account.lists.get(linkage["id"])
    if klist is None:
        raise ApiError(
            404, f"List with id {linkage['id']} not found.", pointer="/data/relationships/list/data/id"
        )
    return klist


def _check_sms(ctx: Context, phone: str | None, pointer: str) -> None:
    """SMS consent needs a valid E.164 number, SMS set up, and a supported country.

    ``pointer`` names the profile item: Klaviyo rejects the whole batch pointing at
    ``/data/attributes/profiles/data/<index>`` for a configuration or region problem (S14).
    """
    field = f"{pointer}/attributes/phone_number"
    if phone is None:
        raise invalid("A phone_number is required to subscribe to SMS.", pointer=field)
    if not valid_e164(phone):
        raise invalid(f"Invalid phone number format (must be E.164): '{phone}'.", pointer=field)
    if not ctx.account.sms_enabled:
        raise invalid("SMS configuration is required to subscribe phone numbers to SMS.", pointer=pointer)
    region = phonenumbers.region_code_for_number(phonenumbers.parse(phone, None))
    if region not in ctx.account.sms_countries:
        raise invalid(
            f"Phone number '{phone}' is in a region ({region}) where SMS is not supported for this account.",
            pointer=pointer,
        )


def _lift_suppressions(profile: Profile, klist: KList | None) -> None:
    profile.suppressions = [s for s in profile.suppressions if s.reason not in LIFTED_SUPPRESSIONS]
    if klist is not None:
        profile.list_suppressions.pop(klist.id, None)


@handler("bulk_subscribe_profiles")
def bulk_subscribe_profiles(ctx: Context) -> tuple[int, Any]:
    """``POST /api/profile-subscription-bulk-create-jobs`` → 202, no body."""
    data = require_linkage(ctx.body, "profile-subscription-bulk-create-job")
    attributes = data["attributes"]
    historical = bool(attributes.get("historical_import"))
    klist = _list_of(ctx, data)
    profiles = _profiles(attributes, MAX_SUBSCRIBE)
    now = utcnow()

    # Validate the whole batch before changing anything: Klaviyo rejects a batch as one.
    plans: list[tuple[dict[str, Any], dict[str, Any], dict[str, datetime | None]]] = []
    for index, item in enumerate(profiles):
        pointer = f"/data/attributes/profiles/data/{index}"
        attrs = item.get("attributes") or {}
        subs = attrs.get("subscriptions") or {}
        email, phone = attrs.get("email"), attrs.get("phone_number")
        if email is not None and not valid_email(email):
            raise invalid(f"Invalid email address: '{email}'.", pointer=f"{pointer}/attributes/email")
        if phone is not None and not valid_e164(phone):
            raise invalid(
                f"Invalid phone number format (must be E.164): '{phone}'.",
                pointer=f"{pointer}/attributes/phone_number",
            )
        consented: dict[str, datetime | None] = {}
        for channel, kinds in (("email", ("marketing",)), ("sms", ("marketing", "transactional"))):
            for kind in kinds:
                params = (subs.get(channel) or {}).get(kind)
                if not params:
                    continue
                at_pointer = f"{pointer}/attributes/subscriptions/{channel}/{kind}/consented_at"
                raw_at = params.get("consented_at")
                if raw_at is not None and not historical:
                    raise invalid(
                        "consented_at may only be given when historical_import is true.", pointer=at_pointer
                    )
                at = parse_datetime(raw_at, at_pointer) if raw_at else None
                if historical and at is None:
                    raise invalid(
                        "consented_at is required when historical_import is true.", pointer=at_pointer
                    )
                if at is not None and at > now:
                    raise invalid("consented_at must be in the past.", pointer=at_pointer)
                consented[f"{channel}.{kind}"] = at
        if "email.marketing" in consented and not email and not item.get("id"):
            raise invalid(
                "An email is required to subscribe to email.", pointer=f"{pointer}/attributes/email"
            )
        if any(key.startswith("sms.") for key in consented):
            _check_sms(ctx, phone, pointer)
        if not consented and not email and not phone:
            raise invalid(
                "Each profile needs an email or phone number and a subscription.",
                pointer=f"{pointer}/attributes",
            )
        plans.append((item, attrs, consented))

    for item, attrs, consented in plans:
        _subscribe_one(ctx, item, attrs, consented, klist, historical, attributes.get("custom_source"), now)
    ctx.account.subscription_jobs.append(
        SubscriptionJob(
            id=ctx.store.new_id("job"),
            kind="subscribe",
            at=now,
            list_id=klist.id if klist else None,
            historical_import=historical,
            profile_count=len(plans),
            custom_source=attributes.get("custom_source"),
        )
    )
    return 202, None


def _subscribe_one(
    ctx: Context,
    item: dict[str, Any],
    attrs: dict[str, Any],
    consented: dict[str, datetime | None],
    klist: KList | None,
    historical: bool,
    custom_source: str | None,
    now: datetime,
) -> None:
    account = ctx.account
    email, phone = attrs.get("email"), attrs.get("phone_number")
    profile = account.profiles.get(item["id"]) if item.get("id") else None
    profile = profile or account.find_profile(email=email, phone_number=phone)
    if profile is None:
        if klist is None and not historical:
            return  # observed at Klaviyo: no list, no historical import → no new profile
        profile = new_profile(ctx, {"email": email, "phone_number": phone})
    else:
        changed = False
        if email and not profile.email and account.find_profile(email=email) is None:
            profile.email, changed = email, True
        if phone and not profile.phone_number and account.find_profile(phone_number=phone) is None:
            profile.phone_number, changed = phone, True
        if changed:
            account.index_profile(profile)
            profile.updated = now

    joined = False
    if "email.marketing" in consented:
        _lift_suppressions(profile, klist)
        already = profile.email_marketing.consent == "SUBSCRIBED"
        double = klist is not None and klist.opt_in_process == "double_opt_in" and not historical
        if double and not already:
            if profile.id not in klist.pending:  # type: ignore[union-attr]
                klist.pending[profile.id] = now  # type: ignore[union-attr]
                account.confirmation_emails.append(
                    ConfirmationEmail(
                        profile_id=profile.id, email=profile.email or "", list_id=klist.id, at=now
                    )  # type: ignore[union-attr]
                )
        else:
            consent = profile.email_marketing
            if not already:
                consent.consent = "SUBSCRIBED"
                consent.consent_timestamp = consented["email.marketing"] or now
                consent.method = "API"
                consent.method_detail = None
                consent.custom_method_detail = custom_source
                consent.double_optin = False
            consent.last_updated = now
            joined = True
    for kind in ("marketing", "transactional"):
        if f"sms.{kind}" in consented:
            consent = profile.sms_marketing if kind == "marketing" else profile.sms_transactional
            if consent.consent != "SUBSCRIBED":
                consent.consent = "SUBSCRIBED"
                consent.consent_timestamp = consented[f"sms.{kind}"] or now
                consent.method = "API"
                consent.method_detail = custom_source
            consent.last_updated = now
            joined = True
    if joined and klist is not None:
        klist.add_member(profile.id, now)
    profile.updated = now


def confirm_pending(account: Any, klist: KList, profile_ids: list[str] | None = None) -> list[str]:
    """The person clicked the confirmation link: pending profiles become subscribed members."""
    now = utcnow()
    confirmed = []
    for profile_id in list(klist.pending):
        if profile_ids is not None and profile_id not in profile_ids:
            continue
        klist.pending.pop(profile_id)
        profile = account.profiles[profile_id]
        consent = profile.email_marketing
        consent.consent = "SUBSCRIBED"
        consent.consent_timestamp = now
        consent.last_updated = now
        consent.method = "DOUBLE_OPT_IN"
        consent.double_optin = True
        klist.add_member(profile_id, now)
        confirmed.append(profile_id)
    return confirmed


@handler("bulk_unsubscribe_profiles")
def bulk_unsubscribe_profiles(ctx: Context) -> tuple[int, Any]:
    """``POST /api/profile-subscription-bulk-delete-jobs`` → 202, no body.

    With a list, members of that list are unsubscribed from it (a list suppression); everyone
    else, and everyone when no list is given, is unsubscribed globally, as the spec warns.
    """
    data = require_linkage(ctx.body, "profile-subscription-bulk-delete-job")
    attributes = data["attributes"]
    klist = _list_of(ctx, data)
    profiles = _profiles(attributes, MAX_UNSUBSCRIBE)
    now = utcnow()
    targets: list[tuple[Profile | None, dict[str, Any]]] = []
    for index, item in enumerate(profiles):
        pointer = f"/data/attributes/profiles/data/{index}/attributes"
        attrs = item.get("attributes") or {}
        email, phone = attrs.get("email"), attrs.get("phone_number")
        if email is not None and not valid_email(email):
            raise invalid(f"Invalid email address: '{email}'.", pointer=f"{pointer}/email")
        if phone is not None and not valid_e164(phone):
            raise invalid(
                f"Invalid phone number format (must be E.164): '{phone}'.", pointer=f"{pointer}/phone_number"
            )
        targets.append((ctx.account.find_profile(email=email, phone_number=phone), attrs))
    for profile, attrs in targets:
        if profile is None:
            continue  # nobody to unsubscribe
        subs = attrs.get("subscriptions") or {}
        if (subs.get("email") or {}).get("marketing"):
            if klist is not None and profile.id in klist.members:
                klist.remove_member(profile.id)
                profile.list_suppressions[klist.id] = Suppression("USER_SUPPRESSED", now)
            else:
                profile.email_marketing.consent = "UNSUBSCRIBED"
                profile.email_marketing.consent_timestamp = now
                profile.email_marketing.last_updated = now
                profile.email_marketing.method = "API"
                if not any(s.reason == "UNSUBSCRIBE" for s in profile.suppressions):
                    profile.suppressions.append(Suppression("UNSUBSCRIBE", now))
            if klist is not None:
                klist.pending.pop(profile.id, None)
        for kind in ("marketing", "transactional"):
            if (subs.get("sms") or {}).get(kind):
                consent = profile.sms_marketing if kind == "marketing" else profile.sms_transactional
                consent.consent = "UNSUBSCRIBED"
                consent.consent_timestamp = now
                consent.last_updated = now
        profile.updated = now
    ctx.account.subscription_jobs.append(
        SubscriptionJob(
            id=ctx.store.new_id("job"),
            kind="unsubscribe",
            at=now,
            list_id=klist.id if klist else None,
            historical_import=False,
            profile_count=len(targets),
        )
    )
    return 202, None
