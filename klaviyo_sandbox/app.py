"""The sandbox's ASGI application: Klaviyo's ``/api/`` surface, OAuth and the ``/_sandbox/`` control API.

Every ``/api/`` request passes one pipeline, in this order, each step answering as Klaviyo would:
route (404/405) → ``revision`` header (400) → credentials (401) → rate limits (429) → scopes (403)
→ fault injection (500/503/latency/dropped connection) → query parameters against the spec (400)
→ body: content type (415), size (413), JSON and the spec's schema (400) → the operation's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klaviyo_sandbox import spec
from klaviyo_sandbox.errors import (
    ApiError,
    authentication_failed,
    invalid,
    not_authenticated,
    permission_denied,
)
from klaviyo_sandbox.filters import FilterError, compile_filter
from klaviyo_sandbox.jsonapi import Caller, Context
from klaviyo_sandbox.ratelimit import RateLimiter
from klaviyo_sandbox.store import Store, utcnow

logger = logging.getLogger("klaviyo_sandbox")

JSONAPI = "application/vnd.api+json"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
MAX_BODY_BYTES = spec.DEFAULT_MAX_BODY_BYTES  # per operation: Operation.max_body_bytes
STATE_FLUSH_SECONDS = 5.0
VALIDATE_OFF_LOOP_BYTES = 256 * 1024  # bodies larger than this are schema-checked in a worker thread
_PATH_ID = re.compile(r"^[A-Za-z0-9._:$\-]{1,128}$")
_REVISION = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(\.[A-Za-z0-9]+)?$")
# Klaviyo supports a revision for about two years; newer ones (ahead of our spec) are accepted.
REVISION_SUPPORT = timedelta(days=2 * 366)

Handler = Callable[[Context], Awaitable[tuple[int, Any]] | tuple[int, Any]]
HANDLERS: dict[str, Handler] = {}


def handler(*operation_ids: str) -> Callable[[Handler], Handler]:
    """Register a function as the handler of spec operations (by ``operationId``)."""

    def register(func: Handler) -> Handler:
        for operation_id in operation_ids:
            spec.operation_by_id(operation_id)  # fail at import for a typo
            HANDLERS[operation_id] = func
        return func

    return register


@dataclass
class Faults:
    """Fault injection, set by ``--fault-rate`` or at run time through the control API."""

    error_rate: float = 0.0  # share of /api/ requests answered with one of ``statuses``
    statuses: list[int] = field(default_factory=lambda: [500, 503])
    latency_ms: int = 0  # added to every /api/ request
    drop_rate: float = 0.0  # share of requests whose connection is cut mid-answer
    fail_next: int = 0  # the next N matching requests fail (deterministic, for tests)
    path_prefix: str = "/api/"  # faults apply only to paths starting with this
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def to_dict(self) -> dict[str, Any]:
        """The settings, as the control API shows them."""
        return {
            "error_rate": self.error_rate,
            "statuses": self.statuses,
            "latency_ms": self.latency_ms,
            "drop_rate": self.drop_rate,
            "fail_next": self.fail_next,
            "path_prefix": self.path_prefix,
        }


class DroppedConnection(Exception):
    """Raised after the response has started, so the server cuts the connection."""


@dataclass
class SandboxApp:
    """One running sandbox: state, limiter, faults, request log and webhook dispatch."""

    store: Store
    limiter: RateLimiter
    faults: Faults = field(default_factory=Faults)
    state_path: Path | None = None
    request_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10_000))
    webhooks: Any = None  # WebhookDispatcher, attached in build_app
    asgi: Starlette | None = None
    # /api/ requests being handled now (tests wait for 0 before reading the store from another thread)
    in_flight: int = 0

    dirty: bool = False

    def save_state(self) -> None:
        """Note that the state changed; it is written by ``flush_state`` (periodically and at exit).

        Writing a demo-sized store takes seconds, so it is never done inside a request.
        """
        self.dirty = True

    def flush_state(self) -> None:
        """Write the store to ``--state`` now if anything changed since the last write.

        ``dirty`` is cleared only once the write succeeded, so a failed write is retried.
        """
        if self.state_path and self.dirty:
            self.store.save(self.state_path)
            self.dirty = False

    async def flush_periodically(self, every_seconds: float = STATE_FLUSH_SECONDS) -> None:
        """Background task: write changed state every few seconds (a failed write never stops it)."""
        while True:
            await asyncio.sleep(every_seconds)
            try:
                self.flush_state()
            except Exception:
                logger.exception("could not write the sandbox state to %s; will retry", self.state_path)


def _revision_ok(value: str | None) -> str | None:
    """None when the revision header is acceptable; otherwise the reason."""
    if not value:
        return "The 'revision' header is required."
    found = _REVISION.match(value)
    if not found:
        return f"'{value}' is not a valid revision (format YYYY-MM-DD[.suffix])."
    try:
        when = date(int(found.group(1)), int(found.group(2)), int(found.group(3)))
    except ValueError:
        return f"'{value}' is not a valid revision date."
    if when < date.today() - REVISION_SUPPORT:
        return f"Revision {value} is no longer supported."
    return None


def _authenticate(sandbox: SandboxApp, header: str | None) -> Caller:
    from klaviyo_sandbox.oauth import authenticate_bearer

    if not header:
        raise not_authenticated()
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme == "Klaviyo-API-Key":
        account = sandbox.store.account_by_private_key(credential)
        if account is None:
            raise authentication_failed()
        return Caller(account=account, grant=None, scopes=None)
    if scheme == "Bearer":
        grant = authenticate_bearer(sandbox.store, credential)
        return Caller(
            account=sandbox.store.accounts[grant.account_id], grant=grant, scopes=frozenset(grant.scopes)
        )
    raise not_authenticated()


def _check_scopes(op: spec.Operation, caller: Caller) -> None:
    if caller.scopes is None:
        # Private keys carry every scope, except the Webhooks API needs Advanced KDP.
        if op.path.startswith(("/api/webhooks", "/api/webhook-topics")) and not caller.account.advanced_kdp:
            raise permission_denied("You must have Advanced KDP enabled to use this endpoint.")
        return
    missing = [scope for scope in op.scopes if scope not in caller.scopes]
    if missing:
        raise permission_denied(
            f"You do not have permission to perform this action. Missing scope(s): {', '.join(missing)}."
        )


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_query(op: spec.Operation, query: dict[str, str], ctx: Context) -> None:
    """Validate every query parameter against the operation's declaration (400 otherwise)."""
    for name in query:
        if name not in op.query:
            raise invalid(f"'{name}' is not a valid query parameter for this endpoint.", parameter=name)
    for name, param in op.query.items():
        if param.required and name not in query:
            raise invalid(f"The '{name}' query parameter is required.", parameter=name)
    for name, raw in query.items():
        param = op.query[name]
        if param.is_list:
            values = _split_list(raw)
            allowed = param.enum
            for value in values:
                if allowed is not None and value not in allowed:
                    raise invalid(f"'{value}' is not a valid value for {name}.", parameter=name)
            if name.startswith("fields["):
                ctx.fields[name[7:-1]] = values
            elif name.startswith("additional-fields["):
                ctx.additional_fields[name[18:-1]] = values
            elif name == "include":
                ctx.include = values
        elif name == "sort":
            if param.enum is not None and raw not in param.enum:
                raise invalid(f"'{raw}' is not a valid sort for this endpoint.", parameter="sort")
            ctx.sort = raw
        elif name == "page[size]":
            try:
                size = int(raw)
            except ValueError as exc:
                raise invalid("page[size] must be an integer.", parameter="page[size]") from exc
            _, minimum, maximum = op.page_size or (20, 1, 100)
            if not minimum <= size <= maximum:
                raise invalid(
                    f"page[size] must be between {minimum} and {maximum}; got {size}.", parameter="page[size]"
                )
            ctx.page_size = size
        elif name == "page[cursor]":
            ctx.cursor = raw
        elif name == "filter":
            try:
                ctx.filters = compile_filter(raw, op.filters)
            except FilterError as exc:
                raise invalid(exc.detail, parameter="filter") from exc
        elif param.enum is not None and raw not in param.enum:
            raise invalid(f"'{raw}' is not a valid value for {name}.", parameter=name)


async def _read_body(request: Request, op: spec.Operation) -> Any:
    if op.method in ("GET", "DELETE") and op.request_schema_ref is None:
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (JSONAPI, "application/json"):
        raise ApiError(415, f"Unsupported media type '{content_type or 'none'}'; use {JSONAPI}.")
    if request.headers.get("content-encoding") not in (None, "", "identity"):
        raise ApiError(415, "Unsupported Content-Encoding.")
    limit = op.max_body_bytes
    too_large = ApiError(413, f"The maximum allowed payload size is {_size_label(limit)}.", pointer="/data")
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        # orjson, not json: it rejects what Klaviyo's parser rejects and what would break us later
        # (NaN/Infinity, lone surrogates, nesting deeper than 1024, integers with thousands of
        # digits), and it turns integers beyond 64 bits into floats, which responses can encode.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Malformed JSON: {exc}.", pointer="/data") from exc
    if op.request_schema_ref:
        validator = spec.validator(op.request_schema_ref)
        if len(raw) > VALIDATE_OFF_LOOP_BYTES:
            # A 10,000-profile import takes about a second to validate: do it in a thread (it
            # only reads the parsed body), so other clients are not stalled meanwhile.
            error = await asyncio.to_thread(_first_schema_error, validator, body)
        else:
            error = _first_schema_error(validator, body)
        if error is not None:
            pointer = "/" + "/".join(str(part) for part in error.absolute_path)
            raise invalid(_schema_message(error), pointer=pointer)
    return body


def _first_schema_error(validator: Any, body: Any) -> Any:
    return next(iter(validator.iter_errors(body)), None)


def _size_label(limit: int) -> str:
    return f"{limit // (1024 * 1024)}MB" if limit % (1024 * 1024) == 0 else f"{limit // 1024}KB"


def _schema_message(error: Any) -> str:
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", error.message)
        where = "/".join(str(p) for p in error.absolute_path) or "data"
        return f"'{extra[0] if extra else '?'}' is not a valid field for '{where}'."
    return error.message.replace("\n", " ")[:300]


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, media_type=JSONAPI, headers=error.headers)


async def _maybe_fault(sandbox: SandboxApp, path: str, send_drop: list[bool]) -> None:
    faults = sandbox.faults
    if not path.startswith(faults.path_prefix):
        return
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.fail_next > 0:
        faults.fail_next -= 1
        raise ApiError(faults.statuses[0], "Injected fault (fail_next).")
    if faults.drop_rate and faults.rng.random() < faults.drop_rate:
        send_drop[0] = True
        return
    if faults.error_rate and faults.rng.random() < faults.error_rate:
        raise ApiError(faults.rng.choice(faults.statuses), "Injected fault.")


async def api_endpoint(request: Request) -> Response:
    """Every ``/api/`` request: the pipeline described in the module docstring."""
    sandbox: SandboxApp = request.app.state.sandbox
    path = request.url.path
    started = utcnow()
    log: dict[str, Any] = {
        "at": started.isoformat(),
        "method": request.method,
        "path": path,
        "query": str(request.url.query),
        "account_id": None,
        "client_id": None,
    }
    sandbox.in_flight += 1
    try:
        return await _answer(request, sandbox, path, log)
    finally:
        sandbox.in_flight -= 1


async def _answer(request: Request, sandbox: SandboxApp, path: str, log: dict[str, Any]) -> Response:
    """Run the pipeline for one /api/ request and log it (a sandbox bug still answers Klaviyo's 500)."""
    drop = [False]
    try:
        response = await _api(request, sandbox, path, log, drop)
    except ApiError as error:
        response = _error_response(error)
    except ClientDisconnect:
        # The client went away before its body arrived (a killed process): nothing was applied,
        # and nobody is left to answer. Logged as 499, nginx's "client closed request".
        log["status"] = 499
        sandbox.request_log.append(log)
        return Response(status_code=499)
    except Exception:  # a sandbox bug: still Klaviyo's 500 body, and the connection stays usable
        logger.exception("unhandled error in %s %s", request.method, path)
        response = _error_response(ApiError(500, "An unexpected error occurred."))
    log["status"] = response.status_code
    sandbox.request_log.append(log)
    if drop[0]:
        return _DroppingResponse()
    return response


async def _api(
    request: Request, sandbox: SandboxApp, path: str, log: dict[str, Any], drop: list[bool]
) -> Response:
    op, path_params, path_exists = spec.match(request.method, path)
    if op is None:
        if path_exists:
            allowed = ", ".join(spec.methods_for(path))
            raise ApiError(405, f'Method "{request.method}" not allowed.', headers={"Allow": allowed})
        raise ApiError(404, f"The path {path} was not found.")
    log["operation_id"] = op.operation_id
    for name, value in path_params.items():
        # Klaviyo answers 400 (not 404) for ids that cannot be ids at all.
        if not _PATH_ID.match(unquote(value)):
            raise invalid(f"'{unquote(value)[:80]}' is not a valid {name}.", parameter=name)
    reason = _revision_ok(request.headers.get("revision"))
    if reason:
        raise invalid(reason, parameter="revision")
    caller = _authenticate(sandbox, request.headers.get("authorization"))
    authenticated_in = sandbox.store
    log["account_id"] = caller.account.id
    log["client_id"] = caller.grant.client_id if caller.grant else None

    query = dict(request.query_params)
    buckets = [(caller.bucket, op.rate_limit)]
    for name, value in query.items():
        for item in _split_list(value):
            extra = op.extra_limits.get(f"{name}={item}")
            if extra:
                buckets.append((f"{caller.bucket}:{name}={item}", extra))
    decision = sandbox.limiter.check(buckets)
    if not decision.allowed:
        retry = decision.headers["Retry-After"]
        raise ApiError(
            429,
            f"Request was throttled. Expected available in {retry} second{'s' if retry != '1' else ''}.",
            pointer="/data",
            meta={},
            headers=decision.headers,
            links={
                "type": "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling#rate-limits"
            },
        )
    try:
        _check_scopes(op, caller)
        await _maybe_fault(sandbox, path, drop)
        ctx = Context(
            store=sandbox.store,
            op=op,
            caller=caller,
            base_url=str(request.base_url).rstrip("/"),
            path=path,
            path_params=path_params,
            query=query,
            app=sandbox,
        )
        _parse_query(op, query, ctx)
        ctx.body = await _read_body(request, op)
        if sandbox.store is not authenticated_in:
            # The world was replaced (control API reseed) while this request waited for its body
            # or for injected latency: act on the current one, never on the discarded one.
            ctx.caller = _authenticate(sandbox, request.headers.get("authorization"))
            ctx.store = sandbox.store
        func = HANDLERS.get(op.operation_id)
        if func is None:
            raise ApiError(501, f"The sandbox does not implement {op.operation_id} ({op.method} {op.path}).")
        result = func(ctx)
        if asyncio.iscoroutine(result):
            result = await result
        status, document = result
    except ApiError as error:
        error.headers = {**decision.headers, **error.headers}
        raise
    if op.method != "GET":
        sandbox.save_state()
    if document is None:
        return Response(status_code=status, headers=decision.headers)
    # orjson: a page of 100 full profiles is ~140 KB; stdlib json spent a third of the request on it.
    return Response(orjson.dumps(document), status_code=status, media_type=JSONAPI, headers=decision.headers)


class _DroppingResponse(Response):
    """Starts a response, then fails: the server closes the connection mid-answer."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", JSONAPI.encode()), (b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"data": [', "more_body": True})
        raise DroppedConnection("injected dropped connection")


async def not_found_endpoint(request: Request) -> Response:
    """Anything outside the known surfaces: a Klaviyo 404 body."""
    return _error_response(ApiError(404, f"The path {request.url.path} was not found."))


def build_app(sandbox: SandboxApp) -> Starlette:
    """Assemble the Starlette app around a sandbox."""
    from klaviyo_sandbox import control, oauth, resources, webhooks_out

    resources.register_all()
    sandbox.webhooks = webhooks_out.WebhookDispatcher(sandbox)
    routes = [
        *oauth.routes(),
        *control.routes(),
        # Every method reaches the pipeline, so OPTIONS, TRACE and the like get Klaviyo's 405
        # body rather than Starlette's plain-text one.
        Route("/api/{rest:path}", api_endpoint, methods=ALL_METHODS),
        Route("/{rest:path}", not_found_endpoint, methods=ALL_METHODS),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await sandbox.webhooks.start()
        flusher = asyncio.create_task(sandbox.flush_periodically())
        try:
            yield
        finally:
            flusher.cancel()
            await sandbox.webhooks.stop()
            sandbox.flush_state()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sandbox = sandbox
    sandbox.asgi = app
    return app
