"""Campaigns and campaign messages (read-only).

- ``GET /api/campaigns``: the ``messages.channel`` filter is mandatory (400 without it, as Klaviyo);
  other filters per the spec; pages of up to 100; ``include=campaign-messages,tags``.
- ``GET /api/campaigns/{id}``, its messages (and ids), its tags (always empty).
- ``GET /api/campaign-messages/{id}`` and its campaign (and id).

Campaign and campaign-message ids are ULIDs. Klaviyo records a campaign send on the email events as
``$message`` = the campaign id, without ``$flow`` (see ``events.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import find_or_404, invalid
from klaviyo_sandbox.filters import matches
from klaviyo_sandbox.jsonapi import (
    Context,
    dedupe,
    iso,
    paginate,
    relationship,
    resource,
    single,
    sort_key_value,
)
from klaviyo_sandbox.store import Account, Campaign, CampaignMessage

CHANNEL_FILTER_REQUIRED = (
    "A channel filter is required to list campaigns. Please provide either "
    "?filter=equals(messages.channel,'email') to list email campaigns, "
    "?filter=equals(messages.channel,'sms') to list SMS campaigns, or "
    "?filter=equals(messages.channel,'mobile_push') to list mobile push campaigns."
)
_EMAIL_CONTENT_KEYS = (
    "subject",
    "preview_text",
    "from_email",
    "from_label",
    "reply_to_email",
    "cc_email",
    "bcc_email",
)
_ALIASES = {
    "subject_line": "subject",
    "from_name": "from_label",
    "reply_to": "reply_to_email",
    "text": "body",
}
_PRIMARY_TYPES = {
    "get_campaigns": "campaign",
    "get_campaign": "campaign",
    "get_messages_for_campaign": "campaign-message",
    "get_campaign_message": "campaign-message",
}


# ---------------------------------------------------------------------------- lookups


def get_account_campaign(account: Account, campaign_id: str) -> Campaign:
    """The campaign with this id in the caller's account, or 404."""
    return find_or_404(account.campaigns, campaign_id, "Campaign")


def get_account_campaign_message(account: Account, message_id: str) -> CampaignMessage:
    """The campaign message with this id in the caller's account, or 404."""
    return find_or_404(account.campaign_messages, message_id, "CampaignMessage")


def campaign_messages(account: Account, campaign: Campaign) -> list[CampaignMessage]:
    """The campaign's messages, in order."""
    return [account.campaign_messages[m] for m in campaign.message_ids if m in account.campaign_messages]


# ---------------------------------------------------------------------------- rendering


def _send_strategy(campaign: Campaign) -> dict[str, Any]:
    when = campaign.send_time or campaign.scheduled_at
    if when is None:
        return {"method": "immediate"}
    return {"method": "static", "datetime": iso(when), "options": {"is_local": False}}


def _tracking_options(campaign: Campaign) -> dict[str, Any] | None:
    if campaign.channel == "email":
        return {
            "add_tracking_params": False,
            "custom_tracking_params": None,
            "is_tracking_clicks": True,
            "is_tracking_opens": True,
        }
    if campaign.channel == "sms":
        return {"add_tracking_params": False, "custom_tracking_params": None}
    return None  # mobile push campaigns have no tracking options


def campaign_attributes(campaign: Campaign) -> dict[str, Any]:
    """The attributes of a campaign as Klaviyo renders them."""
    return {
        "name": campaign.name,
        "status": campaign.status,
        "archived": campaign.archived,
        "audiences": {
            "included": list(campaign.included_audiences),
            "excluded": list(campaign.excluded_audiences),
        },
        "send_options": {"use_smart_sending": True},
        "tracking_options": _tracking_options(campaign),
        "send_strategy": _send_strategy(campaign),
        "created_at": iso(campaign.created_at),
        "scheduled_at": iso(campaign.scheduled_at),
        "updated_at": iso(campaign.updated_at),
        "send_time": iso(campaign.send_time),
    }


def render_campaign(ctx: Context, campaign: Campaign) -> dict[str, Any]:
    """A campaign resource object; to-many relationships carry ``data`` only when included."""
    base = f"/api/campaigns/{campaign.id}"
    messages = relationship(ctx, f"{base}/relationships/campaign-messages/", f"{base}/campaign-messages/")
    tags = relationship(ctx, f"{base}/relationships/tags/", f"{base}/tags/")
    if _includes(ctx, "campaign", "campaign-messages"):
        ids = [{"type": "campaign-message", "id": m.id} for m in campaign_messages(ctx.account, campaign)]
        messages = {"data": ids, **messages}
    if _includes(ctx, "campaign", "tags"):
        tags = {"data": [], **tags}
    return resource(
        ctx,
        "campaign",
        campaign.id,
        campaign_attributes(campaign),
        relationships={"campaign-messages": messages, "tags": tags},
        path="/api/campaigns",
    )


def message_definition(message: CampaignMessage) -> dict[str, Any]:
    """A campaign message's ``definition`` for its channel (email, sms or mobile_push)."""
    content = {_ALIASES.get(k, k): v for k, v in (message.content or {}).items()}
    channel = message.channel.lower()
    if channel == "sms":
        return {
            "channel": "sms",
            "content": {"body": content.get("body"), "media_url": content.get("media_url")},
            "render_options": {
                "shorten_links": True,
                "add_org_prefix": True,
                "add_info_link": True,
                "add_opt_out_language": False,
            },
        }
    if channel == "mobile_push":
        return {
            "channel": "mobile_push",
            "notification_type": "standard",
            "content": {"title": content.get("title"), "body": content.get("body")},
        }
    return {
        "channel": "email",
        "label": message.label,
        "content": {key: content.get(key) for key in _EMAIL_CONTENT_KEYS},
    }


def render_campaign_message(ctx: Context, message: CampaignMessage) -> dict[str, Any]:
    """A campaign-message resource object (its campaign's linkage always present)."""
    campaign = ctx.account.campaigns.get(message.campaign_id)
    when = (campaign.send_time or campaign.scheduled_at) if campaign else None
    attributes = {
        "definition": message_definition(message),
        "send_times": [{"datetime": iso(when), "is_local": False}] if when else [],
        "created_at": iso(message.created_at),
        "updated_at": iso(message.updated_at),
    }
    base = f"/api/campaign-messages/{message.id}"
    relationships = {
        "campaign": relationship(
            ctx,
            f"{base}/relationships/campaign/",
            f"{base}/campaign/",
            {"type": "campaign", "id": message.campaign_id},
        ),
        "template": relationship(ctx, f"{base}/relationships/template/", f"{base}/template/"),
        "image": relationship(ctx, f"{base}/relationships/image/", f"{base}/image/"),
    }
    return resource(
        ctx,
        "campaign-message",
        message.id,
        attributes,
        relationships=relationships,
        path="/api/campaign-messages",
    )


def _includes(ctx: Context, primary: str, name: str) -> bool:
    return name in ctx.include and _PRIMARY_TYPES.get(ctx.op.operation_id) == primary


def _campaign_getter(campaign: Campaign) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        if name == "messages.channel":
            return campaign.channel
        return getattr(campaign, name, None)

    return get


def _campaign_included(ctx: Context, campaigns: list[Campaign]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "campaign-messages" in ctx.include:
        for campaign in campaigns:
            out.extend(render_campaign_message(ctx, m) for m in campaign_messages(ctx.account, campaign))
    return out


def _message_included(ctx: Context, messages: list[CampaignMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "campaign" in ctx.include:
        for message in messages:
            if message.campaign_id in ctx.account.campaigns:
                out.append(render_campaign(ctx, ctx.account.campaigns[message.campaign_id]))
    return out


# ---------------------------------------------------------------------------- campaigns


@handler("get_campaigns")
def get_campaigns(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaigns``: requires ``equals(messages.channel,…)``; pages of up to 100."""
    if not any(c.field == "messages.channel" for c in ctx.filters):
        raise invalid(CHANNEL_FILTER_REQUIRED, parameter="filter")
    items = [c for c in ctx.account.campaigns.values() if matches(ctx.filters, _campaign_getter(c))]
    field = (ctx.sort or "id").lstrip("-")

    def key(campaign: Campaign) -> tuple[Any, ...]:
        return (sort_key_value(getattr(campaign, field)), campaign.id)

    return 200, paginate(
        ctx,
        items,
        key,
        lambda c: render_campaign(ctx, c),
        descending=(ctx.sort or "").startswith("-"),
        included=lambda page: _campaign_included(ctx, page),
    )


@handler("get_campaign")
def get_campaign(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaigns/{id}`` (``include=campaign-messages,tags``)."""
    campaign = get_account_campaign(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_campaign(ctx, campaign), _campaign_included(ctx, [campaign]))


@handler("get_messages_for_campaign")
def get_messages_for_campaign(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaigns/{id}/campaign-messages`` (``include=campaign``; no paging)."""
    campaign = get_account_campaign(ctx.account, ctx.path_params["id"])
    messages = campaign_messages(ctx.account, campaign)
    doc: dict[str, Any] = {
        "data": [render_campaign_message(ctx, m) for m in messages],
        "links": {"self": ctx.self_link()},
    }
    if ctx.include:
        doc["included"] = dedupe(_message_included(ctx, messages))
    return 200, doc


@handler("get_message_ids_for_campaign")
def get_message_ids_for_campaign(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaigns/{id}/relationships/campaign-messages``."""
    campaign = get_account_campaign(ctx.account, ctx.path_params["id"])
    ids = [{"type": "campaign-message", "id": m.id} for m in campaign_messages(ctx.account, campaign)]
    return 200, {"data": ids, "links": {"self": ctx.self_link()}}


@handler("get_tags_for_campaign")
def get_tags_for_campaign(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaigns/{id}/tags``: tags are not modelled (always empty)."""
    get_account_campaign(ctx.account, ctx.path_params["id"])
    return 200, {"data": [], "links": {"self": ctx.self_link()}}


@handler("get_tag_ids_for_campaign")
def get_tag_ids_for_campaign(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaigns/{id}/relationships/tags``: always empty."""
    get_account_campaign(ctx.account, ctx.path_params["id"])
    return 200, {"data": [], "links": {"self": ctx.self_link()}}


# ---------------------------------------------------------------------------- campaign messages


@handler("get_campaign_message")
def get_campaign_message(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaign-messages/{id}`` (``include=campaign``; templates and images are not modelled)."""
    message = get_account_campaign_message(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_campaign_message(ctx, message), _message_included(ctx, [message]))


@handler("get_campaign_for_campaign_message")
def get_campaign_for_campaign_message(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaign-messages/{id}/campaign``."""
    message = get_account_campaign_message(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_campaign(ctx, get_account_campaign(ctx.account, message.campaign_id)))


@handler("get_campaign_id_for_campaign_message")
def get_campaign_id_for_campaign_message(ctx: Context) -> tuple[int, Any]:
    """``GET /api/campaign-messages/{id}/relationships/campaign``."""
    message = get_account_campaign_message(ctx.account, ctx.path_params["id"])
    return 200, {"data": {"type": "campaign", "id": message.campaign_id}, "links": {"self": ctx.self_link()}}
