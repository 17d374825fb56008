"""Lists and segments: the catalogs, membership with ``joined_group_at``, and list membership writes.

Membership pages use keyset cursors over ``(joined_group_at, profile_id)`` straight off the
group's sorted cache, so a page of a large segment costs a bisect, not a scan.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime
from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import ApiError, find_or_404, invalid
from klaviyo_sandbox.filters import Condition, matches
from klaviyo_sandbox.jsonapi import (
    Context,
    decode_cursor,
    encode_cursor,
    iso,
    page_link,
    paginate,
    relationship,
    require_linkage,
    resource,
    single,
    sort_key_value,
)
from klaviyo_sandbox.resources.profiles import (
    lower_email_filters,
    narrow_by_identifiers,
    profile_getter,
    render_profile,
)
from klaviyo_sandbox.store import Group, KList, Segment, utcnow

MAX_MEMBERSHIP_CHANGE = 1000


# ---------------------------------------------------------------------------- rendering


def _group_relationships(ctx: Context, kind: str, group_id: str) -> dict[str, Any]:
    base = f"/api/{kind}s/{group_id}"
    return {
        name: relationship(ctx, f"{base}/relationships/{name}/", f"{base}/{name}/")
        for name in ("profiles", "tags", "flow-triggers")
    }


def render_list(ctx: Context, klist: KList) -> dict[str, Any]:
    """A list resource object (``profile_count`` when asked for)."""
    attributes: dict[str, Any] = {
        "name": klist.name,
        "created": iso(klist.created),
        "updated": iso(klist.updated),
        "opt_in_process": klist.opt_in_process,
    }
    if ctx.wants("list", "profile_count"):
        attributes["profile_count"] = len(klist.members)
    return resource(
        ctx,
        "list",
        klist.id,
        attributes,
        relationships=_group_relationships(ctx, "list", klist.id),
        path="/api/lists",
    )


def render_segment(ctx: Context, segment: Segment) -> dict[str, Any]:
    """A segment resource object (``profile_count`` when asked for)."""
    attributes: dict[str, Any] = {
        "name": segment.name,
        "definition": segment.definition,
        "created": iso(segment.created),
        "updated": iso(segment.updated),
        "is_active": segment.is_active,
        "is_processing": segment.is_processing,
        "is_starred": segment.is_starred,
    }
    if ctx.wants("segment", "profile_count"):
        attributes["profile_count"] = len(segment.members)
    return resource(
        ctx,
        "segment",
        segment.id,
        attributes,
        relationships=_group_relationships(ctx, "segment", segment.id),
        path="/api/segments",
    )


def _kind(ctx: Context) -> str:
    return "list" if ctx.op.path.startswith("/api/lists") else "segment"


def get_group(ctx: Context) -> Group:
    """The list or segment named by the path (404 otherwise; never another account's)."""
    kind = _kind(ctx)
    group_id = ctx.path_params["id"]
    groups = ctx.account.lists if kind == "list" else ctx.account.segments
    return find_or_404(groups, group_id, "List" if kind == "list" else "Segment")


def _group_getter(group: Group) -> Any:
    def get(name: str) -> Any:
        return getattr(group, name, None)

    return get


_GROUP_SORTS = {
    "created": lambda g: (sort_key_value(g.created), g.id),
    "updated": lambda g: (sort_key_value(g.updated), g.id),
    "name": lambda g: (g.name, g.id),
    "id": lambda g: (g.id,),
}


# ---------------------------------------------------------------------------- catalogs


@handler("get_lists", "get_segments")
def get_groups(ctx: Context) -> tuple[int, Any]:
    """``GET /api/lists`` and ``GET /api/segments`` (10 per page, as Klaviyo)."""
    kind = _kind(ctx)
    groups = ctx.account.lists if kind == "list" else ctx.account.segments
    render = render_list if kind == "list" else render_segment
    items = [g for g in groups.values() if matches(ctx.filters, _group_getter(g))]
    sort = (ctx.sort or "id").lstrip("-")
    return 200, paginate(
        ctx,
        items,
        _GROUP_SORTS.get(sort, _GROUP_SORTS["id"]),
        lambda g: render(ctx, g),
        descending=(ctx.sort or "").startswith("-"),
        included=lambda page: [],
    )


@handler("get_list", "get_segment")
def get_one_group(ctx: Context) -> tuple[int, Any]:
    """``GET /api/lists/{id}`` and ``GET /api/segments/{id}``."""
    group = get_group(ctx)
    render = render_list if isinstance(group, KList) else render_segment
    return 200, single(ctx, render(ctx, group), [])


@handler("create_list")
def create_list(ctx: Context) -> tuple[int, Any]:
    """``POST /api/lists`` → 201 (single opt-in unless the body says otherwise)."""
    data = require_linkage(ctx.body, "list")
    attributes = data.get("attributes") or {}
    name = attributes.get("name")
    if not name:
        raise invalid("A list name is required.", pointer="/data/attributes/name")
    now = utcnow()
    klist = KList(
        id=ctx.store.new_id("short"),
        name=name,
        created=now,
        updated=now,
        opt_in_process=attributes.get("opt_in_process") or ctx.account.default_opt_in_process,
    )
    ctx.account.lists[klist.id] = klist
    return 201, single(ctx, render_list(ctx, klist))


@handler("update_list", "update_segment")
def update_group(ctx: Context) -> tuple[int, Any]:
    """``PATCH`` a list's or segment's name (and a segment's definition / starred flag)."""
    group = get_group(ctx)
    data = require_linkage(ctx.body, _kind(ctx))
    if data.get("id") != group.id:
        raise invalid("The id in the body must match the id in the URL.", pointer="/data/id")
    attributes = data.get("attributes") or {}
    if attributes.get("name"):
        group.name = attributes["name"]
    if isinstance(group, KList) and attributes.get("opt_in_process"):
        group.opt_in_process = attributes["opt_in_process"]
    if isinstance(group, Segment):
        if attributes.get("definition") is not None:
            group.definition = attributes["definition"]
        if attributes.get("is_starred") is not None:
            group.is_starred = attributes["is_starred"]
    group.updated = utcnow()
    render = render_list if isinstance(group, KList) else render_segment
    return 200, single(ctx, render(ctx, group))


@handler("create_segment")
def create_segment(ctx: Context) -> tuple[int, Any]:
    """``POST /api/segments`` → 201; membership is then set through the control API."""
    data = require_linkage(ctx.body, "segment")
    attributes = data.get("attributes") or {}
    if not attributes.get("name"):
        raise invalid("A segment name is required.", pointer="/data/attributes/name")
    now = utcnow()
    segment = Segment(
        id=ctx.store.new_id("short"),
        name=attributes["name"],
        created=now,
        updated=now,
        definition=attributes.get("definition") or {"condition_groups": []},
        is_starred=bool(attributes.get("is_starred")),
    )
    ctx.account.segments[segment.id] = segment
    return 201, single(ctx, render_segment(ctx, segment))


@handler("delete_list", "delete_segment")
def delete_group(ctx: Context) -> tuple[int, Any]:
    """``DELETE`` a list or segment → 204."""
    group = get_group(ctx)
    (ctx.account.lists if isinstance(group, KList) else ctx.account.segments).pop(group.id)
    return 204, None


@handler(
    "get_flows_triggered_by_list",
    "get_flows_triggered_by_segment",
    "get_tags_for_list",
    "get_tags_for_segment",
)
def get_group_related_empty(ctx: Context) -> tuple[int, Any]:
    """Flow triggers and tags of a group: the sandbox models none."""
    get_group(ctx)
    return 200, {"data": [], "links": {"self": ctx.self_link(), "next": None, "prev": None}}


@handler(
    "get_ids_for_flows_triggered_by_list",
    "get_ids_for_flows_triggered_by_segment",
    "get_tag_ids_for_list",
    "get_tag_ids_for_segment",
)
def get_group_related_ids_empty(ctx: Context) -> tuple[int, Any]:
    """Ids of a group's flow triggers and tags: none."""
    get_group(ctx)
    return 200, {"data": [], "links": {"self": ctx.self_link(), "next": None, "prev": None}}


# ---------------------------------------------------------------------------- membership


_BOUND_SIDES = {
    "greater-than": (bisect.bisect_right, "lo"),
    "greater-or-equal": (bisect.bisect_left, "lo"),
    "less-than": (bisect.bisect_left, "hi"),
    "less-or-equal": (bisect.bisect_right, "hi"),
}


def _joined(member: tuple[datetime, str]) -> datetime:
    return member[0]


def _member_cursor(ctx: Context) -> tuple[datetime, str] | None:
    if not ctx.cursor:
        return None
    after = decode_cursor(ctx.cursor)
    try:
        when = datetime.fromisoformat(after[0])
        if when.tzinfo is None:  # we only ever issue UTC times; naive ones cannot be compared
            raise ValueError("naive datetime")
        return when.astimezone(UTC), str(after[1])
    except (IndexError, TypeError, ValueError, OverflowError) as exc:
        raise invalid("Invalid page cursor.", parameter="page[cursor]") from exc


def _member_page(ctx: Context, group: Group) -> tuple[list[tuple[datetime, str]], str | None]:
    """One page of ``(joined_group_at, profile_id)`` after the cursor, and the next link.

    Never a scan of the whole group: identifier filters (``profile_id``, ``email``,
    ``phone_number``) are answered from the account's indexes, ``joined_group_at`` bounds are two
    bisections of the sorted members, and any other condition is tested only until the page
    (plus one member, to know whether there is a next page) is full.
    """
    account = ctx.account
    lower_email_filters(ctx)
    candidates, conditions = narrow_by_identifiers(account, ctx.filters)
    ordered = group.ordered_members()
    if candidates is not None:
        ordered = sorted((group.members[pid], pid) for pid in candidates if pid in group.members)
    lo, hi = 0, len(ordered)
    rest: list[Condition] = []
    for condition in conditions:
        side = _BOUND_SIDES.get(condition.operator)
        if condition.field != "joined_group_at" or side is None:
            rest.append(condition)
            continue
        where = side[0](ordered, condition.value, key=_joined)
        lo, hi = (max(lo, where), hi) if side[1] == "lo" else (lo, min(hi, where))
    descending = ctx.sort == "-joined_group_at"
    size = ctx.page_size or ctx.op.page_size[0]  # type: ignore[index]
    after = _member_cursor(ctx)
    if descending:
        end = hi if after is None else min(hi, bisect.bisect_left(ordered, after))
        positions: range = range(end - 1, lo - 1, -1)
    else:
        begin = lo if after is None else max(lo, bisect.bisect_right(ordered, after))
        positions = range(begin, hi)
    profiles = account.profiles
    page: list[tuple[datetime, str]] = []
    more = False
    for position in positions:
        joined, pid = member = ordered[position]
        if rest and (pid not in profiles or not matches(rest, _member_getter(profiles[pid], joined))):
            continue
        if len(page) == size:
            more = True
            break
        page.append(member)
    next_link = None
    if more:
        last = page[-1]
        next_link = page_link(ctx, encode_cursor([last[0].astimezone(UTC).isoformat(), last[1]]))
    return page, next_link


def _member_getter(profile: Any, joined: datetime) -> Any:
    base = profile_getter(profile)

    def get(name: str) -> Any:
        return joined if name == "joined_group_at" else base(name)

    return get


@handler("get_profiles_for_list", "get_profiles_for_segment")
def get_group_members(ctx: Context) -> tuple[int, Any]:
    """Members with ``joined_group_at`` (filters, sort, sparse fields, 20/100 per page)."""
    group = get_group(ctx)
    page, next_link = _member_page(ctx, group)
    profiles = ctx.account.profiles
    data = [render_profile(ctx, profiles[pid], joined) for joined, pid in page if pid in profiles]
    return 200, {"data": data, "links": {"self": ctx.self_link(), "next": next_link, "prev": None}}


@handler("get_profile_ids_for_list", "get_profile_ids_for_segment")
def get_group_member_ids(ctx: Context) -> tuple[int, Any]:
    """Member ids only."""
    group = get_group(ctx)
    page, next_link = _member_page(ctx, group)
    data = [{"type": "profile", "id": pid} for _, pid in page]
    return 200, {"data": data, "links": {"self": ctx.self_link(), "next": next_link, "prev": None}}


def _membership_ids(ctx: Context) -> list[str]:
    data = ctx.body.get("data") if isinstance(ctx.body, dict) else None
    if not isinstance(data, list):
        raise invalid("'data' must be a list of profile identifiers.", pointer="/data")
    if len(data) > MAX_MEMBERSHIP_CHANGE:
        raise invalid(
            f"At most {MAX_MEMBERSHIP_CHANGE} profiles may be given per request; got {len(data)}.",
            pointer="/data",
        )
    ids = []
    for index, item in enumerate(data):
        profile_id = item.get("id")
        if profile_id not in ctx.account.profiles:
            raise ApiError(404, f"Profile with id {profile_id} not found.", pointer=f"/data/{index}/id")
        ids.append(profile_id)
    return ids


@handler("add_profiles_to_list")
def add_profiles_to_list(ctx: Context) -> tuple[int, Any]:
    """Add profiles to a list (membership only: consent is untouched) → 204."""
    group = get_group(ctx)
    now = utcnow()
    for profile_id in _membership_ids(ctx):
        group.add_member(profile_id, now)
    return 204, None


@handler("remove_profiles_from_list")
def remove_profiles_from_list(ctx: Context) -> tuple[int, Any]:
    """Remove profiles from a list (consent untouched) → 204."""
    group = get_group(ctx)
    for profile_id in _membership_ids(ctx):
        group.remove_member(profile_id)
    return 204, None
