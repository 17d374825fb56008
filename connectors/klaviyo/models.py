"""Typed records parsed at the edge from Klaviyo's JSON:API resources; the rest of the code never
indexes raw JSON.

Every ``from_resource(resource, endpoint)`` checks the members it needs and raises
:class:`~connectors.klaviyo.errors.MalformedResponseError` naming the endpoint when one is missing
or has the wrong type. Optional members (nullable in the spec, or absent under a sparse fieldset)
become ``None``. Datetimes are timezone-aware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, Self

from connectors.klaviyo.errors import MalformedResponseError

__all__ = [
    "Account",
    "BulkImportJob",
    "Campaign",
    "CampaignMessage",
    "Event",
    "Flow",
    "FlowAction",
    "FlowMessage",
    "GroupKind",
    "KlaviyoList",
    "Member",
    "MemberPage",
    "Metric",
    "Profile",
    "Segment",
    "SubscribeProfile",
    "Webhook",
    "WebhookTopic",
]

GroupKind = Literal["list", "segment"]
_MISSING = object()


class _Resource:
    """Checked access to one JSON:API resource object."""

    def __init__(self, resource: Any, endpoint: str, type_: str | None) -> None:
        self.endpoint = endpoint
        if not isinstance(resource, Mapping):
            self.fail(f"expected a resource object, got {type(resource).__name__}")
        self.raw = resource
        if type_ is not None and resource.get("type") != type_:
            self.fail(f"expected a {type_!r} resource, got type {resource.get('type')!r}")
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            self.fail(f"{type_ or 'resource'} without an id")
        self.id: str = resource_id
        attributes = resource.get("attributes", {})
        if not isinstance(attributes, Mapping):
            self.fail(f"{type_} {self.id}: 'attributes' is not an object")
        self.attributes: Mapping[str, Any] = attributes

    def fail(self, problem: str) -> NoReturn:
        raise MalformedResponseError(f"Malformed Klaviyo response: {problem}", endpoint=self.endpoint)

    def get(self, name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        """An attribute (dots walk into objects): checked type; ``None`` when optional and absent/null."""
        value: Any = self.attributes
        for part in name.split("."):
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING or value is None:
            if required and value is _MISSING:
                self.fail(f"{self.raw.get('type')} {self.id}: missing attribute {name!r}")
            return None
        if isinstance(value, bool) and kind is int:
            self.fail(f"{self.raw.get('type')} {self.id}: attribute {name!r} is not {kind}")
        if not isinstance(value, kind):
            self.fail(f"{self.raw.get('type')} {self.id}: attribute {name!r} has type {type(value).__name__}")
        return value

    def text(self, name: str, *, required: bool = False) -> str | None:
        """A string attribute."""
        return self.get(name, str, required=required)

    def flag(self, name: str, *, required: bool = True, default: bool = False) -> bool:
        """A boolean attribute."""
        value = self.get(name, bool, required=required)
        return default if value is None else value

    def when(self, name: str, *, required: bool = False) -> datetime | None:
        """An ISO 8601 datetime attribute (aware; naive values are taken as UTC)."""
        raw = self.get(name, str, required=required)
        if raw is None:
            return None
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            self.fail(f"{self.raw.get('type')} {self.id}: attribute {name!r} is not a datetime: {raw!r}")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any]:
        """An object attribute (``{}`` when absent)."""
        value = self.get(name, Mapping, required=required)
        return dict(value) if value is not None else {}

    def related_id(self, name: str) -> str | None:
        """The id of a to-one relationship's linkage, when the document carries it."""
        relationships = self.raw.get("relationships")
        if not isinstance(relationships, Mapping):
            return None
        member = relationships.get(name)
        data = member.get("data") if isinstance(member, Mapping) else None
        if isinstance(data, Mapping) and isinstance(data.get("id"), str):
            return data["id"]
        return None

    def related_ids(self, name: str) -> tuple[str, ...] | None:
        """The ids of a to-many relationship's linkage, or ``None`` when the document has no linkage."""
        relationships = self.raw.get("relationships")
        if not isinstance(relationships, Mapping):
            return None
        member = relationships.get(name)
        data = member.get("data") if isinstance(member, Mapping) else None
        if not isinstance(data, list):
            return None
        return tuple(
            item["id"] for item in data if isinstance(item, Mapping) and isinstance(item.get("id"), str)
        )


# ---------------------------------------------------------------------------- account


@dataclass(frozen=True)
class Account:
    """The Klaviyo account behind a key or token."""

    id: str
    name: str | None
    test_account: bool
    timezone: str | None
    preferred_currency: str | None
    public_api_key: str | None
    locale: str | None
    default_sender_email: str | None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/accounts") -> Self:
        """Parse an ``account`` resource."""
        r = _Resource(resource, endpoint, "account")
        return cls(
            id=r.id,
            name=r.text("contact_information.organization_name"),
            test_account=r.flag("test_account", required=False),
            timezone=r.text("timezone"),
            preferred_currency=r.text("preferred_currency"),
            public_api_key=r.text("public_api_key"),
            locale=r.text("locale"),
            default_sender_email=r.text("contact_information.default_sender_email"),
        )


# ---------------------------------------------------------------------------- lists and segments


@dataclass(frozen=True)
class KlaviyoList:
    """A Klaviyo list; ``profile_count`` only when asked for (it has its own, stricter quota)."""

    id: str
    name: str
    opt_in_process: str | None
    created: datetime | None
    updated: datetime | None
    profile_count: int | None = None

    @property
    def is_double_opt_in(self) -> bool:
        """True when subscribing without ``historical_import`` may make Klaviyo send a confirmation:
        a double opt-in list, or one whose opt-in process is not said (null: the account's default
        applies, which may be double opt-in). Only a list that says single opt-in is not."""
        return self.opt_in_process != "single_opt_in"

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/lists") -> Self:
        """Parse a ``list`` resource."""
        r = _Resource(resource, endpoint, "list")
        return cls(
            id=r.id,
            name=r.get("name", str),
            opt_in_process=r.text("opt_in_process"),
            created=r.when("created"),
            updated=r.when("updated"),
            profile_count=r.get("profile_count", int, required=False),
        )


@dataclass(frozen=True)
class Segment:
    """A Klaviyo segment; ``profile_count`` only when asked for."""

    id: str
    name: str
    created: datetime | None
    updated: datetime | None
    is_active: bool
    is_processing: bool
    profile_count: int | None = None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/segments") -> Self:
        """Parse a ``segment`` resource."""
        r = _Resource(resource, endpoint, "segment")
        return cls(
            id=r.id,
            name=r.get("name", str),
            created=r.when("created"),
            updated=r.when("updated"),
            is_active=r.flag("is_active", required=False, default=True),
            is_processing=r.flag("is_processing", required=False),
            profile_count=r.get("profile_count", int, required=False),
        )


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a list or segment, with when they (most recently) joined it."""

    profile_id: str
    email: str | None
    phone_number: str | None
    external_id: str | None
    joined_group_at: datetime

    @classmethod
    def from_resource(
        cls, resource: Mapping[str, Any], endpoint: str = "GET /api/segments/{id}/profiles"
    ) -> Self:
        """Parse a ``profile`` resource of a membership page (``joined_group_at`` required)."""
        # Fast path for the common, well-formed case (members are parsed by the hundred thousand);
        # anything unexpected falls through to the checked path, which names the problem.
        try:
            attributes = resource["attributes"]
            profile_id = resource["id"]
            email = attributes.get("email")
            phone = attributes.get("phone_number")
            external_id = attributes.get("external_id")
            joined_at = datetime.fromisoformat(attributes["joined_group_at"])
            if (
                resource["type"] == "profile"
                and type(profile_id) is str
                and profile_id
                and joined_at.tzinfo is not None
                and (email is None or type(email) is str)
                and (phone is None or type(phone) is str)
                and (external_id is None or type(external_id) is str)
            ):
                return cls(profile_id, email, phone, external_id, joined_at)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
        r = _Resource(resource, endpoint, "profile")
        joined = r.when("joined_group_at", required=True)
        assert joined is not None  # required=True either returns a datetime or raises
        return cls(
            profile_id=r.id,
            email=r.text("email"),
            phone_number=r.text("phone_number"),
            external_id=r.text("external_id"),
            joined_group_at=joined,
        )


@dataclass(frozen=True)
class MemberPage:
    """One page of one group's members, as :meth:`KlaviyoClient.iter_members_many` yields them.

    ``is_last`` marks the group's final page: after it, that group is completely extracted.
    """

    kind: GroupKind
    group_id: str
    members: tuple[Member, ...]
    page_number: int
    is_last: bool


# ---------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """A Klaviyo profile; ``subscriptions`` only when asked for (``additional-fields``)."""

    id: str
    email: str | None
    phone_number: str | None
    external_id: str | None
    first_name: str | None
    last_name: str | None
    created: datetime | None
    updated: datetime | None
    properties: Mapping[str, Any] = field(default_factory=dict)
    subscriptions: Mapping[str, Any] | None = None

    @property
    def email_marketing_consent(self) -> str | None:
        """``SUBSCRIBED`` / ``UNSUBSCRIBED`` / ``NEVER_SUBSCRIBED`` (needs ``subscriptions``)."""
        return _dig(self.subscriptions, "email", "marketing", "consent")

    @property
    def sms_marketing_consent(self) -> str | None:
        """SMS marketing consent (needs ``subscriptions``)."""
        return _dig(self.subscriptions, "sms", "marketing", "consent")

    def marketing_consent(self, channel: str) -> tuple[str | None, datetime | None]:
        """A channel's (``email`` / ``sms``) marketing consent and its ``consent_timestamp``, aware
        (needs ``subscriptions``); ``(None, None)`` when Klaviyo said nothing."""
        marketing = _dig(self.subscriptions, channel, "marketing")
        if not isinstance(marketing, Mapping):
            return None, None
        raw = marketing.get("consent_timestamp")
        try:
            at = datetime.fromisoformat(raw) if isinstance(raw, str) else None
        except ValueError:
            at = None  # an unreadable timestamp proves nothing
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return marketing.get("consent"), at

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/profiles") -> Self:
        """Parse a ``profile`` resource."""
        r = _Resource(resource, endpoint, "profile")
        subscriptions = r.get("subscriptions", Mapping, required=False)
        return cls(
            id=r.id,
            email=r.text("email"),
            phone_number=r.text("phone_number"),
            external_id=r.text("external_id"),
            first_name=r.text("first_name"),
            last_name=r.text("last_name"),
            created=r.when("created"),
            updated=r.when("updated"),
            properties=r.mapping("properties"),
            subscriptions=dict(subscriptions) if subscriptions is not None else None,
        )


def _dig(value: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class SubscribeProfile:
    """Someone to subscribe with Recart's consent evidence (the input of ``bulk_subscribe``).

    The consent times are sent only with ``historical_import`` (Klaviyo rejects them otherwise);
    each channel carries its own, since a subscriber consents to email and SMS at different times.
    """

    email: str | None = None
    phone_number: str | None = None
    email_consent: bool = False
    sms_consent: bool = False
    email_consented_at: datetime | None = None
    sms_consented_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.email_consent and not self.email:
            raise ValueError("email consent needs an email address")
        if self.sms_consent and not self.phone_number:
            raise ValueError("SMS consent needs a phone number")
        if not (self.email_consent or self.sms_consent):
            raise ValueError("a SubscribeProfile needs email or SMS consent")
        for at in (self.email_consented_at, self.sms_consented_at):
            if at is not None and at.tzinfo is None:
                raise ValueError("consent times must be timezone-aware")

    @property
    def has_consent_times(self) -> bool:
        """True when every channel consented to carries its consent time (as ``historical_import`` needs)."""
        return (not self.email_consent or self.email_consented_at is not None) and (
            not self.sms_consent or self.sms_consented_at is not None
        )


# ---------------------------------------------------------------------------- metrics and events


@dataclass(frozen=True)
class Metric:
    """A metric (event type), e.g. "Received Email", with the integration that records it."""

    id: str
    name: str
    created: datetime | None
    updated: datetime | None
    integration_name: str | None
    integration_key: str | None
    integration_category: str | None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/metrics") -> Self:
        """Parse a ``metric`` resource."""
        r = _Resource(resource, endpoint, "metric")
        return cls(
            id=r.id,
            name=r.get("name", str),
            created=r.when("created"),
            updated=r.when("updated"),
            integration_name=r.text("integration.name"),
            integration_key=r.text("integration.key"),
            integration_category=r.text("integration.category"),
        )


@dataclass(frozen=True)
class Event:
    """An event of a profile for a metric; email events carry their send context in properties."""

    id: str
    metric_id: str | None
    profile_id: str | None
    datetime: datetime
    timestamp: int
    event_properties: Mapping[str, Any]
    uuid: str | None

    @property
    def flow_id(self) -> str | None:
        """The flow that sent the message (``$flow``); absent for campaign sends."""
        value = self.event_properties.get("$flow")
        return str(value) if value else None

    @property
    def message_id(self) -> str | None:
        """The message (``$message``): a flow message for flow sends, the campaign otherwise."""
        value = self.event_properties.get("$message")
        return str(value) if value else None

    @property
    def is_flow_event(self) -> bool:
        """True for events of flow sends (``$flow`` present), False for campaign sends."""
        return self.flow_id is not None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/events") -> Self:
        """Parse an ``event`` resource."""
        r = _Resource(resource, endpoint, "event")
        when = r.when("datetime", required=True)
        assert when is not None
        return cls(
            id=r.id,
            metric_id=r.related_id("metric"),
            profile_id=r.related_id("profile"),
            datetime=when,
            timestamp=r.get("timestamp", int),
            event_properties=r.mapping("event_properties"),
            uuid=r.text("uuid"),
        )


# ---------------------------------------------------------------------------- flows and campaigns


@dataclass(frozen=True)
class Flow:
    """A flow (automation)."""

    id: str
    name: str
    status: str | None
    archived: bool
    trigger_type: str | None
    created: datetime | None
    updated: datetime | None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/flows") -> Self:
        """Parse a ``flow`` resource."""
        r = _Resource(resource, endpoint, "flow")
        return cls(
            id=r.id,
            name=r.get("name", str),
            status=r.text("status"),
            archived=r.flag("archived", required=False),
            trigger_type=r.text("trigger_type"),
            created=r.when("created"),
            updated=r.when("updated"),
        )


@dataclass(frozen=True)
class FlowAction:
    """A step of a flow (``send-email``, ``time-delay``, …); ``definition`` is Klaviyo's encoding."""

    id: str
    action_type: str | None
    status: str | None
    created: datetime | None
    updated: datetime | None
    flow_id: str | None
    definition: Mapping[str, Any] | None

    @classmethod
    def from_resource(
        cls, resource: Mapping[str, Any], endpoint: str = "GET /api/flows/{id}/flow-actions"
    ) -> Self:
        """Parse a ``flow-action`` resource."""
        r = _Resource(resource, endpoint, "flow-action")
        definition = r.get("definition", Mapping, required=False)
        return cls(
            id=r.id,
            action_type=_dig(definition, "type"),
            status=_dig(definition, "data", "status"),
            created=r.when("created"),
            updated=r.when("updated"),
            flow_id=r.related_id("flow"),
            definition=dict(definition) if definition is not None else None,
        )


@dataclass(frozen=True)
class FlowMessage:
    """A message of a flow action (its email, SMS or webhook)."""

    id: str
    name: str | None
    channel: str | None
    subject: str | None
    created: datetime | None
    updated: datetime | None
    flow_action_id: str | None
    definition: Mapping[str, Any]

    @classmethod
    def from_resource(
        cls, resource: Mapping[str, Any], endpoint: str = "GET /api/flow-messages/{id}"
    ) -> Self:
        """Parse a ``flow-message`` resource."""
        r = _Resource(resource, endpoint, "flow-message")
        definition = r.mapping("definition")
        name = definition.get("name")
        subject = definition.get("subject_line")
        return cls(
            id=r.id,
            name=name if isinstance(name, str) else None,
            channel=r.text("channel"),
            subject=subject if isinstance(subject, str) else None,
            created=r.when("created"),
            updated=r.when("updated"),
            flow_action_id=r.related_id("flow-action"),
            definition=definition,
        )


@dataclass(frozen=True)
class Campaign:
    """A campaign (a one-off send to audiences)."""

    id: str
    name: str
    status: str | None
    archived: bool
    included_audiences: tuple[str, ...]
    excluded_audiences: tuple[str, ...]
    created_at: datetime | None
    scheduled_at: datetime | None
    updated_at: datetime | None
    send_time: datetime | None

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/campaigns") -> Self:
        """Parse a ``campaign`` resource."""
        r = _Resource(resource, endpoint, "campaign")
        audiences = r.mapping("audiences")
        return cls(
            id=r.id,
            name=r.get("name", str),
            status=r.text("status"),
            archived=r.flag("archived", required=False),
            included_audiences=tuple(str(a) for a in audiences.get("included") or ()),
            excluded_audiences=tuple(str(a) for a in audiences.get("excluded") or ()),
            created_at=r.when("created_at"),
            scheduled_at=r.when("scheduled_at"),
            updated_at=r.when("updated_at"),
            send_time=r.when("send_time"),
        )


@dataclass(frozen=True)
class CampaignMessage:
    """A message of a campaign (one per channel)."""

    id: str
    campaign_id: str | None
    channel: str | None
    label: str | None
    subject: str | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_resource(
        cls, resource: Mapping[str, Any], endpoint: str = "GET /api/campaigns/{id}/campaign-messages"
    ) -> Self:
        """Parse a ``campaign-message`` resource."""
        r = _Resource(resource, endpoint, "campaign-message")
        return cls(
            id=r.id,
            campaign_id=r.related_id("campaign"),
            channel=r.text("definition.channel"),
            label=r.text("definition.label"),
            subject=r.text("definition.content.subject"),
            created_at=r.when("created_at"),
            updated_at=r.when("updated_at"),
        )


# ---------------------------------------------------------------------------- webhooks and jobs


@dataclass(frozen=True)
class Webhook:
    """A system webhook; Klaviyo shows ``endpoint_url`` masked and never returns the secret."""

    id: str
    name: str
    description: str | None
    endpoint_url: str | None
    enabled: bool
    created_at: datetime | None
    updated_at: datetime | None
    topics: tuple[str, ...] | None  # None when the document carried no topic linkage

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/webhooks") -> Self:
        """Parse a ``webhook`` resource."""
        r = _Resource(resource, endpoint, "webhook")
        return cls(
            id=r.id,
            name=r.get("name", str),
            description=r.text("description"),
            endpoint_url=r.text("endpoint_url"),
            enabled=r.flag("enabled", required=False, default=True),
            created_at=r.when("created_at"),
            updated_at=r.when("updated_at"),
            topics=r.related_ids("webhook-topics"),
        )


@dataclass(frozen=True)
class WebhookTopic:
    """A topic a webhook can subscribe to, e.g. ``event:klaviyo.received_email``."""

    id: str

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], endpoint: str = "GET /api/webhook-topics") -> Self:
        """Parse a ``webhook-topic`` resource."""
        return cls(id=_Resource(resource, endpoint, "webhook-topic").id)


@dataclass(frozen=True)
class BulkImportJob:
    """A profile bulk import job and its progress."""

    id: str
    status: str
    total_count: int | None
    completed_count: int | None
    failed_count: int | None
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None

    @property
    def is_done(self) -> bool:
        """True once Klaviyo will not change the job any more."""
        return self.status in ("complete", "cancelled")

    @classmethod
    def from_resource(
        cls, resource: Mapping[str, Any], endpoint: str = "POST /api/profile-bulk-import-jobs"
    ) -> Self:
        """Parse a ``profile-bulk-import-job`` resource."""
        r = _Resource(resource, endpoint, "profile-bulk-import-job")
        return cls(
            id=r.id,
            status=r.get("status", str),
            total_count=r.get("total_count", int, required=False),
            completed_count=r.get("completed_count", int, required=False),
            failed_count=r.get("failed_count", int, required=False),
            created_at=r.when("created_at"),
            started_at=r.when("started_at"),
            completed_at=r.when("completed_at"),
            expires_at=r.when("expires_at"),
        )
