"""Verification of incoming Klaviyo webhook deliveries (system webhooks, ``/api/webhooks``).

A delivery is a ``POST`` with headers ``Klaviyo-Webhook-Id``, ``Klaviyo-Timestamp`` (an HTTP-date) and
``Klaviyo-Signature`` = lowercase hex HMAC-SHA256(secret, raw body bytes + timestamp header bytes), and a
JSON body ``{"data": [{"topic", "external_id", "payload"}, …], "meta": {"klaviyo_account_id",
"klaviyo_webhook_id", "timestamp"}}`` (reference ``klaviyo-api.md`` §6).

Freshness is judged on ``meta.timestamp`` (inside the signed body), not on the ``Klaviyo-Timestamp``
header: Klaviyo's header clock has been observed hours off. The header still enters the HMAC exactly as
sent. Nothing here ever puts the secret into a message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.klaviyo.errors import KlaviyoError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WEBHOOK_ID_HEADER",
    "VerifiedDelivery",
    "WebhookVerificationError",
    "compute_signature",
    "verify_delivery",
]

WEBHOOK_ID_HEADER = "Klaviyo-Webhook-Id"
TIMESTAMP_HEADER = "Klaviyo-Timestamp"
SIGNATURE_HEADER = "Klaviyo-Signature"


@dataclass(frozen=True)
class VerifiedDelivery:
    """A delivery whose signature, webhook id and freshness were checked; events in delivery order."""

    webhook_id: str
    klaviyo_account_id: str
    sent_at: datetime  # meta.timestamp, aware UTC
    events: list[dict[str, Any]]  # each {"topic", "external_id", "payload"}


class WebhookVerificationError(KlaviyoError):
    """The delivery must be rejected (answer 4xx, store nothing).

    ``reason``: ``missing_header`` | ``bad_signature`` | ``stale`` | ``webhook_mismatch`` | ``malformed``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")


def compute_signature(secret: str, raw_body: bytes, timestamp_header: str) -> str:
    """Lowercase hex HMAC-SHA256 with key ``secret`` over the raw body followed by the timestamp header."""
    message = raw_body + timestamp_header.encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_delivery(
    raw_body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    expected_webhook_id: str | None = None,
    max_age_seconds: float = 300,
    now: datetime | None = None,
) -> VerifiedDelivery:
    """Check a delivery and return its events; ``WebhookVerificationError`` (with ``reason``) otherwise.

    ``raw_body`` must be the bytes exactly as received (re-serialised JSON does not verify). Header names
    are matched case-insensitively. ``meta.timestamp`` must lie within ``max_age_seconds`` of ``now`` (in
    either direction: a far-future send time is as suspicious as an old one).
    """
    if not secret:
        # A configuration fault, not a bad request: without a secret nothing can be verified.
        raise ValueError("verify_delivery needs the webhook's secret; none was given")
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [
        name
        for name in (WEBHOOK_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
        if not lowered.get(name.lower(), "").strip()
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}", reason="missing_header")
    header_webhook_id = lowered[WEBHOOK_ID_HEADER.lower()].strip()
    timestamp_header = lowered[TIMESTAMP_HEADER.lower()]
    signature = lowered[SIGNATURE_HEADER.lower()].strip()

    # Checked before the signature: a delivery for another webhook would otherwise look like a forgery,
    # when the real cause is that the caller looked up the wrong secret.
    if expected_webhook_id is not None and header_webhook_id != expected_webhook_id:
        raise WebhookVerificationError(
            f"{WEBHOOK_ID_HEADER} {header_webhook_id!r} is not the expected webhook {expected_webhook_id!r}",
            reason="webhook_mismatch",
        )

    expected = compute_signature(secret, raw_body, timestamp_header)
    # Bytes, not str: compare_digest refuses non-ASCII text, and header values are attacker-chosen.
    if not hmac.compare_digest(expected.encode("ascii"), signature.lower().encode("utf-8", "replace")):
        raise WebhookVerificationError(
            f"{SIGNATURE_HEADER} does not match the body and {TIMESTAMP_HEADER}", reason="bad_signature"
        )

    body = _parse_body(raw_body)
    meta = body["meta"]
    if meta["klaviyo_webhook_id"] != header_webhook_id:
        raise WebhookVerificationError(
            f"{WEBHOOK_ID_HEADER} {header_webhook_id!r} differs from meta.klaviyo_webhook_id "
            f"{meta['klaviyo_webhook_id']!r}",
            reason="webhook_mismatch",
        )

    sent_at = _parse_timestamp(meta["timestamp"])
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    current = datetime.now(UTC) if now is None else now.astimezone(UTC)
    age = current - sent_at
    if abs(age) > timedelta(seconds=max_age_seconds):
        raise WebhookVerificationError(
            f"meta.timestamp {meta['timestamp']} is {age.total_seconds():.0f} s from now "
            f"(allowed: {max_age_seconds:g} s)",
            reason="stale",
        )

    return VerifiedDelivery(
        webhook_id=header_webhook_id,
        klaviyo_account_id=meta["klaviyo_account_id"],
        sent_at=sent_at,
        events=[
            {"topic": item["topic"], "external_id": item["external_id"], "payload": item["payload"]}
            for item in body["data"]
        ],
    )


def _malformed(message: str) -> WebhookVerificationError:
    return WebhookVerificationError(message, reason="malformed")


def _parse_body(raw_body: bytes) -> dict[str, Any]:
    """The JSON body, checked for the shape §6 describes."""
    try:
        body = json.loads(raw_body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed(f"body is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise _malformed("body is not a JSON object")
    meta, data = body.get("meta"), body.get("data")
    if not isinstance(meta, dict):
        raise _malformed("body has no 'meta' object")
    for key in ("klaviyo_account_id", "klaviyo_webhook_id", "timestamp"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise _malformed(f"meta.{key} is missing or not a string")
    if not isinstance(data, list):
        raise _malformed("body has no 'data' list")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise _malformed(f"data[{index}] is not an object")
        for key in ("topic", "external_id"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise _malformed(f"data[{index}].{key} is missing or not a string")
        if not isinstance(item.get("payload"), dict):
            raise _malformed(f"data[{index}].payload is missing or not an object")
    return body


def _parse_timestamp(value: str) -> datetime:
    """``meta.timestamp`` (ISO 8601) as aware UTC; a value without offset is read as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _malformed(f"meta.timestamp {value!r} is not an ISO 8601 datetime") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
