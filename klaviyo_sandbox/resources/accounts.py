"""Accounts: ``GET /api/accounts`` (exactly the caller's account) and ``GET /api/accounts/{id}``.

A key or token only ever sees its own account: any other id, even one that exists in the
sandbox, answers 404 exactly like an id that exists nowhere.
"""

from __future__ import annotations

from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import not_found
from klaviyo_sandbox.jsonapi import Context, resource, single
from klaviyo_sandbox.store import Account


def account_attributes(account: Account) -> dict[str, Any]:
    """The attributes of an account as Klaviyo renders them."""
    return {
        "test_account": account.test_account,
        "contact_information": {
            "default_sender_name": account.name,
            "default_sender_email": account.sender_email,
            "website_url": account.website_url or None,
            "organization_name": account.name,
            # The sandbox keeps no postal address; Klaviyo always sends the object.
            "street_address": {
                "address1": None,
                "address2": None,
                "city": None,
                "region": None,
                "country": None,
                "zip": None,
            },
        },
        "industry": account.industry or None,
        "timezone": account.timezone,
        "preferred_currency": account.preferred_currency,
        "public_api_key": account.public_api_key,
        "locale": account.locale,
    }


def render_account(ctx: Context, account: Account) -> dict[str, Any]:
    """An account resource object (sparse fieldsets applied)."""
    return resource(ctx, "account", account.id, account_attributes(account), path="/api/accounts")


@handler("get_accounts")
def get_accounts(ctx: Context) -> tuple[int, Any]:
    """``GET /api/accounts``: a one-item collection holding the caller's account."""
    return 200, {"data": [render_account(ctx, ctx.account)], "links": {"self": ctx.self_link()}}


@handler("get_account")
def get_account(ctx: Context) -> tuple[int, Any]:
    """``GET /api/accounts/{id}``: the caller's account; any other id is 404 (never leaks across accounts)."""
    account_id = ctx.path_params["id"]
    if account_id != ctx.account.id:
        raise not_found("Account", account_id)
    return 200, single(ctx, render_account(ctx, ctx.account))
