"""System webhooks: the Webhooks API (``/api/webhooks``, ``/api/webhook-topics``) and the signed,
batched, retried deliveries the sandbox POSTs to a real local receiver.

Every ``/api/`` body passes through ``KlaviyoTestClient`` (validated against the spec); deliveries
are checked byte for byte: the signature is recomputed over the raw body plus the timestamp header.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

from klaviyo_sandbox import spec
from klaviyo_sandbox.server import RunningSandbox, create_sandbox, running_sandbox
from klaviyo_sandbox.store import Metric
from klaviyo_sandbox.testing import KlaviyoTestClient, api_client
from klaviyo_sandbox.webhooks_out import (
    WebhookSettings,
    endpoint_url_problem,
    mask_endpoint_url,
    metric_topic,
)

SECRET = "whsec-0123456789abcdef"
RECEIVED = "event:klaviyo.received_email"
OPENED = "event:klaviyo.opened_email"
CLICKED = "event:klaviyo.clicked_email"
# Fast but realistic dispatcher settings for tests (the defaults are Klaviyo's: 1 s backoff, 48 h, …).
FAST = {
    "batch_window_seconds": 0.05,
    "retry_base_seconds": 0.02,
    "retry_max_delay_seconds": 3600,
    "max_attempts": 5,
    "disable_after_seconds": 48 * 3600,
    "timeout_seconds": 5,
    "max_batch_events": 1000,
}


# ---------------------------------------------------------------------------- a real receiver


@dataclass
class Received:
    """One request the receiver got: path, headers (lower-case names) and the raw body."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The parsed body."""
        return json.loads(self.body)

    def event_ids(self) -> list[str]:
        """``external_id`` of every item in the batch."""
        return [item["external_id"] for item in self.json()["data"]]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out and hung up is expected here, not an error worth a traceback."""


class Receiver:
    """An HTTP server on 127.0.0.1 (port 0) that records raw requests.

    ``fail_first`` requests are answered ``fail_status``; the first ``slow_first`` requests are
    answered only after ``delay`` seconds (to provoke the sender's timeout).
    """

    def __init__(self, fail_first: int = 0, fail_status: int = 500, slow_first: int = 0, delay: float = 0.0):
        self.requests: list[Received] = []
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.slow_first = slow_first
        self.delay = delay
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    number = len(receiver.requests)
                if number <= receiver.slow_first:
                    time.sleep(receiver.delay)
                status = receiver.fail_status if number <= receiver.fail_first else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="webhook-receiver",
        )
        self.thread.start()

    @property
    def url(self) -> str:
        """Where webhooks should POST (http is allowed for loopback hosts)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/klaviyo/webhooks?tenant=t1"

    def event_ids(self) -> list[str]:
        """Every event id received so far, across requests (retries included)."""
        return [event_id for request in list(self.requests) for event_id in request.event_ids()]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy (and return it), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def verify_signature(request: Received, secret: str = SECRET) -> bool:
    """What a receiver must do: HMAC-SHA256(secret, raw body + Klaviyo-Timestamp), constant-time compare."""
    expected = hmac.new(
        secret.encode(), request.body + request.headers["klaviyo-timestamp"].encode(), hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, request.headers["klaviyo-signature"])


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def running() -> Iterator[RunningSandbox]:
    """A demo sandbox of this module's own (webhooks and settings must not leak into other tests)."""
    with running_sandbox(create_sandbox("demo", rate_limits="off")) as run:
        yield run


@pytest.fixture(scope="module")
def ctl(running: RunningSandbox) -> Iterator[httpx2.Client]:
    """Control-API client."""
    with httpx2.Client(base_url=running.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def api(running: RunningSandbox) -> Iterator[KlaviyoTestClient]:
    """Private-key client of the first demo account (it has Advanced KDP)."""
    client = api_client(running, 0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def account_id(ctl: httpx2.Client) -> str:
    """Id of the first demo account."""
    return ctl.get("/_sandbox/accounts").json()["data"][0]["id"]


@pytest.fixture(autouse=True)
def clean(ctl: httpx2.Client, api: KlaviyoTestClient) -> Iterator[None]:
    """Fast dispatcher settings for each test; afterwards no webhook of the first account is left."""
    assert ctl.put("/_sandbox/webhook-settings", json=FAST).status_code == 200
    yield
    for hook in api.get("/api/webhooks").json()["data"]:
        api.delete(f"/api/webhooks/{hook['id']}")


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Start receivers (closed after the test)."""
    started: list[Receiver] = []

    def start(**options: Any) -> Receiver:
        started.append(Receiver(**options))
        return started[-1]

    yield start
    for one in started:
        one.close()


def webhook_body(
    url: str, topics: list[str], secret: str = SECRET, name: str = "Recart intake"
) -> dict[str, Any]:
    """A ``create_webhook`` request body."""
    return {
        "data": {
            "type": "webhook",
            "attributes": {"name": name, "description": None, "endpoint_url": url, "secret_key": secret},
            "relationships": {
                "webhook-topics": {"data": [{"type": "webhook-topic", "id": t} for t in topics]}
            },
        }
    }


def create_webhook(api: KlaviyoTestClient, url: str, topics: list[str], **kwargs: Any) -> dict[str, Any]:
    """Create a webhook and return its resource object."""
    response = api.post("/api/webhooks", json=webhook_body(url, topics, **kwargs))
    assert response.status_code == 201, response.text
    return response.json()["data"]


def first_flow(running: RunningSandbox, account_index: int = 0) -> Any:
    """The first flow of a demo account (the Welcome Series: three emails)."""
    account = list(running.sandbox.store.accounts.values())[account_index]
    return next(iter(account.flows.values()))


def some_profiles(running: RunningSandbox, count: int, account_index: int = 0) -> list[str]:
    """Ids of ``count`` profiles of a demo account that have an email address."""
    account = list(running.sandbox.store.accounts.values())[account_index]
    return [p.id for p in account.profiles.values() if p.email][:count]


def send_flow(
    ctl: httpx2.Client, running: RunningSandbox, account_id: str, profiles: list[str], **body: Any
) -> list:
    """Simulate a send of the first flow; the created events (id, metric, profile_id)."""
    flow = first_flow(running)
    response = ctl.post(
        f"/_sandbox/accounts/{account_id}/flows/{flow.id}/send", json={"profiles": profiles, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["events"]


def deliveries(ctl: httpx2.Client, account_id: str, webhook_id: str | None = None) -> list[dict[str, Any]]:
    """The delivery log (every attempt), oldest first."""
    params = {"webhook_id": webhook_id} if webhook_id else None
    response = ctl.get(f"/_sandbox/accounts/{account_id}/webhook-deliveries", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _error(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["errors"][0]


# ---------------------------------------------------------------------------- pure rules


def test_metric_topics_follow_klaviyo_naming() -> None:
    now = datetime.now(UTC)
    klaviyo = {"object": "integration", "key": "klaviyo", "name": "Klaviyo"}
    assert metric_topic(Metric("a", "Received Email", now, now, klaviyo)) == RECEIVED
    assert metric_topic(Metric("b", "Marked Email as Spam", now, now, klaviyo)) == (
        "event:klaviyo.marked_email_as_spam"
    )
    assert metric_topic(Metric("c", "Viewed Product", now, now, {"key": "api", "name": "API"})) == (
        "event:api.viewed_product"
    )
    assert (
        metric_topic(Metric("d", "Placed Order", now, now, {"key": "shopify"}))
        == "event:shopify.placed_order"
    )
    assert metric_topic(Metric("e", "Custom Thing", now, now, {})) == "event:api.custom_thing"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/klaviyo", True),
        ("http://127.0.0.1:8080/hook", True),
        ("http://127.9.9.9/hook", True),
        ("http://localhost:9000/x", True),
        ("http://[::1]:9000/x", True),
        ("http://hooks.example.com/klaviyo", False),
        ("http://10.0.0.1/hook", False),
        ("ftp://127.0.0.1/hook", False),
        ("not a url", False),
        ("https://host:99999999/x", False),
    ],
)
def test_endpoint_urls_must_be_https_or_loopback_http(url: str, ok: bool) -> None:
    assert (endpoint_url_problem(url) is None) is ok


def test_endpoint_urls_are_masked_after_the_host() -> None:
    assert (
        mask_endpoint_url("https://hooks.example.com/a/b?token=s3cret") == "https://hooks.example.com/*****"
    )
    assert (
        mask_endpoint_url("https://user:pw@hooks.example.com:8443/x")
        == "https://hooks.example.com:8443/*****"
    )


def test_settings_reject_bad_values_and_change_nothing() -> None:
    settings = WebhookSettings()
    for bad in (
        {"max_attempts": 0},
        {"retry_base_seconds": -1},
        {"nope": 1},
        {"timeout_seconds": "5"},
        {"max_batch_events": 2.5},
        {"timeout_seconds": 0},
        {"max_attempts": True},
    ):
        with pytest.raises(ValueError):
            settings.update({"batch_window_seconds": 9, **bad})
    assert settings == WebhookSettings()
    settings.update({"max_attempts": 3, "retry_base_seconds": 0})
    assert settings.max_attempts == 3 and settings.retry_base_seconds == 0.0


# ---------------------------------------------------------------------------- the Webhooks API


def test_topics_are_system_topics_plus_one_per_metric(api: KlaviyoTestClient) -> None:
    response = api.get("/api/webhook-topics")
    assert response.status_code == 200
    topics = [item["id"] for item in response.json()["data"]]
    for topic in (RECEIVED, OPENED, CLICKED, "event:klaviyo.sent_sms", "event:shopify.placed_order"):
        assert topic in topics
    assert len(topics) == len(set(topics))
    one = api.get(f"/api/webhook-topics/{CLICKED}")
    assert one.status_code == 200 and one.json()["data"]["id"] == CLICKED
    assert api.get("/api/webhook-topics/event%3Aklaviyo.opened_email").json()["data"]["id"] == OPENED
    assert _error(api.get("/api/webhook-topics/event:klaviyo.nope"), 404)["code"] == "not_found"


def test_webhook_crud_masks_the_url_and_never_returns_the_secret(api: KlaviyoTestClient) -> None:
    url = "https://hooks.example.com/klaviyo/intake?token=abc"
    created = api.post("/api/webhooks", json=webhook_body(url, [RECEIVED, CLICKED, RECEIVED]))
    assert created.status_code == 201
    assert SECRET not in created.text and "token=abc" not in created.text
    hook = created.json()["data"]
    assert hook["attributes"]["endpoint_url"] == "https://hooks.example.com/*****"
    assert hook["attributes"]["enabled"] is True and hook["attributes"]["description"] is None
    assert [t["id"] for t in hook["relationships"]["webhook-topics"]["data"]] == [RECEIVED, CLICKED]
    hook_id = hook["id"]

    listed = api.get("/api/webhooks", params={"include": "webhook-topics"})
    assert SECRET not in listed.text
    assert [h["id"] for h in listed.json()["data"]] == [hook_id]
    assert {t["id"] for t in listed.json()["included"]} == {RECEIVED, CLICKED}

    # Sparse fieldsets work (the spec marks name, endpoint_url and enabled required, so ask for those).
    one = api.get(f"/api/webhooks/{hook_id}", params={"fields[webhook]": "name,endpoint_url,enabled"})
    assert one.json()["data"]["attributes"] == {
        "name": "Recart intake",
        "endpoint_url": "https://hooks.example.com/*****",
        "enabled": True,
    }

    patch = {
        "data": {
            "type": "webhook",
            "id": hook_id,
            "attributes": {
                "name": "Renamed",
                "description": "flow emails",
                "enabled": False,
                "secret_key": "another-secret-0123456789",
            },
            "relationships": {"webhook-topics": {"data": [{"type": "webhook-topic", "id": OPENED}]}},
        }
    }
    updated = api.patch(f"/api/webhooks/{hook_id}", json=patch)
    assert updated.status_code == 200 and "another-secret" not in updated.text
    attributes = updated.json()["data"]["attributes"]
    assert (attributes["name"], attributes["description"], attributes["enabled"]) == (
        "Renamed",
        "flow emails",
        False,
    )
    assert attributes["endpoint_url"] == "https://hooks.example.com/*****"
    assert [t["id"] for t in updated.json()["data"]["relationships"]["webhook-topics"]["data"]] == [OPENED]
    assert attributes["updated_at"] >= attributes["created_at"]

    # PATCH leaves absent members alone; null clears the description only.
    again = api.patch(
        f"/api/webhooks/{hook_id}",
        json={"data": {"type": "webhook", "id": hook_id, "attributes": {"description": None, "name": None}}},
    )
    assert again.json()["data"]["attributes"]["name"] == "Renamed"
    assert again.json()["data"]["attributes"]["description"] is None

    assert api.delete(f"/api/webhooks/{hook_id}").status_code == 204
    assert (
        _error(api.get(f"/api/webhooks/{hook_id}"), 404)["detail"] == f"Webhook with id {hook_id} not found."
    )
    assert _error(api.delete(f"/api/webhooks/{hook_id}"), 404)


def test_an_account_holds_at_most_ten_webhooks(api: KlaviyoTestClient) -> None:
    for number in range(10):
        create_webhook(api, f"https://hooks.example.com/{number}", [RECEIVED])
    error = _error(
        api.post("/api/webhooks", json=webhook_body("https://hooks.example.com/11", [RECEIVED])), 400
    )
    assert "maximum of 10 webhooks" in error["detail"]
    assert len(api.get("/api/webhooks").json()["data"]) == 10


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (webhook_body("http://hooks.example.com/x", [RECEIVED]), "/data/attributes/endpoint_url"),
        (
            webhook_body("https://hooks.example.com/x", [RECEIVED], secret="short"),
            "/data/attributes/secret_key",
        ),
        (
            webhook_body("https://hooks.example.com/x", ["event:klaviyo.no_such"]),
            "/data/relationships/webhook-topics/data/0/id",
        ),
        (webhook_body("https://hooks.example.com/x", []), "/data/relationships/webhook-topics/data"),
        (webhook_body("https://hooks.example.com/x", [RECEIVED], name="  "), "/data/attributes/name"),
    ],
)
def test_invalid_webhooks_are_rejected(api: KlaviyoTestClient, body: dict[str, Any], pointer: str) -> None:
    assert _error(api.post("/api/webhooks", json=body), 400)["source"] == {"pointer": pointer}


def test_secret_key_is_required_and_secrets_are_write_only(api: KlaviyoTestClient) -> None:
    body = webhook_body("https://hooks.example.com/x", [RECEIVED])
    del body["data"]["attributes"]["secret_key"]
    assert _error(api.post("/api/webhooks", json=body), 400)
    hook = create_webhook(api, "https://hooks.example.com/x", [RECEIVED])
    error = _error(
        api.patch(
            f"/api/webhooks/{hook['id']}",
            json={
                "data": {
                    "type": "webhook",
                    "id": hook["id"],
                    "attributes": {"endpoint_url": "http://example.com/x"},
                }
            },
        ),
        400,
    )
    assert error["source"] == {"pointer": "/data/attributes/endpoint_url"}
    mismatch = {"data": {"type": "webhook", "id": "01ABCDEFGHJKMNPQRSTVWXYZ00", "attributes": {"name": "x"}}}
    assert _error(api.patch(f"/api/webhooks/{hook['id']}", json=mismatch), 400)["source"] == {
        "pointer": "/data/id"
    }


def test_private_key_without_advanced_kdp_is_forbidden(running: RunningSandbox) -> None:
    other = api_client(running, 1)  # the second demo account has no Advanced KDP
    error = _error(other.get("/api/webhooks"), 403)
    assert error["detail"] == "You must have Advanced KDP enabled to use this endpoint."
    assert _error(other.get("/api/webhook-topics"), 403)
    assert _error(
        other.post("/api/webhooks", json=webhook_body("https://hooks.example.com/x", [RECEIVED])), 403
    )


# ---------------------------------------------------------------------------- deliveries


def test_flow_send_is_delivered_as_one_signed_batch(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    rx = receiver()
    hook = create_webhook(api, rx.url, [RECEIVED, OPENED])
    profiles = some_profiles(running, 3)
    before = datetime.now(UTC).replace(microsecond=0)
    events = send_flow(ctl, running, account_id, profiles, opened_rate=1, clicked_rate=0)
    assert [e["metric"] for e in events] == ["Received Email"] * 3 + ["Opened Email"] * 3

    request = wait_until(lambda: rx.requests and rx.requests[0])
    time.sleep(0.1)
    assert len(rx.requests) == 1, "one account-wide batch for the whole send"
    assert request.path == "/klaviyo/webhooks?tenant=t1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["klaviyo-webhook-id"] == hook["id"]
    assert verify_signature(request)
    assert len(request.headers["klaviyo-signature"]) == 64
    assert request.headers["klaviyo-signature"] == request.headers["klaviyo-signature"].lower()
    assert not verify_signature(request, "wrong-secret-0123456789")

    body = request.json()
    assert set(body) == {"data", "meta"}
    assert body["meta"]["klaviyo_webhook_id"] == hook["id"] == request.headers["klaviyo-webhook-id"]
    assert body["meta"]["klaviyo_account_id"] == account_id
    sent_at = datetime.fromisoformat(body["meta"]["timestamp"])
    assert len(body["meta"]["timestamp"].split(".")[1]) == len("891446+00:00")  # microseconds
    header_time = parsedate_to_datetime(request.headers["klaviyo-timestamp"])
    assert request.headers["klaviyo-timestamp"].endswith(" GMT")
    assert header_time == sent_at.replace(microsecond=0) and sent_at >= before

    assert [item["external_id"] for item in body["data"]] == [e["id"] for e in events]
    assert [item["topic"] for item in body["data"]] == [RECEIVED] * 3 + [OPENED] * 3
    validator = spec.response_validator("get_event", 200)
    flow = first_flow(running)
    for item in body["data"]:
        assert set(item) == {"topic", "external_id", "payload"}
        payload = item["payload"]
        assert not list(validator.iter_errors(payload)), "payload must be a valid single-event document"
        event = payload["data"]
        assert event["id"] == item["external_id"] and event["type"] == "event"
        assert event["relationships"]["profile"]["data"]["id"] in profiles
        assert event["attributes"]["event_properties"]["$flow"] == flow.id
        # The payload is the event exactly as the Events API renders it.
        assert api.get(f"/api/events/{event['id']}").json()["data"] == event

    log = deliveries(ctl, account_id, hook["id"])
    assert len(log) == 1 and log[0]["delivered"] and log[0]["status_code"] == 200 and log[0]["attempt"] == 1
    assert log[0]["event_ids"] == [e["id"] for e in events]


def test_webhooks_get_only_their_topics(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    clicks, received = receiver(), receiver()
    create_webhook(api, clicks.url, [CLICKED])
    create_webhook(api, received.url, [RECEIVED])
    events = send_flow(
        ctl,
        running,
        account_id,
        some_profiles(running, 2),
        opened_rate=1,
        clicked_rate=0.5,
        url="https://shop.example.com/products/tent",
    )
    by_metric = {
        m: [e["id"] for e in events if e["metric"] == m] for m in ("Received Email", "Clicked Email")
    }
    assert len(by_metric["Clicked Email"]) == 1
    wait_until(lambda: clicks.requests and received.requests)
    assert clicks.event_ids() == by_metric["Clicked Email"]
    assert received.event_ids() == by_metric["Received Email"]
    click = clicks.requests[0].json()["data"][0]
    assert click["topic"] == CLICKED
    assert (
        click["payload"]["data"]["attributes"]["event_properties"]["URL"]
        == "https://shop.example.com/products/tent"
    )


def test_campaign_send_carries_no_flow(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    rx = receiver()
    create_webhook(api, rx.url, [RECEIVED])
    account = running.sandbox.store.accounts[account_id]
    campaign = next(c for c in account.campaigns.values() if c.channel == "email")
    response = ctl.post(
        f"/_sandbox/accounts/{account_id}/campaigns/{campaign.id}/send",
        json={"profiles": some_profiles(running, 2), "opened_rate": 0},
    )
    assert response.status_code == 200, response.text
    wait_until(lambda: rx.requests)
    properties = [
        item["payload"]["data"]["attributes"]["event_properties"] for item in rx.requests[0].json()["data"]
    ]
    assert len(properties) == 2
    for props in properties:
        assert "$flow" not in props
        assert props["$message"] == campaign.id and props["Campaign Name"] == campaign.name


def test_failed_deliveries_are_retried_with_backoff(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    ctl.put("/_sandbox/webhook-settings", json={"retry_base_seconds": 0.05})
    rx = receiver(fail_first=2, fail_status=500)
    hook = create_webhook(api, rx.url, [RECEIVED])
    events = send_flow(ctl, running, account_id, some_profiles(running, 2), opened_rate=0)
    log = wait_until(
        lambda: (
            [d for d in deliveries(ctl, account_id, hook["id"]) if d["delivered"]]
            and deliveries(ctl, account_id, hook["id"])
        )
    )
    assert [(d["attempt"], d["status_code"], d["delivered"]) for d in log] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    assert log[0]["error"] == "HTTP 500" and log[2]["error"] is None
    assert all(d["event_ids"] == [e["id"] for e in events] for d in log)
    gaps = [
        (datetime.fromisoformat(b["at"]) - datetime.fromisoformat(a["at"])).total_seconds()
        for a, b in itertools.pairwise(log)
    ]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, "exponential backoff: base, then twice the base"
    assert len(rx.requests) == 3
    assert all(verify_signature(r) for r in rx.requests), "every attempt is signed afresh"
    assert {tuple(r.event_ids()) for r in rx.requests} == {tuple(e["id"] for e in events)}


def test_timeouts_and_connection_errors_count_as_failures(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    ctl.put("/_sandbox/webhook-settings", json={"timeout_seconds": 0.2, "max_attempts": 2})
    slow = receiver(slow_first=1, delay=0.6)
    closed = receiver()
    closed.close()  # nothing listens there any more: connection refused
    slow_hook = create_webhook(api, slow.url, [RECEIVED])
    dead_hook = create_webhook(api, closed.url, [RECEIVED])
    send_flow(ctl, running, account_id, some_profiles(running, 1), opened_rate=0)
    slow_log = wait_until(
        lambda: (
            len(deliveries(ctl, account_id, slow_hook["id"])) == 2
            and deliveries(ctl, account_id, slow_hook["id"])
        )
    )
    assert slow_log[0]["status_code"] is None and slow_log[0]["error"].startswith("Timed out")
    assert slow_log[1]["delivered"] is True
    dead_log = wait_until(
        lambda: (
            len(deliveries(ctl, account_id, dead_hook["id"])) == 2
            and deliveries(ctl, account_id, dead_hook["id"])
        )
    )
    assert [d["delivered"] for d in dead_log] == [False, False]  # max_attempts reached: given up
    assert "ConnectError" in dead_log[0]["error"]
    time.sleep(0.2)
    assert len(deliveries(ctl, account_id, dead_hook["id"])) == 2


def test_big_sends_are_split_into_batches(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    ctl.put("/_sandbox/webhook-settings", json={"max_batch_events": 2})
    rx = receiver()
    create_webhook(api, rx.url, [RECEIVED])
    events = send_flow(ctl, running, account_id, some_profiles(running, 5), opened_rate=0)
    wait_until(lambda: len(rx.event_ids()) == 5)
    assert [len(r.event_ids()) for r in rx.requests] == [2, 2, 1]
    assert rx.event_ids() == [e["id"] for e in events]


def test_disabled_webhooks_get_nothing(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    enabled, disabled = receiver(), receiver()
    create_webhook(api, enabled.url, [RECEIVED])
    off = create_webhook(api, disabled.url, [RECEIVED])
    response = api.patch(
        f"/api/webhooks/{off['id']}",
        json={"data": {"type": "webhook", "id": off["id"], "attributes": {"enabled": False}}},
    )
    assert response.json()["data"]["attributes"]["enabled"] is False
    send_flow(ctl, running, account_id, some_profiles(running, 2), opened_rate=0)
    wait_until(lambda: enabled.requests)
    time.sleep(0.2)  # both webhooks' batching windows started together; the disabled one stays silent
    assert disabled.requests == []
    assert deliveries(ctl, account_id, off["id"]) == []


def test_a_webhook_failing_for_too_long_is_disabled(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    ctl.put(
        "/_sandbox/webhook-settings",
        json={"disable_after_seconds": 0.1, "retry_base_seconds": 0.05, "max_attempts": 50},
    )
    rx = receiver(fail_first=1000, fail_status=503)
    hook = create_webhook(api, rx.url, [RECEIVED])
    send_flow(ctl, running, account_id, some_profiles(running, 1), opened_rate=0)
    wait_until(
        lambda: api.get(f"/api/webhooks/{hook['id']}").json()["data"]["attributes"]["enabled"] is False
    )
    attempts = len(deliveries(ctl, account_id, hook["id"]))
    assert 2 <= attempts < 50
    time.sleep(0.2)
    assert len(deliveries(ctl, account_id, hook["id"])) == attempts, "no retries once disabled"
    # Re-enabled by PATCH, it delivers again (from the next event on).
    api.patch(
        f"/api/webhooks/{hook['id']}",
        json={"data": {"type": "webhook", "id": hook["id"], "attributes": {"enabled": True}}},
    )
    rx.fail_first = 0
    send_flow(ctl, running, account_id, some_profiles(running, 1), opened_rate=0)
    wait_until(lambda: any(d["delivered"] for d in deliveries(ctl, account_id, hook["id"])))


def test_deliveries_never_cross_accounts(
    running: RunningSandbox, ctl: httpx2.Client, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    created = ctl.post("/_sandbox/accounts", json={"name": "Other Shop", "advanced_kdp": True})
    assert created.status_code == 201
    other = created.json()["data"]
    other_api = KlaviyoTestClient(running.base_url, f"Klaviyo-API-Key {other['private_api_key']}")
    mine, theirs = receiver(), receiver()
    create_webhook(api, mine.url, [RECEIVED, "event:shopify.viewed_product"])
    # The other account gets its API metric from its first event, then subscribes to it.
    event = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"ProductName": "Tent"},
                "metric": {"data": {"type": "metric", "attributes": {"name": "Viewed Product"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "shopper@example.com"}}},
            },
        }
    }
    assert other_api.post("/api/events", json=event).status_code == 202
    other_hook = create_webhook(other_api, theirs.url, [RECEIVED, "event:api.viewed_product"])

    send_flow(ctl, running, account_id, some_profiles(running, 2), opened_rate=0)
    # A distinct unique_id: within one second Klaviyo would dedupe the two events of this profile.
    event["data"]["attributes"].update(properties={"ProductName": "Backpack"}, unique_id="view-2")
    assert other_api.post("/api/events", json=event).status_code == 202

    wait_until(lambda: mine.requests and theirs.requests)
    time.sleep(0.2)
    assert len(mine.event_ids()) == 2
    (their_batch,) = theirs.requests
    assert their_batch.json()["meta"]["klaviyo_account_id"] == other["id"]
    items = their_batch.json()["data"]
    assert [i["topic"] for i in items] == ["event:api.viewed_product"]
    assert items[0]["payload"]["data"]["attributes"]["event_properties"]["ProductName"] == "Backpack"
    assert verify_signature(their_batch)
    assert all(r.json()["meta"]["klaviyo_account_id"] == account_id for r in mine.requests)
    assert [d["webhook_id"] for d in deliveries(ctl, other["id"])] == [other_hook["id"]]
    assert other_hook["id"] not in {d["webhook_id"] for d in deliveries(ctl, account_id)}
    other_api.close()


def test_delivery_log_and_settings_endpoints(ctl: httpx2.Client) -> None:
    assert ctl.get("/_sandbox/accounts/NOPE00/webhook-deliveries").status_code == 404
    current = ctl.get("/_sandbox/webhook-settings").json()["data"]
    assert current == FAST
    assert ctl.put("/_sandbox/webhook-settings", json={"max_attempts": 0}).status_code == 400
    assert ctl.put("/_sandbox/webhook-settings", json={"bogus": 1}).status_code == 400
    assert ctl.put("/_sandbox/webhook-settings", content=b"{nope").status_code == 400
    assert ctl.get("/_sandbox/webhook-settings").json()["data"] == current


def test_stopping_the_sandbox_does_not_hang_on_a_slow_receiver(
    make_sandbox: Callable[..., RunningSandbox], receiver: Callable
) -> None:
    running = make_sandbox(rate_limits="off")
    slow = receiver(slow_first=100, delay=3)
    hook_api = api_client(running, 0)
    create_webhook(hook_api, slow.url, [RECEIVED])
    account_id = next(iter(running.sandbox.store.accounts))
    with httpx2.Client(base_url=running.base_url, timeout=30) as control:
        send_flow(control, running, account_id, some_profiles(running, 1), opened_rate=0)
    wait_until(lambda: slow.requests)  # the POST is in flight, waiting for the slow receiver
    started = time.monotonic()
    running.server.should_exit = True
    wait_until(lambda: running.sandbox.webhooks.stopped, timeout=5)
    assert time.monotonic() - started < 3  # one second of grace for the in-flight POST, then cancelled
    hook_api.close()


def test_publish_from_another_thread_hops_onto_the_server_loop(
    running: RunningSandbox, api: KlaviyoTestClient, account_id: str, receiver: Callable
) -> None:
    rx = receiver()
    create_webhook(api, rx.url, [RECEIVED])
    account = running.sandbox.store.accounts[account_id]
    metric = account.metric_by_name("Received Email")
    seeded = [e for e in account.events.values() if e.metric_id == metric.id][:3]
    running.sandbox.webhooks.publish(account, seeded)  # from the test thread, not the event loop
    wait_until(lambda: rx.requests)
    assert rx.event_ids() == [e.id for e in seeded]
