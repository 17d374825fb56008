"""Outgoing system webhooks: Klaviyo's signed, batched, account-wide event deliveries.

Handlers that create events (simulated sends, ``POST /api/events``, …) call
``sandbox.webhooks.publish(account, events)``. The dispatcher matches each event's topic against the
account's *enabled* webhooks and queues it per webhook; one worker task per webhook waits a short
batching window, then POSTs up to 1,000 events in one request, exactly as the reference (§6) shows::

    {"data": [{"topic", "external_id", "payload": {"data": <event resource>}}],
     "meta": {"klaviyo_account_id", "klaviyo_webhook_id", "timestamp"}}

with ``Klaviyo-Webhook-Id``, ``Klaviyo-Timestamp`` (HTTP-date) and ``Klaviyo-Signature`` =
hex HMAC-SHA256(secret, raw body + timestamp header). Non-2xx answers, timeouts and connection
errors are retried with capped exponential backoff; every attempt is recorded as a
``WebhookDelivery`` in ``account.webhook_deliveries``; a webhook failing continuously for longer
than ``disable_after_seconds`` (48 h, as Klaviyo) is disabled.

Everything runs on the server's event loop (publish is synchronous and only appends to queues), so,
like the store, the dispatcher needs no locks. The topic, URL and masking rules used by the Webhooks
API (``resources/webhooks.py``) live here too, so delivery and validation cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2

from klaviyo_sandbox import ids
from klaviyo_sandbox.store import Account, Event, Metric, Webhook, WebhookDelivery, utcnow

logger = logging.getLogger("klaviyo_sandbox.webhooks")

MAX_WEBHOOKS_PER_ACCOUNT = 10
MIN_SECRET_KEY_LENGTH = 16  # reference §6: "secret ≥ 16 chars" [3p]
DEFAULT_BASE_URL = "https://a.klaviyo.com"
USER_AGENT = "klaviyo-sandbox-webhooks/1.0"

# Klaviyo's system topics as observed on a live account (reference §6). Every metric of an account
# adds its own topic on top (see ``metric_topic``); for Klaviyo's metrics these coincide.
SYSTEM_TOPICS: tuple[str, ...] = tuple(
    f"event:klaviyo.{slug}"
    for slug in (
        "received_email",
        "clicked_email",
        "opened_email",
        "bounced_email",
        "dropped_email",
        "marked_email_as_spam",
        "clicked_email_to_unsubscribe",
        "subscribed_to_email_marketing",
        "unsubscribed_from_email_marketing",
        "manually_suppressed_from_email_marketing",
        "manually_unsuppressed_from_email_marketing",
        "updated_email_preferences",
        "subscribed_to_list",
        "unsubscribed_from_list",
        "skipped_send",
        "merged_profile",
        "sent_sms",
        "received_sms",
        "clicked_sms",
        "failed_to_deliver_sms",
        "subscribed_to_sms_marketing",
        "unsubscribed_from_sms_marketing",
    )
)

_NON_SLUG = re.compile(r"[^a-z0-9]+")


# ---------------------------------------------------------------------------- topics, URLs


def metric_slug(name: str) -> str:
    """``"Received Email"`` → ``"received_email"`` (lower case, other characters → ``_``)."""
    return _NON_SLUG.sub("_", name.lower()).strip("_")


def is_klaviyo_metric(metric: Metric) -> bool:
    """True for Klaviyo's own metrics (integration key or name ``klaviyo``)."""
    integration = metric.integration or {}
    return "klaviyo" in (
        str(integration.get("key") or "").lower(),
        str(integration.get("name") or "").lower(),
    )


def metric_topic(metric: Metric) -> str:
    """The webhook topic of a metric: ``event:klaviyo.<slug>`` or ``event:<integration key>.<slug>``."""
    if is_klaviyo_metric(metric):
        source = "klaviyo"
    else:
        # Metrics created through the API carry key "api"; a metric without integration is one too.
        source = str((metric.integration or {}).get("key") or "api").lower()
    return f"event:{source}.{metric_slug(metric.name)}"


def account_topics(account: Account) -> list[str]:
    """Every topic a webhook of this account may subscribe to: system topics, then one per metric."""
    topics = dict.fromkeys(SYSTEM_TOPICS)
    for metric in sorted(account.metrics.values(), key=lambda m: (m.name, m.id)):
        topics.setdefault(metric_topic(metric))
    return list(topics)


def endpoint_url_problem(url: str) -> str | None:
    """None when Klaviyo (or the sandbox) accepts this endpoint URL; otherwise why not.

    Klaviyo requires ``https``; the sandbox also takes ``http`` to loopback hosts so local
    receivers work without certificates, and nothing else.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return f"'{url}' is not a valid URL."
    if not host or parts.scheme not in ("http", "https"):
        return f"'{url}' is not a valid URL; the endpoint URL must be https."
    if parts.scheme == "http" and not _is_loopback(host):
        return "The endpoint URL must be https (the sandbox allows http only for loopback hosts)."
    return None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_endpoint_url(url: str) -> str:
    """``https://host/path?q`` → ``https://host/*****``: Klaviyo never shows the path back."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # never echo credentials in the URL either
    return f"{parts.scheme}://{netloc}/*****"


def sign(secret_key: str, body: bytes, timestamp_header: str) -> str:
    """``Klaviyo-Signature``: lowercase hex HMAC-SHA256 over the raw body then the timestamp header."""
    return hmac.new(
        secret_key.encode("utf-8"), body + timestamp_header.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def render_event(event: Event, base_url: str, store: Any) -> dict[str, Any]:
    """The event resource exactly as ``GET /api/events/{id}`` renders it (no fieldsets, no includes).

    Delegates to the Events API's own renderer, so a payload and a GET can never drift apart.
    """
    # Imported here: resources import the app, which builds this dispatcher.
    from klaviyo_sandbox import spec
    from klaviyo_sandbox.jsonapi import Context
    from klaviyo_sandbox.resources import events as events_api

    ctx = Context(
        store=store,
        op=spec.operation_by_id("get_event"),
        caller=None,  # type: ignore[arg-type]  # rendering an event never looks at the caller
        base_url=base_url.rstrip("/"),
        path=f"/api/events/{event.id}",
        path_params={"id": event.id},
        query={},
    )
    return events_api.render_event(ctx, event)


# ---------------------------------------------------------------------------- settings


@dataclass
class WebhookSettings:
    """Dispatcher tuning, changeable at run time through ``PUT /_sandbox/webhook-settings``."""

    batch_window_seconds: float = 0.2
    retry_base_seconds: float = 1.0  # first retry after this, doubling each time
    retry_max_delay_seconds: float = 3600.0  # Klaviyo caps the backoff at one hour
    max_attempts: int = 10
    disable_after_seconds: float = 48 * 3600.0  # continuous failure before the webhook is disabled
    timeout_seconds: float = 5.0  # Klaviyo expects an answer within 5 s
    max_batch_events: int = 1000

    def to_dict(self) -> dict[str, Any]:
        """The settings as the control API shows them."""
        return asdict(self)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; ValueError (nothing changed) for unknown keys or bad values."""
        known = {f.name for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"Unknown webhook setting '{name}'; known: {', '.join(sorted(known))}.")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"'{name}' must be a number.")
            if name in ("max_attempts", "max_batch_events"):
                if value != int(value) or value < 1:
                    raise ValueError(f"'{name}' must be a whole number ≥ 1.")
                value = int(value)
            elif value < 0:
                raise ValueError(f"'{name}' must not be negative.")
            elif name == "timeout_seconds" and value == 0:
                raise ValueError("'timeout_seconds' must be positive.")
            checked[name] = value if name in ("max_attempts", "max_batch_events") else float(value)
        for name, value in checked.items():
            setattr(self, name, value)


# ---------------------------------------------------------------------------- dispatcher


@dataclass
class _Item:
    """One queued event for one webhook; the payload is rendered once, at publish time."""

    topic: str
    event_id: str
    payload: dict[str, Any]


@dataclass
class _Pending:
    """The queue of one webhook."""

    account_id: str
    items: list[_Item] = field(default_factory=list)


class WebhookDispatcher:
    """Queues events per webhook and delivers them in signed batches with retries.

    Lifecycle: ``start()`` and ``stop()`` are awaited by the app's lifespan; ``publish()`` may be
    called before ``start()`` (events wait until it runs). Tunables live in ``settings``.
    """

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.settings = WebhookSettings()
        self.max_log_entries = 10_000  # per account; the oldest attempts are trimmed first
        self.max_queue_events = 100_000  # per webhook; beyond it the oldest are dropped
        self.stop_grace_seconds = 1.0  # on stop, queued batches get one last attempt for this long
        # Links inside payloads point at the sandbox that rendered them; the first request to
        # publish with a base URL sets it (Klaviyo's own would say https://a.klaviyo.com).
        self.base_url = DEFAULT_BASE_URL
        self._queues: dict[str, _Pending] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._client: httpx2.AsyncClient | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.stopped = False  # True once stop() has finished (the tests wait on it)
        # A private RNG for delivery ids: deliveries happen at timing-dependent moments, and
        # drawing from the store's RNG would make the seeded ids of everything else unrepeatable.
        self._rng = random.Random(0x4B1A)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the HTTP client and start workers for anything queued before the server ran."""
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.stopped = False
        # follow_redirects=False: Klaviyo does not follow redirects; a 3xx counts as a failure.
        self._client = httpx2.AsyncClient(
            follow_redirects=False,
            timeout=self.settings.timeout_seconds,
            headers={"User-Agent": USER_AGENT},
        )
        self._started = True
        for webhook_id in list(self._queues):
            self._ensure_worker(webhook_id)

    async def stop(self) -> None:
        """Give queued batches one last attempt (bounded by ``stop_grace_seconds``), then cancel."""
        if not self._started:
            return
        self._started = False
        if self._stop is not None:
            self._stop.set()  # skips batching windows and backoff sleeps; no further retries
        tasks = list(self._tasks.values())
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=self.stop_grace_seconds)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._loop = None
        self.stopped = True

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` began."""
        return self._stop is not None and self._stop.is_set()

    # ------------------------------------------------------------------ publishing

    def publish(self, account: Account, events: Iterable[Event], *, base_url: str | None = None) -> None:
        """Queue ``events`` (all of ``account``) for every enabled webhook subscribed to their topics.

        Synchronous and cheap: call it from a handler right after the events were stored.
        ``base_url`` (the sandbox's own, e.g. ``ctx.base_url``) makes payload links point back here.
        """
        if self._loop is not None and _running_loop() is not self._loop:
            # Called from another thread (a test, a script): hop onto the server's loop, which
            # owns the store and the queues.
            self._loop.call_soon_threadsafe(
                functools.partial(self.publish, account, list(events), base_url=base_url)
            )
            return
        if base_url:
            self.base_url = base_url.rstrip("/")
        hooks = [hook for hook in account.webhooks.values() if hook.enabled and hook.topics]
        if not hooks:
            return
        topics_of_metric: dict[str, str] = {}
        touched: set[str] = set()
        for event in events:
            metric = account.metrics.get(event.metric_id)
            if metric is None:
                continue
            topic = topics_of_metric.get(metric.id)
            if topic is None:
                topic = topics_of_metric[metric.id] = metric_topic(metric)
            item: _Item | None = None
            for hook in hooks:
                if topic not in hook.topics:
                    continue
                if item is None:  # one rendering shared by every webhook that gets this event
                    item = _Item(
                        topic, event.id, {"data": render_event(event, self.base_url, self.sandbox.store)}
                    )
                pending = self._queues.setdefault(hook.id, _Pending(account.id))
                pending.items.append(item)
                touched.add(hook.id)
        for webhook_id in touched:
            pending = self._queues[webhook_id]
            overflow = len(pending.items) - self.max_queue_events
            if overflow > 0:
                del pending.items[:overflow]
                logger.warning("webhook %s: queue full, dropped %d oldest events", webhook_id, overflow)
            self._ensure_worker(webhook_id)

    def discard_all(self) -> None:
        """Forget every queued event (the control API replaced the whole world)."""
        self._queues.clear()

    def discard(self, webhook_id: str) -> None:
        """Forget queued events of a webhook (deleted or disabled); a running attempt finishes."""
        self._queues.pop(webhook_id, None)

    def pending_count(self, webhook_id: str | None = None) -> int:
        """How many events wait to be delivered (to one webhook, or to all)."""
        if webhook_id is not None:
            pending = self._queues.get(webhook_id)
            return len(pending.items) if pending else 0
        return sum(len(p.items) for p in self._queues.values())

    def _ensure_worker(self, webhook_id: str) -> None:
        if not self._started or self.stopping:
            return
        task = self._tasks.get(webhook_id)
        if task is None or task.done():
            self._tasks[webhook_id] = asyncio.get_running_loop().create_task(
                self._worker(webhook_id), name=f"webhook-{webhook_id}"
            )

    # ------------------------------------------------------------------ delivery

    async def _worker(self, webhook_id: str) -> None:
        """Deliver one webhook's queue batch by batch, until it is empty."""
        try:
            while True:
                pending = self._queues.get(webhook_id)
                if pending is None or not pending.items:
                    break
                await self._pause(self.settings.batch_window_seconds)  # let a batch accumulate
                pending = self._queues.get(webhook_id)
                if pending is None or not pending.items:
                    break
                size = self.settings.max_batch_events
                batch = pending.items[:size]
                del pending.items[:size]
                try:
                    await self._deliver(pending.account_id, webhook_id, batch)
                except Exception:  # a bug must not kill the queue of this webhook for good
                    logger.exception("webhook %s: delivery failed unexpectedly", webhook_id)
        finally:
            # No await between the emptiness check above and this cleanup, so a concurrent
            # publish() either saw this task alive (and its items were taken) or starts a new one.
            if self._tasks.get(webhook_id) is asyncio.current_task():
                del self._tasks[webhook_id]
            pending = self._queues.get(webhook_id)
            if pending is not None and not pending.items:
                del self._queues[webhook_id]

    async def _deliver(self, account_id: str, webhook_id: str, batch: list[_Item]) -> None:
        """POST one batch, retrying with backoff until it succeeds, gives up or the webhook goes away."""
        data = [
            {"topic": item.topic, "external_id": item.event_id, "payload": item.payload} for item in batch
        ]
        event_ids = [item.event_id for item in batch]
        attempt = 0
        while True:
            account: Account | None = self.sandbox.store.accounts.get(account_id)
            hook = account.webhooks.get(webhook_id) if account else None
            if account is None or hook is None or not hook.enabled or self._client is None:
                return  # deleted or disabled meanwhile: Klaviyo drops what it has not sent
            attempt += 1
            delivered = await self._attempt(account, hook, data, event_ids, attempt)
            if delivered:
                return
            if self._disable_if_failing_too_long(account, hook):
                return
            if attempt >= self.settings.max_attempts or self.stopping:
                logger.warning(
                    "webhook %s: giving up on %d events after %d attempts",
                    webhook_id,
                    len(event_ids),
                    attempt,
                )
                return
            delay = min(
                self.settings.retry_base_seconds * 2 ** (attempt - 1), self.settings.retry_max_delay_seconds
            )
            await self._pause(delay)

    async def _attempt(
        self, account: Account, hook: Webhook, data: list[dict[str, Any]], event_ids: list[str], attempt: int
    ) -> bool:
        """One signed POST; records the attempt in the delivery log and returns whether it succeeded."""
        assert self._client is not None
        now = utcnow()
        # The body is re-serialized per attempt only because meta.timestamp is the send time
        # (receivers check freshness on it); within an attempt these exact bytes are signed and sent.
        body = json.dumps(
            {
                "data": data,
                "meta": {
                    "klaviyo_account_id": account.id,
                    "klaviyo_webhook_id": hook.id,
                    "timestamp": now.isoformat(timespec="microseconds"),
                },
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        timestamp_header = format_datetime(now, usegmt=True)
        headers = {
            "Content-Type": "application/json",
            "Klaviyo-Webhook-Id": hook.id,
            "Klaviyo-Timestamp": timestamp_header,
            "Klaviyo-Signature": sign(hook.secret_key, body, timestamp_header),
        }
        status: int | None = None
        error: str | None = None
        timeout = self.settings.timeout_seconds
        try:
            response = await self._client.post(
                hook.endpoint_url, content=body, headers=headers, timeout=timeout
            )
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx2.TimeoutException:
            error = f"Timed out after {timeout:g} s."
        except httpx2.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivered = error is None
        self._record(
            account,
            WebhookDelivery(
                id=ids.ulid(self._rng, now),
                webhook_id=hook.id,
                attempt=attempt,
                at=now,
                event_ids=event_ids,
                status_code=status,
                error=error,
                delivered=delivered,
            ),
        )
        if not delivered:
            # The masked URL only: paths may carry tokens, and the secret is never logged.
            logger.info(
                "webhook %s attempt %d to %s failed: %s",
                hook.id,
                attempt,
                mask_endpoint_url(hook.endpoint_url),
                error,
            )
        return delivered

    def _record(self, account: Account, delivery: WebhookDelivery) -> None:
        log = account.webhook_deliveries
        log.append(delivery)
        overflow = len(log) - self.max_log_entries
        if overflow > 0:
            del log[:overflow]
        self.sandbox.save_state()  # only marks the state dirty; it is written off the request path

    def _disable_if_failing_too_long(self, account: Account, hook: Webhook) -> bool:
        """Disable ``hook`` when every attempt for longer than ``disable_after_seconds`` failed."""
        failing_since: datetime | None = None
        for delivery in reversed(account.webhook_deliveries):
            if delivery.webhook_id != hook.id:
                continue
            if delivery.delivered:
                break
            failing_since = delivery.at
        if failing_since is None:
            return False
        now = utcnow()
        if (now - failing_since).total_seconds() <= self.settings.disable_after_seconds:
            return False
        hook.enabled = False
        hook.updated_at = now
        self.discard(hook.id)
        logger.warning("webhook %s disabled: deliveries failing since %s", hook.id, failing_since.isoformat())
        self.sandbox.save_state()
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the dispatcher stops."""
        if seconds <= 0 or self._stop is None or self._stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def delivery_to_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery-log entry as the control API shows it."""
    return {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "attempt": delivery.attempt,
        "at": delivery.at.astimezone(UTC).isoformat(),
        "event_ids": list(delivery.event_ids),
        "status_code": delivery.status_code,
        "error": delivery.error,
        "delivered": delivery.delivered,
    }
