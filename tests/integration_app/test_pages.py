"""The integration app's pages over real HTTP: connect redirect, OAuth callback outcomes, status page
and JSON, the switches, and what the person sees when something goes wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from connectors.klaviyo.config import REQUIRED_SCOPES
from connectors.klaviyo.connections import ConnectionState
from connectors.klaviyo.errors import NeedsReauthorization

if TYPE_CHECKING:  # conftest is pytest's module, not importable as a package here
    from tests.integration_app.conftest import Stack


def _no_secrets(stack: Stack, account: str, text: str) -> None:
    tokens = stack.store.tokens(account)
    assert tokens.access_token not in text and tokens.refresh_token not in text


def test_healthz(stack: Stack) -> None:
    response = stack.web.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "connections": 0}


def test_connect_redirects_to_klaviyo_consent(stack: Stack) -> None:
    response = stack.web.get("/integrations/klaviyo/connect", params={"account": "shop-1"})
    assert response.status_code == 302
    assert response.headers["cache-control"] == "no-store"
    location = urlsplit(response.headers["location"])
    assert (
        f"{location.scheme}://{location.netloc}{location.path}" == f"{stack.sandbox.base_url}/oauth/authorize"
    )
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == stack.client_id
    assert query["redirect_uri"] == stack.redirect_uri
    assert query["response_type"] == "code" and query["code_challenge_method"] == "S256"
    assert query["scope"].split() == list(REQUIRED_SCOPES)
    # The sandbox accepts the request: it renders its consent page.
    page = stack.control.get(response.headers["location"])
    assert page.status_code == 200 and 'id="account_id"' in page.text


def test_connect_without_a_valid_account_is_a_400_page(stack: Stack) -> None:
    for params in ({}, {"account": ""}, {"account": "shop 1"}, {"account": "<script>"}):
        response = stack.web.get("/integrations/klaviyo/connect", params=params)
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/html")
        assert 'id="account-form"' in response.text and 'data-reason="invalid_account"' in response.text
        assert "<script>" not in response.text


def test_callback_success_shows_the_klaviyo_account_and_status(stack: Stack) -> None:
    page = stack.connect("shop-1", stack.accounts[1])
    assert page.status_code == 200
    assert '<h1 id="page-title">Klaviyo connected</h1>' in page.text
    assert f'<dd id="klaviyo-account">{stack.accounts[1]}</dd>' in page.text
    assert 'data-state="active"' in page.text
    assert 'id="status-link"' in page.text
    assert page.headers["referrer-policy"] == "same-origin"  # the callback URL holds code and state
    assert page.headers["x-frame-options"] == "DENY"
    _no_secrets(stack, "shop-1", page.text)
    connection = stack.store.require("shop-1")
    assert connection.state is ConnectionState.ACTIVE and connection.klaviyo_account_id == stack.accounts[1]


def test_callback_denial_is_explained_with_try_again(stack: Stack) -> None:
    callback = stack.consent(stack.start("shop-1"), stack.accounts[0], decision="deny")
    page = stack.web.get(callback)
    assert page.status_code == 403
    assert "You chose not to connect Klaviyo" in page.text
    assert 'data-reason="access_denied"' in page.text
    assert (
        'id="try-again"' in page.text and 'href="/integrations/klaviyo/connect?account=shop-1"' in page.text
    )
    assert stack.store.get("shop-1") is None


def test_callback_with_unknown_or_reused_state_is_400(stack: Stack) -> None:
    forged = stack.web.get("/oauth/klaviyo/callback", params={"code": "abc", "state": "forged"})
    assert forged.status_code == 400
    assert 'data-reason="invalid_state"' in forged.text and 'id="start-over"' in forged.text
    assert "Traceback" not in forged.text
    missing = stack.web.get("/oauth/klaviyo/callback")
    assert missing.status_code == 400 and 'data-reason="invalid_state"' in missing.text

    callback = stack.consent(stack.start("shop-1"), stack.accounts[0])
    assert stack.web.get(callback).status_code == 200
    reloaded = stack.web.get(callback)  # the person reloads the callback page
    assert reloaded.status_code == 400 and 'data-reason="invalid_state"' in reloaded.text
    assert stack.store.require("shop-1").state is ConnectionState.ACTIVE  # the connection stands


def test_callback_token_error_is_explained_with_try_again(stack: Stack) -> None:
    callback = stack.consent(stack.start("shop-1"), stack.accounts[0])
    split = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    page = stack.web.get(split.path, params={**query, "code": query["code"] + "tampered"})
    assert page.status_code == 502
    assert 'data-reason="token_error"' in page.text and 'id="try-again"' in page.text
    assert "Traceback" not in page.text
    assert stack.store.get("shop-1") is None


def test_callback_missing_scopes_offers_an_update(make_stack: Callable[..., Stack]) -> None:
    """Klaviyo refuses scopes the app lacks: the person is told plainly and can try again."""
    stack = make_stack(app_scopes=[s for s in REQUIRED_SCOPES if s != "webhooks:write"])
    authorize = stack.start("shop-1")
    refused = stack.control.get(authorize)
    assert refused.status_code == 302
    page = stack.web.get(refused.headers["location"])
    assert page.status_code == 400
    assert 'data-reason="authorization_error"' in page.text and "webhooks:write" in page.text
    assert 'id="try-again"' in page.text


def test_status_page_and_json_for_each_state(stack: Stack) -> None:
    missing = stack.web.get("/integrations/klaviyo/status", params={"account": "shop-1"})
    assert missing.status_code == 404 and 'id="connect"' in missing.text
    assert stack.web.get("/integrations/klaviyo/status.json", params={"account": "shop-1"}).status_code == 404
    assert stack.web.get("/integrations/klaviyo/status.json").status_code == 400
    assert stack.web.get("/integrations/klaviyo/status").status_code == 400

    stack.connect("shop-1", stack.accounts[0])
    page = stack.web.get("/integrations/klaviyo/status", params={"account": "shop-1"})
    assert page.status_code == 200
    assert 'data-state="active"' in page.text and 'data-ok="true"' in page.text
    assert 'id="deactivate-form"' in page.text and 'id="disconnect-form"' in page.text
    assert 'id="activate-form"' not in page.text
    _no_secrets(stack, "shop-1", page.text)

    data = stack.web.get("/integrations/klaviyo/status.json", params={"account": "shop-1"})
    assert data.status_code == 200
    body = data.json()
    assert body["recart_account_id"] == "shop-1" and body["klaviyo_account_id"] == stack.accounts[0]
    assert body["state"] == "active" and body["scopes_ok"] is True and body["missing_scopes"] == []
    assert body["granted_scopes"] == sorted(REQUIRED_SCOPES)
    assert body["access_token_expires_at"] and body["token_version"] == 1
    _no_secrets(stack, "shop-1", data.text)


def test_a_disconnect_that_waits_too_long_for_a_token_refresh_keeps_the_connection(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.connect("shop-1", stack.accounts[0])
    monkeypatch.setattr("connectors.klaviyo.oauth.REFRESH_LOCK_TIMEOUT_SECONDS", 0.3)
    with stack.store.refresh_lock("shop-1"):  # a refresh hangs on Klaviyo meanwhile
        busy = stack.web.post("/integrations/klaviyo/disconnect", params={"account": "shop-1"})
    assert busy.status_code == 503 and 'data-reason="busy"' in busy.text
    assert stack.store.require("shop-1").state is ConnectionState.ACTIVE
    assert [g["revoked"] for g in stack.grants()] == [False]
    done = stack.web.post("/integrations/klaviyo/disconnect", params={"account": "shop-1"})
    assert done.status_code == 303 and [g["revoked"] for g in stack.grants()] == [True]


def test_deactivate_activate_and_disconnect(stack: Stack) -> None:
    stack.connect("shop-1", stack.accounts[0])
    params = {"account": "shop-1"}

    off = stack.web.post("/integrations/klaviyo/deactivate", params=params)
    assert off.status_code == 303
    assert off.headers["location"] == "/integrations/klaviyo/status?account=shop-1&notice=deactivated"
    page = stack.web.get(off.headers["location"])
    assert 'data-state="inactive"' in page.text and 'id="notice"' in page.text
    assert 'id="activate-form"' in page.text
    assert stack.store.require("shop-1").state is ConnectionState.INACTIVE

    on = stack.web.post(
        "/integrations/klaviyo/activate", params=params, headers={"Accept": "application/json"}
    )
    assert on.status_code == 200 and on.json()["state"] == "active"

    gone = stack.web.post("/integrations/klaviyo/disconnect", params=params)
    assert gone.status_code == 303
    page = stack.web.get(gone.headers["location"])
    assert 'data-state="removed"' in page.text and 'id="connect"' in page.text
    assert [g["revoked"] for g in stack.grants()] == [True]
    assert stack.store.require("shop-1").state is ConnectionState.REMOVED

    refused = stack.web.post("/integrations/klaviyo/activate", params=params)
    assert refused.status_code == 409 and 'data-reason="wrong_state"' in refused.text
    unknown = stack.web.post("/integrations/klaviyo/deactivate", params={"account": "nobody"})
    assert unknown.status_code == 404
    assert stack.web.post("/integrations/klaviyo/explode", params=params).status_code == 404
    assert stack.web.post("/integrations/klaviyo/activate").status_code == 400


def test_cross_site_posts_are_refused(stack: Stack) -> None:
    stack.connect("shop-1", stack.accounts[0])
    params = {"account": "shop-1"}
    evil = stack.web.post(
        "/integrations/klaviyo/disconnect", params=params, headers={"Origin": "https://evil.example"}
    )
    assert evil.status_code == 403
    for site in ("cross-site", "same-site"):  # same-site: another port of this host, e.g. the sandbox
        fetch = stack.web.post(
            "/integrations/klaviyo/deactivate", params=params, headers={"Sec-Fetch-Site": site}
        )
        assert fetch.status_code == 403
    sandboxed = stack.web.post("/integrations/klaviyo/deactivate", params=params, headers={"Origin": "null"})
    assert sandboxed.status_code == 403
    assert stack.store.require("shop-1").state is ConnectionState.ACTIVE
    same = stack.web.post(
        "/integrations/klaviyo/deactivate", params=params, headers={"Origin": stack.app_url}
    )
    assert same.status_code == 303


def test_needs_reauthorization_offers_update_connection(stack: Stack) -> None:
    stack.connect("shop-1", stack.accounts[0])
    (grant,) = stack.grants()
    stack.control.post(f"/_sandbox/oauth/grants/{grant['id']}/revoke")
    with pytest.raises(NeedsReauthorization):
        asyncio.run(stack.oauth.refresh("shop-1", force=True))
    page = stack.web.get("/integrations/klaviyo/status", params={"account": "shop-1"})
    assert 'data-state="needs_reauth"' in page.text
    assert "refresh failed: invalid_grant" in page.text
    assert 'id="update-connection"' in page.text
    assert 'href="/integrations/klaviyo/connect?account=shop-1"' in page.text
    # Updating the connection is the connect flow again.
    again = stack.connect("shop-1", stack.accounts[0])
    assert again.status_code == 200 and 'data-state="active"' in again.text


def test_unexpected_errors_show_a_plain_page(stack: Stack) -> None:
    stack.store.close()  # the store is gone: every page that reads it fails
    page = stack.web.get("/integrations/klaviyo/status", params={"account": "shop-1"})
    assert page.status_code == 500
    assert "Something went wrong" in page.text and "Traceback" not in page.text and "closed" not in page.text
    assert stack.web.get("/healthz").status_code == 503


def test_no_token_ever_reaches_a_page(stack: Stack) -> None:
    pages: list[httpx2.Response] = [stack.connect("shop-1", stack.accounts[0])]
    pages.append(stack.web.get("/integrations/klaviyo/status", params={"account": "shop-1"}))
    pages.append(stack.web.get("/integrations/klaviyo/status.json", params={"account": "shop-1"}))
    for page in pages:
        _no_secrets(stack, "shop-1", page.text)
