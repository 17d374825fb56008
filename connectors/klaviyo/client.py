"""The async Klaviyo API client: every operation the integration uses, at the account's rate-limit
ceiling and no faster.

    async with KlaviyoClient(KlaviyoSettings.from_env(), PrivateKeyCredentials("pk_…")) as client:
        async for page in client.iter_members_many(segment_ids, kind="segment"):
            ...

* One long-lived ``httpx2.AsyncClient`` per client (base URL, explicit timeouts, User-Agent,
  ``revision``, JSON:API media type, a connection pool as large as the client's concurrency).
* Every request passes the process-wide rate limiter (:mod:`connectors.klaviyo.ratelimit`) for its
  operation's tier (and the stricter extra quota of ``additional-fields`` where used), keyed by the
  credentials' ``limiter_key``, so all clients of one account share one quota.
* One retry policy (tenacity): 429 (the limiter holds the bucket until ``Retry-After``), 5xx,
  connection failures, timeouts and dropped connections, with capped exponential backoff and
  jitter; never other 4xx. A 401 asks the credentials to refresh once.
* Errors by meaning (:mod:`connectors.klaviyo.errors`), each naming the endpoint and Klaviyo's
  error id, code and detail.
* Pagination follows ``links.next`` as given (absolute URLs, never rebuilt) and hides behind async
  generators; responses become typed models (:mod:`connectors.klaviyo.models`) at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable
from urllib.parse import quote

import httpx2
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from connectors.klaviyo import filters
from connectors.klaviyo.config import USER_AGENT, KlaviyoSettings
from connectors.klaviyo.errors import (
    AuthenticationError,
    InvalidRequestError,
    KlaviyoApiError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
)
from connectors.klaviyo.models import (
    Account,
    BulkImportJob,
    Campaign,
    CampaignMessage,
    Event,
    Flow,
    FlowAction,
    FlowMessage,
    GroupKind,
    KlaviyoList,
    Member,
    MemberPage,
    Metric,
    Profile,
    Segment,
    SubscribeProfile,
    Webhook,
    WebhookTopic,
)
from connectors.klaviyo.ratelimit import (
    EXTRA_TIERS,
    TIERS,
    LimiterRegistry,
    Tier,
    default_registry,
    parse_retry_after,
)

__all__ = [
    "OPERATIONS",
    "ClientStats",
    "Credentials",
    "KlaviyoClient",
    "Operation",
    "PrivateKeyCredentials",
    "RetryPolicy",
    "StaticBearerCredentials",
]

JSONAPI = "application/vnd.api+json"
MEMBER_FIELDS = "email,phone_number,external_id,joined_group_at"
MAX_SUBSCRIBE_PER_JOB = 1000
MAX_UNSUBSCRIBE_PER_JOB = 100
MAX_IDS_PER_FILTER = 100
MAX_LIST_MEMBERS_PER_CALL = 1000  # POST /api/lists/{id}/relationships/profiles
MAX_IMPORT_PER_JOB = 10_000
WEBHOOK_CHANGES = frozenset({"name", "description", "endpoint_url", "secret_key", "enabled", "topics"})

T = TypeVar("T")


# ---------------------------------------------------------------------------- credentials


@runtime_checkable
class Credentials(Protocol):
    """Who the client is at Klaviyo, and which quota it draws from.

    ``limiter_key`` names the quota: Klaviyo counts private keys per account and OAuth tokens per
    account *and* app, so a private key's key is ``"account:…"`` and an OAuth connection's is
    ``"oauth:{client_id}:{recart account}"``. Clients with equal keys share one rate limiter.
    """

    limiter_key: str

    async def authorization(self) -> str:
        """The ``Authorization`` header value (``Klaviyo-API-Key pk_…`` or ``Bearer …``).

        May raise ``ConnectionInactive`` / ``NeedsReauthorization`` / ``ConnectionRemoved`` before any
        HTTP call is made.
        """
        ...

    async def refresh_after_unauthorized(self) -> bool:
        """Called once after a 401: True if there are new credentials to retry with, else False."""
        ...


class PrivateKeyCredentials:
    """A private API key (``pk_…``): all scopes, one quota per account."""

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("a private API key is required")
        self._api_key = api_key
        # The key itself never goes into logs or limiter names; a hash of it identifies the account.
        self.limiter_key = "account:pk-" + hashlib.sha256(api_key.encode()).hexdigest()[:16]

    async def authorization(self) -> str:
        """``Klaviyo-API-Key <key>``."""
        return f"Klaviyo-API-Key {self._api_key}"

    async def refresh_after_unauthorized(self) -> bool:
        """A private key cannot be refreshed."""
        return False

    def __repr__(self) -> str:
        return f"PrivateKeyCredentials(limiter_key={self.limiter_key!r})"


class StaticBearerCredentials:
    """A fixed OAuth access token (tests and scripts; production uses the refreshing OAuth credentials)."""

    def __init__(self, token: str, limiter_key: str) -> None:
        self._token = token
        self.limiter_key = limiter_key

    async def authorization(self) -> str:
        """``Bearer <token>``."""
        return f"Bearer {self._token}"

    async def refresh_after_unauthorized(self) -> bool:
        """A static token cannot be refreshed."""
        return False

    def __repr__(self) -> str:
        return f"StaticBearerCredentials(limiter_key={self.limiter_key!r})"


# ---------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    """An endpoint the client calls: its rate-limit tier and paging, hard-coded from Klaviyo's spec.

    ``extra`` lists the query parameters (``name=value``) that draw on a stricter extra quota;
    ``page_size`` is the endpoint's maximum ``page[size]`` (None: the endpoint takes none).
    ``idempotent=False`` operations are not retried once the request may have reached Klaviyo.
    """

    operation_id: str
    method: str
    path: str
    tier: str
    page_size: int | None = None
    extra: tuple[str, ...] = ()
    idempotent: bool = True


# A test checks this table against the bundled spec's `x-klaviyo-ratelimit` and page sizes.
OPERATIONS: dict[str, Operation] = {
    op.operation_id: op
    for op in (
        Operation("get_accounts", "GET", "/api/accounts", "XS"),
        Operation("get_lists", "GET", "/api/lists", "L", page_size=10),
        Operation(
            "get_list", "GET", "/api/lists/{id}", "L", extra=("additional-fields[list]=profile_count",)
        ),
        Operation("get_segments", "GET", "/api/segments", "L", page_size=10),
        Operation(
            "get_segment",
            "GET",
            "/api/segments/{id}",
            "L",
            extra=("additional-fields[segment]=profile_count",),
        ),
        Operation(
            "get_profiles_for_list",
            "GET",
            "/api/lists/{id}/profiles",
            "L",
            page_size=100,
            extra=("additional-fields[profile]=predictive_analytics",),
        ),
        Operation("get_profiles_for_segment", "GET", "/api/segments/{id}/profiles", "L", page_size=100),
        Operation(
            "get_profiles",
            "GET",
            "/api/profiles",
            "L",
            page_size=100,
            extra=("additional-fields[profile]=predictive_analytics",),
        ),
        Operation("bulk_subscribe_profiles", "POST", "/api/profile-subscription-bulk-create-jobs", "L"),
        Operation("add_profiles_to_list", "POST", "/api/lists/{id}/relationships/profiles", "M"),
        Operation("bulk_unsubscribe_profiles", "POST", "/api/profile-subscription-bulk-delete-jobs", "L"),
        Operation("get_metrics", "GET", "/api/metrics", "M"),
        Operation("get_events", "GET", "/api/events", "XL", page_size=1000),
        Operation("get_flows", "GET", "/api/flows", "S", page_size=50),
        Operation("get_actions_for_flow", "GET", "/api/flows/{id}/flow-actions", "S", page_size=50),
        Operation(
            "get_flow_action_messages", "GET", "/api/flow-actions/{id}/flow-messages", "S", page_size=50
        ),
        Operation("get_flow_message", "GET", "/api/flow-messages/{id}", "S"),
        Operation("get_campaigns", "GET", "/api/campaigns", "M", page_size=100),
        Operation("get_messages_for_campaign", "GET", "/api/campaigns/{id}/campaign-messages", "M"),
        Operation("get_webhooks", "GET", "/api/webhooks", "XS"),
        # Creating twice would make two webhooks: no retry once the request may have arrived.
        Operation("create_webhook", "POST", "/api/webhooks", "XS", idempotent=False),
        Operation("update_webhook", "PATCH", "/api/webhooks/{id}", "XS"),
        Operation("delete_webhook", "DELETE", "/api/webhooks/{id}", "XS"),
        Operation("get_webhook_topics", "GET", "/api/webhook-topics", "XS"),
        Operation("bulk_import_profiles", "POST", "/api/profile-bulk-import-jobs", "M", idempotent=False),
        Operation("get_bulk_import_profiles_job", "GET", "/api/profile-bulk-import-jobs/{job_id}", "M"),
    )
}


# ---------------------------------------------------------------------------- stats and policy


@dataclass
class ClientStats:
    """Counters of one client (numeric, for Dagster metadata)."""

    api_calls: int = 0  # HTTP requests sent, retries included
    retries: int = 0  # attempts after a failed one (429, 5xx, connection)
    throttled: int = 0  # 429 answers
    server_errors: int = 0  # 5xx answers
    transport_errors: int = 0  # connection failures, timeouts, dropped connections
    pages: int = 0  # collection pages read
    records: int = 0  # resources parsed from collection pages
    rate_limit_wait_seconds: float = 0.0  # time requests spent waiting for the quota (summed over requests)

    def as_metadata(self) -> dict[str, int | float]:
        """The counters as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: capped exponential backoff with jitter."""

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


@dataclass
class _RefreshOnce:
    """Internal: whether this request has already asked the credentials to refresh after a 401."""

    used: bool = False


class _Retryable(Exception):
    """Internal: an attempt failed in a way worth another try; ``error`` is what the caller finally gets."""

    def __init__(self, error: KlaviyoApiError, *, throttled: bool = False, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.throttled = throttled
        self.retry_after = retry_after


# ---------------------------------------------------------------------------- the client


class KlaviyoClient:
    """Async client of Klaviyo's REST API for one set of credentials (one account connection).

    ``settings`` is a :class:`KlaviyoSettings` or just the base URL. ``max_concurrency`` bounds the
    requests in flight of :meth:`iter_members_many` (and sizes the connection pool); the rate limiter,
    not this number, decides how fast requests go. ``limiter`` defaults to the process-wide registry.
    """

    def __init__(
        self,
        settings: KlaviyoSettings | str,
        credentials: Credentials,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        max_concurrency: int = 32,
        retry: RetryPolicy | None = None,
        timeout: httpx2.Timeout | None = None,
        limiter: LimiterRegistry | None = None,
    ) -> None:
        if isinstance(settings, str):
            settings = KlaviyoSettings(base_url=settings)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.settings = settings
        self.credentials = credentials
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self.stats = ClientStats()
        self._limiter = limiter or default_registry()
        base_url = settings.base_url.rstrip("/")
        self._origin = httpx2.URL(base_url)
        # Quotas belong to a server: the same key against two servers (two sandboxes) are two quotas.
        self._limiter_key = (
            f"{self._origin.scheme}://{self._origin.netloc.decode()}|{credentials.limiter_key}"
        )
        pool = max_concurrency + 4  # + a few for calls made beside a many-group extraction
        self._http = httpx2.AsyncClient(
            base_url=base_url,
            headers={
                "accept": JSONAPI,
                "revision": settings.revision,
                "user-agent": USER_AGENT,
            },
            timeout=timeout or httpx2.Timeout(connect=10.0, read=60.0, write=30.0, pool=120.0),
            limits=httpx2.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def limiter_key(self) -> str:
        """This client's key in the limiter registry: the server's origin and the credentials' key."""
        return self._limiter_key

    async def __aenter__(self) -> Self:
        """Use the client in ``async with``; the pool is closed on exit."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the connection pool."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    # ------------------------------------------------------------------------ request core

    def _path(self, op: Operation, path_params: Mapping[str, str] | None) -> str:
        path = op.path
        for name, value in (path_params or {}).items():
            if not value:
                raise ValueError(f"{op.operation_id}: an empty {name!r}")
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        return path

    async def _request(
        self,
        operation_id: str,
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        url: str | None = None,
    ) -> dict[str, Any] | None:
        """Send one operation (with retries) and return its JSON:API document (None for an empty 2xx).

        ``url`` is a ``links.next`` URL to follow as given; otherwise the URL is the operation's path.
        """
        op = OPERATIONS[operation_id]
        if url is None:
            target: httpx2.URL | str = self._path(op, path_params)
            endpoint_path = str(target)
            query = dict(params or {})
        else:
            target = httpx2.URL(url)
            endpoint_path = target.path
            query = dict(target.params)
            params = None
        endpoint = f"{op.method} {endpoint_path}"
        tiers = [TIERS[op.tier]] + [
            EXTRA_TIERS[extra]
            for extra in op.extra
            if extra.split("=", 1)[1] in _split(query.get(extra.split("=", 1)[0], ""))
        ]
        content = orjson.dumps(body) if body is not None else None
        response = await self._with_retries(op, target, params, content, tiers, endpoint)
        if not response.content:
            if response.status_code in (202, 204):
                return None
            raise MalformedResponseError(
                f"Malformed Klaviyo response: empty body with status {response.status_code}",
                endpoint=endpoint,
            )
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise MalformedResponseError(
                f"Malformed Klaviyo response: not JSON ({exc})",
                endpoint=endpoint,
                status=response.status_code,
            ) from exc
        if not isinstance(document, dict) or "data" not in document:
            raise MalformedResponseError(
                "Malformed Klaviyo response: not a JSON:API document (no top-level 'data')",
                endpoint=endpoint,
                status=response.status_code,
            )
        return document

    async def _with_retries(
        self,
        op: Operation,
        target: httpx2.URL | str,
        params: Mapping[str, str] | None,
        content: bytes | None,
        tiers: Sequence[Tier],
        endpoint: str,
    ) -> httpx2.Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=self._backoff,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._count_retry,
            reraise=True,
        )
        refresh = _RefreshOnce()  # one refresh per request, however many attempts it takes
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(op, target, params, content, tiers, endpoint, refresh)
        except _Retryable as failed:
            raise failed.error from failed.__cause__
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _backoff(self, state: RetryCallState) -> float:
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, _Retryable) and failure.throttled:
            return 0.0  # the limiter holds the bucket until Retry-After: waiting here too would double it
        ceiling = min(self.retry.backoff_max, self.retry.backoff_base * 2 ** (state.attempt_number - 1))
        delay = random.uniform(ceiling / 2, ceiling)  # "equal jitter": spread, but never near zero
        if isinstance(failure, _Retryable) and failure.retry_after:
            delay = max(delay, min(failure.retry_after, self.retry.backoff_max))
        return delay

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    async def _attempt(
        self,
        op: Operation,
        target: httpx2.URL | str,
        params: Mapping[str, str] | None,
        content: bytes | None,
        tiers: Sequence[Tier],
        endpoint: str,
        refresh: _RefreshOnce,
    ) -> httpx2.Response:
        while True:
            authorization = await self.credentials.authorization()
            headers = {"authorization": authorization}
            if content is not None:
                headers["content-type"] = JSONAPI
            permit = await self._limiter.acquire(self._limiter_key, tiers)
            self.stats.rate_limit_wait_seconds += permit.waited
            self.stats.api_calls += 1
            try:
                response = await self._http.request(
                    op.method, target, params=params, content=content, headers=headers
                )
            except httpx2.TransportError as exc:
                permit.settle(None)
                self.stats.transport_errors += 1
                error = ServerError(
                    f"No answer from Klaviyo ({type(exc).__name__}: {exc or 'connection failed'})",
                    endpoint=endpoint,
                )
                # A request that never left (connect failure, no pooled connection) is safe to resend;
                # otherwise only idempotent operations are.
                never_sent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout)
                if op.idempotent or never_sent:
                    raise _Retryable(error) from exc
                raise error from exc
            permit.settle(response.status_code, response.headers)
            status = response.status_code
            if status < 400:
                return response
            if status == 401 and not refresh.used:
                refresh.used = True
                if await self.credentials.refresh_after_unauthorized():
                    continue  # new credentials: the same attempt, once more
            error = _error_from(response, endpoint)
            if status == 429:
                self.stats.throttled += 1
                raise _Retryable(error, throttled=True)
            if status >= 500:
                self.stats.server_errors += 1
                if op.idempotent:
                    retry_after = (
                        parse_retry_after(response.headers.get("retry-after"), time.time(), default=0.0)
                        if "retry-after" in response.headers
                        else None
                    )
                    raise _Retryable(error, retry_after=retry_after)
            raise error

    # ------------------------------------------------------------------------ pagination

    async def _pages(
        self,
        operation_id: str,
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[tuple[list[Any], str]]:
        """Every page of a collection: ``(data, endpoint)``; follows ``links.next`` until it is null."""
        op = OPERATIONS[operation_id]
        url: str | None = None
        seen: set[str] = set()
        while True:
            document = await self._request(operation_id, path_params=path_params, params=params, url=url)
            endpoint = f"{op.method} {self._path(op, path_params)}"
            data = _collection(document, endpoint)
            self.stats.pages += 1
            self.stats.records += len(data)
            yield data, endpoint
            next_url = self._next_link(document, endpoint)
            if next_url is None:
                return
            if next_url in seen:
                raise MalformedResponseError(
                    "Malformed Klaviyo response: links.next repeats an earlier page", endpoint=endpoint
                )
            seen.add(next_url)
            url = next_url

    def _next_link(self, document: Mapping[str, Any] | None, endpoint: str) -> str | None:
        links = (document or {}).get("links")
        if links is None:
            return None
        if not isinstance(links, Mapping):
            raise MalformedResponseError(
                "Malformed Klaviyo response: 'links' is not an object", endpoint=endpoint
            )
        next_url = links.get("next")
        if next_url is None:
            return None
        if not isinstance(next_url, str):
            raise MalformedResponseError(
                "Malformed Klaviyo response: links.next is not a URL", endpoint=endpoint
            )
        parsed = httpx2.URL(next_url)
        # Our credentials only ever go to the server we were configured for.
        if parsed.is_relative_url or (parsed.scheme, parsed.netloc) != (
            self._origin.scheme,
            self._origin.netloc,
        ):
            raise MalformedResponseError(
                f"Malformed Klaviyo response: links.next points elsewhere ({parsed.scheme}://{parsed.host})",
                endpoint=endpoint,
            )
        return next_url

    async def _iter(
        self,
        operation_id: str,
        parse: Callable[[Any, str], T],
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[T]:
        async for data, endpoint in self._pages(operation_id, path_params=path_params, params=params):
            for item in data:
                yield parse(item, endpoint)

    async def _collect(self, iterator: AsyncIterator[T]) -> list[T]:
        return [item async for item in iterator]

    async def _single(
        self,
        operation_id: str,
        parse: Callable[[Any, str], T],
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> T:
        op = OPERATIONS[operation_id]
        endpoint = f"{op.method} {self._path(op, path_params)}"
        document = await self._request(operation_id, path_params=path_params, params=params, body=body)
        if document is None or not isinstance(document.get("data"), Mapping):
            raise MalformedResponseError(
                "Malformed Klaviyo response: 'data' is not one resource", endpoint=endpoint
            )
        return parse(document["data"], endpoint)

    # ------------------------------------------------------------------------ account

    async def get_account(self) -> Account:
        """The account the credentials belong to."""
        endpoint = "GET /api/accounts"
        document = await self._request("get_accounts")
        data = _collection(document, endpoint)
        if len(data) != 1:
            raise MalformedResponseError(
                f"Malformed Klaviyo response: expected exactly one account, got {len(data)}",
                endpoint=endpoint,
            )
        return Account.from_resource(data[0], endpoint)

    # ------------------------------------------------------------------------ lists and segments

    def iter_lists(self) -> AsyncIterator[KlaviyoList]:
        """Every list of the account (10 per page, Klaviyo's maximum)."""
        return self._iter("get_lists", KlaviyoList.from_resource, params={"page[size]": "10"})

    async def get_list(self, list_id: str, with_profile_count: bool = False) -> KlaviyoList:
        """One list; ``with_profile_count`` costs the stricter 1/s, 15/min quota."""
        params = {"additional-fields[list]": "profile_count"} if with_profile_count else None
        return await self._single(
            "get_list", KlaviyoList.from_resource, path_params={"id": list_id}, params=params
        )

    def iter_segments(self) -> AsyncIterator[Segment]:
        """Every segment of the account (10 per page, Klaviyo's maximum)."""
        return self._iter("get_segments", Segment.from_resource, params={"page[size]": "10"})

    async def get_segment(self, segment_id: str, with_profile_count: bool = False) -> Segment:
        """One segment; ``with_profile_count`` costs the stricter 1/s, 15/min quota."""
        params = {"additional-fields[segment]": "profile_count"} if with_profile_count else None
        return await self._single(
            "get_segment", Segment.from_resource, path_params={"id": segment_id}, params=params
        )

    @staticmethod
    def _member_params(joined_after: datetime | None) -> dict[str, str]:
        params = {
            # Only the attributes we store travel: a sparse page is a fraction of a full one.
            "fields[profile]": MEMBER_FIELDS,
            "page[size]": "100",
            "sort": "joined_group_at",
        }
        if joined_after is not None:
            params["filter"] = str(filters.greater_than("joined_group_at", joined_after))
        return params

    async def _member_pages(
        self, kind: GroupKind, group_id: str, joined_after: datetime | None
    ) -> AsyncIterator[tuple[Member, ...]]:
        operation_id = _members_operation(kind)
        async for data, endpoint in self._pages(
            operation_id, path_params={"id": group_id}, params=self._member_params(joined_after)
        ):
            yield tuple(Member.from_resource(item, endpoint) for item in data)

    async def iter_list_members(
        self, list_id: str, joined_after: datetime | None = None
    ) -> AsyncIterator[Member]:
        """Members of a list, oldest join first; only those who joined after ``joined_after`` if given."""
        async for members in self._member_pages("list", list_id, joined_after):
            for member in members:
                yield member

    async def iter_segment_members(
        self, segment_id: str, joined_after: datetime | None = None
    ) -> AsyncIterator[Member]:
        """Members of a segment, oldest join first; only those who joined after ``joined_after`` if given."""
        async for members in self._member_pages("segment", segment_id, joined_after):
            for member in members:
                yield member

    async def iter_members_many(
        self,
        group_ids: Iterable[str],
        kind: GroupKind = "segment",
        joined_after: Mapping[str, datetime | None] | None = None,
        *,
        concurrency: int | None = None,
    ) -> AsyncIterator[MemberPage]:
        """Extract the members of many lists or segments at once, as fast as the account's quota allows.

        Pages of a group follow each other (cursor pagination), so the way to the ceiling is many
        groups in flight: up to ``concurrency`` (default: the client's ``max_concurrency``) page
        requests run at once, each group with at most one, and the rate limiter spaces them. A
        group's next page is preferred over starting a new group, so groups finish early and one at
        a time. Yields one :class:`MemberPage` per page (in completion order; ``is_last`` closes a
        group). ``joined_after`` maps a group id to its incremental cursor.

        Any failure (after retries) stops the whole extraction and is raised here. Use
        ``contextlib.aclosing`` when you may stop early, so the in-flight requests are cancelled.
        """
        ids = list(dict.fromkeys(group_ids))
        if not ids:
            return
        cursors = joined_after or {}
        operation_id = _members_operation(kind)
        workers = max(1, min(concurrency or self.max_concurrency, len(ids)))
        # (priority, sequence, group id, page number, url or None for the first page): 0 = a group's
        # next page, 1 = a group not started yet.
        work: asyncio.PriorityQueue[tuple[int, int, str, int, str | None]] = asyncio.PriorityQueue()
        for sequence, group_id in enumerate(ids):
            work.put_nowait((1, sequence, group_id, 1, None))
        sequence_counter = len(ids)
        results: asyncio.Queue[MemberPage | BaseException] = asyncio.Queue(maxsize=workers * 2)

        async def worker() -> None:
            nonlocal sequence_counter
            while True:
                _, _, group_id, number, url = await work.get()
                try:
                    endpoint = f"GET {self._path(OPERATIONS[operation_id], {'id': group_id})}"
                    document = await self._request(
                        operation_id,
                        path_params={"id": group_id},
                        params=self._member_params(cursors.get(group_id)),
                        url=url,
                    )
                    data = _collection(document, endpoint)
                    members = tuple(Member.from_resource(item, endpoint) for item in data)
                    next_url = self._next_link(document, endpoint)
                    self.stats.pages += 1
                    self.stats.records += len(members)
                except Exception as exc:
                    await results.put(exc)
                    return
                if next_url is not None:
                    sequence_counter += 1
                    work.put_nowait((0, sequence_counter, group_id, number + 1, next_url))
                await results.put(MemberPage(kind, group_id, members, number, next_url is None))

        tasks = [asyncio.create_task(worker(), name=f"klaviyo-members-{i}") for i in range(workers)]
        try:
            open_groups = len(ids)
            while open_groups:
                item = await results.get()
                if isinstance(item, BaseException):
                    raise item
                if item.is_last:
                    open_groups -= 1
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------ profiles

    def iter_profiles(
        self, filter: filters.Filter | None = None, *, with_subscriptions: bool = False
    ) -> AsyncIterator[Profile]:
        """Profiles of the account, optionally filtered (e.g. ``filters.any_of("email", [...])``)."""
        params = {"page[size]": str(MAX_IDS_PER_FILTER)}
        if filter is not None:
            params["filter"] = str(filter)
        if with_subscriptions:
            params["additional-fields[profile]"] = "subscriptions"
        return self._iter("get_profiles", Profile.from_resource, params=params)

    async def get_profiles(self, ids: Iterable[str], *, with_subscriptions: bool = False) -> list[Profile]:
        """Profiles by id (unknown ids are skipped), fetched 100 at a time with ``any(id,[…])``.

        Batches run concurrently (bounded by ``max_concurrency``); the result keeps the input order.
        """
        wanted = list(dict.fromkeys(ids))
        batches = [wanted[i : i + MAX_IDS_PER_FILTER] for i in range(0, len(wanted), MAX_IDS_PER_FILTER)]
        gate = asyncio.Semaphore(self.max_concurrency)

        async def fetch(batch: list[str]) -> list[Profile]:
            async with gate:
                return await self._collect(
                    self.iter_profiles(filters.any_of("id", batch), with_subscriptions=with_subscriptions)
                )

        tasks = [asyncio.ensure_future(fetch(batch)) for batch in batches]
        try:
            fetched = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one batch failed for good: stop the others too
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        found: dict[str, Profile] = {}
        for profiles in fetched:
            found.update((p.id, p) for p in profiles)
        return [found[i] for i in wanted if i in found]

    async def bulk_subscribe(
        self,
        list_id: str,
        profiles: Sequence[SubscribeProfile],
        historical_import: bool = False,
        custom_source: str | None = None,
    ) -> int:
        """Subscribe people to a list with their consent, 1,000 per job; returns the number of jobs sent.

        ``historical_import`` records past consent (consent times required and sent only then) and
        skips double opt-in and "Added to List" flows. Subscribing lifts unsubscribe and user
        suppressions, so callers only push people whose consent changed.
        """
        jobs = 0
        for start in range(0, len(profiles), MAX_SUBSCRIBE_PER_JOB):
            await self.subscribe_job(
                list_id,
                profiles[start : start + MAX_SUBSCRIBE_PER_JOB],
                historical_import=historical_import,
                custom_source=custom_source,
            )
            jobs += 1
        return jobs

    async def subscribe_job(
        self,
        list_id: str,
        profiles: Sequence[SubscribeProfile],
        *,
        historical_import: bool = False,
        custom_source: str | None = None,
    ) -> None:
        """One bulk subscribe job (at most 1,000 profiles); Klaviyo accepts (202) or rejects it whole.

        A 400 for one bad profile rejects the batch with ``InvalidRequestError`` whose ``pointer``
        names the item (``/data/attributes/profiles/data/<index>…``).
        """
        if not 0 < len(profiles) <= MAX_SUBSCRIBE_PER_JOB:
            raise ValueError(
                f"a subscribe job takes 1 to {MAX_SUBSCRIBE_PER_JOB} profiles, got {len(profiles)}"
            )
        if historical_import and not all(p.has_consent_times for p in profiles):
            raise ValueError("historical_import needs a consent time for every channel consented to")
        attributes: dict[str, Any] = {
            "historical_import": historical_import,
            "profiles": {"data": [_subscribe_item(p, historical_import) for p in profiles]},
        }
        if custom_source:
            attributes["custom_source"] = custom_source
        body = {
            "data": {
                "type": "profile-subscription-bulk-create-job",
                "attributes": attributes,
                "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
            }
        }
        await self._request("bulk_subscribe_profiles", body=body)

    async def add_to_list(self, list_id: str, profile_ids: Sequence[str]) -> None:
        """Add existing profiles to a list (at most 1,000 ids): membership only, consent untouched,
        no double opt-in email."""
        if not 0 < len(profile_ids) <= MAX_LIST_MEMBERS_PER_CALL:
            raise ValueError(
                f"add_to_list takes 1 to {MAX_LIST_MEMBERS_PER_CALL} profile ids, got {len(profile_ids)}"
            )
        body = {"data": [{"type": "profile", "id": profile_id} for profile_id in profile_ids]}
        await self._request("add_profiles_to_list", path_params={"id": list_id}, body=body)

    async def bulk_unsubscribe(
        self,
        list_id: str | None,
        *,
        emails: Sequence[str] = (),
        phone_numbers: Sequence[str] = (),
    ) -> int:
        """Unsubscribe emails (email marketing) and phone numbers (SMS marketing), 100 per job.

        With a list, members of it are unsubscribed from that list; Klaviyo unsubscribes anyone not
        in the list (and everyone when ``list_id`` is None) globally. Returns the number of jobs sent.
        """
        items = [("email", email) for email in emails] + [("sms", phone) for phone in phone_numbers]
        jobs = 0
        for start in range(0, len(items), MAX_UNSUBSCRIBE_PER_JOB):
            await self.unsubscribe_job(list_id, items[start : start + MAX_UNSUBSCRIBE_PER_JOB])
            jobs += 1
        return jobs

    async def unsubscribe_job(self, list_id: str | None, items: Sequence[tuple[str, str]]) -> None:
        """One bulk unsubscribe job of at most 100 ``(channel, contact)`` pairs.

        ``channel`` is ``"email"`` (the contact an address: email marketing) or ``"sms"`` (an E.164
        number: SMS marketing). List semantics as in ``bulk_unsubscribe``.
        """
        if not 0 < len(items) <= MAX_UNSUBSCRIBE_PER_JOB:
            raise ValueError(
                f"an unsubscribe job takes 1 to {MAX_UNSUBSCRIBE_PER_JOB} profiles, got {len(items)}"
            )
        data: dict[str, Any] = {
            "type": "profile-subscription-bulk-delete-job",
            "attributes": {
                "profiles": {"data": [_unsubscribe_item(channel, contact) for channel, contact in items]}
            },
        }
        if list_id is not None:
            data["relationships"] = {"list": {"data": {"type": "list", "id": list_id}}}
        await self._request("bulk_unsubscribe_profiles", body={"data": data})

    async def create_bulk_import(
        self, profiles: Sequence[Mapping[str, Any]], list_ids: Sequence[str] = ()
    ) -> BulkImportJob:
        """Start a profile bulk import (≤ 10,000 profiles: each a dict of profile attributes); no consent."""
        if not 0 < len(profiles) <= MAX_IMPORT_PER_JOB:
            raise ValueError(f"a bulk import takes 1 to {MAX_IMPORT_PER_JOB} profiles, got {len(profiles)}")
        data: dict[str, Any] = {
            "type": "profile-bulk-import-job",
            "attributes": {
                "profiles": {"data": [{"type": "profile", "attributes": dict(p)} for p in profiles]}
            },
        }
        if list_ids:
            data["relationships"] = {"lists": {"data": [{"type": "list", "id": i} for i in list_ids]}}
        return await self._single("bulk_import_profiles", BulkImportJob.from_resource, body={"data": data})

    async def get_bulk_import(self, job_id: str) -> BulkImportJob:
        """A bulk import job's progress."""
        return await self._single(
            "get_bulk_import_profiles_job", BulkImportJob.from_resource, path_params={"job_id": job_id}
        )

    # ------------------------------------------------------------------------ metrics and events

    def iter_metrics(self) -> AsyncIterator[Metric]:
        """Every metric of the account (cursor paging; the endpoint takes no page size)."""
        return self._iter("get_metrics", Metric.from_resource)

    def iter_events(
        self, metric_id: str, since: datetime, until: datetime | None = None, page_size: int = 1000
    ) -> AsyncIterator[Event]:
        """Events of one metric with ``since <= datetime < until``, oldest first."""
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        expression = filters.and_(
            filters.equals("metric_id", metric_id),
            filters.greater_or_equal("datetime", since),
            filters.less_than("datetime", until) if until is not None else None,
        )
        params = {"filter": str(expression), "sort": "datetime", "page[size]": str(page_size)}
        return self._iter("get_events", Event.from_resource, params=params)

    # ------------------------------------------------------------------------ flows and campaigns

    def iter_flows(self) -> AsyncIterator[Flow]:
        """Every flow of the account."""
        return self._iter("get_flows", Flow.from_resource, params={"page[size]": "50"})

    def iter_flow_actions(self, flow_id: str) -> AsyncIterator[FlowAction]:
        """The actions (steps) of a flow."""
        return self._iter(
            "get_actions_for_flow",
            FlowAction.from_resource,
            path_params={"id": flow_id},
            params={"page[size]": "50"},
        )

    def iter_flow_messages(self, action_id: str) -> AsyncIterator[FlowMessage]:
        """The messages of a flow action."""
        return self._iter(
            "get_flow_action_messages",
            FlowMessage.from_resource,
            path_params={"id": action_id},
            params={"page[size]": "50"},
        )

    async def get_flow_message(self, message_id: str) -> FlowMessage:
        """One flow message."""
        return await self._single(
            "get_flow_message", FlowMessage.from_resource, path_params={"id": message_id}
        )

    def iter_campaigns(self, channel: str = "email") -> AsyncIterator[Campaign]:
        """Campaigns of one channel (``email``, ``sms``, ``mobile_push``): Klaviyo requires the channel."""
        params = {"filter": str(filters.equals("messages.channel", channel)), "page[size]": "100"}
        return self._iter("get_campaigns", Campaign.from_resource, params=params)

    async def get_campaign_messages(self, campaign_id: str) -> list[CampaignMessage]:
        """The messages of a campaign."""
        return await self._collect(
            self._iter(
                "get_messages_for_campaign", CampaignMessage.from_resource, path_params={"id": campaign_id}
            )
        )

    # ------------------------------------------------------------------------ webhooks

    async def list_webhooks(self) -> list[Webhook]:
        """The account's webhooks (at most ten; one page)."""
        return await self._collect(self._iter("get_webhooks", Webhook.from_resource))

    async def create_webhook(
        self,
        name: str,
        endpoint_url: str,
        secret_key: str,
        topics: Sequence[str],
        description: str | None = None,
    ) -> Webhook:
        """Create a webhook for ``topics``; Klaviyo signs deliveries with ``secret_key`` (never returned).

        Not retried once the request may have arrived: on a ServerError, list the webhooks to see
        whether it was created.
        """
        if not topics:
            raise ValueError("a webhook needs at least one topic")
        body = {
            "data": {
                "type": "webhook",
                "attributes": {
                    "name": name,
                    "description": description,
                    "endpoint_url": endpoint_url,
                    "secret_key": secret_key,
                },
                "relationships": {
                    "webhook-topics": {"data": [{"type": "webhook-topic", "id": t} for t in topics]}
                },
            }
        }
        return await self._single("create_webhook", Webhook.from_resource, body=body)

    async def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        """Change any of name, description, endpoint_url, secret_key, enabled, topics (``None`` keeps)."""
        unknown = set(changes) - WEBHOOK_CHANGES
        if unknown:
            raise TypeError(f"update_webhook() got unknown changes: {sorted(unknown)}")
        topics = changes.pop("topics", None)
        data: dict[str, Any] = {"type": "webhook", "id": webhook_id, "attributes": changes}
        if topics is not None:
            data["relationships"] = {
                "webhook-topics": {"data": [{"type": "webhook-topic", "id": t} for t in topics]}
            }
        return await self._single(
            "update_webhook", Webhook.from_resource, path_params={"id": webhook_id}, body={"data": data}
        )

    async def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook."""
        await self._request("delete_webhook", path_params={"id": webhook_id})

    async def list_webhook_topics(self) -> list[WebhookTopic]:
        """Every topic this account's webhooks can subscribe to."""
        return await self._collect(self._iter("get_webhook_topics", WebhookTopic.from_resource))


# ---------------------------------------------------------------------------- helpers


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _members_operation(kind: GroupKind) -> str:
    if kind == "segment":
        return "get_profiles_for_segment"
    if kind == "list":
        return "get_profiles_for_list"
    raise ValueError(f"kind must be 'list' or 'segment', not {kind!r}")


def _collection(document: Mapping[str, Any] | None, endpoint: str) -> list[Any]:
    data = (document or {}).get("data")
    if not isinstance(data, list):
        raise MalformedResponseError("Malformed Klaviyo response: 'data' is not a list", endpoint=endpoint)
    return data


def _subscribe_item(profile: SubscribeProfile, historical_import: bool) -> dict[str, Any]:
    def consent(at: datetime | None) -> dict[str, Any]:
        granted: dict[str, Any] = {"consent": "SUBSCRIBED"}
        if historical_import and at is not None:
            granted["consented_at"] = at.astimezone(UTC).isoformat()
        return granted

    subscriptions: dict[str, Any] = {}
    if profile.email_consent:
        subscriptions["email"] = {"marketing": consent(profile.email_consented_at)}
    if profile.sms_consent:
        subscriptions["sms"] = {"marketing": consent(profile.sms_consented_at)}
    attributes: dict[str, Any] = {"subscriptions": subscriptions}
    if profile.email:
        attributes["email"] = profile.email
    if profile.phone_number:
        attributes["phone_number"] = profile.phone_number
    return {"type": "profile", "attributes": attributes}


def _unsubscribe_item(channel: str, contact: str) -> dict[str, Any]:
    if channel == "email":
        return {
            "type": "profile",
            "attributes": {
                "email": contact,
                "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}},
            },
        }
    if channel == "sms":
        return {
            "type": "profile",
            "attributes": {
                "phone_number": contact,
                "subscriptions": {"sms": {"marketing": {"consent": "UNSUBSCRIBED"}}},
            },
        }
    raise ValueError(f"unknown channel {channel!r} (expected 'email' or 'sms')")


def _error_from(response: httpx2.Response, endpoint: str) -> KlaviyoApiError:
    """The error (by meaning) for a non-2xx answer, with Klaviyo's error id, code and detail."""
    status = response.status_code
    first: Mapping[str, Any] = {}
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        body = orjson.loads(response.content) if response.content else None
        errors = body.get("errors") if isinstance(body, Mapping) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            first = errors[0]

    def text(name: str) -> str | None:
        value = first.get(name)
        return str(value) if value is not None else None

    if status == 401:
        cls: type[KlaviyoApiError] = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = RateLimitedError
    elif status >= 500:
        cls = ServerError
    else:
        cls = InvalidRequestError
    source = first.get("source")
    detail = text("detail")
    where = None
    if isinstance(source, Mapping) and source:
        where = source.get("pointer") or source.get("parameter")
        if where and detail:
            detail = f"{detail} (at {where})"
    return cls(
        text("title") or f"HTTP {status}",
        endpoint=endpoint,
        status=status,
        code=text("code"),
        error_id=text("id"),
        detail=detail,
        pointer=str(where) if where else None,
    )
