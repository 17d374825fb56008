"""The Webhooks API: ``/api/webhooks`` (list, get, create, update, delete) and ``/api/webhook-topics``.

Klaviyo's rules (reference §6): at most ten webhooks per account; ``secret_key`` is required on
create and never returned; ``endpoint_url`` must be https (the sandbox also takes http to loopback
hosts) and is shown masked (``https://host/*****``); topics must be ones the account offers (system
``event:klaviyo.*`` topics plus one per metric). Private keys reach these endpoints only with
Advanced KDP — the app's scope check enforces that before any handler here runs.
"""

from __future__ import annotations

from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import ApiError, find_or_404, invalid
from klaviyo_sandbox.jsonapi import Context, dedupe, iso, require_linkage, resource, single
from klaviyo_sandbox.store import Webhook, utcnow
from klaviyo_sandbox.webhooks_out import (
    MAX_WEBHOOKS_PER_ACCOUNT,
    MIN_SECRET_KEY_LENGTH,
    account_topics,
    endpoint_url_problem,
    mask_endpoint_url,
)

_TOPICS_POINTER = "/data/relationships/webhook-topics/data"


# ---------------------------------------------------------------------------- rendering


def _topic_resource(ctx: Context, topic_id: str) -> dict[str, Any]:
    # Built by hand: a webhook-topic has no attributes, and the spec's schema allows none.
    return {
        "type": "webhook-topic",
        "id": topic_id,
        "links": {"self": ctx.link(f"/api/webhook-topics/{topic_id}/")},
    }


def _webhook_resource(ctx: Context, hook: Webhook) -> dict[str, Any]:
    attributes = {
        "name": hook.name,
        "description": hook.description,
        "endpoint_url": mask_endpoint_url(hook.endpoint_url),
        "enabled": hook.enabled,
        "created_at": iso(hook.created_at),
        "updated_at": iso(hook.updated_at),
    }
    relationships = {
        "webhook-topics": {
            "data": [{"type": "webhook-topic", "id": topic} for topic in hook.topics],
            "links": {
                "self": ctx.link(f"/api/webhooks/{hook.id}/relationships/webhook-topics/"),
                "related": ctx.link(f"/api/webhooks/{hook.id}/webhook-topics/"),
            },
        }
    }
    return resource(ctx, "webhook", hook.id, attributes, relationships=relationships, path="/api/webhooks")


def _included(ctx: Context, hooks: list[Webhook]) -> list[dict[str, Any]]:
    return [_topic_resource(ctx, topic) for hook in hooks for topic in hook.topics]


def _find(ctx: Context) -> Webhook:
    webhook_id = ctx.path_params["id"]
    return find_or_404(ctx.account.webhooks, webhook_id, "Webhook")


# ---------------------------------------------------------------------------- validation


def _topics_from(ctx: Context, relationships: dict[str, Any] | None) -> list[str] | None:
    """The topic ids a request names (None when it names none), each checked against the account."""
    member = (relationships or {}).get("webhook-topics")
    if member is None:
        return None
    linkages = member.get("data") if isinstance(member, dict) else None
    if not linkages:
        raise invalid("A webhook must subscribe to at least one topic.", pointer=_TOPICS_POINTER)
    available = set(account_topics(ctx.account))
    topics: list[str] = []
    for index, linkage in enumerate(linkages):
        topic = linkage["id"]
        if topic not in available:
            raise invalid(
                f"'{topic}' is not a valid webhook topic for this account.",
                pointer=f"{_TOPICS_POINTER}/{index}/id",
            )
        if topic not in topics:
            topics.append(topic)
    return topics


def _check_url(url: str) -> str:
    problem = endpoint_url_problem(url)
    if problem:
        raise invalid(problem, pointer="/data/attributes/endpoint_url")
    return url


def _check_secret(secret: str) -> str:
    if len(secret) < MIN_SECRET_KEY_LENGTH:
        raise invalid(
            f"secret_key must be at least {MIN_SECRET_KEY_LENGTH} characters long.",
            pointer="/data/attributes/secret_key",
        )
    return secret


def _check_name(name: str) -> str:
    if not name.strip():
        raise invalid("name must not be blank.", pointer="/data/attributes/name")
    return name


# ---------------------------------------------------------------------------- webhooks


@handler("get_webhooks")
def get_webhooks(ctx: Context) -> tuple[int, dict[str, Any]]:
    """All webhooks of the account, oldest first (never more than ten, so no paging)."""
    hooks = sorted(ctx.account.webhooks.values(), key=lambda hook: (hook.created_at, hook.id))
    doc: dict[str, Any] = {
        "data": [_webhook_resource(ctx, hook) for hook in hooks],
        "links": {"self": ctx.self_link()},
    }
    if "webhook-topics" in ctx.include:
        doc["included"] = dedupe(_included(ctx, hooks))
    return 200, doc


@handler("get_webhook")
def get_webhook(ctx: Context) -> tuple[int, dict[str, Any]]:
    """One webhook."""
    hook = _find(ctx)
    return 200, single(ctx, _webhook_resource(ctx, hook), _included(ctx, [hook]))


@handler("create_webhook")
def create_webhook(ctx: Context) -> tuple[int, dict[str, Any]]:
    """Create a webhook (enabled) → 201; the secret is stored, never shown."""
    data = require_linkage(ctx.body, "webhook")
    attributes = data["attributes"]
    name = _check_name(attributes["name"])
    endpoint_url = _check_url(attributes["endpoint_url"])
    secret_key = _check_secret(attributes["secret_key"])
    topics = _topics_from(ctx, data.get("relationships"))
    if topics is None:
        raise invalid("A webhook must subscribe to at least one topic.", pointer=_TOPICS_POINTER)
    if len(ctx.account.webhooks) >= MAX_WEBHOOKS_PER_ACCOUNT:
        raise invalid(
            f"This account already has the maximum of {MAX_WEBHOOKS_PER_ACCOUNT} webhooks. "
            "Delete a webhook before creating another.",
            pointer="/data",
        )
    now = utcnow()
    hook = Webhook(
        id=ctx.store.new_id("ulid"),
        name=name,
        endpoint_url=endpoint_url,
        secret_key=secret_key,
        enabled=True,
        created_at=now,
        updated_at=now,
        description=attributes.get("description"),
        topics=topics,
    )
    ctx.account.webhooks[hook.id] = hook
    return 201, single(ctx, _webhook_resource(ctx, hook))


@handler("update_webhook")
def update_webhook(ctx: Context) -> tuple[int, dict[str, Any]]:
    """Change any of name, description, endpoint_url, secret_key, enabled and topics → 200.

    ``null`` clears ``description``; for the other attributes (which cannot be empty) it changes nothing.
    """
    hook = _find(ctx)
    data = require_linkage(ctx.body, "webhook")
    if data["id"] != hook.id:
        raise invalid(
            f"The id in the body ({data['id']}) does not match the URL ({hook.id}).", pointer="/data/id"
        )
    attributes = data["attributes"]
    # Validate everything first, so a bad member leaves the webhook untouched.
    changes: dict[str, Any] = {}
    if attributes.get("name") is not None:
        changes["name"] = _check_name(attributes["name"])
    if "description" in attributes:
        changes["description"] = attributes["description"]
    if attributes.get("endpoint_url") is not None:
        changes["endpoint_url"] = _check_url(attributes["endpoint_url"])
    if attributes.get("secret_key") is not None:
        changes["secret_key"] = _check_secret(attributes["secret_key"])
    if attributes.get("enabled") is not None:
        changes["enabled"] = attributes["enabled"]
    topics = _topics_from(ctx, data.get("relationships"))
    if topics is not None:
        changes["topics"] = topics
    for name, value in changes.items():
        setattr(hook, name, value)
    hook.updated_at = utcnow()
    if not hook.enabled:
        _dispatcher_discard(ctx, hook.id)  # a disabled webhook gets nothing, not even what was queued
    return 200, single(ctx, _webhook_resource(ctx, hook))


@handler("delete_webhook")
def delete_webhook(ctx: Context) -> tuple[int, None]:
    """Delete a webhook → 204; its queued events are dropped (its delivery log stays)."""
    hook = _find(ctx)
    del ctx.account.webhooks[hook.id]
    _dispatcher_discard(ctx, hook.id)
    return 204, None


def _dispatcher_discard(ctx: Context, webhook_id: str) -> None:
    dispatcher = getattr(ctx.app, "webhooks", None)
    if dispatcher is not None:
        dispatcher.discard(webhook_id)


# ---------------------------------------------------------------------------- topics


@handler("get_webhook_topics")
def get_webhook_topics(ctx: Context) -> tuple[int, dict[str, Any]]:
    """Every topic the account's webhooks may subscribe to."""
    return 200, {
        "data": [_topic_resource(ctx, topic) for topic in account_topics(ctx.account)],
        "links": {"self": ctx.self_link()},
    }


@handler("get_webhook_topic")
def get_webhook_topic(ctx: Context) -> tuple[int, dict[str, Any]]:
    """One topic by id (``event:klaviyo.received_email``)."""
    topic = ctx.path_params["id"]
    if topic not in account_topics(ctx.account):
        raise ApiError(404, f"Webhook topic with id {topic} not found.")
    return 200, single(ctx, _topic_resource(ctx, topic))
