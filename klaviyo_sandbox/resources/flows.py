"""Flows, flow actions and flow messages (all read-only), with their parent/child lookups.

- ``GET /api/flows`` (page size 50) and ``GET /api/flows/{id}``; ``additional-fields[flow]=definition``
  adds a definition assembled from the flow's actions in Klaviyo's encoded form.
- ``GET /api/flows/{id}/flow-actions`` (and ids), ``GET /api/flow-actions/{id}``, its flow (and id),
  ``GET /api/flow-actions/{id}/flow-messages`` (and ids), ``GET /api/flow-messages/{id}`` and its action.
- Tags are not modelled: tag relationships and endpoints are always empty.

To-one parents (an action's flow, a message's action) always carry linkage; to-many relationships
carry ``data`` only when the request includes them, as Klaviyo does. Everything is scoped to the
caller's account: another account's id is a plain 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import find_or_404
from klaviyo_sandbox.filters import matches
from klaviyo_sandbox.jsonapi import Context, iso, paginate, relationship, resource, single, sort_key_value
from klaviyo_sandbox.store import Account, Flow, FlowAction, FlowMessage

# How the sandbox's upper-snake action types appear as encoded definition types.
_ENCODED_TYPES = {
    "SEND_EMAIL": "send-email",
    "SEND_SMS": "send-sms",
    "SEND_WEBHOOK": "send-webhook",
    "SEND_PUSH_NOTIFICATION": "send-push-notification",
    "TIME_DELAY": "time-delay",
    "CONDITIONAL_SPLIT": "conditional-split",
    "BOOLEAN_BRANCH": "conditional-split",
    "TRIGGER_SPLIT": "trigger-split",
    "UPDATE_PROFILE": "update-profile",
    "LIST_UPDATE": "list-update",
    "BACK_IN_STOCK_DELAY": "back-in-stock-delay",
    "AB_TEST": "ab-test",
}
_CHANNEL_NAMES = {"email": "Email", "sms": "SMS", "push": "Push", "webhook": "Webhook"}
_FLOW_EMAIL_KEYS = (
    "from_email",
    "from_label",
    "reply_to_email",
    "cc_email",
    "bcc_email",
    "subject_line",
    "preview_text",
    "template_id",
    "smart_sending_enabled",
    "transactional",
    "add_tracking_params",
    "custom_tracking_params",
    "additional_filters",
)
_FLOW_SMS_KEYS = (
    "body",
    "image_id",
    "dynamic_image",
    "shorten_links",
    "include_contact_card",
    "add_org_prefix",
    "add_info_link",
    "add_opt_out_language",
    "smart_sending_enabled",
    "sms_quiet_hours_enabled",
    "transactional",
    "add_tracking_params",
    "custom_tracking_params",
    "template_id",
    "additional_filters",
)
_EMAIL_DEFAULTS: dict[str, Any] = {
    "from_email": None,
    "from_label": None,
    "reply_to_email": None,
    "cc_email": None,
    "bcc_email": None,
    "subject_line": None,
    "preview_text": None,
    "template_id": None,
    "smart_sending_enabled": True,
    "transactional": False,
    "add_tracking_params": False,
    "custom_tracking_params": None,
    "additional_filters": None,
}
_SMS_DEFAULTS: dict[str, Any] = {
    "body": "",
    "image_id": None,
    "shorten_links": True,
    "include_contact_card": False,
    "add_org_prefix": True,
    "add_info_link": False,
    "add_opt_out_language": False,
    "smart_sending_enabled": True,
    "sms_quiet_hours_enabled": True,
    "transactional": False,
    "add_tracking_params": False,
    "custom_tracking_params": None,
    "template_id": None,
    "additional_filters": None,
}
_ALIASES = {
    "subject": "subject_line",
    "from_name": "from_label",
    "reply_to": "reply_to_email",
    "text": "body",
}


# ---------------------------------------------------------------------------- lookups


def get_account_flow(account: Account, flow_id: str) -> Flow:
    """The flow with this id in the caller's account, or 404."""
    return find_or_404(account.flows, flow_id, "Flow")


def get_account_flow_action(account: Account, action_id: str) -> FlowAction:
    """The flow action with this id in the caller's account, or 404."""
    return find_or_404(account.flow_actions, action_id, "FlowAction")


def get_account_flow_message(account: Account, message_id: str) -> FlowMessage:
    """The flow message with this id in the caller's account, or 404."""
    return find_or_404(account.flow_messages, message_id, "FlowMessage")


def flow_actions(account: Account, flow: Flow) -> list[FlowAction]:
    """The flow's actions in flow order (ids the account does not hold are skipped)."""
    return [account.flow_actions[a] for a in flow.action_ids if a in account.flow_actions]


def action_messages(account: Account, action: FlowAction) -> list[FlowMessage]:
    """The action's messages in order."""
    return [account.flow_messages[m] for m in action.message_ids if m in account.flow_messages]


# ---------------------------------------------------------------------------- encoded definitions


def _message_fields(
    definition: dict[str, Any], keys: tuple[str, ...], defaults: dict[str, Any]
) -> dict[str, Any]:
    source = {_ALIASES.get(k, k): v for k, v in definition.items()}
    return {key: source.get(key, defaults.get(key)) for key in keys if key in source or key in defaults}


def flow_message_definition(account: Account, message: FlowMessage) -> dict[str, Any]:
    """A flow message's ``definition`` as Klaviyo encodes it (``FlowEmail``, ``FlowSms``, ``FlowWebhook``).

    The parent action's encoded message is authoritative when it has one for this message (so the
    action and the message never disagree); otherwise the message's own content is encoded.
    """
    action = account.flow_actions.get(message.action_id)
    stored = (action.definition or {}) if action else {}
    embedded = stored.get("data", {}).get("message") if isinstance(stored.get("data"), dict) else None
    if isinstance(embedded, dict) and embedded.get("id") in (None, message.id):
        definition = dict(embedded)
    else:
        definition = dict(message.definition or {})
        content = definition.pop("content", None)
        if isinstance(content, dict):
            definition.update(content)
    channel = message.channel.lower()
    if channel == "sms":
        out = _message_fields(definition, _FLOW_SMS_KEYS, _SMS_DEFAULTS)
        out["body"] = out.get("body") or ""
    elif channel == "webhook":
        out = {
            "url": definition.get("url"),
            "headers": definition.get("headers") or {},
            "body": definition.get("body"),
        }
    else:
        out = _message_fields(definition, _FLOW_EMAIL_KEYS, _EMAIL_DEFAULTS)
    out["name"] = message.name
    out["id"] = message.id
    return out


def _time_delay_data(definition: dict[str, Any]) -> dict[str, Any]:
    data = definition.get("data") if isinstance(definition.get("data"), dict) else definition
    unit = data.get("unit", "days")
    return {
        "unit": unit if unit in ("days", "hours", "minutes") else "days",
        "value": int(data.get("value", 1)),
        "secondary_value": data.get("secondary_value"),
        "timezone": data.get("timezone", "profile"),
        "delay_until_time": data.get("delay_until_time"),
        "delay_until_weekdays": data.get("delay_until_weekdays"),
    }


def action_definition(account: Account, action: FlowAction) -> dict[str, Any] | None:
    """An action's ``definition`` in Klaviyo's encoded form (``send-email``, ``time-delay``, …).

    ``links.next`` points at the next action of the flow; message-sending actions embed their
    message. Action types the sandbox cannot encode faithfully answer ``null`` (the schema allows it).
    """
    stored = action.definition or {}
    kind = stored.get("type") or _ENCODED_TYPES.get(action.action_type.upper())
    flow = account.flows.get(action.flow_id)
    order = flow.action_ids if flow else []
    position = order.index(action.id) if action.id in order else -1
    next_id = order[position + 1] if 0 <= position < len(order) - 1 else None
    links: dict[str, Any] = {"next": next_id}
    messages = action_messages(account, action)
    status = action.status if action.status in ("disabled", "draft", "live", "manual") else "draft"
    data: dict[str, Any] | None
    if kind == "send-email":
        message = flow_message_definition(account, messages[0]) if messages else {**_EMAIL_DEFAULTS}
        data = {"message": message, "status": status}
    elif kind == "send-sms":
        message = flow_message_definition(account, messages[0]) if messages else {**_SMS_DEFAULTS}
        data = {"message": message, "status": status}
    elif kind == "send-webhook":
        if messages:
            message = flow_message_definition(account, messages[0])
        else:
            source = stored.get("data", {}).get("message") if isinstance(stored.get("data"), dict) else None
            source = source or stored
            message = {
                "url": source.get("url"),
                "headers": source.get("headers") or {},
                "body": source.get("body"),
            }
        data = {"message": message, "status": status}
    elif kind == "time-delay":
        data = _time_delay_data(stored)
    elif kind == "conditional-split":
        links = {"next_if_true": next_id, "next_if_false": stored.get("next_if_false")}
        data = {"profile_filter": stored.get("profile_filter")}
    elif kind == "update-profile":
        data = {"profile_operations": stored.get("profile_operations", []), "status": status}
    elif kind == "back-in-stock-delay":
        return {"id": action.id, "type": kind, "links": links}
    else:
        return None
    return {"id": action.id, "type": kind, "links": links, "data": data}


_TRIGGERS: dict[str, Callable[[Flow], list[dict[str, Any]]]] = {
    "Metric": lambda flow: [{"type": "metric", "id": None, "trigger_filter": None}],
    "Added to List": lambda flow: [{"type": "list", "id": None}],
    "Date Based": lambda flow: [
        {
            "type": "date",
            "date_field_type": "profile-property",
            "date_profile_property": "birthday",
            "timedelta_value_before_date": 0,
            "timedelta_unit_before_date": "days",
            "recurrence_frequency": "annually",
            "trigger_time": "09:00:00",
        }
    ],
    "Price Drop": lambda flow: [
        {
            "type": "price-drop",
            "trigger_filter": None,
            "price_drop_amount_value": 10,
            "price_drop_amount_unit": "percent",
            "audience": ["viewed", "checkout-started"],
        }
    ],
    "Low Inventory": lambda flow: [
        {
            "type": "low-inventory",
            "product_level": "variant",
            "trigger_filter": None,
            "inventory_count": 10,
            "audience": ["viewed", "added-to-cart", "checkout-started"],
        }
    ],
}


def flow_definition(account: Account, flow: Flow) -> dict[str, Any]:
    """``additional-fields[flow]=definition``: triggers, the encoded actions and the entry action."""
    actions = flow_actions(account, flow)
    encoded = [d for d in (action_definition(account, a) for a in actions) if d is not None]
    return {
        "triggers": _TRIGGERS.get(flow.trigger_type, lambda _flow: [])(flow),
        "profile_filter": None,
        "actions": encoded,
        "entry_action_id": actions[0].id if actions else None,
        "reentry_criteria": {"duration": 1, "unit": "alltime"},
    }


# ---------------------------------------------------------------------------- rendering


def render_flow(ctx: Context, flow: Flow) -> dict[str, Any]:
    """A flow resource object (``definition`` when ``additional-fields[flow]=definition``)."""
    attributes: dict[str, Any] = {
        "name": flow.name,
        "status": flow.status,
        "archived": flow.archived,
        "created": iso(flow.created),
        "updated": iso(flow.updated),
        "trigger_type": flow.trigger_type,
    }
    if ctx.wants("flow", "definition"):
        attributes["definition"] = flow_definition(ctx.account, flow)
    base = f"/api/flows/{flow.id}"
    actions = relationship(ctx, f"{base}/relationships/flow-actions/", f"{base}/flow-actions/")
    tags = relationship(ctx, f"{base}/relationships/tags/", f"{base}/tags/")
    if _includes(ctx, "flow", "flow-actions"):
        actions = {
            "data": [{"type": "flow-action", "id": a.id} for a in flow_actions(ctx.account, flow)],
            **actions,
        }
    if _includes(ctx, "flow", "tags"):
        tags = {"data": [], **tags}
    return resource(
        ctx,
        "flow",
        flow.id,
        attributes,
        relationships={"flow-actions": actions, "tags": tags},
        path="/api/flows",
    )


def render_flow_action(ctx: Context, action: FlowAction) -> dict[str, Any]:
    """A flow-action resource object: created, updated and the encoded definition."""
    attributes = {
        "created": iso(action.created),
        "updated": iso(action.updated),
        "definition": action_definition(ctx.account, action),
    }
    base = f"/api/flow-actions/{action.id}"
    messages = relationship(ctx, f"{base}/relationships/flow-messages/", f"{base}/flow-messages/")
    if _includes(ctx, "flow-action", "flow-messages"):
        messages = {
            "data": [{"type": "flow-message", "id": m.id} for m in action_messages(ctx.account, action)],
            **messages,
        }
    relationships = {
        "flow": relationship(
            ctx, f"{base}/relationships/flow/", f"{base}/flow/", {"type": "flow", "id": action.flow_id}
        ),
        "flow-messages": messages,
    }
    return resource(
        ctx, "flow-action", action.id, attributes, relationships=relationships, path="/api/flow-actions"
    )


def render_flow_message(ctx: Context, message: FlowMessage) -> dict[str, Any]:
    """A flow-message resource object: channel, created, updated and the encoded definition."""
    attributes = {
        "channel": _CHANNEL_NAMES.get(message.channel.lower(), message.channel),
        "created": iso(message.created),
        "updated": iso(message.updated),
        "definition": flow_message_definition(ctx.account, message),
    }
    base = f"/api/flow-messages/{message.id}"
    relationships = {
        "flow-action": relationship(
            ctx,
            f"{base}/relationships/flow-action/",
            f"{base}/flow-action/",
            {"type": "flow-action", "id": message.action_id},
        ),
        "template": relationship(ctx, f"{base}/relationships/template/", f"{base}/template/"),
    }
    return resource(
        ctx, "flow-message", message.id, attributes, relationships=relationships, path="/api/flow-messages"
    )


_PRIMARY_TYPES = {
    "get_flows": "flow",
    "get_flow": "flow",
    "get_flow_action": "flow-action",
    "get_flow_message": "flow-message",
}


def _includes(ctx: Context, primary: str, name: str) -> bool:
    """True when ``include`` asks for ``name`` and this request's primary data is of type ``primary``."""
    return name in ctx.include and _PRIMARY_TYPES.get(ctx.op.operation_id) == primary


# ---------------------------------------------------------------------------- collections


def _getter(record: Any) -> Callable[[str], Any]:
    return lambda name: getattr(record, name, None)


def _sorted_page(
    ctx: Context,
    items: list[Any],
    render: Callable[[Any], dict[str, Any]],
    *,
    default_key: Callable[[Any], tuple[Any, ...]] | None = None,
    included: Callable[[list[Any]], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Filter ``items`` by ``ctx.filters`` and serve one keyset page in the requested sort."""
    chosen = [item for item in items if matches(ctx.filters, _getter(item))]
    if ctx.sort:
        field = ctx.sort.lstrip("-")

        def key(item: Any) -> tuple[Any, ...]:
            return (sort_key_value(getattr(item, field, None)), item.id)

    else:
        key = default_key or (lambda item: (item.id,))
    return paginate(ctx, chosen, key, render, descending=(ctx.sort or "").startswith("-"), included=included)


def _flow_included(ctx: Context, flows: list[Flow]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if "flow-actions" in ctx.include:
        for flow in flows:
            out.extend(render_flow_action(ctx, a) for a in flow_actions(ctx.account, flow))
    return out


def _positions(order: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    where = {item_id: n for n, item_id in enumerate(order)}
    return lambda item: (where.get(item.id, len(where)), item.id)


# ---------------------------------------------------------------------------- flows


@handler("get_flows")
def get_flows(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flows``: filters, sort, pages of up to 50, ``include=flow-actions,tags``."""
    items = list(ctx.account.flows.values())
    return 200, _sorted_page(
        ctx, items, lambda f: render_flow(ctx, f), included=lambda page: _flow_included(ctx, page)
    )


@handler("get_flow")
def get_flow(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flows/{id}`` (``additional-fields[flow]=definition``, ``include=flow-actions,tags``)."""
    flow = get_account_flow(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_flow(ctx, flow), _flow_included(ctx, [flow]))


@handler("get_actions_for_flow")
def get_actions_for_flow(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flows/{id}/flow-actions``: the flow's actions, in flow order unless sorted."""
    flow = get_account_flow(ctx.account, ctx.path_params["id"])
    actions = flow_actions(ctx.account, flow)
    return 200, _sorted_page(
        ctx, actions, lambda a: render_flow_action(ctx, a), default_key=_positions(flow.action_ids)
    )


@handler("get_action_ids_for_flow")
def get_action_ids_for_flow(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flows/{id}/relationships/flow-actions``: ids only, same filters and pages."""
    flow = get_account_flow(ctx.account, ctx.path_params["id"])
    actions = flow_actions(ctx.account, flow)
    doc = _sorted_page(
        ctx, actions, lambda a: {"type": "flow-action", "id": a.id}, default_key=_positions(flow.action_ids)
    )
    return 200, doc


@handler("get_tags_for_flow")
def get_tags_for_flow(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flows/{id}/tags``: tags are not modelled (always empty)."""
    get_account_flow(ctx.account, ctx.path_params["id"])
    return 200, {"data": [], "links": {"self": ctx.self_link()}}


@handler("get_tag_ids_for_flow")
def get_tag_ids_for_flow(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flows/{id}/relationships/tags``: always empty."""
    get_account_flow(ctx.account, ctx.path_params["id"])
    return 200, {"data": [], "links": {"self": ctx.self_link()}}


# ---------------------------------------------------------------------------- flow actions


@handler("get_flow_action")
def get_flow_action(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-actions/{id}`` (``include=flow,flow-messages``)."""
    action = get_account_flow_action(ctx.account, ctx.path_params["id"])
    included: list[dict[str, Any]] = []
    if "flow" in ctx.include and action.flow_id in ctx.account.flows:
        included.append(render_flow(ctx, ctx.account.flows[action.flow_id]))
    if "flow-messages" in ctx.include:
        included.extend(render_flow_message(ctx, m) for m in action_messages(ctx.account, action))
    return 200, single(ctx, render_flow_action(ctx, action), included)


@handler("get_flow_for_flow_action")
def get_flow_for_flow_action(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-actions/{id}/flow``: the action's flow."""
    action = get_account_flow_action(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_flow(ctx, get_account_flow(ctx.account, action.flow_id)))


@handler("get_flow_id_for_flow_action")
def get_flow_id_for_flow_action(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-actions/{id}/relationships/flow``."""
    action = get_account_flow_action(ctx.account, ctx.path_params["id"])
    return 200, {"data": {"type": "flow", "id": action.flow_id}, "links": {"self": ctx.self_link()}}


@handler("get_flow_action_messages")
def get_flow_action_messages(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-actions/{id}/flow-messages``: filters, sort, pages of up to 50."""
    action = get_account_flow_action(ctx.account, ctx.path_params["id"])
    messages = action_messages(ctx.account, action)
    return 200, _sorted_page(
        ctx, messages, lambda m: render_flow_message(ctx, m), default_key=_positions(action.message_ids)
    )


@handler("get_message_ids_for_flow_action")
def get_message_ids_for_flow_action(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-actions/{id}/relationships/flow-messages``: ids only."""
    action = get_account_flow_action(ctx.account, ctx.path_params["id"])
    messages = action_messages(ctx.account, action)
    return 200, _sorted_page(
        ctx,
        messages,
        lambda m: {"type": "flow-message", "id": m.id},
        default_key=_positions(action.message_ids),
    )


# ---------------------------------------------------------------------------- flow messages


@handler("get_flow_message")
def get_flow_message(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-messages/{id}`` (``include=flow-action``; templates are not modelled)."""
    message = get_account_flow_message(ctx.account, ctx.path_params["id"])
    included: list[dict[str, Any]] = []
    if "flow-action" in ctx.include and message.action_id in ctx.account.flow_actions:
        included.append(render_flow_action(ctx, ctx.account.flow_actions[message.action_id]))
    return 200, single(ctx, render_flow_message(ctx, message), included)


@handler("get_action_for_flow_message")
def get_action_for_flow_message(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-messages/{id}/flow-action``: the message's parent action."""
    message = get_account_flow_message(ctx.account, ctx.path_params["id"])
    action = get_account_flow_action(ctx.account, message.action_id)
    return 200, single(ctx, render_flow_action(ctx, action))


@handler("get_action_id_for_flow_message")
def get_action_id_for_flow_message(ctx: Context) -> tuple[int, Any]:
    """``GET /api/flow-messages/{id}/relationships/flow-action``."""
    message = get_account_flow_message(ctx.account, ctx.path_params["id"])
    return 200, {"data": {"type": "flow-action", "id": message.action_id}, "links": {"self": ctx.self_link()}}
