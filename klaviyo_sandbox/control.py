"""The control API under ``/_sandbox/`` (never under ``/api/``): set the world up and look inside it.

Tests, benchmarks and the demo use it to read the seeded accounts and their keys, reseed, create
accounts, profiles, lists and segments in bulk, change membership from one day to the next,
confirm double-opt-in subscriptions, inspect consent, confirmation emails, suppressions and the
request log, and set fault injection at run time. Answers are plain JSON (``{"data": …}``);
errors are ``{"error": "…"}`` with a 4xx status.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from klaviyo_sandbox import ids
from klaviyo_sandbox.jsonapi import iso
from klaviyo_sandbox.ratelimit import parse_mode
from klaviyo_sandbox.store import Account, Group, KList, Profile, Segment, Store, utcnow

logger = logging.getLogger("klaviyo_sandbox.control")


class ControlError(Exception):
    """A 4xx answer of the control API."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _sandbox(request: Request) -> Any:
    return request.app.state.sandbox


def _account(request: Request) -> Account:
    account_id = request.path_params["account_id"]
    account = _sandbox(request).store.accounts.get(account_id)
    if account is None:
        raise ControlError(404, f"no account {account_id!r}")
    return account


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)  # like /api/: no NaN, no lone surrogates, no unbounded nesting
    except orjson.JSONDecodeError as exc:
        raise ControlError(400, f"malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object")
    return body


def _endpoint(func: Any) -> Any:
    """Wrap a control handler: JSON answers, ControlError → 4xx, state saved after writes."""

    async def endpoint(request: Request) -> JSONResponse:
        # Read the whole body first: Starlette caches it, so the handler's own ``await _json()``
        # never suspends, and nothing a handler looks up (an account, a group) can be replaced by
        # a concurrent request (a reseed) between the lookup and the handler's changes.
        await request.body()
        try:
            result = await func(request)
        except ControlError as error:
            return JSONResponse({"error": error.message}, status_code=error.status)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # A member of the wrong shape (a string where a list of refs belongs, …): these
            # handlers read their JSON directly, so such errors can only come from the input.
            return JSONResponse(
                {"error": f"malformed request body: {type(exc).__name__}: {exc}"[:500]}, status_code=400
            )
        except Exception:
            logger.exception("control API error in %s %s", request.method, request.url.path)
            return JSONResponse({"error": "internal sandbox error (logged)"}, status_code=500)
        if request.method != "GET":
            _sandbox(request).save_state()
        status, body = result if isinstance(result, tuple) else (200, result)
        return JSONResponse(body, status_code=status)

    endpoint.__name__ = func.__name__
    endpoint.__doc__ = func.__doc__
    return endpoint


def resolve_profile(account: Account, ref: str) -> Profile:
    """A profile by id, email, E.164 phone or external id (404 otherwise)."""
    profile = account.profiles.get(ref) or account.find_profile(email=ref, phone_number=ref, external_id=ref)
    if profile is None:
        raise ControlError(404, f"no profile {ref!r} in account {account.id}")
    return profile


def account_summary(store: Store, account: Account) -> dict[str, Any]:
    """What ``GET /_sandbox/accounts`` shows of one account (its keys included: this is a sandbox)."""
    return {
        "id": account.id,
        "name": account.name,
        "private_api_key": account.private_api_key,
        "public_api_key": account.public_api_key,
        "sms_enabled": account.sms_enabled,
        "advanced_kdp": account.advanced_kdp,
        "oauth_clients": [
            {
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "name": c.name,
                "redirect_uris": c.redirect_uris,
            }
            for c in store.oauth_clients.values()
        ],
        "counts": {
            "profiles": len(account.profiles),
            "lists": len(account.lists),
            "segments": len(account.segments),
            "metrics": len(account.metrics),
            "events": len(account.events),
            "flows": len(account.flows),
            "campaigns": len(account.campaigns),
            "webhooks": len(account.webhooks),
        },
    }


def profile_state(account: Account, profile: Profile) -> dict[str, Any]:
    """Everything consent-related about a profile, for assertions."""

    def consent(c: Any) -> dict[str, Any]:
        out = dataclasses.asdict(c)
        return {k: iso(v) if isinstance(v, datetime) else v for k, v in out.items()}

    return {
        "id": profile.id,
        "email": profile.email,
        "phone_number": profile.phone_number,
        "external_id": profile.external_id,
        "email_marketing": consent(profile.email_marketing),
        "sms_marketing": consent(profile.sms_marketing),
        "sms_transactional": consent(profile.sms_transactional),
        "suppressions": [{"reason": s.reason, "timestamp": iso(s.timestamp)} for s in profile.suppressions],
        "list_suppressions": [
            {"list_id": k, "reason": s.reason, "timestamp": iso(s.timestamp)}
            for k, s in profile.list_suppressions.items()
        ],
        "lists": sorted(g.id for g in account.lists.values() if profile.id in g.members),
        "pending_lists": sorted(g.id for g in account.lists.values() if profile.id in g.pending),
        "segments": sorted(g.id for g in account.segments.values() if profile.id in g.members),
    }


# ---------------------------------------------------------------------------- accounts, seed


@_endpoint
async def list_accounts(request: Request) -> dict[str, Any]:
    """Every account with its private key, public key, OAuth clients and counts."""
    store = _sandbox(request).store
    return {"data": [account_summary(store, a) for a in store.accounts.values()]}


@_endpoint
async def reseed(request: Request) -> dict[str, Any]:
    """Replace the whole state with a fresh seed (``{"seed": "demo" | "empty"}``)."""
    from klaviyo_sandbox.seed import seed_store

    body = await _json(request)
    sandbox = _sandbox(request)
    try:
        store = seed_store(Store(), body.get("seed", "demo"))
    except ValueError as exc:
        raise ControlError(400, str(exc)) from exc
    store.access_token_ttl_seconds = sandbox.store.access_token_ttl_seconds
    sandbox.store = store
    if sandbox.webhooks is not None:  # events of the old world must not reach the new one's webhooks
        sandbox.webhooks.discard_all()
    sandbox.limiter.reset()
    sandbox.request_log.clear()
    return {"data": [account_summary(store, a) for a in store.accounts.values()]}


@_endpoint
async def create_account(request: Request) -> tuple[int, dict[str, Any]]:
    """Add an empty account (``name``, optional ``sms_enabled``, ``advanced_kdp``, ``test_account``)."""
    body = await _json(request)
    store = _sandbox(request).store
    if not body.get("name") or not isinstance(body["name"], str):
        raise ControlError(400, "an account needs a 'name' (a string)")
    account = Account(
        id=ids.short_id(store.rng),
        name=body["name"],
        private_api_key="pk_" + ids.token(store.rng, nbytes=24).replace("-", "a").replace("_", "b")[:32],
        public_api_key=ids.short_id(store.rng),
        created=utcnow(),
        sms_enabled=bool(body.get("sms_enabled", True)),
        advanced_kdp=bool(body.get("advanced_kdp", False)),
        test_account=bool(body.get("test_account", False)),
    )
    store.accounts[account.id] = account
    return 201, {"data": account_summary(store, account)}


# ---------------------------------------------------------------------------- profiles


@_endpoint
async def create_profiles(request: Request) -> tuple[int, dict[str, Any]]:
    """Create profiles in bulk: ``{"profiles": [{"email", "phone_number", "external_id", …}]}``.

    Identifiers are taken as given (no consent): this is world-building for tests and benchmarks.
    """
    account = _account(request)
    body = await _json(request)
    store = _sandbox(request).store
    created = []
    now = utcnow()
    raws = body.get("profiles") or []
    if not isinstance(raws, list):
        raise ControlError(400, "'profiles' must be a list of objects")
    # Check every item before creating any, so a bad item leaves the account untouched and
    # nothing is stored that the /api/ renderers could not render.
    for n, raw in enumerate(raws):
        if not isinstance(raw, dict):
            raise ControlError(400, f"profiles[{n}] must be an object")
        for name in ("email", "phone_number", "external_id", "first_name", "last_name"):
            if raw.get(name) is not None and not isinstance(raw[name], str):
                raise ControlError(400, f"profiles[{n}].{name} must be a string")
        if raw.get("properties") is not None and not isinstance(raw["properties"], dict):
            raise ControlError(400, f"profiles[{n}].properties must be an object")
        if raw.get("email_consent") not in (None, "SUBSCRIBED", "UNSUBSCRIBED", "NEVER_SUBSCRIBED"):
            raise ControlError(
                400, f"profiles[{n}].email_consent must be SUBSCRIBED, UNSUBSCRIBED or NEVER_SUBSCRIBED"
            )
    for raw in raws:
        existing = account.find_profile(raw.get("email"), raw.get("phone_number"), raw.get("external_id"))
        if existing is not None:
            created.append(existing.id)
            continue
        profile = Profile(
            id=ids.ulid(store.rng, now),
            created=now,
            updated=now,
            email=raw.get("email"),
            phone_number=raw.get("phone_number"),
            external_id=raw.get("external_id"),
            first_name=raw.get("first_name"),
            last_name=raw.get("last_name"),
            properties=raw.get("properties") or {},
        )
        if raw.get("email_consent"):
            profile.email_marketing.consent = raw["email_consent"]
            profile.email_marketing.consent_timestamp = now
        account.add_profile(profile)
        created.append(profile.id)
    return 201, {"data": {"profile_ids": created}}


@_endpoint
async def get_profile_state(request: Request) -> dict[str, Any]:
    """A profile's consent, suppressions and memberships (by id, email, phone or external id)."""
    account = _account(request)
    return {"data": profile_state(account, resolve_profile(account, request.path_params["ref"]))}


# ---------------------------------------------------------------------------- groups


def _group(request: Request) -> Group:
    account = _account(request)
    kind = request.path_params["kind"]
    groups = {"lists": account.lists, "segments": account.segments}.get(kind)
    if groups is None:
        raise ControlError(404, f"unknown group kind {kind!r}; use lists or segments")
    group = groups.get(request.path_params["group_id"])
    if group is None:
        raise ControlError(404, f"no {kind[:-1]} {request.path_params['group_id']!r} in account {account.id}")
    return group


def _parse_time(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ControlError(400, f"{field} must be an ISO datetime") from exc
    if parsed.tzinfo is None:
        raise ControlError(400, f"{field} must carry a timezone")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+01:00 has no UTC instant; it would break reads
        raise ControlError(400, f"{field} is out of range") from exc


@_endpoint
async def create_group(request: Request) -> tuple[int, dict[str, Any]]:
    """Create a list or segment: ``{"name", "opt_in_process"?, "members"?: [refs], "joined_at"?}``."""
    account = _account(request)
    kind = request.path_params["kind"]
    body = await _json(request)
    if not body.get("name") or not isinstance(body["name"], str):
        raise ControlError(400, "a group needs a 'name' (a string)")
    if body.get("opt_in_process", "single_opt_in") not in ("single_opt_in", "double_opt_in"):
        raise ControlError(400, "'opt_in_process' must be single_opt_in or double_opt_in")
    if body.get("definition") is not None and not isinstance(body["definition"], dict):
        raise ControlError(400, "'definition' must be an object")
    if not isinstance(body.get("members") or [], list):
        raise ControlError(400, "'members' must be a list of profile refs")
    store = _sandbox(request).store
    now = utcnow()
    group: Group
    if kind == "lists":
        group = KList(
            id=ids.short_id(store.rng),
            name=body["name"],
            created=now,
            updated=now,
            opt_in_process=body.get("opt_in_process", "single_opt_in"),
        )
        account.lists[group.id] = group
    elif kind == "segments":
        group = Segment(
            id=ids.short_id(store.rng),
            name=body["name"],
            created=now,
            updated=now,
            definition=body.get("definition") or {"condition_groups": []},
        )
        account.segments[group.id] = group
    else:
        raise ControlError(404, f"unknown group kind {kind!r}; use lists or segments")
    joined = _parse_time(body.get("joined_at"), "joined_at") or now
    for ref in body.get("members") or []:
        group.add_member(resolve_profile(account, ref).id, joined)
    return 201, {"data": {"id": group.id, "name": group.name, "member_count": len(group.members)}}


@_endpoint
async def change_members(request: Request) -> dict[str, Any]:
    """Change membership: ``{"add": [refs], "remove": [refs], "set": [refs], "joined_at"?}``.

    ``set`` replaces the membership (people not listed leave, new ones join at ``joined_at``,
    people staying keep their original join time) — the way a segment changes from day to day.
    """
    account = _account(request)
    group = _group(request)
    body = await _json(request)
    joined = _parse_time(body.get("joined_at"), "joined_at") or utcnow()
    added = removed = 0
    if "set" in body:
        wanted = {resolve_profile(account, ref).id for ref in body["set"]}
        for profile_id in list(group.members):
            if profile_id not in wanted:
                removed += group.remove_member(profile_id)
        for profile_id in sorted(wanted):
            added += group.add_member(profile_id, joined)
    for ref in body.get("add") or []:
        added += group.add_member(resolve_profile(account, ref).id, joined)
    for ref in body.get("remove") or []:
        removed += group.remove_member(resolve_profile(account, ref).id)
    group.updated = utcnow()
    return {"data": {"added": added, "removed": removed, "member_count": len(group.members)}}


@_endpoint
async def get_members(request: Request) -> dict[str, Any]:
    """Members (and, for lists, pending double-opt-in profiles) with their times."""
    account = _account(request)
    group = _group(request)

    def row(profile_id: str, at: datetime) -> dict[str, Any]:
        profile = account.profiles.get(profile_id)
        return {
            "profile_id": profile_id,
            "email": profile.email if profile else None,
            "phone_number": profile.phone_number if profile else None,
            "at": iso(at),
        }

    data: dict[str, Any] = {
        "id": group.id,
        "name": group.name,
        "members": [row(pid, at) for at, pid in group.ordered_members()],
    }
    if isinstance(group, KList):
        data["opt_in_process"] = group.opt_in_process
        data["pending"] = [row(pid, at) for pid, at in group.pending.items()]
    return {"data": data}


@_endpoint
async def confirm_double_opt_in(request: Request) -> dict[str, Any]:
    """The people clicked their confirmation emails: ``{"profiles": [refs]}`` (default: all pending)."""
    from klaviyo_sandbox.resources.subscriptions import confirm_pending

    account = _account(request)
    group = _group(request)
    if not isinstance(group, KList):
        raise ControlError(400, "only lists have double opt-in")
    body = await _json(request)
    refs = body.get("profiles")
    ids_ = None if refs is None else [resolve_profile(account, ref).id for ref in refs]
    return {"data": {"confirmed": confirm_pending(account, group, ids_)}}


# ---------------------------------------------------------------------------- inspection


@_endpoint
async def confirmation_emails(request: Request) -> dict[str, Any]:
    """Double-opt-in confirmation emails the sandbox has 'sent'."""
    account = _account(request)
    return {
        "data": [
            {"profile_id": c.profile_id, "email": c.email, "list_id": c.list_id, "at": iso(c.at)}
            for c in account.confirmation_emails
        ]
    }


@_endpoint
async def suppressions(request: Request) -> dict[str, Any]:
    """Every global and list suppression in the account."""
    account = _account(request)
    rows = []
    for profile in account.profiles.values():
        for s in profile.suppressions:
            rows.append(
                {
                    "profile_id": profile.id,
                    "email": profile.email,
                    "list_id": None,
                    "reason": s.reason,
                    "timestamp": iso(s.timestamp),
                }
            )
        for list_id, s in profile.list_suppressions.items():
            rows.append(
                {
                    "profile_id": profile.id,
                    "email": profile.email,
                    "list_id": list_id,
                    "reason": s.reason,
                    "timestamp": iso(s.timestamp),
                }
            )
    return {"data": rows}


@_endpoint
async def subscription_jobs(request: Request) -> dict[str, Any]:
    """Bulk subscribe and unsubscribe jobs received (Klaviyo has no GET for them; tests do)."""
    account = _account(request)
    return {"data": [{**dataclasses.asdict(j), "at": iso(j.at)} for j in account.subscription_jobs]}


@_endpoint
async def request_log(request: Request) -> dict[str, Any]:
    """The /api/ request log (newest last), filterable by ``account_id``, ``path_prefix``, ``status``."""
    params = request.query_params
    rows = list(_sandbox(request).request_log)
    if params.get("account_id"):
        rows = [r for r in rows if r["account_id"] == params["account_id"]]
    if params.get("path_prefix"):
        rows = [r for r in rows if r["path"].startswith(params["path_prefix"])]
    if params.get("status"):
        rows = [r for r in rows if str(r.get("status")) == params["status"]]
    return {"data": rows}


@_endpoint
async def clear_request_log(request: Request) -> dict[str, Any]:
    """Forget the request log."""
    _sandbox(request).request_log.clear()
    return {"data": {"cleared": True}}


# ---------------------------------------------------------------------------- faults, limits


@_endpoint
async def faults(request: Request) -> dict[str, Any]:
    """Read (GET) or change (PUT) fault injection: error_rate, statuses, latency_ms, drop_rate, fail_next."""
    current = _sandbox(request).faults
    if request.method == "PUT":
        body = await _json(request)
        for key in ("error_rate", "drop_rate"):
            if key in body:
                value = body[key]
                if not isinstance(value, int | float) or not 0 <= value <= 1:
                    raise ControlError(400, f"{key} must be a number between 0 and 1")
                setattr(current, key, float(value))
        for key in ("latency_ms", "fail_next"):
            if key in body:
                if not isinstance(body[key], int) or body[key] < 0:
                    raise ControlError(400, f"{key} must be a non-negative integer")
                setattr(current, key, body[key])
        if "statuses" in body:
            statuses = body["statuses"]
            # 400 too: a batch-level refusal without a source pointer, which real Klaviyo sends for
            # some bodies and which the subscriber push must split to find the bad rows.
            allowed = [isinstance(s, int) and (500 <= s <= 599 or s == 400) for s in statuses]
            if not statuses or not all(allowed):
                raise ControlError(400, "statuses must be a non-empty list of 5xx codes (or 400)")
            current.statuses = statuses
        if "path_prefix" in body:
            current.path_prefix = str(body["path_prefix"])
    return {"data": current.to_dict()}


@_endpoint
async def rate_limits(request: Request) -> dict[str, Any]:
    """Read (GET) or change (PUT ``{"mode": "klaviyo" | "off" | "xN"}``) rate limiting; resets counters."""
    sandbox = _sandbox(request)
    if request.method == "PUT":
        body = await _json(request)
        try:
            sandbox.limiter = parse_mode(str(body.get("mode", "klaviyo")))
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
    elif request.method == "DELETE":
        sandbox.limiter.reset()
    return {"data": {"enabled": sandbox.limiter.enabled, "scale": sandbox.limiter.scale}}


@_endpoint
async def flush_state(request: Request) -> dict[str, Any]:
    """Write the ``--state`` file now (it is otherwise written every few seconds and at exit)."""
    sandbox = _sandbox(request)
    if sandbox.state_path is None:
        raise ControlError(400, "the sandbox runs without --state")
    sandbox.dirty = True
    sandbox.flush_state()
    return {"data": {"written": True, "path": str(sandbox.state_path)}}


def routes() -> list[Route]:
    """Every control route (the webhook and send simulation routes come from ``simulate``)."""
    base = [
        Route("/_sandbox/accounts", list_accounts, methods=["GET"]),
        Route("/_sandbox/accounts", create_account, methods=["POST"]),
        Route("/_sandbox/seed", reseed, methods=["POST"]),
        Route("/_sandbox/accounts/{account_id}/profiles", create_profiles, methods=["POST"]),
        Route("/_sandbox/accounts/{account_id}/profiles/{ref}", get_profile_state, methods=["GET"]),
        Route("/_sandbox/accounts/{account_id}/{kind}", create_group, methods=["POST"]),
        Route("/_sandbox/accounts/{account_id}/{kind}/{group_id}/members", change_members, methods=["POST"]),
        Route("/_sandbox/accounts/{account_id}/{kind}/{group_id}/members", get_members, methods=["GET"]),
        Route(
            "/_sandbox/accounts/{account_id}/{kind}/{group_id}/confirm",
            confirm_double_opt_in,
            methods=["POST"],
        ),
        Route("/_sandbox/accounts/{account_id}/confirmation-emails", confirmation_emails, methods=["GET"]),
        Route("/_sandbox/accounts/{account_id}/suppressions", suppressions, methods=["GET"]),
        Route("/_sandbox/accounts/{account_id}/subscription-jobs", subscription_jobs, methods=["GET"]),
        Route("/_sandbox/requests", request_log, methods=["GET"]),
        Route("/_sandbox/requests", clear_request_log, methods=["DELETE"]),
        Route("/_sandbox/faults", faults, methods=["GET", "PUT"]),
        Route("/_sandbox/rate-limits", rate_limits, methods=["GET", "PUT", "DELETE"]),
        Route("/_sandbox/state/flush", flush_state, methods=["POST"]),
    ]
    try:
        from klaviyo_sandbox import simulate
    except ModuleNotFoundError as exc:  # the send simulation is optional until it lands
        if exc.name != "klaviyo_sandbox.simulate":
            raise
        return base
    return [*simulate.routes(), *base]
