"""Bulk profile import: ``POST /api/profile-bulk-import-jobs`` and the job's read endpoints.

A job accepts up to 10,000 profile upserts. The sandbox processes them at once (the job answers
202 already ``complete``): each profile is matched by id, email, phone number or external id and
updated, or created; valid ones join the job's lists. Imports never touch consent. A profile that
cannot be imported (invalid email, phone not in E.164, no identifier, an identifier owned by another
profile, over 100 KB) is skipped and recorded as an ``import-error`` with its original payload.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import find_or_404, invalid
from klaviyo_sandbox.filters import matches
from klaviyo_sandbox.jsonapi import (
    Context,
    iso,
    paginate,
    relationship,
    require_linkage,
    resource,
    single,
    sort_key_value,
    sparse,
)
from klaviyo_sandbox.resources.groups import render_list
from klaviyo_sandbox.resources.profiles import (
    IDENTIFIERS,
    apply_attributes,
    apply_patch_properties,
    duplicate_of,
    render_profile,
    valid_e164,
    valid_email,
)
from klaviyo_sandbox.store import Account, BulkImportJob, KList, Profile, utcnow

MAX_PROFILES_PER_JOB = 10_000
MAX_PROFILE_BYTES = 100 * 1024
JOB_RETENTION = timedelta(days=7)
_POINTER = "/data/attributes/profiles/data"


# ---------------------------------------------------------------------------- rendering


def job_attributes(job: BulkImportJob) -> dict[str, Any]:
    """The attributes of a bulk import job as Klaviyo renders them."""
    return {
        "status": job.status,
        "created_at": iso(job.created_at),
        "total_count": job.total_count,
        "completed_count": job.completed_count,
        "failed_count": job.failed_count,
        "completed_at": iso(job.completed_at),
        "expires_at": iso(job.expires_at),
        "started_at": iso(job.started_at),
    }


def render_job(ctx: Context, job: BulkImportJob) -> dict[str, Any]:
    """A ``profile-bulk-import-job`` resource (``lists`` linkage when ``include=lists``)."""
    base = f"/api/profile-bulk-import-jobs/{job.id}"
    lists = relationship(ctx, f"{base}/relationships/lists/", f"{base}/lists/")
    if "lists" in ctx.include:
        lists = {"data": [{"type": "list", "id": list_id} for list_id in job.list_ids], **lists}
    relationships = {
        "lists": lists,
        "profiles": relationship(ctx, f"{base}/relationships/profiles/", f"{base}/profiles/"),
        "import-errors": {"links": {"related": ctx.link(f"{base}/import-errors/")}},
    }
    return resource(
        ctx,
        "profile-bulk-import-job",
        job.id,
        job_attributes(job),
        relationships=relationships,
        path="/api/profile-bulk-import-jobs",
    )


def render_import_error(ctx: Context, error: dict[str, Any]) -> dict[str, Any]:
    """An ``import-error`` resource (the spec gives these no links)."""
    attributes = {
        "code": error["code"],
        "title": error["title"],
        "detail": error["detail"],
        "source": {"pointer": error.get("pointer")},
        "original_payload": error.get("original_payload"),
    }
    wanted = ctx.fields.get("import-error")
    if wanted is not None:
        attributes = sparse(attributes, wanted)
    return {"type": "import-error", "id": error["id"], "attributes": attributes}


def get_account_job(account: Account, job_id: str) -> BulkImportJob:
    """The bulk import job with this id in the caller's account, or 404."""
    return find_or_404(account.bulk_import_jobs, job_id, "Profile bulk import job")


# ---------------------------------------------------------------------------- import


class _Rejected(Exception):
    """One profile of the batch could not be imported."""

    def __init__(self, detail: str, pointer: str, code: str = "invalid") -> None:
        super().__init__(detail)
        self.detail = detail
        self.pointer = pointer
        self.code = code


def _check(item: dict[str, Any], pointer: str) -> dict[str, Any]:
    """The item's attributes after per-profile validation (raises ``_Rejected``)."""
    if len(json.dumps(item)) > MAX_PROFILE_BYTES:
        raise _Rejected("The profile is larger than 100 KB.", pointer)
    attributes = item.get("attributes") or {}
    email = attributes.get("email")
    if email is not None and not valid_email(email):
        raise _Rejected(f"Invalid email address: '{email}'.", f"{pointer}/attributes/email")
    phone = attributes.get("phone_number")
    if phone is not None and not valid_e164(phone):
        raise _Rejected(
            f"Invalid phone number format (must be E.164): '{phone}'.", f"{pointer}/attributes/phone_number"
        )
    if not item.get("id") and not any(attributes.get(name) for name in IDENTIFIERS):
        raise _Rejected("One of id, email, phone_number or external_id is required.", f"{pointer}/attributes")
    return attributes


def _match(
    account: Account, item: dict[str, Any], attributes: dict[str, Any], pointer: str
) -> Profile | None:
    if item.get("id"):
        profile = account.profiles.get(item["id"])
        if profile is None:
            raise _Rejected(f"Profile with id {item['id']} not found.", f"{pointer}/id", code="not_found")
        return profile
    return account.find_profile(
        attributes.get("email"), attributes.get("phone_number"), attributes.get("external_id")
    )


def _apply(
    account: Account, profile: Profile, attributes: dict[str, Any], meta: dict[str, Any] | None, pointer: str
) -> None:
    """Upsert the attributes into ``profile`` (the same rules as profile-import), or reject the item."""
    duplicate = duplicate_of(account, attributes, exclude=profile.id)
    if duplicate is not None:
        name = next(
            n
            for n in IDENTIFIERS
            if attributes.get(n) and account.find_profile(**{n: attributes[n]}) is duplicate
        )
        raise _Rejected(
            f"Another profile ({duplicate.id}) already has this {name}.",
            f"{pointer}/attributes/{name}",
            code="duplicate_profile",
        )
    apply_attributes(profile, attributes, partial=True)
    apply_patch_properties(profile, meta)


def _job_lists(ctx: Context, data: dict[str, Any]) -> list[KList]:
    linkages = ((data.get("relationships") or {}).get("lists") or {}).get("data") or []
    found: list[KList] = []
    for n, linkage in enumerate(linkages):
        klist = ctx.account.lists.get(linkage["id"])
        if klist is None:
            raise invalid(
                f"List with id {linkage['id']} not found.", pointer=f"/data/relationships/lists/data/{n}/id"
            )
        if klist not in found:
            found.append(klist)
    return found


def _new_error(ctx: Context, rejected: _Rejected, item: dict[str, Any]) -> dict[str, Any]:
    title = {"invalid": "Invalid input.", "not_found": "Not found.", "duplicate_profile": "Conflict."}[
        rejected.code
    ]
    return {
        "id": str(uuid.UUID(int=ctx.store.rng.getrandbits(128), version=4)),
        "code": rejected.code,
        "title": title,
        "detail": rejected.detail,
        "pointer": rejected.pointer,
        "original_payload": item,
    }


def _new_profile_id(ctx: Context) -> str:
    while True:
        new = ctx.store.new_id("ulid")
        if new not in ctx.account.profiles:
            return new


def run_import(ctx: Context, items: list[dict[str, Any]], lists: list[KList], now: datetime) -> BulkImportJob:
    """Process a batch at once: upsert each profile, add it to the lists, record failures."""
    account = ctx.account
    job_id = ctx.store.new_id("job")
    while job_id in account.bulk_import_jobs:
        job_id = ctx.store.new_id("job")
    job = BulkImportJob(
        id=job_id,
        status="processing",
        created_at=now,
        total_count=len(items),
        started_at=now,
        expires_at=now + JOB_RETENTION,
        list_ids=[klist.id for klist in lists],
    )
    seen: set[str] = set()
    for n, item in enumerate(items):
        pointer = f"{_POINTER}/{n}"
        try:
            attributes = _check(item, pointer)
            profile = _match(account, item, attributes, pointer)
            if profile is None:
                profile = Profile(id=_new_profile_id(ctx), created=now, updated=now)
                _apply(account, profile, attributes, item.get("meta"), pointer)
                account.add_profile(profile)
            else:
                _apply(account, profile, attributes, item.get("meta"), pointer)
                account.index_profile(profile)
        except _Rejected as rejected:
            job.errors.append(_new_error(ctx, rejected, item))
            job.failed_count += 1
            continue
        job.completed_count += 1
        for klist in lists:
            klist.add_member(profile.id, now)
        if profile.id not in seen:
            seen.add(profile.id)
            job.profile_ids.append(profile.id)
    job.status = "complete"
    job.completed_at = utcnow()
    account.bulk_import_jobs[job.id] = job
    return job


@handler("bulk_import_profiles")
def bulk_import_profiles(ctx: Context) -> tuple[int, Any]:
    """``POST /api/profile-bulk-import-jobs`` → 202 with the (already complete) job."""
    data = require_linkage(ctx.body, "profile-bulk-import-job")
    items = data["attributes"]["profiles"]["data"]
    if not items:
        raise invalid("At least one profile is required.", pointer=_POINTER)
    if len(items) > MAX_PROFILES_PER_JOB:
        raise invalid(
            f"A bulk import job accepts at most {MAX_PROFILES_PER_JOB} profiles; got {len(items)}.",
            pointer=_POINTER,
        )
    lists = _job_lists(ctx, data)
    job = run_import(ctx, items, lists, utcnow())
    return 202, single(ctx, render_job(ctx, job))


# ---------------------------------------------------------------------------- reads


def _job_getter(job: BulkImportJob) -> Callable[[str], Any]:
    return lambda name: getattr(job, name, None)


@handler("get_bulk_import_profiles_jobs")
def get_bulk_import_profiles_jobs(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs``: filter on ``status``, sort on ``created_at``."""
    jobs = [job for job in ctx.account.bulk_import_jobs.values() if matches(ctx.filters, _job_getter(job))]
    return 200, paginate(
        ctx,
        jobs,
        lambda job: (sort_key_value(job.created_at), job.id),
        lambda job: render_job(ctx, job),
        descending=ctx.sort == "-created_at",
    )


@handler("get_bulk_import_profiles_job")
def get_bulk_import_profiles_job(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs/{job_id}`` (``include=lists``)."""
    job = get_account_job(ctx.account, ctx.path_params["job_id"])
    included = [render_list(ctx, ctx.account.lists[i]) for i in job.list_ids if i in ctx.account.lists]
    return 200, single(ctx, render_job(ctx, job), included)


@handler("get_errors_for_bulk_import_profiles_job")
def get_errors_for_bulk_import_profiles_job(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs/{id}/import-errors``: one error per rejected profile."""
    job = get_account_job(ctx.account, ctx.path_params["id"])
    position = {error["id"]: n for n, error in enumerate(job.errors)}
    return 200, paginate(
        ctx,
        job.errors,
        lambda e: (position[e["id"]], e["id"]),
        lambda e: render_import_error(ctx, e),
        presorted=True,
    )


@handler("get_list_for_bulk_import_profiles_job")
def get_list_for_bulk_import_profiles_job(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs/{id}/lists``."""
    job = get_account_job(ctx.account, ctx.path_params["id"])
    lists = [render_list(ctx, ctx.account.lists[i]) for i in job.list_ids if i in ctx.account.lists]
    return 200, {"data": lists, "links": {"self": ctx.self_link()}}


@handler("get_list_ids_for_bulk_import_profiles_job")
def get_list_ids_for_bulk_import_profiles_job(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs/{id}/relationships/lists``."""
    job = get_account_job(ctx.account, ctx.path_params["id"])
    ids = [{"type": "list", "id": i} for i in job.list_ids if i in ctx.account.lists]
    return 200, {"data": ids, "links": {"self": ctx.self_link()}}


def _job_profiles(
    ctx: Context, job: BulkImportJob
) -> tuple[list[Profile], Callable[[Profile], tuple[Any, ...]]]:
    position = {profile_id: n for n, profile_id in enumerate(job.profile_ids)}
    profiles = [ctx.account.profiles[p] for p in job.profile_ids if p in ctx.account.profiles]
    return profiles, lambda p: (position[p.id], p.id)


@handler("get_profiles_for_bulk_import_profiles_job")
def get_profiles_for_bulk_import_profiles_job(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs/{id}/profiles``: the profiles the job created or updated."""
    job = get_account_job(ctx.account, ctx.path_params["id"])
    profiles, key = _job_profiles(ctx, job)
    return 200, paginate(ctx, profiles, key, lambda p: render_profile(ctx, p), presorted=True)


@handler("get_profile_ids_for_bulk_import_profiles_job")
def get_profile_ids_for_bulk_import_profiles_job(ctx: Context) -> tuple[int, Any]:
    """``GET /api/profile-bulk-import-jobs/{id}/relationships/profiles``: ids only."""
    job = get_account_job(ctx.account, ctx.path_params["id"])
    profiles, key = _job_profiles(ctx, job)
    return 200, paginate(ctx, profiles, key, lambda p: {"type": "profile", "id": p.id}, presorted=True)
