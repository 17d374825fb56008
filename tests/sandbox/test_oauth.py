"""Tests for ``klaviyo_sandbox.oauth``: authorize/consent, token, revoke and the OAuth control API.

Everything goes over real HTTP to a sandbox from the fixtures. Each test registers its own OAuth
app through ``POST /_sandbox/oauth/clients``, so tests sharing the session sandbox never see each
other's grants, and nothing depends on the demo seed's app.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from klaviyo_sandbox.seed import DEMO_OAUTH_CLIENT_ID, DEMO_OAUTH_CLIENT_SECRET, DEMO_REDIRECT_URIS
from klaviyo_sandbox.server import RunningSandbox
from klaviyo_sandbox.store import Store
from klaviyo_sandbox.testing import KlaviyoTestClient, register_oauth_app

REDIRECT_URI = "http://127.0.0.1:9/klaviyo/callback"  # never contacted: redirects are not followed
SCOPES = ["accounts:read", "lists:read", "profiles:read"]


# ---------------------------------------------------------------------------- helpers


@dataclass
class OAuthApp:
    """An OAuth app registered on a running sandbox, plus an HTTP client for its endpoints."""

    running: RunningSandbox
    http: httpx2.Client
    client_id: str
    client_secret: str
    redirect_uri: str = REDIRECT_URI
    api_clients: list[KlaviyoTestClient] = field(default_factory=list)

    @property
    def basic(self) -> dict[str, str]:
        """The ``Authorization: Basic`` header Klaviyo's token and revoke endpoints want."""
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}

    def account_ids(self) -> list[str]:
        """Ids of the sandbox's accounts (in-process: the consent page lists the same)."""
        return list(self.running.sandbox.store.accounts)

    def authorize_params(
        self, verifier: str, scopes: list[str] = SCOPES, **overrides: str | None
    ) -> dict[str, str]:
        """Query parameters of an authorization request (``None`` in overrides drops a parameter)."""
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(scopes),
            "state": "st4te-" + secrets.token_hex(4),
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
            **overrides,
        }
        return {k: v for k, v in params.items() if v is not None}

    def authorize(
        self,
        *,
        scopes: list[str] = SCOPES,
        account_id: str | None = None,
        decision: str = "allow",
        **overrides: str | None,
    ) -> tuple[httpx2.Response, str, dict[str, str]]:
        """POST the consent decision non-interactively; returns the response, the verifier and the params."""
        verifier = secrets.token_urlsafe(48)
        params = self.authorize_params(verifier, scopes, **overrides)
        form = {**params, "account_id": account_id or self.account_ids()[0], "decision": decision}
        return self.http.post("/oauth/authorize", data=form), verifier, params

    def code_for(self, **kwargs: Any) -> tuple[str, str]:
        """A fresh authorization code and its PKCE verifier."""
        response, verifier, params = self.authorize(**kwargs)
        assert response.status_code == 302, response.text
        query = redirect_query(response, self.redirect_uri)
        assert query["state"] == params["state"]
        return query["code"], verifier

    def exchange(self, code: str, verifier: str, **overrides: str) -> httpx2.Response:
        """The authorization-code token request."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": self.redirect_uri,
            **overrides,
        }
        return self.http.post("/oauth/token", data=form, headers=self.basic)

    def tokens(self, **kwargs: Any) -> dict[str, Any]:
        """A full authorization: the token response body."""
        code, verifier = self.code_for(**kwargs)
        response = self.exchange(code, verifier)
        assert response.status_code == 200, response.text
        return response.json()

    def refresh(self, refresh_token: str) -> httpx2.Response:
        """The refresh-token request."""
        return self.http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            headers=self.basic,
        )

    def revoke(self, token: str, hint: str = "refresh_token") -> httpx2.Response:
        """The revoke request."""
        return self.http.post(
            "/oauth/revoke", data={"token": token, "token_type_hint": hint}, headers=self.basic
        )

    def api(self, access_token: str) -> KlaviyoTestClient:
        """A spec-validating /api/ client using a bearer token."""
        client = KlaviyoTestClient(self.running.base_url, f"Bearer {access_token}")
        self.api_clients.append(client)
        return client

    def grants(self) -> list[dict[str, Any]]:
        """This app's grants, from the control API."""
        response = self.http.get("/_sandbox/oauth/grants", params={"client_id": self.client_id})
        assert response.status_code == 200, response.text
        return response.json()["grants"]


def redirect_query(response: httpx2.Response, redirect_uri: str = REDIRECT_URI) -> dict[str, str]:
    """The query parameters of a redirect's ``Location`` (each once)."""
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect_uri
    return {k: v[0] for k, v in parse_qs(location.query, keep_blank_values=True).items()}


def register_app(running: RunningSandbox, http: httpx2.Client, scopes: list[str] = SCOPES) -> OAuthApp:
    """Register a fresh OAuth app through the control API."""
    body = register_oauth_app(http, REDIRECT_URI, scopes, name="Recart <Test>")
    return OAuthApp(
        running=running, http=http, client_id=body["client_id"], client_secret=body["client_secret"]
    )


@pytest.fixture
def app(sandbox: RunningSandbox) -> Iterator[OAuthApp]:
    """A new OAuth app on the shared session sandbox."""
    with httpx2.Client(base_url=sandbox.base_url, timeout=30, follow_redirects=False) as http:
        registered = register_app(sandbox, http)
        yield registered
        for client in registered.api_clients:
            client.close()


@pytest.fixture
def fresh_app(make_sandbox: Callable[..., RunningSandbox]) -> Iterator[Callable[..., OAuthApp]]:
    """An OAuth app on a new sandbox started with the given options."""
    clients: list[httpx2.Client] = []
    apps: list[OAuthApp] = []

    def start(**options: Any) -> OAuthApp:
        # The "empty" seed (the demo app, two accounts, no data) starts and saves far faster.
        running = make_sandbox(seed="empty", rate_limits="off", **options)
        http = httpx2.Client(base_url=running.base_url, timeout=30, follow_redirects=False)
        clients.append(http)
        apps.append(register_app(running, http))
        return apps[-1]

    yield start
    for registered in apps:
        for client in registered.api_clients:
            client.close()
    for client in clients:
        client.close()


class FormParser(HTMLParser):
    """Collects what a browser would submit from the consent page: inputs, select options, buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.options: list[str] = []
        self.buttons: dict[str, str] = {}  # value -> id
        self.scopes: list[str] = []
        self.form_action: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.form_action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"] or ""] = a.get("value") or ""
        elif tag == "option":
            self.options.append(a.get("value") or "")
        elif tag == "button" and a.get("name") == "decision":
            self.buttons[a.get("value") or ""] = a.get("id") or ""
        elif tag == "li" and "data-scope" in a:
            self.scopes.append(a["data-scope"] or "")


# ---------------------------------------------------------------------------- happy path


def test_round_trip_consent_page_to_api_call(app: OAuthApp) -> None:
    verifier = secrets.token_urlsafe(64)
    params = app.authorize_params(verifier)
    page = app.http.get("/oauth/authorize", params=params)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Recart &lt;Test&gt;" in page.text  # the app name, escaped
    parsed = FormParser()
    parsed.feed(page.text)
    assert parsed.scopes == SCOPES
    assert parsed.form_action == "/oauth/authorize"
    assert parsed.buttons == {"allow": "allow", "deny": "deny"}
    assert parsed.hidden == params  # every original parameter is carried through the form
    store = app.running.sandbox.store
    assert parsed.options == list(store.accounts)
    for account in store.accounts.values():
        assert f"{account.id})" in page.text

    chosen = parsed.options[-1]
    decision = app.http.post(
        "/oauth/authorize", data={**parsed.hidden, "account_id": chosen, "decision": "allow"}
    )
    assert decision.status_code == 302
    query = redirect_query(decision)
    assert set(query) == {"code", "state"}
    assert query["state"] == params["state"]

    response = app.exchange(query["code"], verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == store.access_token_ttl_seconds
    assert tokens["scope"] == " ".join(SCOPES)
    assert len(tokens["access_token"]) > 100 and tokens["access_token"].count(".") == 2  # JWT-shaped

    accounts = app.api(tokens["access_token"]).get("/api/accounts")
    assert accounts.status_code == 200, accounts.text
    assert [a["id"] for a in accounts.json()["data"]] == [chosen]  # the account chosen on the consent page

    (grant,) = app.grants()
    assert grant["account_id"] == chosen
    assert grant["scopes"] == SCOPES
    assert grant["revoked"] is False
    listing = app.http.get("/_sandbox/oauth/grants", params={"account_id": chosen}).text
    assert tokens["refresh_token"] not in listing and tokens["access_token"] not in listing


def test_the_demo_seed_app_works(sandbox: RunningSandbox) -> None:
    with httpx2.Client(base_url=sandbox.base_url, timeout=30, follow_redirects=False) as http:
        demo = OAuthApp(
            running=sandbox,
            http=http,
            client_id=DEMO_OAUTH_CLIENT_ID,
            client_secret=DEMO_OAUTH_CLIENT_SECRET,
            redirect_uri=DEMO_REDIRECT_URIS[0],
        )
        account_id = demo.account_ids()[-1]
        tokens = demo.tokens(scopes=["accounts:read"], account_id=account_id)
        accounts = demo.api(tokens["access_token"]).get("/api/accounts")
        demo.api_clients[0].close()
        assert accounts.status_code == 200, accounts.text
        assert [a["id"] for a in accounts.json()["data"]] == [account_id]
        assert demo.revoke(tokens["refresh_token"]).status_code == 200


def test_authlib_client_runs_the_flow_unchanged(app: OAuthApp) -> None:
    """authlib's OAuth2Client (PKCE S256, client_secret_basic) against the sandbox, as a connector would."""
    base = app.running.base_url
    verifier = generate_token(64)
    with OAuth2Client(
        client_id=app.client_id,
        client_secret=app.client_secret,
        scope=" ".join(SCOPES),
        redirect_uri=app.redirect_uri,
        code_challenge_method="S256",
        base_url=base,
    ) as oauth:
        url, state = oauth.create_authorization_url(f"{base}/oauth/authorize", code_verifier=verifier)
        query = dict(parse_qs(urlsplit(url).query, keep_blank_values=True))
        params = {k: v[0] for k, v in query.items()}
        consent = app.http.post(
            "/oauth/authorize", data={**params, "account_id": app.account_ids()[0], "decision": "allow"}
        )
        assert consent.status_code == 302, consent.text
        token = oauth.fetch_token(
            f"{base}/oauth/token",
            authorization_response=consent.headers["location"],
            code_verifier=verifier,
            state=state,
        )
        assert token["token_type"] == "Bearer" and token["scope"] == " ".join(SCOPES)
        refreshed = oauth.refresh_token(f"{base}/oauth/token", refresh_token=token["refresh_token"])
        assert refreshed["access_token"] != token["access_token"]
        revoked = oauth.revoke_token(
            f"{base}/oauth/revoke", token=token["refresh_token"], token_type_hint="refresh_token"
        )
        assert revoked.status_code == 200
    assert app.grants()[0]["revoked"] is True


def test_client_secret_post_is_accepted(app: OAuthApp) -> None:
    code, verifier = app.code_for()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": app.redirect_uri,
        "client_id": app.client_id,
        "client_secret": app.client_secret,
    }
    response = app.http.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text


def test_state_is_omitted_when_not_sent(app: OAuthApp) -> None:
    response, _, _ = app.authorize(state=None)
    assert response.status_code == 302
    assert set(redirect_query(response)) == {"code"}


def test_deny_redirects_with_access_denied(app: OAuthApp) -> None:
    response, _, params = app.authorize(decision="deny")
    assert response.status_code == 302
    query = redirect_query(response)
    assert query["error"] == "access_denied"
    assert query["error_description"]
    assert query["state"] == params["state"]
    assert "code" not in query
    assert app.grants() == []


def test_consent_without_decision_or_account_rerenders_the_page(app: OAuthApp) -> None:
    verifier = secrets.token_urlsafe(48)
    params = app.authorize_params(verifier)
    no_account = app.http.post(
        "/oauth/authorize", data={**params, "account_id": "NOPE00", "decision": "allow"}
    )
    assert no_account.status_code == 400 and 'id="problem"' in no_account.text
    no_decision = app.http.post("/oauth/authorize", data={**params, "account_id": app.account_ids()[0]})
    assert no_decision.status_code == 400 and 'id="consent-form"' in no_decision.text


# ---------------------------------------------------------------------------- authorize errors


def test_unknown_client_gets_an_error_page_not_a_redirect(app: OAuthApp) -> None:
    params = app.authorize_params(secrets.token_urlsafe(48), client_id="no-such-client")
    response = app.http.get("/oauth/authorize", params=params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert 'id="error"' in response.text and "invalid_client" in response.text
    posted = app.http.post(
        "/oauth/authorize", data={**params, "account_id": app.account_ids()[0], "decision": "allow"}
    )
    assert posted.status_code == 400 and "location" not in posted.headers


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://evil.example/callback",
        REDIRECT_URI + "/more",
        REDIRECT_URI + "?x=1",
        REDIRECT_URI.upper(),
        None,
    ],
)
def test_unregistered_redirect_uri_gets_an_error_page(app: OAuthApp, redirect_uri: str | None) -> None:
    params = app.authorize_params(secrets.token_urlsafe(48), redirect_uri=redirect_uri)
    response = app.http.get("/oauth/authorize", params=params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "invalid_request" in response.text


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),  # no PKCE
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"scope": "lists:read definitely:not-a-scope"}, "invalid_scope"),
        ({"scope": "lists:read campaigns:read"}, "invalid_scope"),  # valid scope, not enabled on the app
        ({"scope": None}, "invalid_scope"),
    ],
)
def test_invalid_authorization_requests_redirect_with_an_error(
    app: OAuthApp, overrides: dict[str, str | None], error: str
) -> None:
    params = app.authorize_params(secrets.token_urlsafe(48), **overrides)
    for response in (
        app.http.get("/oauth/authorize", params=params),
        app.http.post(
            "/oauth/authorize", data={**params, "account_id": app.account_ids()[0], "decision": "allow"}
        ),
    ):
        assert response.status_code == 302, response.text
        query = redirect_query(response)
        assert query["error"] == error
        assert query["error_description"]
        assert query["state"] == params["state"]
        assert "code" not in query


# ---------------------------------------------------------------------------- token endpoint errors


def test_wrong_verifier_fails_the_code_challenge(app: OAuthApp) -> None:
    code, _ = app.code_for()
    response = app.exchange(code, secrets.token_urlsafe(48))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_grant", "error_description": "Code challenge failed."}


@pytest.mark.parametrize("verifier", ["short", "x" * 129, "a" * 42 + "!", ""])
def test_malformed_verifier_is_an_invalid_request(app: OAuthApp, verifier: str) -> None:
    code, good = app.code_for()
    response = app.exchange(code, verifier)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": 'Invalid "code_verifier"'}
    # A malformed request does not burn the code: the client may retry with the right verifier.
    assert app.exchange(code, good).status_code == 200


def test_reused_code_is_rejected_and_revokes_its_grant(app: OAuthApp) -> None:
    code, verifier = app.code_for()
    first = app.exchange(code, verifier)
    assert first.status_code == 200
    tokens = first.json()
    again = app.exchange(code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    # RFC 6749 §4.1.2: the replay may be an attacker, so the grant issued from the code is revoked.
    assert app.api(tokens["access_token"]).get("/api/accounts").status_code == 401
    assert app.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert [g["revoked"] for g in app.grants()] == [True]


def test_expired_code_is_invalid_grant(app: OAuthApp) -> None:
    code, verifier = app.code_for()
    stored = app.running.sandbox.store.authorization_codes[code]
    stored.expires_at -= timedelta(minutes=10)
    response = app.exchange(code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_code_is_bound_to_client_and_redirect_uri(app: OAuthApp) -> None:
    other = register_app(app.running, app.http)
    code, verifier = app.code_for()
    stolen = other.exchange(code, verifier)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    mismatch = app.exchange(code, verifier, redirect_uri="http://127.0.0.1:9/other")
    assert mismatch.status_code == 400 and mismatch.json()["error"] == "invalid_grant"
    assert app.exchange(code, verifier).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"nobody:nothing").decode()},
        {"Authorization": "Basic not-base64!!"},
        {"Authorization": "Bearer something"},
    ],
)
def test_bad_client_authentication_is_invalid_client(app: OAuthApp, headers: dict[str, str]) -> None:
    code, verifier = app.code_for()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": app.redirect_uri,
    }
    for path in ("/oauth/token", "/oauth/revoke"):
        response = app.http.post(path, data={**form, "token": "x"}, headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"


def test_wrong_secret_is_invalid_client(app: OAuthApp) -> None:
    raw = f"{app.client_id}:wrong-secret".encode()
    response = app.http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": "x"},
        headers={"Authorization": f"Basic {base64.b64encode(raw).decode()}"},
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


def test_grant_type_and_body_errors(app: OAuthApp) -> None:
    post = app.http.post
    as_json = post(
        "/oauth/token", json={"grant_type": "refresh_token", "refresh_token": "x"}, headers=app.basic
    )
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_grant_type"
    missing = post("/oauth/token", data={"refresh_token": "x"}, headers=app.basic)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant_type"
    unknown = post("/oauth/token", data={"grant_type": "client_credentials"}, headers=app.basic)
    assert unknown.status_code == 400 and unknown.json()["error"] == "unsupported_grant_type"
    no_code = post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "redirect_uri": REDIRECT_URI},
        headers=app.basic,
    )
    assert no_code.status_code == 400 and no_code.json()["error"] == "invalid_request"
    no_refresh = post("/oauth/token", data={"grant_type": "refresh_token"}, headers=app.basic)
    assert no_refresh.status_code == 400 and no_refresh.json()["error"] == "invalid_request"
    unknown_code = app.exchange("no-such-code", secrets.token_urlsafe(48))
    assert unknown_code.status_code == 400 and unknown_code.json()["error"] == "invalid_grant"


# ---------------------------------------------------------------------------- bearer tokens and refresh


def test_expired_access_token_is_401_and_refresh_restores_access(app: OAuthApp) -> None:
    tokens = app.tokens()
    api = app.api(tokens["access_token"])
    assert api.get("/api/accounts").status_code != 401
    expired = app.http.post("/_sandbox/oauth/expire-access-tokens", json={"client_id": app.client_id})
    assert expired.status_code == 200 and expired.json() == {"expired": 1}
    denied = api.get("/api/accounts")
    assert denied.status_code == 401
    assert "expired" in denied.json()["errors"][0]["detail"]

    refreshed = app.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["cache-control"] == "no-store"
    new = refreshed.json()
    assert new["access_token"] != tokens["access_token"]
    assert new["refresh_token"] == tokens["refresh_token"]  # Klaviyo may return the same one (S14)
    assert new["scope"] == tokens["scope"] and new["token_type"] == "Bearer"
    assert app.api(new["access_token"]).get("/api/accounts").status_code != 401
    assert api.get("/api/accounts").status_code == 401  # the expired one stays expired


def test_refresh_keeps_earlier_access_tokens_valid_until_expiry(app: OAuthApp) -> None:
    tokens = app.tokens()
    before = app.grants()[0]["last_used_at"]
    time.sleep(0.01)
    assert app.refresh(tokens["refresh_token"]).status_code == 200
    assert app.api(tokens["access_token"]).get("/api/accounts").status_code != 401
    assert app.grants()[0]["last_used_at"] > before


def test_access_tokens_expire_after_the_configured_ttl(fresh_app: Callable[..., OAuthApp]) -> None:
    app = fresh_app(access_token_ttl_seconds=1)
    tokens = app.tokens()
    assert tokens["expires_in"] == 1
    time.sleep(1.2)
    assert app.api(tokens["access_token"]).get("/api/accounts").status_code == 401


def test_unknown_bearer_token_is_401(app: OAuthApp) -> None:
    response = app.api("not-a-token").get("/api/accounts")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "authentication_failed"


def test_refresh_token_unused_for_90_days_is_invalid_grant(app: OAuthApp) -> None:
    tokens = app.tokens()
    grant = app.running.sandbox.store.grant_by_refresh_token(tokens["refresh_token"])
    assert grant is not None
    grant.last_used_at -= timedelta(days=91)
    response = app.refresh(tokens["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_refresh_token_of_another_client_is_invalid_grant(app: OAuthApp) -> None:
    tokens = app.tokens()
    other = register_app(app.running, app.http)
    response = other.refresh(tokens["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert app.refresh(tokens["refresh_token"]).status_code == 200


def test_reinstall_on_the_same_account_replaces_the_grant(app: OAuthApp) -> None:
    account_id = app.account_ids()[0]
    first = app.tokens(account_id=account_id)
    second = app.tokens(account_id=account_id)
    assert app.refresh(first["refresh_token"]).json()["error"] == "invalid_grant"
    assert app.api(first["access_token"]).get("/api/accounts").status_code == 401
    assert app.refresh(second["refresh_token"]).status_code == 200
    assert [g["revoked"] for g in app.grants()] == [True, False]


def test_installs_on_two_accounts_are_separate_grants(app: OAuthApp) -> None:
    first_account, second_account = app.account_ids()[:2]
    first = app.tokens(account_id=first_account)
    app.tokens(account_id=second_account)
    assert app.refresh(first["refresh_token"]).status_code == 200
    assert sorted(g["account_id"] for g in app.grants() if not g["revoked"]) == sorted(
        [first_account, second_account]
    )


# ---------------------------------------------------------------------------- revocation


def test_revoking_the_refresh_token_disconnects_the_app(app: OAuthApp) -> None:
    tokens = app.tokens()
    response = app.revoke(tokens["refresh_token"])
    assert response.status_code == 200 and response.json() == {}
    assert app.api(tokens["access_token"]).get("/api/accounts").status_code == 401
    refreshed = app.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert app.grants()[0]["revoked"] is True
    # Revoking again is fine (RFC 7009: the token is already unusable).
    assert app.revoke(tokens["refresh_token"]).status_code == 200


def test_revoking_an_access_token_leaves_the_grant(app: OAuthApp) -> None:
    tokens = app.tokens()
    assert app.revoke(tokens["access_token"], hint="access_token").status_code == 200
    assert app.api(tokens["access_token"]).get("/api/accounts").status_code == 401
    refreshed = app.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200
    assert app.api(refreshed.json()["access_token"]).get("/api/accounts").status_code != 401


def test_revoke_with_a_wrong_hint_still_finds_the_token(app: OAuthApp) -> None:
    tokens = app.tokens()
    assert app.revoke(tokens["refresh_token"], hint="access_token").status_code == 200
    assert app.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_revoke_unknown_or_foreign_token_is_200_and_changes_nothing(app: OAuthApp) -> None:
    tokens = app.tokens()
    assert app.revoke("no-such-token").json() == {}
    other = register_app(app.running, app.http)
    assert other.revoke(tokens["refresh_token"]).status_code == 200
    assert app.refresh(tokens["refresh_token"]).status_code == 200
    missing = app.http.post("/oauth/revoke", data={}, headers=app.basic)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_grant_revoked_through_control_api(app: OAuthApp) -> None:
    tokens = app.tokens()
    (grant,) = app.grants()
    response = app.http.post(f"/_sandbox/oauth/grants/{grant['id']}/revoke")
    assert response.status_code == 200 and response.json()["revoked"] is True
    refreshed = app.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert app.api(tokens["access_token"]).get("/api/accounts").status_code == 401
    assert app.http.post("/_sandbox/oauth/grants/nope/revoke").status_code == 404


# ---------------------------------------------------------------------------- scopes


def test_token_without_a_scope_is_403_on_endpoints_needing_it(app: OAuthApp) -> None:
    tokens = app.tokens(scopes=["accounts:read"])
    assert tokens["scope"] == "accounts:read"
    response = app.api(tokens["access_token"]).get("/api/lists")
    assert response.status_code == 403
    error = response.json()["errors"][0]
    assert error["code"] == "permission_denied"
    assert "lists:read" in error["detail"]
    with_scope = app.tokens(scopes=["lists:read"])
    # Only the auth/scope outcome matters here, not the list handler's body.
    allowed = app.api(with_scope["access_token"]).get("/api/lists", validate=False)
    assert allowed.status_code not in (401, 403)


def test_refresh_cannot_widen_scopes(app: OAuthApp) -> None:
    tokens = app.tokens(scopes=["accounts:read"])
    response = app.http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "lists:read"},
        headers=app.basic,
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


# ---------------------------------------------------------------------------- control API


def test_control_clients_register_update_and_validate(app: OAuthApp) -> None:
    post = app.http.post
    created = post(
        "/_sandbox/oauth/clients",
        json={
            "client_id": "my-app",
            "client_secret": "s3cret",
            "name": "Mine",
            "redirect_uris": ["https://a.example/cb"],
        },
    )
    assert created.status_code == 201
    assert created.json()["client_secret"] == "s3cret"
    assert "lists:write" in created.json()["scopes"]  # every scope by default
    updated = post(
        "/_sandbox/oauth/clients",
        json={"client_id": "my-app", "redirect_uris": ["https://b.example/cb"], "scopes": ["lists:read"]},
    )
    assert updated.status_code == 200
    assert updated.json()["redirect_uris"] == ["https://a.example/cb", "https://b.example/cb"]
    assert updated.json()["scopes"] == ["lists:read"]
    assert updated.json()["name"] == "Mine"
    listed = app.http.get("/_sandbox/oauth/clients").json()["clients"]
    assert any(c["client_id"] == "my-app" for c in listed)
    assert (
        post(
            "/_sandbox/oauth/clients",
            json={"name": "x", "redirect_uris": ["https://a.example/cb"], "scopes": ["lists:reed"]},
        ).status_code
        == 400
    )
    assert (
        post("/_sandbox/oauth/clients", json={"name": "x", "redirect_uris": ["/relative"]}).status_code == 400
    )
    assert (
        post("/_sandbox/oauth/clients", json={"redirect_uris": ["https://a.example/cb"]}).status_code == 400
    )
    assert post("/_sandbox/oauth/clients", content=b"[1]").status_code == 400


def test_registered_redirect_uri_with_a_query_keeps_it(app: OAuthApp) -> None:
    uri = "http://127.0.0.1:9/klaviyo/callback?shop=abc"
    app.http.post("/_sandbox/oauth/clients", json={"client_id": app.client_id, "redirect_uris": [uri]})
    response, _, params = app.authorize(redirect_uri=uri)
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert query["shop"] == ["abc"] and query["state"] == [params["state"]] and "code" in query


def test_expire_access_tokens_by_account(app: OAuthApp) -> None:
    first_account, second_account = app.account_ids()[:2]
    first = app.tokens(account_id=first_account)
    second = app.tokens(account_id=second_account)
    response = app.http.post("/_sandbox/oauth/expire-access-tokens", json={"account_id": first_account})
    assert response.status_code == 200
    assert app.api(first["access_token"]).get("/api/accounts").status_code == 401
    assert app.api(second["access_token"]).get("/api/accounts").status_code != 401


def test_oauth_state_survives_a_restart(make_sandbox: Callable[..., RunningSandbox], tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    running = make_sandbox(seed="empty", rate_limits="off", state=state)
    with httpx2.Client(base_url=running.base_url, timeout=30, follow_redirects=False) as http:
        registered = register_app(running, http)
        tokens = registered.tokens()
        assert http.post("/_sandbox/state/flush").json()["data"]["written"] is True
    reloaded = Store.load(state)
    assert registered.client_id in reloaded.oauth_clients
    grant = reloaded.grant_by_refresh_token(tokens["refresh_token"])
    assert grant is not None and not grant.revoked
    assert tokens["access_token"] in reloaded.access_tokens
