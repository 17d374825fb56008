"""JSON:API plumbing shared by every endpoint: the request context, documents, sparse fieldsets,
cursor pagination and absolute links, all in Klaviyo's conventions.

Handlers build resource objects with ``resource()``, then hand them to ``single()``,
``collection()`` or ``paginate()``; sparse fieldsets are applied here once for all endpoints.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from klaviyo_sandbox.errors import ApiError, invalid
from klaviyo_sandbox.filters import Condition
from klaviyo_sandbox.spec import Operation
from klaviyo_sandbox.store import Account, Grant, Store


@dataclass
class Caller:
    """Who is calling: the account, and the OAuth grant when a bearer token was used."""

    account: Account
    grant: Grant | None
    scopes: frozenset[str] | None  # None = private key (all scopes)

    @property
    def bucket(self) -> str:
        """Rate-limit bucket: per account for private keys, per account and app for OAuth."""
        return f"{self.account.id}:{self.grant.client_id}" if self.grant else self.account.id


@dataclass
class Context:
    """Everything a handler needs about one API request, already validated against the spec."""

    store: Store
    op: Operation
    caller: Caller
    base_url: str  # scheme://host[:port], no trailing slash
    path: str
    path_params: dict[str, str]
    query: dict[str, str]  # raw query parameters, as sent
    filters: list[Condition] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)  # "profile" -> ["email", ...]
    additional_fields: dict[str, list[str]] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    sort: str | None = None
    page_size: int | None = None
    cursor: str | None = None
    body: Any = None
    app: Any = None  # the SandboxApp (webhooks, clock); typed loosely to avoid an import cycle

    @property
    def account(self) -> Account:
        """The caller's account (every handler works inside exactly one account)."""
        return self.caller.account

    def link(self, path: str) -> str:
        """An absolute link under the API base URL."""
        return f"{self.base_url}{path}"

    def self_link(self) -> str:
        """The request URL, as ``links.self`` echoes it."""
        query = urlencode(self.query) if self.query else ""
        return self.link(self.path) + (f"?{query}" if query else "")

    def wants(self, resource_type: str, additional: str) -> bool:
        """True when ``additional-fields[resource_type]`` asks for ``additional``."""
        return additional in self.additional_fields.get(resource_type, [])


# ---------------------------------------------------------------------------- time


def iso(value: datetime | None) -> str | None:
    """Klaviyo's datetime rendering: ISO 8601 with ``+00:00``."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()


def parse_datetime(value: str, pointer: str) -> datetime:
    """Parse an ISO datetime from a request body (naive = UTC), or 400 naming the member."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # Stored in UTC: an instant that has no UTC rendering (0001-01-01T00:00+01:00) is refused
        # here rather than breaking every later read that renders it.
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise invalid(f"'{value}' is not a valid datetime.", pointer=pointer) from exc


# ---------------------------------------------------------------------------- resources


def resource(
    ctx: Context,
    type_: str,
    id_: str,
    attributes: dict[str, Any],
    *,
    relationships: dict[str, Any] | None = None,
    path: str | None = None,
) -> dict[str, Any]:
    """A resource object with ``links.self`` and sparse fieldsets applied.

    ``path`` is the collection path (``/api/profiles``); the self link is ``{path}/{id}/``.
    Requesting ``fields[type]`` also drops relationships, as Klaviyo does.
    """
    wanted = ctx.fields.get(type_)
    obj: dict[str, Any] = {"type": type_, "id": id_, "attributes": sparse(attributes, wanted)}
    if relationships is not None and wanted is None:
        obj["relationships"] = relationships
    obj["links"] = {"self": ctx.link(f"{path or '/api/' + type_ + 's'}/{id_}/")}
    return obj


def relationship(ctx: Context, self_path: str, related_path: str, data: Any = ...) -> dict[str, Any]:
    """A relationship member with links (and ``data`` when given: a linkage or list of them)."""
    member: dict[str, Any] = {}
    if data is not ...:
        member["data"] = data
    member["links"] = {"self": ctx.link(self_path), "related": ctx.link(related_path)}
    return member


def sparse(attributes: dict[str, Any], wanted: Sequence[str] | None) -> dict[str, Any]:
    """Keep only the requested attribute paths (``email``, ``location.city``, …)."""
    if wanted is None:
        return attributes
    out: dict[str, Any] = {}
    for path in wanted:
        parts = path.split(".")
        source: Any = attributes
        for part in parts:
            if not isinstance(source, dict) or part not in source:
                source = ...
                break
            source = source[part]
        if source is ...:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            target[parts[-1]] = source
    return out


def single(
    ctx: Context, data: dict[str, Any], included: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A single-resource document."""
    doc: dict[str, Any] = {"data": data, "links": {"self": ctx.self_link()}}
    if included is not None and ctx.include:
        doc["included"] = dedupe(included)
    return doc


def dedupe(included: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Included resources once each, in first-seen order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for item in included:
        key = (item["type"], item["id"])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


# ---------------------------------------------------------------------------- pagination


def encode_cursor(key: Sequence[Any]) -> str:
    """An opaque cursor holding the sort key of the last item served."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, ...]:
    """The sort key inside a cursor, or 400 for a cursor we never issued.

    A whole ``links.next`` URL is accepted too: Klaviyo's official SDK strips the cursor out of
    ``https://`` links only, so against a plain-``http`` sandbox it sends the link itself.
    """
    if cursor.startswith(("http://", "https://")):
        cursor = parse_qs(urlsplit(cursor).query).get("page[cursor]", [""])[0]
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(value, list):
            raise ValueError("not a list")
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise invalid("Invalid page cursor.", parameter="page[cursor]") from exc
    return tuple(value)


def sort_key_value(value: Any) -> Any:
    """A JSON-safe, order-preserving form of one sort-key part (datetimes become fixed-width ISO)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    if value is None:
        return ""
    return value


def paginate(
    ctx: Context,
    items: Sequence[Any],
    key: Callable[[Any], tuple[Any, ...]],
    render: Callable[[Any], dict[str, Any]],
    *,
    descending: bool = False,
    default_size: int | None = None,
    included: Callable[[list[Any]], list[dict[str, Any]]] | None = None,
    presorted: bool = False,
) -> dict[str, Any]:
    """One page of a collection, with keyset cursors so concurrent changes never skip or repeat.

    ``items`` sorted ascending by ``key`` (or sort here unless ``presorted``). ``key`` must return
    JSON-safe tuples ending in a unique id (use ``sort_key_value`` for datetimes).
    """
    size = ctx.page_size or default_size or (ctx.op.page_size[0] if ctx.op.page_size else 100)
    ordered = list(items) if presorted else sorted(items, key=key)
    keys = [key(item) for item in ordered]
    start = 0
    if ctx.cursor:
        after = decode_cursor(ctx.cursor)
        try:
            if descending:
                start = len(keys) - bisect.bisect_left(keys, after)
            else:
                start = bisect.bisect_right(keys, after)
        except TypeError as exc:  # a cursor from another sort order
            raise invalid("Invalid page cursor.", parameter="page[cursor]") from exc
    if descending:
        ordered = ordered[::-1]
        keys = keys[::-1]
    page = ordered[start : start + size]
    next_link = None
    if start + size < len(ordered):
        next_link = page_link(ctx, encode_cursor(keys[start + size - 1]))
    doc: dict[str, Any] = {
        "data": [render(item) for item in page],
        "links": {"self": ctx.self_link(), "next": next_link, "prev": None},
    }
    if included is not None and ctx.include:
        doc["included"] = dedupe(included(page))
    return doc


def page_link(ctx: Context, cursor: str) -> str:
    """The request URL with ``page[cursor]`` set: every original parameter is kept."""
    query = {k: v for k, v in ctx.query.items() if k != "page[cursor]"}
    query["page[cursor]"] = cursor
    return ctx.link(ctx.path) + "?" + urlencode(query)


def require_linkage(body: Any, type_: str, pointer: str = "/data") -> dict[str, Any]:
    """``body['data']`` as a resource object of ``type_`` (400 otherwise)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise invalid("The request body must contain a 'data' object.", pointer=pointer)
    if data.get("type") != type_:
        raise invalid(
            f"Expected resource type '{type_}', got '{data.get('type')}'.", pointer=f"{pointer}/type"
        )
    return data


def conflict(detail: str, meta: dict[str, Any]) -> ApiError:
    """409 ``duplicate_profile``-style conflicts."""
    return ApiError(
        409, detail, code="duplicate_profile", title="Conflict.", pointer="/data/attributes", meta=meta
    )
