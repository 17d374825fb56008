"""The OAuth lifecycle of a Klaviyo connection: authorize (PKCE S256 + ``state``), callback, refresh,
activate/deactivate, revoke, and the ``Credentials`` the API client signs its requests with.

One ``KlaviyoOAuth`` serves every Recart account: tokens live (encrypted) in the ``ConnectionStore``,
never in this object, so any number of processes can share the store and refresh safely.

Token endpoint calls go through authlib's ``AsyncOAuth2Client``, which is built on httpx2 (STYLE.md §5):
``client_secret_basic`` (Klaviyo wants Basic client auth and form bodies, reference §1), PKCE verifier in
the code exchange, RFC 7009 revoke. A compliance hook turns answers authlib would mistake for tokens (a
4xx JSON body without ``error``) and throttling into our errors. A fresh client is opened per call: calls
are rare (once an hour per account), each one then holds no token state shared across accounts, and no
pooled connection outlives the event loop it was made on (the CLI and tests run several loops). The one
API call of the flow (``GET /api/accounts`` after the exchange) goes through ``KlaviyoClient``, so it
books the connection's rate-limit quota like every later call.

Refreshes are serialised per connection: an asyncio lock within a process, then the store's
cross-process ``refresh_lock``; inside both the tokens are re-read, and a refresh is skipped when another
worker already did it. The new tokens are written with a compare-and-swap on ``token_version``. Saving a
reconnect and disconnecting take the same two locks, so a refresh never runs on a refresh token that is
being replaced or revoked. Verdicts on tokens (``invalid_grant``, a scope missing) are written only if the
tokens are still the ones judged (``set_state(expected_version=...)``), and a grant obtained but not
stored is revoked: no grant stays live at Klaviyo that no connection holds.

Nothing here logs or formats a token: errors carry Klaviyo's error code and description only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from connectors.klaviyo.client import KlaviyoClient, RetryPolicy, StaticBearerCredentials
from connectors.klaviyo.config import REQUIRED_SCOPES, USER_AGENT, KlaviyoSettings
from connectors.klaviyo.connections import (
    Connection,
    ConnectionState,
    ConnectionStore,
    PendingAuthorization,
    TokenSet,
)
from connectors.klaviyo.errors import (
    AuthenticationError,
    ConnectionInactive,
    ConnectionNotFound,
    ConnectionRemoved,
    ConnectionReplaced,
    InvalidRequestError,
    KlaviyoApiError,
    KlaviyoError,
    MalformedResponseError,
    NeedsReauthorization,
    OAuthCallbackError,
    RateLimitedError,
    ServerError,
)

__all__ = [
    "PENDING_AUTHORIZATION_TTL_SECONDS",
    "REFRESH_MARGIN_SECONDS",
    "AuthorizationFailed",
    "KlaviyoOAuth",
    "OAuthCredentials",
    "missing_scopes",
    "raise_unless_active",
    "valid_recart_account_id",
]

log = logging.getLogger(__name__)

# Refresh an access token this long before it expires, so a request never leaves with a token that
# dies in flight (Klaviyo's SDKs use ~30 s; a slow page of a long sync needs more).
REFRESH_MARGIN_SECONDS = 60
# How long the person has to finish the consent screen (RFC 6749 suggests short-lived codes; ours
# bounds the whole round trip).
PENDING_AUTHORIZATION_TTL_SECONDS = 600
# Connect 5 s, the rest 20 s: the token endpoint answers fast or not at all.
HTTP_TIMEOUT = httpx2.Timeout(20.0, connect=5.0)
# Token-endpoint retries: only where the request provably did not take effect (see _send_with_retries).
TOKEN_ATTEMPTS = 3
MAX_RETRY_AFTER_SECONDS = 10.0
REFRESH_LOCK_TIMEOUT_SECONDS = 30.0
_LOOKUP_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.5, backoff_max=4.0)
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")

T = TypeVar("T")


class AuthorizationFailed(OAuthCallbackError):
    """An ``OAuthCallbackError`` that knows which Recart account the attempt was for (when it does),
    so a page can offer "Try again" for the right shop."""

    def __init__(self, user_message: str, *, reason: str, recart_account_id: str | None = None) -> None:
        super().__init__(user_message, reason=reason)
        self.recart_account_id = recart_account_id


class _TokenEndpointError(Exception):
    """An answer from the token/revoke endpoint that is neither tokens nor an OAuth error body."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def valid_recart_account_id(value: str | None) -> bool:
    """Whether ``value`` looks like a Recart account id (1–128 of letters, digits and ``._:@-``)."""
    return bool(value) and _ACCOUNT_ID.fullmatch(value or "") is not None


def missing_scopes(granted: tuple[str, ...] | list[str] | set[str] | str) -> tuple[str, ...]:
    """The required scopes (``config.REQUIRED_SCOPES``) that ``granted`` lacks, in a stable order.

    Required means what this release of the integration needs, not what the deployment happens to
    request: a connection made by an older release with fewer scopes becomes "needs re-authorization"
    once the code needs more (the "Update Klaviyo Connection" case).
    """
    have = set(granted.split()) if isinstance(granted, str) else set(granted)
    return tuple(scope for scope in REQUIRED_SCOPES if scope not in have)


def raise_unless_active(connection: Connection) -> None:
    """Raise the error that says why ``connection`` cannot make API calls; return if it is active."""
    account = connection.recart_account_id
    if connection.state is ConnectionState.ACTIVE:
        return
    if connection.state is ConnectionState.INACTIVE:
        raise ConnectionInactive(account, "switched off by the shop; no Klaviyo calls are made")
    if connection.state is ConnectionState.NEEDS_REAUTH:
        why = f" ({connection.state_reason})" if connection.state_reason else ""
        raise NeedsReauthorization(account, f"needs re-authorization{why}; the shop must reconnect Klaviyo")
    why = f" ({connection.state_reason})" if connection.state_reason else ""
    raise ConnectionRemoved(account, f"removed{why}; the shop must connect Klaviyo again")


def _missing_scopes_reason(missing: tuple[str, ...]) -> str:
    return f"missing scopes: {' '.join(missing)}"


def _default_clock() -> datetime:
    return datetime.now(UTC)


class _BorrowedTransport(httpx2.AsyncBaseTransport):
    """Lends an injected transport to a short-lived client without letting the client close it."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Delegate to the borrowed transport."""
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Leave the borrowed transport open: its owner closes it."""


@asynccontextmanager
async def held_in_own_thread(lock: Callable[[], AbstractContextManager[Any]]) -> AsyncIterator[None]:
    """Hold a blocking (thread-bound) lock for the duration of an ``async with`` block.

    For ``ConnectionStore.refresh_lock`` and ``push_lock``: they block while they wait and are
    re-entrant per thread. Entered on the event loop's thread such a lock would stall every other
    coroutine while waiting, and two coroutines of one loop would both "re-enter" it at once. So
    each acquisition gets its own thread, which enters the lock, waits for the block to finish, and
    exits it on the same thread.
    """
    entered = threading.Event()
    release = threading.Event()
    failure: list[BaseException] = []

    def hold() -> None:
        try:
            with lock():
                entered.set()
                release.wait()
        except BaseException as error:  # handed to the waiting coroutine below
            failure.append(error)
            entered.set()

    thread = threading.Thread(target=hold, name="klaviyo-account-lock", daemon=True)
    thread.start()
    try:
        await asyncio.to_thread(entered.wait)
    except BaseException:
        release.set()  # cancelled while waiting: let the thread release as soon as it acquires
        # and free the executor thread waiting above: asyncio.run joins it on the way out, which
        # would otherwise wait until the lock is free (up to the lock's timeout)
        entered.set()
        raise
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        release.set()
        await asyncio.to_thread(thread.join)


class KlaviyoOAuth:
    """Connects Recart accounts to Klaviyo with OAuth and keeps their tokens fresh.

    ``transport`` (an httpx2 async transport) is used for every call to Klaviyo, for tests that count
    or shape traffic; ``clock`` returns the current aware UTC time.
    """

    def __init__(
        self,
        settings: KlaviyoSettings,
        store: ConnectionStore,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Bind the app's settings and the shared connection store."""
        self.settings = settings
        self.store = store
        self._transport = transport
        self._clock = clock or _default_clock
        # Same-process refreshes of one account queue on an asyncio lock first, so only one of them
        # takes the cross-process lock and the others find fresh tokens. Locks belong to one event
        # loop, hence one table per loop (weakly held, so a finished loop's locks go with it).
        self._local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )
        self._local_locks_guard = threading.Lock()

    # ------------------------------------------------------------------------ authorize and callback

    def start_authorization(self, recart_account_id: str) -> str:
        """The Klaviyo authorize URL to send the shop's browser to (PKCE S256, single-use ``state``)."""
        self._require_app_credentials()
        if not valid_recart_account_id(recart_account_id):
            raise ValueError(f"not a valid Recart account id: {recart_account_id!r}")
        # 64 random bytes → 86 characters of [A-Za-z0-9_-]: inside RFC 7636's 43–128 and Klaviyo's regex.
        verifier = secrets.token_urlsafe(64)
        pending = self.store.create_pending_authorization(
            recart_account_id,
            verifier,
            self.settings.redirect_uri,
            ttl_seconds=PENDING_AUTHORIZATION_TTL_SECONDS,
        )
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": self.settings.redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": pending.state,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        base = self.settings.authorize_url
        separator = "&" if "?" in base else "?"
        # quote (not quote_plus): scopes are separated by %20, as Klaviyo documents the parameter.
        return f"{base}{separator}{urlencode(params, quote_via=quote)}"

    async def complete_authorization(
        self,
        state: str | None,
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> Connection:
        """Finish the callback: check ``state``, exchange the code, find the Klaviyo account, save.

        The connection is saved ACTIVE, or NEEDS_REAUTH ("missing scopes: …") when Klaviyo granted less
        than ``REQUIRED_SCOPES``. Connecting again replaces the tokens (and revokes the old grant when
        the shop picked another Klaviyo account). The save happens under the connection's refresh locks.

        Raises ``AuthorizationFailed`` (an ``OAuthCallbackError``) with a message fit for the person and
        a ``reason``: ``invalid_state``, ``expired_state``, ``access_denied``, ``authorization_error``,
        ``token_error``, ``klaviyo_unavailable`` (also when a refresh held the lock too long; the new
        grant is then revoked) or ``account_lookup_failed``.
        """
        # The state is checked (and spent) before anything else: a forged or replayed callback must not
        # reach the token endpoint, and even a denial uses the state up.
        try:
            pending = self.store.consume_pending_authorization(state or "")
        except OAuthCallbackError as failure:
            raise AuthorizationFailed(failure.user_message, reason=failure.reason) from None
        account = pending.recart_account_id

        if error == "access_denied":
            raise AuthorizationFailed(
                "You chose not to connect Klaviyo, so nothing was changed. "
                "You can connect whenever you are ready.",
                reason="access_denied",
                recart_account_id=account,
            )
        if error:
            log.warning("Klaviyo refused the authorization of account %s: %s", account, error)
            said = f" Klaviyo said: {error_description}" if error_description else ""
            raise AuthorizationFailed(
                f"Klaviyo could not start the connection ({error}).{said} Please try again; if it keeps "
                "happening, contact Recart support.",
                reason="authorization_error",
                recart_account_id=account,
            )
        if not code:
            raise AuthorizationFailed(
                "Klaviyo sent you back without an authorization code. Please try connecting again.",
                reason="authorization_error",
                recart_account_id=account,
            )

        tokens = await self._exchange_code(pending, code)
        klaviyo_account_id = await self._lookup_account(pending, tokens)
        missing = missing_scopes(tokens.scopes)
        if missing:
            state_now, reason = ConnectionState.NEEDS_REAUTH, _missing_scopes_reason(missing)
        else:
            state_now, reason = ConnectionState.ACTIVE, None
        try:
            # Under the refresh locks: a refresh in flight (whose refresh token this exchange may just
            # have voided) ends before the save, so its invalid_grant cannot land on the new connection;
            # a disconnect in flight ends too, so it never wipes tokens it did not revoke.
            async with self._refresh_locked(account):
                replaced_refresh_token = self._refresh_token_replaced_by(account, klaviyo_account_id)
                connection = self.store.save_connection(
                    account, klaviyo_account_id, tokens, state_now, reason
                )
        except TimeoutError:
            log.warning("Connecting account %s: timed out waiting for its refresh lock", account)
            await self._revoke_quietly(account, tokens.refresh_token)  # nobody would hold this grant
            raise AuthorizationFailed(
                "Klaviyo connected, but another update of this connection was still running, so the "
                "connection was not saved. Please try again in a minute.",
                reason="klaviyo_unavailable",
                recart_account_id=account,
            ) from None
        if replaced_refresh_token is not None:
            # The shop switched to another Klaviyo account: the old account's grant is ours to give back.
            await self._revoke_quietly(account, replaced_refresh_token)
        return connection

    def _refresh_token_replaced_by(self, account: str, klaviyo_account_id: str) -> str | None:
        """The refresh token of the account's current grant if a new one on another Klaviyo account
        is about to replace it (same Klaviyo account: Klaviyo replaces the installation itself)."""
        previous = self.store.get(account)
        if previous is None or previous.klaviyo_account_id == klaviyo_account_id:
            return None
        try:
            return self.store.tokens(account).refresh_token
        except ConnectionRemoved:
            return None

    async def _exchange_code(self, pending: PendingAuthorization, code: str) -> TokenSet:
        account = pending.recart_account_id
        try:
            body = await self._token_call(
                "authorization_code",
                code=code,
                code_verifier=pending.code_verifier,
                redirect_uri=pending.redirect_uri,
            )
        except OAuthError as failure:
            log.warning("Code exchange for account %s failed: %s", account, failure.error)
            said = f" ({failure.error}: {failure.description})" if failure.description else ""
            raise AuthorizationFailed(
                f"Klaviyo did not accept the connection{said}. Please try connecting again.",
                reason="token_error",
                recart_account_id=account,
            ) from None
        except KlaviyoApiError as failure:
            log.warning("Code exchange for account %s failed: %s", account, failure)
            raise AuthorizationFailed(
                "We could not reach Klaviyo to finish connecting. Please try again in a few minutes.",
                reason="klaviyo_unavailable",
                recart_account_id=account,
            ) from None
        try:
            return self._token_set(body, fallback_refresh_token=None)
        except MalformedResponseError as failure:
            log.warning("Code exchange for account %s: %s", account, failure)
            raise AuthorizationFailed(
                "Klaviyo answered in a way we did not understand. Please try connecting again.",
                reason="token_error",
                recart_account_id=account,
            ) from None

    async def _lookup_account(self, pending: PendingAuthorization, tokens: TokenSet) -> str:
        """The Klaviyo account id behind fresh tokens (``GET /api/accounts`` lists exactly that one).

        Through the API client, so the call books the same quota (``limiter_key``) as every later call
        of this connection: the accounts endpoint allows 1 request/s and 15/min per account and app.
        """
        account = pending.recart_account_id
        credentials = StaticBearerCredentials(tokens.access_token, limiter_key=self._limiter_key(account))
        try:
            async with KlaviyoClient(
                self.settings,
                credentials,
                transport=self._borrowed_transport(),
                max_concurrency=1,
                retry=_LOOKUP_RETRY,  # a person is waiting on the callback page
                timeout=HTTP_TIMEOUT,
            ) as client:
                return (await client.get_account()).id
        except KlaviyoApiError as failure:
            log.warning("GET /api/accounts for account %s failed: %s", account, failure)
            # Do not leave a grant behind that no connection knows about.
            await self._revoke_quietly(account, tokens.refresh_token)
            raise AuthorizationFailed(
                "Klaviyo connected, but we could not read your Klaviyo account details, so the "
                "connection was not saved. Please try again.",
                reason="account_lookup_failed",
                recart_account_id=account,
            ) from None

    def _limiter_key(self, recart_account_id: str) -> str:
        """The client's quota key for a connection: Klaviyo counts OAuth calls per app and account."""
        return f"oauth:{self.settings.client_id}:{recart_account_id}"

    # ------------------------------------------------------------------------ tokens for API calls

    async def access_token(self, recart_account_id: str) -> str:
        """A valid access token for the account, refreshed first when it expires within 60 s.

        Raises ``ConnectionNotFound``, ``ConnectionInactive`` (before any HTTP call), ``ConnectionRemoved``
        or ``NeedsReauthorization``.
        """
        tokens, _ = await self._usable_tokens(recart_account_id)
        return tokens.access_token

    async def _usable_tokens(self, recart_account_id: str) -> tuple[TokenSet, int]:
        connection = self._check_active(recart_account_id)
        tokens = self.store.tokens(recart_account_id)
        if tokens.expires_within(REFRESH_MARGIN_SECONDS, now=self._clock()):
            return await self._refresh(recart_account_id, force=False, seen_version=connection.token_version)
        return tokens, connection.token_version

    def _check_active(self, recart_account_id: str) -> Connection:
        """The connection if it may call Klaviyo; otherwise the error that says why not."""
        connection = self.store.require(recart_account_id)
        raise_unless_active(connection)
        missing = missing_scopes(connection.granted_scopes)
        if missing:  # this release needs a scope the shop never granted
            self.store.set_state(
                recart_account_id, ConnectionState.NEEDS_REAUTH, _missing_scopes_reason(missing)
            )
            raise NeedsReauthorization(recart_account_id, _missing_scopes_reason(missing))
        return connection

    async def refresh(self, recart_account_id: str, *, force: bool = False) -> TokenSet:
        """Refresh the account's tokens (under the cross-process refresh lock) and return the current set.

        Without ``force``, tokens another process refreshed meanwhile, or that no longer expire soon,
        are returned as they are. ``invalid_grant`` → NEEDS_REAUTH and ``NeedsReauthorization``, unless
        new tokens were saved meanwhile (a reconnect): those are returned then. Fresh tokens that cannot
        be stored (the connection was replaced or removed meanwhile) are revoked at Klaviyo.
        """
        connection = self.store.require(recart_account_id)
        tokens, _ = await self._refresh(recart_account_id, force=force, seen_version=connection.token_version)
        return tokens

    async def _refresh(
        self, recart_account_id: str, *, force: bool, seen_version: int
    ) -> tuple[TokenSet, int]:
        """Refresh unless someone did since the caller saw ``seen_version``; returns (tokens, version)."""
        async with self._refresh_locked(recart_account_id):
            # Re-read inside the lock: the tokens the caller saw may be stale by now.
            connection = self.store.require(recart_account_id)
            raise_unless_active(connection)
            current = self.store.tokens(recart_account_id)
            version = connection.token_version
            expiring = current.expires_within(REFRESH_MARGIN_SECONDS, now=self._clock())
            if version != seen_version and not expiring:
                # Another coroutine or process wrote tokens after the caller read its own: they are
                # newer than whatever failed or expired for the caller, so use them (even when forced).
                return current, version
            if not force and not expiring:
                return current, version
            fresh = await self._refresh_grant(recart_account_id, current, version)
            if fresh is None:
                # invalid_grant, but new tokens were written meanwhile (by a writer that skips the lock):
                # the refresh token that failed is no longer the connection's, so use the new ones.
                return self._latest_tokens(recart_account_id)
            try:
                stored = self.store.replace_tokens(recart_account_id, fresh, expected_version=version)
            except (ConnectionRemoved, ConnectionNotFound):
                await self._revoke_unless_stored(recart_account_id, fresh.refresh_token)
                raise
            if not stored:
                # Someone wrote tokens without the lock (e.g. a process on an older release): theirs win.
                await self._revoke_unless_stored(recart_account_id, fresh.refresh_token)
                return self._latest_tokens(recart_account_id)
            missing = missing_scopes(fresh.scopes)
            if missing:  # the grant shrank (e.g. the app lost a scope at Klaviyo)
                reason = _missing_scopes_reason(missing)
                marked = self.store.set_state(
                    recart_account_id, ConnectionState.NEEDS_REAUTH, reason, expected_version=version + 1
                )
                if marked.token_version != version + 1:  # replaced right after our write: not ours to judge
                    return self._latest_tokens(recart_account_id)
                raise NeedsReauthorization(recart_account_id, reason)
            log.info("Refreshed the Klaviyo access token of account %s", recart_account_id)
            return fresh, version + 1

    def _latest_tokens(self, recart_account_id: str) -> tuple[TokenSet, int]:
        """The stored tokens and their version, or the error that says why the connection cannot use them."""
        latest = self.store.require(recart_account_id)
        raise_unless_active(latest)
        return self.store.tokens(recart_account_id), latest.token_version

    async def _revoke_unless_stored(self, recart_account_id: str, refresh_token: str) -> None:
        """Give back a refresh token we obtained but could not store, unless the connection holds it
        anyway (Klaviyo may return the refresh token it was sent): a grant nobody holds must not stay live."""
        try:
            stored: str | None = self.store.tokens(recart_account_id).refresh_token
        except (ConnectionRemoved, ConnectionNotFound):
            stored = None
        if refresh_token != stored:
            await self._revoke_quietly(recart_account_id, refresh_token)

    async def _refresh_grant(
        self, recart_account_id: str, current: TokenSet, version: int
    ) -> TokenSet | None:
        """POST the refresh-token grant with ``current`` (read at ``token_version`` ``version``).

        ``invalid_grant`` marks the connection NEEDS_REAUTH and raises ``NeedsReauthorization`` — unless the
        tokens were replaced since ``version`` (a reconnect voids the old refresh token): then nothing is
        marked and the answer is None, for the caller to use the new tokens.
        """
        try:
            body = await self._token_call("refresh_token", refresh_token=current.refresh_token)
        except OAuthError as failure:
            if failure.error == "invalid_grant":
                reason = "refresh failed: invalid_grant"
                marked = self.store.set_state(
                    recart_account_id, ConnectionState.NEEDS_REAUTH, reason, expected_version=version
                )
                if marked.token_version != version:
                    log.info(
                        "Refresh of account %s failed with invalid_grant after its tokens were replaced",
                        recart_account_id,
                    )
                    return None
                log.warning(
                    "Refresh of account %s failed with invalid_grant: needs re-authorization",
                    recart_account_id,
                )
                raise NeedsReauthorization(recart_account_id, reason) from None
            raise _api_error_for(failure) from None
        # Always keep the refresh token Klaviyo sends back: it may or may not rotate (reference §1).
        return self._token_set(body, fallback_refresh_token=current.refresh_token)

    def credentials(self, recart_account_id: str, klaviyo_account_id: str | None = None) -> OAuthCredentials:
        """The ``Credentials`` the API client uses for this account; with ``klaviyo_account_id``,
        only while the connection is to that Klaviyo account (``ConnectionReplaced`` after)."""
        return OAuthCredentials(self, recart_account_id, klaviyo_account_id)

    # ------------------------------------------------------------------------ the shop's switches

    def set_active(self, recart_account_id: str, active: bool) -> Connection:
        """Switch the connection on (``INACTIVE`` → ``ACTIVE``) or off (``ACTIVE`` → ``INACTIVE``).

        A connection that needs re-authorization or was removed cannot be switched: it raises
        ``NeedsReauthorization`` / ``ConnectionRemoved`` (the shop must connect again).
        ``ConnectionNotFound`` when there is no connection.
        """
        connection = self.store.require(recart_account_id)
        if connection.state in (ConnectionState.NEEDS_REAUTH, ConnectionState.REMOVED):
            raise_unless_active(connection)
        if active:
            missing = missing_scopes(connection.granted_scopes)
            if missing:
                reason = _missing_scopes_reason(missing)
                self.store.set_state(recart_account_id, ConnectionState.NEEDS_REAUTH, reason)
                raise NeedsReauthorization(recart_account_id, reason)
            return self.store.set_state(recart_account_id, ConnectionState.ACTIVE)
        return self.store.set_state(recart_account_id, ConnectionState.INACTIVE, "switched off by the shop")

    async def disconnect(self, recart_account_id: str) -> Connection:
        """Revoke the refresh token at Klaviyo, then wipe the secrets: the connection is REMOVED.

        Idempotent. If Klaviyo cannot be reached the secrets are kept (so revoking can be retried) and
        the ``KlaviyoApiError`` propagates. Reading, revoking and wiping happen under the connection's
        refresh locks (``TimeoutError`` if a refresh holds them too long): a refresh cannot rotate the
        refresh token between the read and the revoke, nor a reconnect save tokens the wipe would drop
        unrevoked, either of which would leave a grant live at Klaviyo that nobody holds.
        """
        connection = self.store.require(recart_account_id)
        if connection.state is ConnectionState.REMOVED:
            return connection
        async with self._refresh_locked(recart_account_id):
            connection = self.store.require(recart_account_id)  # again: it may have changed meanwhile
            if connection.state is ConnectionState.REMOVED:
                return connection
            try:
                tokens = self.store.tokens(recart_account_id)
            except ConnectionRemoved:
                tokens = None
            if tokens is not None:
                await self._revoke(tokens.refresh_token)
            return self.store.wipe_secrets(recart_account_id, reason="disconnected by the shop")

    async def _revoke(self, refresh_token: str) -> None:
        """RFC 7009 revoke of a refresh token; ``invalid_grant`` means it is already dead, which is fine."""
        self._require_app_credentials()

        async def call() -> httpx2.Response:
            async with self._oauth_client() as client:
                response = await client.revoke_token(
                    self.settings.revoke_url, token=refresh_token, token_type_hint="refresh_token"
                )
            if response.status_code in (429, 503):  # retried by _send_with_retries
                raise _TokenEndpointError(response.status_code, "throttled", _retry_after(response))
            return response

        response = await self._send_with_retries("POST /oauth/revoke", call)
        if response.status_code == 200:
            return
        body = _json_object(response)
        if response.status_code == 400 and body.get("error") == "invalid_grant":
            return
        raise _api_error_for_status(
            "POST /oauth/revoke", response.status_code, str(body.get("error") or ""), body
        )

    async def _revoke_quietly(self, account: str, refresh_token: str) -> None:
        try:
            await self._revoke(refresh_token)
        except KlaviyoError as failure:
            log.warning("Could not revoke an unused grant of account %s: %s", account, failure)

    # ------------------------------------------------------------------------ HTTP

    def _require_app_credentials(self) -> None:
        if not self.settings.client_id or not self.settings.client_secret:
            raise KlaviyoError(
                "KLAVIYO_CLIENT_ID and KLAVIYO_CLIENT_SECRET must be set (the OAuth app's credentials "
                "from Klaviyo's developer settings)."
            )

    def _borrowed_transport(self) -> httpx2.AsyncBaseTransport | None:
        return _BorrowedTransport(self._transport) if self._transport is not None else None

    def _oauth_client(self) -> AsyncOAuth2Client:
        """A short-lived authlib client on httpx2: Basic client auth, no token state carried over."""
        transport = self._borrowed_transport()
        client = AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            token_endpoint_auth_method="client_secret_basic",
            revocation_endpoint_auth_method="client_secret_basic",
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )
        client.register_compliance_hook("access_token_response", _check_token_response)
        client.register_compliance_hook("refresh_token_response", _check_token_response)
        return client

    async def _token_call(self, grant_type: str, **form: str) -> dict[str, Any]:
        """One token-endpoint grant; authlib's ``OAuthError`` for an OAuth error body, else our errors."""
        self._require_app_credentials()

        async def call() -> dict[str, Any]:
            async with self._oauth_client() as client:
                if grant_type == "refresh_token":
                    token = await client.refresh_token(
                        self.settings.token_url, refresh_token=form["refresh_token"]
                    )
                else:
                    token = await client.fetch_token(self.settings.token_url, grant_type=grant_type, **form)
                return dict(token)

        return await self._send_with_retries("POST /oauth/token", call)

    async def _send_with_retries(self, endpoint: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry only where the request surely had no effect: no connection was made, or Klaviyo said
        429/503. A timeout after sending is not retried: a code is single-use (a replay revokes the
        grant) and a refresh may rotate the refresh token, so a blind resend could lose the connection."""
        for attempt in range(1, TOKEN_ATTEMPTS + 1):
            try:
                return await call()
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as failure:
                if attempt == TOKEN_ATTEMPTS:
                    raise ServerError(
                        f"could not connect to Klaviyo: {type(failure).__name__}", endpoint=endpoint
                    ) from None
                delay = _backoff(attempt)
            except httpx2.HTTPStatusError as failure:  # authlib: 5xx, or a body that is not JSON
                status = failure.response.status_code
                if status != 503 or attempt == TOKEN_ATTEMPTS:
                    raise _api_error_for_status(
                        endpoint, status, "", _json_object(failure.response)
                    ) from None
                delay = _retry_after(failure.response) or _backoff(attempt)
            except _TokenEndpointError as failure:
                if failure.status not in (429, 503) or attempt == TOKEN_ATTEMPTS:
                    raise _api_error_for_status(
                        endpoint, failure.status, "", {"detail": failure.detail}
                    ) from None
                delay = failure.retry_after or _backoff(attempt)
            except httpx2.TransportError as failure:
                raise ServerError(
                    f"no answer from Klaviyo: {type(failure).__name__}", endpoint=endpoint
                ) from None
            log.info("%s: attempt %d failed; retrying in %.1f s", endpoint, attempt, delay)
            await asyncio.sleep(min(delay, MAX_RETRY_AFTER_SECONDS))
        raise AssertionError("unreachable")

    def _token_set(self, body: Mapping[str, Any], *, fallback_refresh_token: str | None) -> TokenSet:
        """Tokens from a token-endpoint answer; scopes as granted (``scope`` omitted = as requested)."""
        access = body.get("access_token")
        refresh = body.get("refresh_token") or fallback_refresh_token
        expires_in = body.get("expires_in")
        token_type = str(body.get("token_type", "Bearer"))
        if (
            not isinstance(access, str)
            or not access
            or not isinstance(refresh, str)
            or not refresh
            or token_type.lower() != "bearer"
        ):
            raise MalformedResponseError(
                "token answer without a bearer access token and refresh token", endpoint="POST /oauth/token"
            )
        try:
            lifetime = float(expires_in) if expires_in is not None else 3600.0
        except (TypeError, ValueError):
            raise MalformedResponseError(
                f"expires_in is not a number: {expires_in!r}", endpoint="POST /oauth/token"
            ) from None
        scope = body.get("scope")
        scopes = scope.split() if isinstance(scope, str) else list(self.settings.scopes)
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            expires_at=self._clock() + timedelta(seconds=lifetime),
            scopes=tuple(scopes),
        )

    @asynccontextmanager
    async def _local_lock(self, recart_account_id: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        with self._local_locks_guard:
            locks = self._local_locks.setdefault(loop, {})
            lock = locks.setdefault(recart_account_id, asyncio.Lock())
        async with lock:
            yield

    @asynccontextmanager
    async def _refresh_locked(self, recart_account_id: str) -> AsyncIterator[None]:
        """Hold the connection's refresh locks: this loop's asyncio lock, then the store's cross-process
        ``refresh_lock`` (``TimeoutError`` after ``REFRESH_LOCK_TIMEOUT_SECONDS``). Not re-entrant."""
        async with (
            self._local_lock(recart_account_id),
            held_in_own_thread(
                lambda: self.store.refresh_lock(recart_account_id, timeout=REFRESH_LOCK_TIMEOUT_SECONDS)
            ),
        ):
            yield


class OAuthCredentials:
    """``client.Credentials`` for one Recart account's OAuth connection.

    ``limiter_key`` is per app and account: Klaviyo counts OAuth rate limits per installed app instance.
    """

    def __init__(
        self, oauth: KlaviyoOAuth, recart_account_id: str, klaviyo_account_id: str | None = None
    ) -> None:
        """Credentials of ``recart_account_id``, drawn from ``oauth`` (bound to ``klaviyo_account_id``
        when given: tokens of another Klaviyo account the shop connects meanwhile are refused)."""
        self._oauth = oauth
        self.recart_account_id = recart_account_id
        self.klaviyo_account_id = klaviyo_account_id
        self.limiter_key = oauth._limiter_key(recart_account_id)
        self._version: int | None = None  # the token version last handed out

    async def authorization(self) -> str:
        """``Bearer <token>``; raises ``ConnectionInactive`` / ``NeedsReauthorization`` /
        ``ConnectionRemoved`` / ``ConnectionNotFound`` / ``ConnectionReplaced`` before any HTTP call."""
        tokens, version = await self._oauth._usable_tokens(self.recart_account_id)
        self._require_same_klaviyo_account()
        self._version = version
        return f"Bearer {tokens.access_token}"

    def _require_same_klaviyo_account(self) -> None:
        """Checked after the tokens are read (a reconnect between the two is caught here)."""
        if self.klaviyo_account_id is None:
            return
        now = self._oauth.store.require(self.recart_account_id).klaviyo_account_id
        if now != self.klaviyo_account_id:
            raise ConnectionReplaced(
                self.recart_account_id,
                f"the shop connected Klaviyo account {now} while work for {self.klaviyo_account_id} "
                "was running; it stopped, and the next run uses the new account",
            )

    async def refresh_after_unauthorized(self) -> bool:
        """After a 401: refresh once (forced), unless another caller already replaced the failed token.

        True when a different token is now available (the client retries once). Raises
        ``NeedsReauthorization`` when Klaviyo refuses the refresh token.
        """
        oauth = self._oauth
        if self._version is None:
            connection = oauth.store.require(self.recart_account_id)
            self._version = connection.token_version
        _, version = await oauth._refresh(self.recart_account_id, force=True, seen_version=self._version)
        changed = version != self._version
        self._version = version
        return changed

    def __repr__(self) -> str:
        """Account and limiter key only; never a token."""
        return f"OAuthCredentials({self.recart_account_id!r}, limiter_key={self.limiter_key!r})"


# ---------------------------------------------------------------------------- helpers


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _backoff(attempt: int) -> float:
    # Capped exponential backoff with full jitter.
    return random.uniform(0, min(4.0, 0.25 * 2**attempt))


def _check_token_response(response: httpx2.Response) -> httpx2.Response:
    """authlib compliance hook: only 2xx token bodies and OAuth error bodies go on to authlib.

    authlib treats any JSON object without ``error`` as a token, whatever the status; a gateway's 4xx
    JSON or a 429 must not become "tokens".
    """
    status = response.status_code
    if 200 <= status < 300:
        return response
    body = _json_object(response)
    if 400 <= status < 500 and status != 429 and "error" in body:
        return response  # authlib raises OAuthError(error, error_description)
    detail = str(body.get("error_description") or body.get("detail") or f"HTTP {status}")
    raise _TokenEndpointError(status, detail, _retry_after(response))


def _api_error_for(failure: OAuthError) -> KlaviyoApiError:
    """Our error for an OAuth error body other than ``invalid_grant`` (the app's problem, not the shop's)."""
    code = str(failure.error or "")
    detail = str(failure.description or "") or None
    if code == "invalid_client":
        return AuthenticationError(
            "Klaviyo rejected the OAuth app's credentials (check KLAVIYO_CLIENT_ID / KLAVIYO_CLIENT_SECRET)",
            endpoint="POST /oauth/token",
            status=401,
            code=code,
            detail=detail,
        )
    return InvalidRequestError(
        "token request rejected", endpoint="POST /oauth/token", status=400, code=code, detail=detail
    )


def _api_error_for_status(endpoint: str, status: int, code: str, body: Mapping[str, Any]) -> KlaviyoApiError:
    detail = str(body.get("error_description") or body.get("detail") or "") or None
    code = code or str(body.get("error") or "") or ""
    if status == 429:
        return RateLimitedError(
            "throttled", endpoint=endpoint, status=status, code=code or None, detail=detail
        )
    if status >= 500:
        return ServerError(
            "Klaviyo server error", endpoint=endpoint, status=status, code=code or None, detail=detail
        )
    if status in (401, 403):
        return AuthenticationError(
            "Klaviyo refused the OAuth app",
            endpoint=endpoint,
            status=status,
            code=code or None,
            detail=detail,
        )
    return InvalidRequestError(
        "request rejected", endpoint=endpoint, status=status, code=code or None, detail=detail
    )
