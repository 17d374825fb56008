"""Where a shop's Recart subscribers go in Klaviyo: the push settings of one account.

A shop chooses the Klaviyo list for its email subscribers and the list for its SMS subscribers, or
one list for both ("add email and SMS subscribers to the same list"); a channel without a list is
not pushed. The settings live in the connection store (``ConnectionStore.set_push_settings``) and
are validated against the account's real lists before they are saved (``validate_push_settings``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

import phonenumbers

from connectors.klaviyo.errors import NotFoundError

if TYPE_CHECKING:
    from connectors.klaviyo.client import KlaviyoClient
    from connectors.klaviyo.config import KlaviyoSettings
    from connectors.klaviyo.connections import ConnectionStore

__all__ = [
    "DEFAULT_SMS_COUNTRIES",
    "PushSettings",
    "PushSettingsError",
    "UnknownListError",
    "normalize_countries",
    "push_settings_from_json",
    "save_push_settings",
    "validate_push_settings",
]

# Klaviyo SMS has long covered these (reference: "historically US, CA, UK, AU"); an account whose
# SMS setup covers fewer or more sets its own list, and Klaviyo's 400 for a number outside its setup
# is isolated to that row anyway.
DEFAULT_SMS_COUNTRIES: tuple[str, ...] = ("US", "CA", "GB", "AU")


class PushSettingsError(ValueError):
    """Settings that cannot be saved: the message says which value and why."""


class UnknownListError(PushSettingsError):
    """A chosen list does not exist in the connected Klaviyo account."""


@dataclass(frozen=True)
class PushSettings:
    """The push settings of one Recart account.

    ``enabled_since`` is when the push was first switched on: Recart opt-outs older than that are
    only pushed for people the push itself subscribed (an older opt-out must not overrule consent
    the person gave Klaviyo directly since).
    """

    recart_account_id: str
    email_list_id: str | None = None
    sms_list_id: str | None = None
    sms_countries: tuple[str, ...] = DEFAULT_SMS_COUNTRIES
    enabled: bool = True
    enabled_since: datetime | None = None
    updated_at: datetime | None = None
    list_names: dict[str, str] = field(default_factory=dict, compare=False)
    # A push that Klaviyo refused too many rows (a setup problem) stops the scheduled pushes for a
    # while (see orchestration/sensors/push.py); saving the settings or a push that finishes clears it.
    stopped_at: datetime | None = None
    stopped_reason: str | None = None

    def __post_init__(self) -> None:
        if not self.email_list_id and not self.sms_list_id:
            raise PushSettingsError(
                "choose a list for email subscribers, for SMS subscribers, or one for both"
            )
        for country in self.sms_countries:
            if country not in phonenumbers.SUPPORTED_REGIONS:
                raise PushSettingsError(f"{country!r} is not an ISO 3166 country code phonenumbers knows")

    @property
    def same_list(self) -> bool:
        """True when email and SMS subscribers go into one list (one job carries both channels)."""
        return bool(self.email_list_id) and self.email_list_id == self.sms_list_id

    def list_for(self, channel: str) -> str | None:
        """The list a channel (``email`` / ``sms``) is pushed into, or None when it is not pushed."""
        if channel == "email":
            return self.email_list_id
        if channel == "sms":
            return self.sms_list_id
        raise ValueError(f"unknown channel {channel!r}")

    def list_ids(self) -> list[str]:
        """The distinct lists of these settings."""
        return sorted({i for i in (self.email_list_id, self.sms_list_id) if i})

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (CLI, integration app)."""
        return {
            "recart_account_id": self.recart_account_id,
            "email_list_id": self.email_list_id,
            "sms_list_id": self.sms_list_id,
            "same_list": self.same_list,
            "sms_countries": list(self.sms_countries),
            "enabled": self.enabled,
            "enabled_since": self.enabled_since.isoformat() if self.enabled_since else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "list_names": dict(self.list_names),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "stopped_reason": self.stopped_reason,
        }


def normalize_countries(countries: Iterable[str]) -> tuple[str, ...]:
    """Upper-cased, de-duplicated, sorted ISO country codes (``gb, US`` → ``("GB", "US")``)."""
    return tuple(sorted({c.strip().upper() for c in countries if c and c.strip()}))


async def validate_push_settings(client: KlaviyoClient, settings: PushSettings) -> PushSettings:
    """Check every chosen list exists in the connected Klaviyo account; returns the settings with
    the lists' names. ``client`` is the account's ``KlaviyoClient``.

    Raises ``PushSettingsError`` naming the list that does not exist.
    """
    names: dict[str, str] = {}
    for list_id in settings.list_ids():
        try:
            klaviyo_list = await client.get_list(list_id)
        except NotFoundError:
            raise UnknownListError(
                f"list {list_id!r} does not exist in the connected Klaviyo account"
            ) from None
        names[list_id] = klaviyo_list.name
    return replace(settings, list_names=names)


_JSON_FIELDS = {"email_list_id", "sms_list_id", "list_id", "sms_countries", "enabled"}


def push_settings_from_json(recart_account_id: str, body: object) -> PushSettings:
    """Settings from a JSON request body (the integration app's ``PUT``).

    ``{"email_list_id": "…", "sms_list_id": "…"}``, or ``{"list_id": "…"}`` for one list for both,
    optionally ``"sms_countries": ["US", …]`` and ``"enabled": false``. Anything else is refused
    with a ``PushSettingsError`` naming the field.
    """
    if not isinstance(body, Mapping):
        raise PushSettingsError("the body must be a JSON object")
    unknown = sorted(set(body) - _JSON_FIELDS)
    if unknown:
        raise PushSettingsError(
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(_JSON_FIELDS))}"
        )
    for name in ("email_list_id", "sms_list_id", "list_id"):
        if body.get(name) is not None and (not isinstance(body[name], str) or not body[name].strip()):
            raise PushSettingsError(f"{name} must be a list id (a non-empty string)")
    if body.get("list_id") and (body.get("email_list_id") or body.get("sms_list_id")):
        raise PushSettingsError("give list_id (one list for both) or email_list_id / sms_list_id, not both")
    countries = body.get("sms_countries", DEFAULT_SMS_COUNTRIES)
    if not isinstance(countries, list | tuple) or not all(isinstance(c, str) for c in countries):
        raise PushSettingsError("sms_countries must be a list of ISO country codes")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PushSettingsError("enabled must be true or false")
    one = body.get("list_id")
    return PushSettings(
        recart_account_id=recart_account_id,
        email_list_id=one or body.get("email_list_id"),
        sms_list_id=one or body.get("sms_list_id"),
        sms_countries=normalize_countries(countries),
        enabled=enabled,
    )


async def save_push_settings(
    klaviyo: KlaviyoSettings, store: ConnectionStore, choice: PushSettings
) -> PushSettings:
    """Validate the chosen lists against the connected Klaviyo account, then save the settings.

    The one way the CLI and the integration app change push settings. Raises ``PushSettingsError``
    (a list does not exist) and the connector's errors (not connected, needs re-authorization,
    Klaviyo unreachable); nothing is saved then.
    """
    from connectors.klaviyo.client import KlaviyoClient
    from connectors.klaviyo.oauth import KlaviyoOAuth

    oauth = KlaviyoOAuth(klaviyo, store)
    async with KlaviyoClient(klaviyo, oauth.credentials(choice.recart_account_id)) as client:
        checked = await validate_push_settings(client, choice)
    return store.set_push_settings(checked)
