"""The OAuth lifecycle of ``connectors.klaviyo.oauth`` against a real sandbox over HTTP, with a real
encrypted connection store in ``tmp_path``: connect, deny, forged and reused state, PKCE mismatch,
refresh (expiry, 401, concurrency), revoked grants, missing scopes, inactive, disconnect, two shops, and
races of a refresh with a reconnect or a disconnect (a gated transport holds one flow's request back).

The consent step is the sandbox's consent form, POSTed as a browser would (the browser itself is
exercised in ``tests/integration_app``). Every call the connector makes goes through a counting
transport, so tests can say exactly how many token or API requests happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from cryptography.fernet import Fernet

from connectors.klaviyo.client import KlaviyoClient
from connectors.klaviyo.config import REQUIRED_SCOPES, REVISION, KlaviyoSettings
from connectors.klaviyo.connections import Connection, ConnectionState, ConnectionStore, TokenSet
from connectors.klaviyo.errors import (
    ConnectionInactive,
    ConnectionNotFound,
    ConnectionRemoved,
    ConnectionReplaced,
    NeedsReauthorization,
    OAuthCallbackError,
)
from connectors.klaviyo.oauth import KlaviyoOAuth, missing_scopes
from klaviyo_sandbox.server import RunningSandbox
from klaviyo_sandbox.testing import register_oauth_app

REDIRECT_URI = "http://127.0.0.1:9/oauth/klaviyo/callback"  # never contacted: redirects are not followed
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one connector call to completion (each on its own event loop, as the CLI does)."""
    return asyncio.run(coroutine)


class CountingTransport(httpx2.AsyncBaseTransport):
    """A real HTTP transport that remembers ``(method, path)`` of every request the connector sends.

    A fresh connection per request: the tests run each call on a new event loop, and pooled
    connections must not outlive theirs.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
        async with httpx2.AsyncHTTPTransport() as transport:
            response = await transport.handle_async_request(request)
            content = await response.aread()
        return httpx2.Response(response.status_code, headers=response.headers, content=content)

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for seen in self.requests if seen == (method, path))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


@dataclass
class World:
    """A sandbox with a registered OAuth app, a connection store, and the connector under test."""

    running: RunningSandbox
    control: httpx2.Client
    client_id: str
    client_secret: str
    store: ConnectionStore
    store_key: str
    traffic: CountingTransport
    settings: KlaviyoSettings
    oauth: KlaviyoOAuth
    accounts: list[str]
    closers: list[Callable[[], None]] = field(default_factory=list)

    def consent(self, authorize_url: str, account_id: str, decision: str = "allow") -> dict[str, str]:
        """Answer the consent screen for ``authorize_url``; returns the query Klaviyo redirects back with."""
        location = urlsplit(authorize_url)
        assert f"{location.scheme}://{location.netloc}{location.path}" == self.settings.authorize_url
        params = {k: v[0] for k, v in parse_qs(location.query, keep_blank_values=True).items()}
        response = self.control.post(
            "/oauth/authorize", data={**params, "account_id": account_id, "decision": decision}
        )
        assert response.status_code == 302, response.text
        back = urlsplit(response.headers["location"])
        assert f"{back.scheme}://{back.netloc}{back.path}" == self.settings.redirect_uri
        return {k: v[0] for k, v in parse_qs(back.query, keep_blank_values=True).items()}

    def connect(self, recart_account_id: str, klaviyo_account_id: str) -> Connection:
        """The whole flow: start, consent (allow), callback."""
        returned = self.consent(self.oauth.start_authorization(recart_account_id), klaviyo_account_id)
        return run(self.oauth.complete_authorization(returned["state"], code=returned["code"]))

    def grants(self) -> list[dict[str, Any]]:
        """This app's grants at the sandbox (no token values)."""
        response = self.control.get("/_sandbox/oauth/grants", params={"client_id": self.client_id})
        assert response.status_code == 200, response.text
        return response.json()["grants"]

    def grant_of(self, klaviyo_account_id: str) -> dict[str, Any]:
        """The newest grant on a Klaviyo account."""
        return [g for g in self.grants() if g["account_id"] == klaviyo_account_id][-1]

    def expire_access_tokens(self, **body: str) -> int:
        """Expire live access tokens at the sandbox (the store still believes they are good)."""
        response = self.control.post("/_sandbox/oauth/expire-access-tokens", json=body)
        assert response.status_code == 200, response.text
        return response.json()["expired"]

    def api_log(self) -> list[dict[str, Any]]:
        """The sandbox's /api/ request log."""
        return self.control.get("/_sandbox/requests").json()["data"]


def account_of(world: World, recart_account_id: str) -> str:
    """``GET /api/accounts`` through the real API client with the connection's OAuth credentials
    (which refreshes once on a 401 and retries once); returns the Klaviyo account id."""

    async def read() -> str:
        credentials = world.oauth.credentials(recart_account_id)
        async with KlaviyoClient(world.settings, credentials, transport=world.traffic) as client:
            return (await client.get_account()).id

    return run(read())


@pytest.fixture
def make_world(
    make_sandbox: Callable[..., RunningSandbox],
    control: Callable[[RunningSandbox], httpx2.Client],
    tmp_path: Path,
) -> Iterator[Callable[..., World]]:
    """Build a ``World``: options go to the sandbox; ``app_scopes`` / ``request_scopes`` shape the app."""
    stores: list[ConnectionStore] = []

    def build(
        *,
        app_scopes: list[str] | None = None,
        request_scopes: tuple[str, ...] = REQUIRED_SCOPES,
        store_clock: Callable[[], datetime] | None = None,
        **sandbox_options: Any,
    ) -> World:
        running = make_sandbox(seed="empty", rate_limits="off", **sandbox_options)
        ctl = control(running)
        scopes = app_scopes if app_scopes is not None else list(REQUIRED_SCOPES)
        app = register_oauth_app(ctl, REDIRECT_URI, scopes)
        key = Fernet.generate_key().decode()
        store = ConnectionStore(tmp_path / f"state-{len(stores)}.db", key, clock=store_clock)
        stores.append(store)
        settings = KlaviyoSettings(
            base_url=running.base_url,
            authorize_url=f"{running.base_url}/oauth/authorize",
            client_id=app["client_id"],
            client_secret=app["client_secret"],
            redirect_uri=REDIRECT_URI,
            scopes=request_scopes,
        )
        traffic = CountingTransport()
        accounts = [a["id"] for a in ctl.get("/_sandbox/accounts").json()["data"]]
        return World(
            running=running,
            control=ctl,
            client_id=app["client_id"],
            client_secret=app["client_secret"],
            store=store,
            store_key=key,
            traffic=traffic,
            settings=settings,
            oauth=KlaviyoOAuth(settings, store, transport=traffic),
            accounts=accounts,
        )

    yield build
    for store in stores:
        store.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    """The default world: every required scope enabled on the app and requested."""
    return make_world()


# ---------------------------------------------------------------------------- connecting


def test_round_trip_connects_active_with_account_and_scopes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = world.oauth.start_authorization("shop-1")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == world.client_id
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"].split(" ") == list(REQUIRED_SCOPES)
    assert query["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", query["code_challenge"])
    assert len(query["state"]) >= 32

    returned = world.consent(url, world.accounts[1])
    connection = run(world.oauth.complete_authorization(returned["state"], code=returned["code"]))

    assert connection.state is ConnectionState.ACTIVE and connection.state_reason is None
    assert connection.klaviyo_account_id == world.accounts[1]
    assert connection.granted_scopes == tuple(sorted(REQUIRED_SCOPES))
    assert connection.token_version == 1
    assert world.store.get("shop-1") == connection
    # Exactly one code exchange and one account lookup.
    assert world.traffic.requests == [("POST", "/oauth/token"), ("GET", "/api/accounts")]
    grant = world.grant_of(world.accounts[1])
    assert grant["revoked"] is False and sorted(grant["scopes"]) == sorted(REQUIRED_SCOPES)

    assert account_of(world, "shop-1") == world.accounts[1]

    tokens = world.store.tokens("shop-1")
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret not in caplog.text
        assert secret not in repr(tokens) and secret not in repr(connection)


def test_the_pkce_verifier_matches_the_challenge(world: World) -> None:
    url = world.oauth.start_authorization("shop-1")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    pending = world.store.consume_pending_authorization(query["state"])
    assert pending.recart_account_id == "shop-1" and pending.redirect_uri == REDIRECT_URI
    assert re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", pending.code_verifier)
    digest = hashlib.sha256(pending.code_verifier.encode()).digest()
    assert base64.urlsafe_b64encode(digest).decode().rstrip("=") == query["code_challenge"]


def test_each_authorization_gets_its_own_state_and_verifier(world: World) -> None:
    first = parse_qs(urlsplit(world.oauth.start_authorization("shop-1")).query)
    second = parse_qs(urlsplit(world.oauth.start_authorization("shop-1")).query)
    assert first["state"] != second["state"]
    assert first["code_challenge"] != second["code_challenge"]


def test_invalid_account_ids_are_refused(world: World) -> None:
    for bad in ("", "shop 1", "shop-1\n", "x" * 129, "../etc"):
        with pytest.raises(ValueError):
            world.oauth.start_authorization(bad)


def test_denial_saves_nothing_and_spends_the_state(world: World) -> None:
    returned = world.consent(world.oauth.start_authorization("shop-1"), world.accounts[0], decision="deny")
    assert returned["error"] == "access_denied" and "code" not in returned
    with pytest.raises(OAuthCallbackError) as denied:
        run(
            world.oauth.complete_authorization(
                returned["state"], error=returned["error"], error_description=returned["error_description"]
            )
        )
    assert denied.value.reason == "access_denied"
    assert denied.value.user_message.startswith("You chose not to connect Klaviyo")
    assert getattr(denied.value, "recart_account_id", None) == "shop-1"
    assert world.store.get("shop-1") is None
    assert world.grants() == [] and world.traffic.requests == []
    with pytest.raises(OAuthCallbackError) as again:
        run(world.oauth.complete_authorization(returned["state"], error="access_denied"))
    assert again.value.reason == "invalid_state"


def test_wrong_state_is_refused_before_any_token_request(world: World) -> None:
    returned = world.consent(world.oauth.start_authorization("shop-1"), world.accounts[0])
    for forged in ("forged-state", "", None):
        with pytest.raises(OAuthCallbackError) as refused:
            run(world.oauth.complete_authorization(forged, code=returned["code"]))
        assert refused.value.reason == "invalid_state"
        assert "invalid or was already used" in refused.value.user_message
    assert world.traffic.requests == [] and world.store.get("shop-1") is None
    # The genuine callback still works: the forgeries did not spend it.
    connection = run(world.oauth.complete_authorization(returned["state"], code=returned["code"]))
    assert connection.state is ConnectionState.ACTIVE


def test_reused_state_is_refused(world: World) -> None:
    returned = world.consent(world.oauth.start_authorization("shop-1"), world.accounts[0])
    first = run(world.oauth.complete_authorization(returned["state"], code=returned["code"]))
    world.traffic.clear()
    with pytest.raises(OAuthCallbackError) as replayed:
        run(world.oauth.complete_authorization(returned["state"], code=returned["code"]))
    assert replayed.value.reason == "invalid_state"
    assert world.traffic.requests == []  # the replay never reached Klaviyo (which would revoke the grant)
    assert world.store.get("shop-1") == first
    assert world.grant_of(world.accounts[0])["revoked"] is False


def test_expired_state_is_refused(make_world: Callable[..., World]) -> None:
    now = [datetime.now(UTC)]
    world = make_world(store_clock=lambda: now[0])
    returned = world.consent(world.oauth.start_authorization("shop-1"), world.accounts[0])
    now[0] += timedelta(minutes=11)
    with pytest.raises(OAuthCallbackError) as expired:
        run(world.oauth.complete_authorization(returned["state"], code=returned["code"]))
    assert expired.value.reason == "expired_state"
    assert "expired" in expired.value.user_message
    assert world.traffic.requests == [] and world.store.get("shop-1") is None


def test_tampered_code_is_a_token_error(world: World) -> None:
    returned = world.consent(world.oauth.start_authorization("shop-1"), world.accounts[0])
    with pytest.raises(OAuthCallbackError) as failed:
        run(world.oauth.complete_authorization(returned["state"], code=returned["code"] + "x"))
    assert failed.value.reason == "token_error"
    assert (
        "invalid_grant" in failed.value.user_message and "try connecting again" in failed.value.user_message
    )
    assert world.store.get("shop-1") is None


def test_wrong_verifier_is_a_token_error(world: World) -> None:
    """The state's stored verifier is not the one the challenge was made from: Klaviyo's PKCE check fails."""
    url = world.oauth.start_authorization("shop-1")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    # Swap the pending authorization for one whose verifier does not match the challenge sent.
    genuine = world.store.consume_pending_authorization(query["state"])
    impostor = world.store.create_pending_authorization("shop-1", "v" * 64, genuine.redirect_uri)
    query["state"] = impostor.state
    rebuilt = f"{world.settings.authorize_url}?{httpx2.QueryParams(query)}"
    returned = world.consent(rebuilt, world.accounts[0])
    with pytest.raises(OAuthCallbackError) as failed:
        run(world.oauth.complete_authorization(returned["state"], code=returned["code"]))
    assert failed.value.reason == "token_error"
    assert "Code challenge failed" in failed.value.user_message
    assert world.store.get("shop-1") is None and world.grants() == []


def test_app_without_a_required_scope_needs_reauthorization(make_world: Callable[..., World]) -> None:
    """An older deployment asked for fewer scopes than this release needs: connected, but not usable."""
    fewer = tuple(s for s in REQUIRED_SCOPES if s != "webhooks:write")
    world = make_world(app_scopes=list(fewer), request_scopes=fewer)
    connection = world.connect("shop-1", world.accounts[0])
    assert connection.state is ConnectionState.NEEDS_REAUTH
    assert connection.state_reason == "missing scopes: webhooks:write"
    assert connection.klaviyo_account_id == world.accounts[0]
    assert missing_scopes(connection.granted_scopes) == ("webhooks:write",)
    world.traffic.clear()
    with pytest.raises(NeedsReauthorization, match="webhooks:write"):
        run(world.oauth.access_token("shop-1"))
    assert world.traffic.requests == []


def test_klaviyo_refusing_the_requested_scopes_is_shown_plainly(make_world: Callable[..., World]) -> None:
    """The app at Klaviyo lacks a scope we ask for: Klaviyo answers the authorize step with invalid_scope."""
    world = make_world(app_scopes=[s for s in REQUIRED_SCOPES if s != "webhooks:write"])
    url = world.oauth.start_authorization("shop-1")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    response = world.control.get("/oauth/authorize", params=params)
    assert response.status_code == 302
    back = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}
    assert back["error"] == "invalid_scope"
    with pytest.raises(OAuthCallbackError) as failed:
        run(
            world.oauth.complete_authorization(
                back["state"], error=back["error"], error_description=back["error_description"]
            )
        )
    assert failed.value.reason == "authorization_error"
    assert "webhooks:write" in failed.value.user_message
    assert world.store.get("shop-1") is None


def test_reconnecting_replaces_tokens_and_reactivates(world: World) -> None:
    first = world.connect("shop-1", world.accounts[0])
    world.oauth.set_active("shop-1", False)
    again = world.connect("shop-1", world.accounts[0])
    assert again.state is ConnectionState.ACTIVE and again.token_version == first.token_version + 1
    assert again.created_at == first.created_at
    assert account_of(world, "shop-1") == world.accounts[0]


def test_switching_to_another_klaviyo_account_revokes_the_old_grant(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    moved = world.connect("shop-1", world.accounts[1])
    assert moved.klaviyo_account_id == world.accounts[1]
    assert world.grant_of(world.accounts[0])["revoked"] is True
    assert world.grant_of(world.accounts[1])["revoked"] is False


# ---------------------------------------------------------------------------- refreshing


def test_expired_access_token_is_refreshed_transparently(make_world: Callable[..., World]) -> None:
    world = make_world(access_token_ttl_seconds=2)
    world.connect("shop-1", world.accounts[0])
    before = world.store.tokens("shop-1")
    time.sleep(2.2)  # the access token is now dead at the sandbox
    world.traffic.clear()
    assert account_of(world, "shop-1") == world.accounts[0]
    after = world.store.tokens("shop-1")
    assert after.access_token != before.access_token
    assert after.refresh_token == before.refresh_token  # the sandbox does not rotate; we keep what it sent
    # Refreshed before the call (it was expiring), so the API never saw the dead token.
    assert world.traffic.requests == [("POST", "/oauth/token"), ("GET", "/api/accounts")]
    connection = world.store.require("shop-1")
    assert connection.token_version == 2 and connection.last_refreshed_at is not None


def test_token_close_to_expiry_is_refreshed_before_use(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    world.traffic.clear()
    assert run(world.oauth.access_token("shop-1")) == world.store.tokens("shop-1").access_token
    assert world.traffic.requests == []  # fresh: no refresh
    late = KlaviyoOAuth(
        world.settings,
        world.store,
        transport=world.traffic,
        clock=lambda: datetime.now(UTC) + timedelta(minutes=59, seconds=30),  # 30 s before expiry
    )
    token = run(late.access_token("shop-1"))
    assert world.traffic.requests == [("POST", "/oauth/token")]
    assert token == world.store.tokens("shop-1").access_token


def test_401_refreshes_exactly_once_then_succeeds(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    world.connect("shop-1", world.accounts[0])
    old = world.store.tokens("shop-1")
    assert world.expire_access_tokens(client_id=world.client_id) == 1
    world.traffic.clear()
    assert account_of(world, "shop-1") == world.accounts[0]
    assert world.traffic.requests == [
        ("GET", "/api/accounts"),  # 401: expired at Klaviyo although the store thought it fresh
        ("POST", "/oauth/token"),
        ("GET", "/api/accounts"),
    ]
    assert [r["status"] for r in world.api_log()[-2:]] == [401, 200]
    new = world.store.tokens("shop-1")
    assert new.access_token != old.access_token
    assert world.store.require("shop-1").token_version == 2
    world.traffic.clear()
    assert account_of(world, "shop-1") == world.accounts[0]
    assert world.traffic.requests == [("GET", "/api/accounts")]
    assert old.access_token not in caplog.text and new.access_token not in caplog.text
    assert old.refresh_token not in caplog.text


def test_concurrent_401s_share_one_refresh(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    world.expire_access_tokens(client_id=world.client_id)
    world.traffic.clear()

    async def list_lists() -> list[str]:
        # Each worker has its own credentials object, as separate syncs of one shop would.
        credentials = world.oauth.credentials("shop-1")
        async with KlaviyoClient(world.settings, credentials, transport=world.traffic) as client:
            return [found.id async for found in client.iter_lists()]

    async def many() -> list[list[str]]:
        return await asyncio.gather(*(list_lists() for _ in range(5)))

    assert run(many()) == [[]] * 5  # the empty seed's accounts have no lists
    assert world.traffic.count("GET", "/api/lists") == 10  # each: 401, then the retry
    assert world.traffic.count("POST", "/oauth/token") == 1
    assert world.store.require("shop-1").token_version == 2


def test_processes_sharing_the_store_refresh_once(world: World) -> None:
    """Several workers, each with its own store object on the same file (as separate processes have),
    find the token expiring at once: the refresh lock lets one refresh and the others reuse its result."""
    world.connect("shop-1", world.accounts[0])
    later = datetime.now(UTC) + timedelta(minutes=59, seconds=30)
    world.traffic.clear()
    barrier = threading.Barrier(4)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        store = ConnectionStore(world.store.path, world.store_key)
        try:
            oauth = KlaviyoOAuth(world.settings, store, transport=world.traffic, clock=lambda: later)
            barrier.wait()
            results.append(run(oauth.access_token("shop-1")))
        except BaseException as error:
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert world.traffic.count("POST", "/oauth/token") == 1
    assert len(set(results)) == 1 and results[0] == world.store.tokens("shop-1").access_token
    assert world.store.require("shop-1").token_version == 2


def test_revoked_refresh_token_needs_reauthorization(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    grant = world.grant_of(world.accounts[0])
    revoked = world.control.post(f"/_sandbox/oauth/grants/{grant['id']}/revoke")
    assert revoked.status_code == 200
    with pytest.raises(NeedsReauthorization, match="invalid_grant"):
        account_of(world, "shop-1")
    connection = world.store.require("shop-1")
    assert connection.state is ConnectionState.NEEDS_REAUTH
    assert connection.state_reason == "refresh failed: invalid_grant"
    world.traffic.clear()
    with pytest.raises(NeedsReauthorization):
        run(world.oauth.access_token("shop-1"))
    with pytest.raises(NeedsReauthorization):
        world.oauth.set_active("shop-1", True)
    assert world.traffic.requests == []
    # Reconnecting ("Update Klaviyo connection") brings it back.
    assert world.connect("shop-1", world.accounts[0]).state is ConnectionState.ACTIVE
    assert account_of(world, "shop-1") == world.accounts[0]


def test_refresh_with_a_revoked_grant_raises_from_refresh_too(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    world.control.post(f"/_sandbox/oauth/grants/{world.grant_of(world.accounts[0])['id']}/revoke")
    with pytest.raises(NeedsReauthorization):
        run(world.oauth.refresh("shop-1", force=True))
    assert world.store.require("shop-1").state is ConnectionState.NEEDS_REAUTH


# ---------------------------------------------------------------------------- switches


def test_inactive_connection_makes_no_http_request_at_all(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    inactive = world.oauth.set_active("shop-1", False)
    assert inactive.state is ConnectionState.INACTIVE
    # Make any token use need a refresh, so a leak would show at the token endpoint too.
    world.expire_access_tokens(client_id=world.client_id)
    assert world.control.delete("/_sandbox/requests").status_code == 200
    last_used = world.grant_of(world.accounts[0])["last_used_at"]
    world.traffic.clear()

    with pytest.raises(ConnectionInactive):
        run(world.oauth.access_token("shop-1"))
    with pytest.raises(ConnectionInactive):
        account_of(world, "shop-1")
    with pytest.raises(ConnectionInactive):
        run(world.oauth.refresh("shop-1", force=True))
    credentials = world.oauth.credentials("shop-1")
    with pytest.raises(ConnectionInactive):
        run(credentials.authorization())

    assert world.traffic.requests == []
    assert world.api_log() == []
    assert world.grant_of(world.accounts[0])["last_used_at"] == last_used  # no refresh reached Klaviyo

    assert world.oauth.set_active("shop-1", True).state is ConnectionState.ACTIVE
    assert account_of(world, "shop-1") == world.accounts[0]


def test_unknown_account_is_not_found(world: World) -> None:
    with pytest.raises(ConnectionNotFound):
        run(world.oauth.access_token("nobody"))
    with pytest.raises(ConnectionNotFound):
        world.oauth.set_active("nobody", True)
    with pytest.raises(ConnectionNotFound):
        run(world.oauth.disconnect("nobody"))
    assert world.traffic.requests == []


def test_disconnect_revokes_at_klaviyo_and_wipes_secrets(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    tokens = world.store.tokens("shop-1")
    world.traffic.clear()
    removed = run(world.oauth.disconnect("shop-1"))
    assert removed.state is ConnectionState.REMOVED
    assert world.traffic.requests == [("POST", "/oauth/revoke")]
    assert world.grant_of(world.accounts[0])["revoked"] is True
    with pytest.raises(ConnectionRemoved):
        world.store.tokens("shop-1")
    with pytest.raises(ConnectionRemoved):
        run(world.oauth.access_token("shop-1"))
    with pytest.raises(ConnectionRemoved):
        world.oauth.set_active("shop-1", True)
    # The old tokens are dead at Klaviyo too.
    dead = world.control.get(
        "/api/accounts", headers={"Authorization": f"Bearer {tokens.access_token}", "revision": REVISION}
    )
    assert dead.status_code == 401
    # Disconnecting again is a no-op without HTTP.
    world.traffic.clear()
    assert run(world.oauth.disconnect("shop-1")).state is ConnectionState.REMOVED
    assert world.traffic.requests == []
    # And the shop can connect again from scratch.
    assert world.connect("shop-1", world.accounts[0]).state is ConnectionState.ACTIVE


def test_disconnect_after_the_shop_uninstalled_at_klaviyo(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    world.control.post(f"/_sandbox/oauth/grants/{world.grant_of(world.accounts[0])['id']}/revoke")
    assert run(world.oauth.disconnect("shop-1")).state is ConnectionState.REMOVED


def test_disconnect_of_a_connection_needing_reauthorization(world: World) -> None:
    world.connect("shop-1", world.accounts[0])
    world.control.post(f"/_sandbox/oauth/grants/{world.grant_of(world.accounts[0])['id']}/revoke")
    with pytest.raises(NeedsReauthorization):
        run(world.oauth.refresh("shop-1", force=True))
    assert run(world.oauth.disconnect("shop-1")).state is ConnectionState.REMOVED


# ---------------------------------------------------------------------------- races

# How long a flow gets to reach the refresh lock (and wait there) before the test lets the other one go on.
# Code without the lock finishes well inside it, so the unguarded interleaving is what the test then sees.
GRACE_SECONDS = 1.0


@dataclass
class Gate:
    """Holds back the first request ``matches`` accepts until ``opened`` is set.

    ``answer``, when given, replies in the sandbox's place (only for what the sandbox cannot do itself).
    """

    matches: Callable[[httpx2.Request, bytes], bool]
    answer: Callable[[], httpx2.Response] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    used: bool = False


class GatedTransport(CountingTransport):
    """A ``CountingTransport`` that holds chosen requests back, so a test can interleave two flows."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[Gate] = []

    def gate(
        self,
        matches: Callable[[httpx2.Request, bytes], bool],
        answer: Callable[[], httpx2.Response] | None = None,
    ) -> Gate:
        gate = Gate(matches, answer)
        self.gates.append(gate)
        return gate

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        gate = next((g for g in self.gates if not g.used and g.matches(request, body)), None)
        if gate is not None:
            gate.used = True
            gate.arrived.set()
            await gate.opened.wait()
            if gate.answer is not None:
                return gate.answer()
        return await super().handle_async_request(request)


def refresh_grant(request: httpx2.Request, body: bytes) -> bool:
    return request.url.path == "/oauth/token" and b"grant_type=refresh_token" in body


def revoke_call(request: httpx2.Request, body: bytes) -> bool:
    return request.url.path == "/oauth/revoke"


def new_grant(
    world: World, klaviyo_account_id: str, scopes: tuple[str, ...] = REQUIRED_SCOPES
) -> dict[str, Any]:
    """Install the app on a Klaviyo account once more, past the connector (consent, then code exchange),
    and return the token answer; the sandbox voids the account's previous grant, as Klaviyo does."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    query = {
        "response_type": "code",
        "client_id": world.client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": " ".join(scopes),
        "state": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    returned = world.consent(f"{world.settings.authorize_url}?{urlencode(query)}", klaviyo_account_id)
    exchanged = world.control.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": returned["code"],
            "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI,
        },
        auth=(world.client_id, world.client_secret),
    )
    assert exchanged.status_code == 200, exchanged.text
    return exchanged.json()


def token_set(answer: dict[str, Any]) -> TokenSet:
    """The ``TokenSet`` of a token answer."""
    return TokenSet(
        access_token=answer["access_token"],
        refresh_token=answer["refresh_token"],
        expires_at=datetime.now(UTC) + timedelta(seconds=answer["expires_in"]),
        scopes=tuple(answer["scope"].split()),
    )


def rotated(
    world: World, klaviyo_account_id: str, scopes: tuple[str, ...] = REQUIRED_SCOPES
) -> Callable[[], httpx2.Response]:
    """An answer to a refresh as a rotating Klaviyo gives it: the refresh token sent dies, a new one
    comes back. The sandbox never rotates, so a new installation on the same account stands in for the
    rotation (it voids the old refresh token and mints a live one, which the sandbox can account for)."""
    return lambda: httpx2.Response(200, json=new_grant(world, klaviyo_account_id, scopes))


def grant_revoked(world: World, grant_id: str) -> bool:
    return world.running.sandbox.store.grants[grant_id].revoked


def unheld_live_grants(world: World) -> list[str]:
    """Ids of the app's grants still live at the sandbox although no stored connection holds them."""
    held = set()
    for connection in world.store.list():
        with contextlib.suppress(ConnectionRemoved):
            held.add(world.store.tokens(connection.recart_account_id).refresh_token)
    return [
        grant.id
        for grant in world.running.sandbox.store.grants.values()
        if grant.client_id == world.client_id and not grant.revoked and grant.refresh_token not in held
    ]


def held_grant_id(world: World, recart_account_id: str) -> str:
    """The sandbox grant of the stored refresh token, which must be live."""
    refresh_token = world.store.tokens(recart_account_id).refresh_token
    grant = world.running.sandbox.store.grant_by_refresh_token(refresh_token)
    assert grant is not None and not grant.revoked
    return grant.id


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


async def within_grace(event: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), GRACE_SECONDS)


def test_reconnect_during_a_refresh_keeps_the_new_connection(world: World) -> None:
    """The shop reconnects the same Klaviyo account while a refresh is in flight: the code exchange voids
    the refresh token being used, and the refresh's invalid_grant must not mark the new connection
    NEEDS_REAUTH."""
    world.connect("shop-1", world.accounts[0])
    first = world.grant_of(world.accounts[0])["id"]
    gated = GatedTransport()
    oauth = KlaviyoOAuth(world.settings, world.store, transport=gated)
    held = gated.gate(refresh_grant)

    async def race() -> list[Any]:
        refreshing = asyncio.create_task(oauth.refresh("shop-1", force=True))
        await held.arrived.wait()
        returned = world.consent(oauth.start_authorization("shop-1"), world.accounts[0])
        reconnecting = asyncio.create_task(
            oauth.complete_authorization(returned["state"], code=returned["code"])
        )
        await until(lambda: grant_revoked(world, first))  # the exchange voided the refresh token in flight
        await asyncio.wait({reconnecting}, timeout=GRACE_SECONDS)  # it saves, or waits for the lock
        held.opened.set()
        return await asyncio.gather(refreshing, reconnecting, return_exceptions=True)

    refreshed, reconnected = run(race())
    # The reconnect waited for the refresh lock, so the refresh failed first: its refresh token died under it.
    assert isinstance(refreshed, NeedsReauthorization)
    assert isinstance(reconnected, Connection) and reconnected.state is ConnectionState.ACTIVE
    connection = world.store.require("shop-1")
    assert connection.state is ConnectionState.ACTIVE and connection.state_reason is None
    assert connection.token_version == reconnected.token_version
    assert held_grant_id(world, "shop-1") != first
    assert unheld_live_grants(world) == []
    assert account_of(world, "shop-1") == world.accounts[0]


def test_refresh_failing_after_an_unlocked_reconnect_hands_out_the_new_tokens(world: World) -> None:
    """A writer that skips the refresh lock (a process still on an older release) saves a reconnect while a
    refresh is in flight: the refresh's invalid_grant leaves the new connection alone, returns its tokens."""
    world.connect("shop-1", world.accounts[0])
    gated = GatedTransport()
    oauth = KlaviyoOAuth(world.settings, world.store, transport=gated)
    held = gated.gate(refresh_grant)

    async def race() -> TokenSet:
        refreshing = asyncio.create_task(oauth.refresh("shop-1", force=True))
        await held.arrived.wait()
        world.store.save_connection(
            "shop-1",
            world.accounts[0],
            token_set(new_grant(world, world.accounts[0])),
            ConnectionState.ACTIVE,
        )
        held.opened.set()
        return await refreshing

    refreshed = run(race())
    assert refreshed == world.store.tokens("shop-1")
    connection = world.store.require("shop-1")
    assert connection.state is ConnectionState.ACTIVE and connection.token_version == 2
    assert "state_changed" not in [event["kind"] for event in world.store.history("shop-1")]
    held_grant_id(world, "shop-1")
    assert unheld_live_grants(world) == []


def test_disconnect_during_a_rotating_refresh_leaves_no_live_grant(world: World) -> None:
    """Klaviyo may rotate the refresh token on refresh. A disconnect that read the old one before the
    refresh rotated it would revoke a dead token and leave the new one live at Klaviyo, held by nobody."""
    world.connect("shop-1", world.accounts[0])
    gated = GatedTransport()
    oauth = KlaviyoOAuth(world.settings, world.store, transport=gated)
    refresh = gated.gate(refresh_grant, answer=rotated(world, world.accounts[0]))
    revoke = gated.gate(revoke_call)

    async def race() -> list[Any]:
        refreshing = asyncio.create_task(oauth.refresh("shop-1", force=True))
        await refresh.arrived.wait()
        disconnecting = asyncio.create_task(oauth.disconnect("shop-1"))
        await within_grace(revoke.arrived)  # revoking what it read, or waiting for the lock
        refresh.opened.set()
        await asyncio.wait({refreshing})
        revoke.opened.set()
        return await asyncio.gather(refreshing, disconnecting, return_exceptions=True)

    refreshed, removed = run(race())
    assert isinstance(refreshed, TokenSet)
    assert isinstance(removed, Connection) and removed.state is ConnectionState.REMOVED
    assert world.store.require("shop-1").state is ConnectionState.REMOVED
    with pytest.raises(ConnectionRemoved):
        world.store.tokens("shop-1")
    assert len(world.grants()) == 2  # the rotation did happen
    assert unheld_live_grants(world) == []
    assert all(grant["revoked"] for grant in world.grants())


def test_disconnect_during_a_reconnect_leaves_no_unheld_grant(world: World) -> None:
    """The shop disconnects while a reconnect of the same Klaviyo account completes: the reconnect, saved
    last, stays connected, and no grant is left live at Klaviyo that the store does not hold."""
    world.connect("shop-1", world.accounts[0])
    first = world.grant_of(world.accounts[0])["id"]
    gated = GatedTransport()
    oauth = KlaviyoOAuth(world.settings, world.store, transport=gated)
    revoke = gated.gate(revoke_call)

    async def race() -> list[Any]:
        disconnecting = asyncio.create_task(oauth.disconnect("shop-1"))
        await revoke.arrived.wait()
        returned = world.consent(oauth.start_authorization("shop-1"), world.accounts[0])
        reconnecting = asyncio.create_task(
            oauth.complete_authorization(returned["state"], code=returned["code"])
        )
        await until(lambda: grant_revoked(world, first))  # the exchange voided the token being revoked
        await asyncio.wait({reconnecting}, timeout=GRACE_SECONDS)  # it saves, or waits for the lock
        revoke.opened.set()
        return await asyncio.gather(disconnecting, reconnecting, return_exceptions=True)

    removed, reconnected = run(race())
    assert isinstance(removed, Connection) and removed.state is ConnectionState.REMOVED
    assert isinstance(reconnected, Connection) and reconnected.state is ConnectionState.ACTIVE
    assert world.store.require("shop-1").state is ConnectionState.ACTIVE
    assert held_grant_id(world, "shop-1") != first
    assert unheld_live_grants(world) == []
    assert account_of(world, "shop-1") == world.accounts[0]


@pytest.mark.parametrize("meanwhile", ["wiped", "switched_account"])
def test_refreshed_tokens_nobody_stores_are_revoked(world: World, meanwhile: str) -> None:
    """While a refresh is in flight, a writer that skips the refresh lock wipes the connection or saves
    one on another Klaviyo account: the refresh cannot store its tokens, so it gives their grant back."""
    world.connect("shop-1", world.accounts[0])
    first = world.grant_of(world.accounts[0])["id"]
    gated = GatedTransport()
    oauth = KlaviyoOAuth(world.settings, world.store, transport=gated)
    held = gated.gate(refresh_grant)

    async def race() -> TokenSet | BaseException:
        refreshing = asyncio.create_task(oauth.refresh("shop-1", force=True))
        await held.arrived.wait()
        if meanwhile == "wiped":
            world.store.wipe_secrets("shop-1", reason="removed by an operator")
        else:
            other = token_set(new_grant(world, world.accounts[1]))
            world.store.save_connection("shop-1", world.accounts[1], other, ConnectionState.ACTIVE)
        held.opened.set()
        (outcome,) = await asyncio.gather(refreshing, return_exceptions=True)
        return outcome

    outcome = run(race())
    assert gated.requests == [("POST", "/oauth/token"), ("POST", "/oauth/revoke")]
    assert grant_revoked(world, first)
    assert unheld_live_grants(world) == []
    if meanwhile == "wiped":
        assert isinstance(outcome, ConnectionRemoved)
        assert world.store.require("shop-1").state is ConnectionState.REMOVED
    else:
        assert outcome == world.store.tokens("shop-1")
        held_grant_id(world, "shop-1")
        assert account_of(world, "shop-1") == world.accounts[1]


def test_a_refresh_granting_fewer_scopes_needs_reauthorization(world: World) -> None:
    """A refresh whose answer lacks a required scope stores the tokens and marks the connection."""
    world.connect("shop-1", world.accounts[0])
    fewer = tuple(scope for scope in REQUIRED_SCOPES if scope != "webhooks:write")
    gated = GatedTransport()
    oauth = KlaviyoOAuth(world.settings, world.store, transport=gated)
    gated.gate(refresh_grant, answer=rotated(world, world.accounts[0], fewer)).opened.set()
    with pytest.raises(NeedsReauthorization, match="webhooks:write"):
        run(oauth.refresh("shop-1", force=True))
    connection = world.store.require("shop-1")
    assert connection.state is ConnectionState.NEEDS_REAUTH
    assert connection.state_reason == "missing scopes: webhooks:write"
    assert connection.token_version == 2
    held_grant_id(world, "shop-1")
    assert unheld_live_grants(world) == []


def test_set_state_with_a_stale_token_version_changes_nothing(world: World) -> None:
    """The guard the refresh relies on: a state change meant for tokens replaced since is dropped."""
    connected = world.connect("shop-1", world.accounts[0])
    version = connected.token_version
    reason = "refresh failed: invalid_grant"
    stale = world.store.set_state(
        "shop-1", ConnectionState.NEEDS_REAUTH, reason, expected_version=version - 1
    )
    assert stale == world.store.require("shop-1") and stale.state is ConnectionState.ACTIVE
    current = world.store.set_state("shop-1", ConnectionState.NEEDS_REAUTH, reason, expected_version=version)
    assert current.state is ConnectionState.NEEDS_REAUTH and current.token_version == version
    with pytest.raises(ValueError, match="expected_version"):
        world.store.set_state("shop-1", ConnectionState.REMOVED, expected_version=version)
    assert world.store.require("shop-1").state is ConnectionState.NEEDS_REAUTH


# ---------------------------------------------------------------------------- many shops


def test_two_shops_on_two_klaviyo_accounts_use_their_own_tokens(world: World) -> None:
    first = world.connect("shop-1", world.accounts[0])
    second = world.connect("shop-2", world.accounts[1])
    assert (first.klaviyo_account_id, second.klaviyo_account_id) == (world.accounts[0], world.accounts[1])
    assert world.store.tokens("shop-1").access_token != world.store.tokens("shop-2").access_token
    one, two = world.oauth.credentials("shop-1"), world.oauth.credentials("shop-2")
    assert one.limiter_key == f"oauth:{world.client_id}:shop-1"
    assert two.limiter_key == f"oauth:{world.client_id}:shop-2"
    assert "Bearer" not in repr(one)

    world.control.delete("/_sandbox/requests")
    assert account_of(world, "shop-1") == world.accounts[0]
    assert account_of(world, "shop-2") == world.accounts[1]
    assert [(r["account_id"], r["client_id"]) for r in world.api_log()] == [
        (world.accounts[0], world.client_id),
        (world.accounts[1], world.client_id),
    ]

    # One shop's trouble stays its own: expire and switch off shop-1, shop-2 is untouched.
    world.expire_access_tokens(account_id=world.accounts[0])
    world.oauth.set_active("shop-1", False)
    world.traffic.clear()
    assert account_of(world, "shop-2") == world.accounts[1]
    assert world.traffic.requests == [("GET", "/api/accounts")]  # no refresh for shop-2
    with pytest.raises(ConnectionInactive):
        account_of(world, "shop-1")
    assert world.store.require("shop-2").token_version == 1


def test_authlib_runs_on_httpx2_without_warnings() -> None:
    """STYLE.md §5: authlib's client is built on httpx2 here, and nothing falls back to (or imports) httpx."""
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import httpx2\n"
        "from authlib.integrations.httpx_client import AsyncOAuth2Client\n"
        "import connectors.klaviyo.oauth\n"
        "assert issubclass(AsyncOAuth2Client, httpx2.AsyncClient)\n"
        "assert 'httpx' not in sys.modules, 'httpx was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_credentials_bound_to_a_klaviyo_account_stop_when_the_shop_connects_another(world: World) -> None:
    """Work bound to one Klaviyo account (a push and its ledger) must not carry on in the account the
    shop connects meanwhile: its credentials refuse the new tokens before any HTTP call."""
    world.connect("shop-1", world.accounts[0])
    bound = world.oauth.credentials("shop-1", world.accounts[0])
    unbound = world.oauth.credentials("shop-1")
    assert run(bound.authorization()).startswith("Bearer ")

    world.connect("shop-1", world.accounts[1])  # the shop switches Klaviyo accounts mid-push
    calls = len(world.traffic.requests)
    with pytest.raises(ConnectionReplaced, match=world.accounts[1]):
        run(bound.authorization())
    assert len(world.traffic.requests) == calls
    assert run(unbound.authorization()) == f"Bearer {world.store.tokens('shop-1').access_token}"
