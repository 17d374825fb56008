"""Verification of Klaviyo webhook deliveries: the signature scheme, the header and body checks, and one
real signed delivery from the sandbox to a local receiver, verified from its raw bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

from connectors.klaviyo.errors import KlaviyoError
from connectors.klaviyo.webhooks import (
    VerifiedDelivery,
    WebhookVerificationError,
    compute_signature,
    verify_delivery,
)
from klaviyo_sandbox.server import RunningSandbox
from klaviyo_sandbox.testing import api_client
from klaviyo_sandbox.webhooks_out import sign as sandbox_sign

SECRET = "whsec-test-0123456789abcdef"
WEBHOOK_ID = "01HWXYZ0123456789ABCDEFGHJ"
ACCOUNT_ID = "AbC123"
NOW = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)


def event_item(event_id: str, topic: str = "event:klaviyo.received_email") -> dict[str, Any]:
    """One item of a delivery's ``data`` list, shaped like a Get Event response."""
    return {
        "topic": topic,
        "external_id": event_id,
        "payload": {
            "data": {
                "type": "event",
                "id": event_id,
                "attributes": {"timestamp": 1772366400, "event_properties": {"$flow": "XyZ123"}},
                "relationships": {"profile": {"data": {"type": "profile", "id": "01HPROFILE"}}},
            }
        },
    }


def delivery(
    body: dict[str, Any] | bytes | None = None,
    *,
    secret: str = SECRET,
    header_webhook_id: str = WEBHOOK_ID,
    body_webhook_id: str = WEBHOOK_ID,
    sent_at: datetime = NOW,
    header_clock_offset: timedelta = timedelta(hours=-5),
) -> tuple[bytes, dict[str, str]]:
    """A correctly signed delivery (raw body, headers) as Klaviyo would send it.

    The ``Klaviyo-Timestamp`` header is five hours off by default, as observed live: it must not matter.
    """
    if body is None:
        body = {
            "data": [event_item("Ev1aaaaaaaa"), event_item("Ev2bbbbbbbb", "event:klaviyo.clicked_email")],
            "meta": {
                "klaviyo_account_id": ACCOUNT_ID,
                "klaviyo_webhook_id": body_webhook_id,
                "timestamp": sent_at.isoformat(timespec="microseconds"),
            },
        }
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    timestamp_header = format_datetime(sent_at + header_clock_offset, usegmt=True)
    headers = {
        "Content-Type": "application/json",
        "Klaviyo-Webhook-Id": header_webhook_id,
        "Klaviyo-Timestamp": timestamp_header,
        "Klaviyo-Signature": compute_signature(secret, raw, timestamp_header),
    }
    return raw, headers


def rejected(raw: bytes, headers: dict[str, str], **kwargs: Any) -> WebhookVerificationError:
    """The verification error for this delivery (fails the test if it verifies)."""
    kwargs.setdefault("now", NOW)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_delivery(raw, headers, kwargs.pop("secret", SECRET), **kwargs)
    assert SECRET not in str(caught.value)
    assert isinstance(caught.value, KlaviyoError)
    return caught.value


# ---------------------------------------------------------------------------- the signature scheme


def test_signature_is_hex_hmac_sha256_over_body_then_timestamp_header() -> None:
    raw, header = b'{"data":[]}', "Thu, 04 Jan 2024 18:05:25 GMT"
    expected = hmac.new(SECRET.encode(), raw + header.encode(), hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, raw, header) == expected
    assert len(expected) == 64 and expected == expected.lower()
    assert compute_signature(SECRET, raw, header) == sandbox_sign(SECRET, raw, header)
    assert compute_signature(SECRET + "x", raw, header) != expected


def test_good_delivery_verifies() -> None:
    raw, headers = delivery()
    verified = verify_delivery(raw, headers, SECRET, expected_webhook_id=WEBHOOK_ID, now=NOW)
    assert verified == VerifiedDelivery(
        webhook_id=WEBHOOK_ID,
        klaviyo_account_id=ACCOUNT_ID,
        sent_at=NOW,
        events=[event_item("Ev1aaaaaaaa"), event_item("Ev2bbbbbbbb", "event:klaviyo.clicked_email")],
    )
    assert verified.sent_at.tzinfo is UTC


def test_extra_keys_are_dropped_from_events() -> None:
    item = {**event_item("Ev1aaaaaaaa"), "unexpected": True}
    body = {"data": [item], "meta": {"klaviyo_account_id": ACCOUNT_ID, "klaviyo_webhook_id": WEBHOOK_ID}}
    body["meta"]["timestamp"] = NOW.isoformat()
    raw, headers = delivery(body)
    assert verify_delivery(raw, headers, SECRET, now=NOW).events == [event_item("Ev1aaaaaaaa")]


def test_empty_batch_verifies() -> None:
    body = {"data": [], "meta": {"klaviyo_account_id": ACCOUNT_ID, "klaviyo_webhook_id": WEBHOOK_ID}}
    body["meta"]["timestamp"] = "2026-03-01T12:00:00Z"
    raw, headers = delivery(body)
    assert verify_delivery(raw, headers, SECRET, now=NOW).events == []


# ---------------------------------------------------------------------------- forgeries


def test_tampered_body_is_rejected() -> None:
    raw, headers = delivery()
    tampered = raw.replace(b"Ev1aaaaaaaa", b"Ev1aaaaaaab", 1)
    assert tampered != raw
    assert rejected(tampered, headers).reason == "bad_signature"
    assert rejected(raw + b" ", headers).reason == "bad_signature"


def test_tampered_timestamp_header_is_rejected() -> None:
    raw, headers = delivery()
    headers["Klaviyo-Timestamp"] = format_datetime(NOW, usegmt=True)
    assert rejected(raw, headers).reason == "bad_signature"


def test_wrong_secret_is_rejected() -> None:
    raw, headers = delivery(secret="whsec-someone-else-0123")
    error = rejected(raw, headers)
    assert error.reason == "bad_signature" and "whsec-someone-else" not in str(error)


@pytest.mark.parametrize("signature", ["", "0" * 64, "sha256=" + "0" * 64, "é" * 64, "zz"])
def test_garbage_signatures_are_rejected(signature: str) -> None:
    raw, headers = delivery()
    headers["Klaviyo-Signature"] = signature
    assert rejected(raw, headers).reason in {"bad_signature", "missing_header"}


def test_upper_case_hex_and_surrounding_space_still_verify() -> None:
    raw, headers = delivery()
    headers["Klaviyo-Signature"] = f" {headers['Klaviyo-Signature'].upper()} "
    assert verify_delivery(raw, headers, SECRET, now=NOW).webhook_id == WEBHOOK_ID


@pytest.mark.parametrize("missing", ["Klaviyo-Webhook-Id", "Klaviyo-Timestamp", "Klaviyo-Signature"])
def test_missing_headers_are_rejected(missing: str) -> None:
    raw, headers = delivery()
    del headers[missing]
    error = rejected(raw, headers)
    assert error.reason == "missing_header" and missing in str(error)
    headers[missing] = "   "
    assert rejected(raw, headers).reason == "missing_header"


def test_no_headers_at_all_names_all_three() -> None:
    raw, _ = delivery()
    error = rejected(raw, {})
    assert error.reason == "missing_header"
    for name in ("Klaviyo-Webhook-Id", "Klaviyo-Timestamp", "Klaviyo-Signature"):
        assert name in str(error)


def test_header_names_are_case_insensitive() -> None:
    raw, headers = delivery()
    for transform in (str.lower, str.upper, str.swapcase):
        changed = {transform(name): value for name, value in headers.items()}
        assert verify_delivery(raw, changed, SECRET, now=NOW).klaviyo_account_id == ACCOUNT_ID
    # An HTTP library's case-insensitive header mapping works as it is.
    assert verify_delivery(raw, httpx2.Headers(headers), SECRET, now=NOW).webhook_id == WEBHOOK_ID


# ---------------------------------------------------------------------------- webhook ids


def test_header_webhook_id_must_match_the_body() -> None:
    raw, headers = delivery(body_webhook_id="01HOTHERWEBHOOK00000000000")  # signed correctly
    error = rejected(raw, headers)
    assert error.reason == "webhook_mismatch" and "meta.klaviyo_webhook_id" in str(error)


def test_webhook_id_must_be_the_expected_one() -> None:
    raw, headers = delivery()
    error = rejected(raw, headers, expected_webhook_id="01HOTHERWEBHOOK00000000000")
    assert error.reason == "webhook_mismatch"
    # Checked before the signature: a delivery for another webhook is a routing problem, not a forgery.
    raw, headers = delivery(secret="whsec-of-the-other-webhook")
    assert rejected(raw, headers, expected_webhook_id="01HOTHER").reason == "webhook_mismatch"


# ---------------------------------------------------------------------------- freshness


def test_stale_deliveries_are_rejected_on_meta_timestamp() -> None:
    raw, headers = delivery(sent_at=NOW - timedelta(seconds=301))
    error = rejected(raw, headers)
    assert error.reason == "stale" and "meta.timestamp" in str(error)
    raw, headers = delivery(sent_at=NOW - timedelta(seconds=299))
    assert verify_delivery(raw, headers, SECRET, now=NOW).sent_at == NOW - timedelta(seconds=299)
    raw, headers = delivery(sent_at=NOW - timedelta(seconds=30))
    assert rejected(raw, headers, max_age_seconds=10).reason == "stale"


def test_far_future_meta_timestamp_is_rejected() -> None:
    raw, headers = delivery(sent_at=NOW + timedelta(minutes=10))
    assert rejected(raw, headers).reason == "stale"


@pytest.mark.parametrize("offset_hours", [-5, 5, -30])
def test_header_clock_skew_does_not_matter(offset_hours: int) -> None:
    raw, headers = delivery(header_clock_offset=timedelta(hours=offset_hours))
    assert verify_delivery(raw, headers, SECRET, now=NOW).sent_at == NOW


def test_default_now_is_the_wall_clock() -> None:
    raw, headers = delivery(sent_at=datetime.now(UTC))
    assert verify_delivery(raw, headers, SECRET).klaviyo_account_id == ACCOUNT_ID
    raw, headers = delivery(sent_at=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(WebhookVerificationError) as caught:
        verify_delivery(raw, headers, SECRET)
    assert caught.value.reason == "stale"


# ---------------------------------------------------------------------------- malformed bodies


def _meta(**changes: Any) -> dict[str, Any]:
    meta = {"klaviyo_account_id": ACCOUNT_ID, "klaviyo_webhook_id": WEBHOOK_ID, "timestamp": NOW.isoformat()}
    meta.update(changes)
    return {key: value for key, value in meta.items() if value is not None}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"text"',
        json.dumps({"data": []}).encode(),
        json.dumps({"meta": _meta()}).encode(),
        json.dumps({"data": {}, "meta": _meta()}).encode(),
        json.dumps({"data": [], "meta": "x"}).encode(),
        json.dumps({"data": [], "meta": _meta(timestamp="yesterday")}).encode(),
        json.dumps({"data": [], "meta": _meta(timestamp=1700000000)}).encode(),
        json.dumps({"data": [], "meta": _meta(klaviyo_account_id=None)}).encode(),
        json.dumps({"data": [], "meta": _meta(klaviyo_webhook_id=None)}).encode(),
        json.dumps({"data": ["x"], "meta": _meta()}).encode(),
        json.dumps({"data": [{"topic": "t", "external_id": "e"}], "meta": _meta()}).encode(),
        json.dumps({"data": [{"topic": "t", "external_id": 7, "payload": {}}], "meta": _meta()}).encode(),
        json.dumps({"data": [{"external_id": "e", "payload": {}}], "meta": _meta()}).encode(),
    ],
)
def test_malformed_bodies_are_rejected(body: bytes) -> None:
    raw, headers = delivery(body)  # correctly signed: only the shape is wrong
    assert rejected(raw, headers).reason == "malformed"


def test_verification_needs_a_secret_and_an_aware_now() -> None:
    raw, headers = delivery()
    with pytest.raises(ValueError, match="secret"):
        verify_delivery(raw, headers, "")
    with pytest.raises(ValueError, match="aware"):
        verify_delivery(raw, headers, SECRET, now=datetime(2026, 3, 1, 12))


# ---------------------------------------------------------------------------- a real delivery


@dataclass
class RawRequest:
    """What the receiver got: header pairs as sent and the raw body."""

    headers: dict[str, str]
    body: bytes


class Receiver:
    """A tiny HTTP receiver on 127.0.0.1 (port 0) keeping each request's raw bytes."""

    def __init__(self) -> None:
        self.requests: list[RawRequest] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(RawRequest(dict(self.headers.items()), body))
                receiver.arrived.set()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    @property
    def url(self) -> str:
        """The webhook endpoint (http is allowed for loopback)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/klaviyo/webhooks"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver, closed after the test."""
    running = Receiver()
    yield running
    running.close()


def test_real_sandbox_delivery_verifies(
    make_sandbox: Callable[..., RunningSandbox],
    control: Callable[[RunningSandbox], httpx2.Client],
    receiver: Receiver,
) -> None:
    running = make_sandbox(rate_limits="off")
    ctl = control(running)
    assert ctl.put("/_sandbox/webhook-settings", json={"batch_window_seconds": 0.05}).status_code == 200
    account = next(iter(running.sandbox.store.accounts.values()))  # the first demo account: Advanced KDP
    api = api_client(running, 0)
    try:
        created = api.post(
            "/api/webhooks",
            json={
                "data": {
                    "type": "webhook",
                    "attributes": {
                        "name": "Recart intake",
                        "endpoint_url": receiver.url,
                        "secret_key": SECRET,
                    },
                    "relationships": {
                        "webhook-topics": {
                            "data": [
                                {"type": "webhook-topic", "id": "event:klaviyo.received_email"},
                                {"type": "webhook-topic", "id": "event:klaviyo.clicked_email"},
                            ]
                        }
                    },
                }
            },
        )
    finally:
        api.close()
    assert created.status_code == 201, created.text
    webhook_id = created.json()["data"]["id"]

    flow = next(iter(account.flows.values()))
    profiles = [p.id for p in account.profiles.values() if p.email][:2]
    sent = ctl.post(
        f"/_sandbox/accounts/{account.id}/flows/{flow.id}/send",
        json={"profiles": profiles, "opened_rate": 0, "clicked_rate": 1},
    )
    assert sent.status_code == 200, sent.text
    events = sent.json()["data"]["events"]
    assert receiver.arrived.wait(10), "the sandbox never delivered"

    request = receiver.requests[0]
    verified = verify_delivery(request.body, request.headers, SECRET, expected_webhook_id=webhook_id)
    assert verified.webhook_id == webhook_id and verified.klaviyo_account_id == account.id
    assert abs(datetime.now(UTC) - verified.sent_at) < timedelta(seconds=60)
    wanted = [e["id"] for e in events if e["metric"] in ("Received Email", "Clicked Email")]
    assert [event["external_id"] for event in verified.events] == wanted
    assert {event["topic"] for event in verified.events} == {
        "event:klaviyo.received_email",
        "event:klaviyo.clicked_email",
    }
    for event in verified.events:
        assert event["payload"]["data"]["id"] == event["external_id"]
        assert event["payload"]["data"]["attributes"]["event_properties"]["$flow"] == flow.id

    # The same real bytes fail with a wrong secret, a flipped byte, or another webhook's id.
    with pytest.raises(WebhookVerificationError) as wrong:
        verify_delivery(request.body, request.headers, "whsec-not-the-one-0123")
    assert wrong.value.reason == "bad_signature"
    with pytest.raises(WebhookVerificationError) as flipped:
        verify_delivery(request.body.replace(b'"data"', b'"DATA"', 1), request.headers, SECRET)
    assert flipped.value.reason == "bad_signature"
    with pytest.raises(WebhookVerificationError) as other:
        verify_delivery(request.body, request.headers, SECRET, expected_webhook_id="01HOTHER")
    assert other.value.reason == "webhook_mismatch"
