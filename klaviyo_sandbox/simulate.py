"""Control endpoints that make Klaviyo *do* things: send flow and campaign emails, and watch webhooks.

Mounted by ``control.routes()`` under ``/_sandbox/``:

- ``POST /_sandbox/accounts/{account_id}/flows/{flow_id}/send`` and
  ``POST /_sandbox/accounts/{account_id}/campaigns/{campaign_id}/send`` create the email events a
  real send produces ("Received Email", then "Opened Email" / "Clicked Email" for a deterministic
  share of the recipients), with Klaviyo's attribution in ``event_properties``: ``$flow`` (flow
  sends only) and ``$message`` (the flow-message id, or the campaign id). The events are stored like
  any other and handed to the webhook dispatcher, so signed deliveries follow.
- ``GET /_sandbox/accounts/{account_id}/webhook-deliveries`` — the delivery log (every attempt).
- ``GET|PUT /_sandbox/webhook-settings`` — batching window, retry backoff, attempts, timeouts.

Answers follow the control API's conventions: ``{"data": …}``, errors ``{"error": "…"}`` (4xx).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from klaviyo_sandbox.control import ControlError, _account, _endpoint, _json, _sandbox, resolve_profile
from klaviyo_sandbox.store import Account, Campaign, Event, Flow, FlowMessage, Metric, Profile, utcnow
from klaviyo_sandbox.webhooks_out import delivery_to_dict, is_klaviyo_metric

RECEIVED, OPENED, CLICKED = "Received Email", "Opened Email", "Clicked Email"
#: Used only when an account has no Klaviyo-integration metric to copy the integration from.
KLAVIYO_INTEGRATION = {
    "object": "integration",
    "id": "0rG4eQ",
    "key": "klaviyo",
    "name": "Klaviyo",
    "category": "Internal",
}
EMAIL_CLIENTS: tuple[dict[str, str], ...] = tuple(
    {"Client Name": name, "Client Type": kind, "Client OS": os, "Client OS Family": os}
    for name, kind, os in (
        ("Apple Mail", "Mobile", "iOS"),
        ("Gmail", "Mobile", "Android"),
        ("Gmail", "Webmail", "Windows"),
        ("Outlook", "Desktop", "Windows"),
        ("Apple Mail", "Desktop", "Mac OS X"),
    )
)
# Opens and clicks follow the delivery by a little, so every ordering by time is the natural one.
OPEN_DELAY = timedelta(seconds=1)
CLICK_DELAY = timedelta(seconds=2)


@dataclass
class SendOptions:
    """What a simulated send was asked to do (validated)."""

    opened_rate: float
    clicked_rate: float
    at: datetime
    url: str | None


@dataclass
class Attribution:
    """The send context Klaviyo writes into every email event of one send."""

    message_id: str  # $message: flow-message id, or the campaign id
    flow_id: str | None  # $flow: present for flow sends only
    campaign_name: str  # "Campaign Name": the flow message's name, or the campaign's
    subject: str | None


# ---------------------------------------------------------------------------- body parsing


def _rate(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ControlError(400, f"'{name}' must be a number between 0 and 1")
    return float(value)


def _options(body: dict[str, Any]) -> SendOptions:
    at = utcnow()
    if body.get("at") is not None:
        try:
            at = datetime.fromisoformat(str(body["at"]).replace("Z", "+00:00"))
            at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise ControlError(400, "'at' must be an ISO 8601 datetime") from exc
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        raise ControlError(400, "'url' must be a string")
    # Klaviyo's event datetimes carry whole seconds.
    return SendOptions(
        _rate(body, "opened_rate", 1.0),
        _rate(body, "clicked_rate", 0.0),
        at.astimezone(UTC).replace(microsecond=0),
        url,
    )


def _profiles(account: Account, refs: Any) -> list[Profile]:
    if not isinstance(refs, list) or not all(isinstance(ref, str) for ref in refs):
        raise ControlError(400, "'profiles' must be a list of profile ids or emails")
    profiles: dict[str, Profile] = {}
    for ref in refs:
        profile = resolve_profile(account, ref)
        if not profile.email:
            raise ControlError(400, f"profile {profile.id} has no email address")
        profiles.setdefault(profile.id, profile)
    return list(profiles.values())


# ---------------------------------------------------------------------------- events


def _klaviyo_metric(request: Request, account: Account, name: str) -> Metric:
    """The account's Klaviyo metric of this name, created like Klaviyo's own when missing."""
    # Only Klaviyo's own: an API metric that happens to share the name has another webhook topic.
    metric = next((m for m in account.metrics.values() if m.name == name and is_klaviyo_metric(m)), None)
    if metric is not None:
        return metric
    template = next(
        (m.integration for m in account.metrics.values() if is_klaviyo_metric(m)), KLAVIYO_INTEGRATION
    )
    store = _sandbox(request).store
    metric_id = store.new_id("short")
    while metric_id in account.metrics:
        metric_id = store.new_id("short")
    now = utcnow()
    metric = Metric(id=metric_id, name=name, created=now, updated=now, integration=dict(template))
    account.metrics[metric.id] = metric
    return metric


def _first_share(profiles: list[Profile], rate: float) -> list[Profile]:
    # The first N recipients, N rounded half up: deterministic, and clickers ⊆ openers whenever
    # clicked_rate ≤ opened_rate, as with real people.
    return profiles[: int(rate * len(profiles) + 0.5)]


def _send(
    request: Request,
    account: Account,
    profiles: list[Profile],
    attribution: Attribution,
    options: SendOptions,
) -> dict[str, Any]:
    """Create the send's events, store them, publish them to webhooks; the answer's ``data``."""
    sandbox = _sandbox(request)
    store = sandbox.store
    # Property names and value shapes as the demo seed writes them, so simulated and seeded
    # email events look alike to every reader.
    base: dict[str, Any] = {}
    if attribution.flow_id is not None:
        base["$flow"] = attribution.flow_id
    base["$message"] = attribution.message_id
    base["Campaign Name"] = attribution.campaign_name
    if attribution.subject is not None:
        base["Subject"] = attribution.subject
    base["$message_send_cohort"] = f"{attribution.message_id}:{options.at.date().isoformat()}"
    url = options.url or account.website_url or "https://www.example.com/"
    # Seeded by the send itself: the same request always picks the same email clients.
    rng = random.Random(f"{attribution.message_id}:{options.at.isoformat()}")
    clients = {p.id: rng.choice(EMAIL_CLIENTS) for p in profiles}
    plan: list[tuple[str, Profile, datetime, dict[str, Any]]] = [
        (RECEIVED, p, options.at, {}) for p in profiles
    ]
    plan += [
        (OPENED, p, options.at + OPEN_DELAY, clients[p.id])
        for p in _first_share(profiles, options.opened_rate)
    ]
    plan += [
        (CLICKED, p, options.at + CLICK_DELAY, {**clients[p.id], "URL": url})
        for p in _first_share(profiles, options.clicked_rate)
    ]
    metrics = {name: _klaviyo_metric(request, account, name) for name in (RECEIVED, OPENED, CLICKED)}
    created: list[tuple[str, Event]] = []
    for name, profile, when, extra in plan:
        event_id = store.new_id("event")
        while event_id in account.events:
            event_id = store.new_id("event")
        event = Event(
            id=event_id,
            metric_id=metrics[name].id,
            profile_id=profile.id,
            datetime=when,
            uuid=str(uuid.UUID(int=store.rng.getrandbits(128), version=4)),
            event_properties={**base, "Email Domain": _email_domain(profile), **extra},
        )
        account.events[event.id] = event  # the Events API re-indexes lazily when the account changes
        if profile.last_event_date is None or when > profile.last_event_date:
            profile.last_event_date = when
        created.append((name, event))
    sandbox.webhooks.publish(account, [event for _, event in created], base_url=str(request.base_url))
    return {
        "events": [
            {"id": event.id, "metric": name, "profile_id": event.profile_id} for name, event in created
        ]
    }


def _email_domain(profile: Profile) -> str:
    return (profile.email or "").rpartition("@")[2].lower()


# ---------------------------------------------------------------------------- flows


def _flow_email_messages(account: Account, flow: Flow) -> list[FlowMessage]:
    """The flow's email messages in action order."""
    found = []
    for action_id in flow.action_ids:
        action = account.flow_actions.get(action_id)
        if action is None:
            continue
        for message_id in action.message_ids:
            message = account.flow_messages.get(message_id)
            if message is not None and message.channel.lower() == "email":
                found.append(message)
    return found


def _subject(definition: dict[str, Any]) -> str | None:
    for source in (definition, definition.get("content") or {}):
        for key in ("subject_line", "subject"):
            if isinstance(source.get(key), str):
                return source[key]
    return None


@_endpoint
async def send_flow(request: Request) -> dict[str, Any]:
    """Simulate a flow email reaching ``profiles`` (ids or emails), with opens and clicks."""
    account = _account(request)
    flow_id = request.path_params["flow_id"]
    flow = account.flows.get(flow_id)
    if flow is None:
        raise ControlError(404, f"no flow {flow_id!r} in account {account.id}")
    body = await _json(request)
    if "profiles" not in body:
        raise ControlError(400, "'profiles' (profile ids or emails) is required")
    options = _options(body)
    messages = _flow_email_messages(account, flow)
    message_id = body.get("message_id")
    if message_id is None:
        if not messages:
            raise ControlError(400, f"flow {flow_id!r} has no email message")
        message = messages[0]
    else:
        message = next((m for m in messages if m.id == message_id), None)
        if message is None:
            raise ControlError(404, f"no email message {message_id!r} in flow {flow_id!r}")
    profiles = _profiles(account, body["profiles"])
    attribution = Attribution(
        message_id=message.id,
        flow_id=flow.id,
        campaign_name=message.name,
        subject=_subject(message.definition),
    )
    return {"data": _send(request, account, profiles, attribution, options)}


# ---------------------------------------------------------------------------- campaigns


def can_receive_campaign_email(profile: Profile, group_id: str) -> bool:
    """Whether a campaign sent to ``group_id`` reaches this profile.

    Klaviyo's rule (``can_receive_email_marketing``): implicit consent unless globally suppressed —
    so never-subscribed profiles are mailed too; an unsubscribe from this very list also counts.
    """
    return (
        bool(profile.email)
        and not profile.suppressions
        and profile.email_marketing.consent != "UNSUBSCRIBED"
        and group_id not in profile.list_suppressions
    )


def campaign_audience(account: Account, campaign: Campaign) -> list[Profile]:
    """Members of the included lists/segments minus the excluded ones who can receive the email,
    each once, in order of joining (group by group)."""
    excluded: set[str] = set()
    for group_id in campaign.excluded_audiences:
        group = account.group(group_id)
        if group is not None:
            excluded.update(group.members)
    chosen: dict[str, Profile] = {}
    for group_id in campaign.included_audiences:
        group = account.group(group_id)
        if group is None:  # a deleted audience sends to nobody
            continue
        for _joined, profile_id in group.ordered_members():
            profile = account.profiles.get(profile_id)
            if (
                profile is not None
                and profile_id not in excluded
                and can_receive_campaign_email(profile, group_id)
            ):
                chosen.setdefault(profile_id, profile)
    return list(chosen.values())


@_endpoint
async def send_campaign(request: Request) -> dict[str, Any]:
    """Simulate sending an email campaign (default audience: its included minus excluded groups)."""
    account = _account(request)
    campaign_id = request.path_params["campaign_id"]
    campaign = account.campaigns.get(campaign_id)
    if campaign is None:
        raise ControlError(404, f"no campaign {campaign_id!r} in account {account.id}")
    if campaign.channel.lower() != "email":
        raise ControlError(
            400, f"campaign {campaign_id!r} is a {campaign.channel} campaign; only email sends"
        )
    body = await _json(request)
    options = _options(body)
    profiles = (
        campaign_audience(account, campaign)
        if body.get("profiles") is None
        else _profiles(account, body["profiles"])
    )
    subject = None
    for message_id in campaign.message_ids:
        message = account.campaign_messages.get(message_id)
        if message is not None and (subject := _subject(message.content)) is not None:
            break
    attribution = Attribution(
        message_id=campaign.id, flow_id=None, campaign_name=campaign.name, subject=subject
    )
    data = _send(request, account, profiles, attribution, options)
    campaign.status = "Sent"
    campaign.send_time = options.at
    campaign.updated_at = utcnow()
    return {"data": data}


# ---------------------------------------------------------------------------- webhooks


@_endpoint
async def webhook_deliveries(request: Request) -> dict[str, Any]:
    """Every delivery attempt of the account's webhooks, newest last (``?webhook_id=`` to narrow)."""
    account = _account(request)
    webhook_id = request.query_params.get("webhook_id")
    rows = [
        delivery_to_dict(d)
        for d in account.webhook_deliveries
        if webhook_id is None or d.webhook_id == webhook_id
    ]
    dispatcher = _sandbox(request).webhooks
    pending = sum(
        dispatcher.pending_count(hook_id)
        for hook_id in account.webhooks
        if webhook_id is None or hook_id == webhook_id
    )
    return {"data": rows, "meta": {"pending_events": pending}}


@_endpoint
async def webhook_settings(request: Request) -> dict[str, Any]:
    """Read (GET) or change (PUT, partial) the dispatcher's settings."""
    settings = _sandbox(request).webhooks.settings
    if request.method == "PUT":
        try:
            settings.update(await _json(request))
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
    return {"data": settings.to_dict()}


def routes() -> list[Route]:
    """The simulation and webhook-inspection routes (``control.routes()`` mounts them)."""
    return [
        Route("/_sandbox/accounts/{account_id}/flows/{flow_id}/send", send_flow, methods=["POST"]),
        Route(
            "/_sandbox/accounts/{account_id}/campaigns/{campaign_id}/send", send_campaign, methods=["POST"]
        ),
        Route("/_sandbox/accounts/{account_id}/webhook-deliveries", webhook_deliveries, methods=["GET"]),
        Route("/_sandbox/webhook-settings", webhook_settings, methods=["GET", "PUT"]),
    ]
