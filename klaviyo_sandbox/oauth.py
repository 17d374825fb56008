"""Klaviyo's OAuth 2.0 server: authorize (consent page), token, revoke, and the OAuth control API.

Klaviyo runs an OAuth 2.1-style authorization-code flow with mandatory PKCE (S256 only) and HTTP
Basic client authentication on the token and revoke endpoints (reference §1). This module plays
both Klaviyo's login/consent screens and its token server:

* ``GET /oauth/authorize`` validates the request and renders a consent page; an account chooser
  stands in for logging in to Klaviyo. ``POST /oauth/authorize`` is the page's form, and doubles
  as a non-interactive path for scripts (``account_id`` + ``decision=allow|deny`` + the original
  parameters).
* ``POST /oauth/token`` exchanges codes and refresh tokens; ``POST /oauth/revoke`` revokes.
* ``authenticate_bearer`` resolves a ``Bearer`` token for the ``/api/`` pipeline in ``app.py``.
* ``/_sandbox/oauth/...`` lets tests register apps, list and revoke grants, and expire tokens.

Errors before the redirect URI is trusted (unknown client, unregistered redirect URI) are shown
as an HTML page and never redirect, so a forged request cannot bounce a browser to an attacker's
URL (RFC 6749 §4.1.2.1); every later error is reported to the app by redirect.

Token values are secrets: nothing here logs them, and the control API never returns them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from klaviyo_sandbox import ids, spec
from klaviyo_sandbox.errors import authentication_failed
from klaviyo_sandbox.store import AccessToken, Account, AuthorizationCode, Grant, OAuthClient, Store, utcnow

if TYPE_CHECKING:  # app.py imports this module lazily; a runtime import back would be circular-prone
    from klaviyo_sandbox.app import SandboxApp

# Klaviyo does not publish an auth-code lifetime (reference: [unconfirmed]); RFC 6749 §4.1.2
# recommends at most 10 minutes.
AUTHORIZATION_CODE_TTL = timedelta(minutes=10)
# Refresh tokens die after 90 days without use (reference §1, S4).
REFRESH_TOKEN_IDLE_LIMIT = timedelta(days=90)
# Used codes are kept past their expiry so a replay is still recognised (and its grant revoked);
# expired access tokens are kept a while so a late caller hears "expired" rather than "unknown".
_CODE_RETENTION = timedelta(hours=1)
_ACCESS_TOKEN_RETENTION = timedelta(days=7)

_VERIFIER = re.compile(r"^[a-zA-Z0-9\-._~]{43,128}$")  # RFC 7636 §4.1, quoted by Klaviyo (S3)
_S256_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # BASE64URL(SHA-256) without padding
_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)


# ---------------------------------------------------------------------------- bearer tokens


def authenticate_bearer(store: Store, token: str) -> Grant:
    """The grant behind an access token; 401 ``authentication_failed`` when unknown, expired or revoked."""
    access = store.access_tokens.get(token) if token else None
    if access is None:
        raise authentication_failed()
    grant = store.grants.get(access.grant_id)
    if grant is None or grant.revoked:
        raise authentication_failed("The access token has been revoked.")
    if access.expires_at <= utcnow():
        raise authentication_failed("The access token has expired; use the refresh token to get a new one.")
    return grant


# ---------------------------------------------------------------------------- small helpers


class OAuthError(Exception):
    """A token/revoke endpoint error: ``{"error": code, "error_description": ...}`` with a status."""

    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON error response, marked uncacheable like every token-endpoint answer (RFC 6749 §5.1)."""
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers={**_NO_STORE, **self.headers},
        )


def _sandbox(request: Request) -> SandboxApp:
    return request.app.state.sandbox


def _parse_pairs(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    """Pairs as a dict (first value wins) plus the names sent more than once."""
    values: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if name in values:
            repeated.add(name)
        else:
            values[name] = value
    return values, repeated


async def _read_form(request: Request) -> tuple[dict[str, str], set[str]] | None:
    """The urlencoded body, or None when the body is not form-encoded.

    Parsed by hand: Starlette's ``request.form()`` needs python-multipart, which the sandbox
    does not depend on.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    if content_type != _FORM:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _parse_pairs(parse_qsl(text, keep_blank_values=True))


def _scopes_of(value: str) -> list[str]:
    """A space-separated scope string as a list, duplicates dropped, order kept."""
    return list(dict.fromkeys(value.split()))


def _redirect(redirect_uri: str, params: dict[str, str | None]) -> RedirectResponse:
    """302 to the app's redirect URI with ``params`` appended to any query it already has."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if urlsplit(redirect_uri).query else ("" if redirect_uri.endswith("?") else "?")
    return RedirectResponse(f"{redirect_uri}{separator}{query}", status_code=302, headers=_NO_STORE)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _grant_id_for_code(code: str) -> str:
    """The id of the grant a code is exchanged for.

    Deriving it from the code (rather than storing a link on ``AuthorizationCode``) lets a
    replayed code find and revoke the grant it produced, with no extra field in the state file.
    """
    return hashlib.sha256(code.encode("utf-8")).hexdigest()[:32]


def _b64url_json(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _new_access_token(store: Store, grant: Grant, now: datetime) -> AccessToken:
    """Issue an access token for a grant and store it.

    Klaviyo's access tokens look like ES256 JWTs (reference §1, S14 observed), so ours have the
    same three-part shape. The signature is random: only this server interprets tokens, by lookup.
    """
    expires_at = now + timedelta(seconds=store.access_token_ttl_seconds)
    header = _b64url_json({"alg": "ES256", "typ": "JWT", "kid": "klaviyo-sandbox"})
    payload = _b64url_json(
        {
            "iss": "klaviyo-sandbox",
            "sub": grant.account_id,
            "aud": grant.client_id,
            "scope": " ".join(grant.scopes),
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": ids.token(store.rng, nbytes=16),
        }
    )
    token = f"{header}.{payload}.{ids.token(store.rng, nbytes=64)}"
    access = AccessToken(token=token, grant_id=grant.id, expires_at=expires_at)
    store.access_tokens[token] = access
    return access


def _token_response(store: Store, grant: Grant, access: AccessToken) -> JSONResponse:
    return JSONResponse(
        {
            "access_token": access.token,
            "token_type": "Bearer",
            "expires_in": store.access_token_ttl_seconds,
            "refresh_token": grant.refresh_token,
            "scope": " ".join(grant.scopes),
        },
        headers=_NO_STORE,
    )


def _revoke_grant(store: Store, grant: Grant) -> None:
    """Mark a grant revoked and drop its access tokens (they die with the refresh token)."""
    grant.revoked = True
    for token in [t for t, a in store.access_tokens.items() if a.grant_id == grant.id]:
        del store.access_tokens[token]


def _purge(store: Store, now: datetime) -> None:
    """Forget codes and access tokens long past their expiry, so the state does not grow forever."""
    for code in [c for c, v in store.authorization_codes.items() if v.expires_at + _CODE_RETENTION < now]:
        del store.authorization_codes[code]
    for token in [t for t, a in store.access_tokens.items() if a.expires_at + _ACCESS_TOKEN_RETENTION < now]:
        del store.access_tokens[token]


# ---------------------------------------------------------------------------- authorize


@dataclass
class _AuthorizeRequest:
    """A validated authorization request."""

    client: OAuthClient
    redirect_uri: str
    scopes: list[str]
    state: str | None
    code_challenge: str
    params: dict[str, str]  # the original parameters, carried through the consent form


class _PageError(Exception):
    """An authorization error shown to the user (HTML 400), never redirected."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class _RedirectError(Exception):
    """An authorization error reported to the app's (already validated) redirect URI."""

    def __init__(self, redirect_uri: str, state: str | None, error: str, description: str) -> None:
        super().__init__(description)
        self.redirect_uri = redirect_uri
        self.state = state
        self.error = error
        self.description = description

    def response(self) -> RedirectResponse:
        """302 to the redirect URI with ``error``, ``error_description`` and ``state``."""
        return _redirect(
            self.redirect_uri,
            {"error": self.error, "error_description": self.description, "state": self.state},
        )


def _validate_authorize(store: Store, params: dict[str, str], repeated: set[str]) -> _AuthorizeRequest:
    """Check an authorization request in RFC 6749 §4.1.2.1 order: client and redirect URI first."""
    client_id = params.get("client_id", "")
    if not client_id:
        raise _PageError("invalid_request", "The client_id parameter is required.")
    if "client_id" in repeated:
        raise _PageError("invalid_request", "The client_id parameter was sent more than once.")
    client = store.oauth_clients.get(client_id)
    if client is None:
        raise _PageError("invalid_client", f"No OAuth app with client_id '{client_id}' exists.")
    redirect_uri = params.get("redirect_uri", "")
    if not redirect_uri:
        raise _PageError("invalid_request", "The redirect_uri parameter is required.")
    if "redirect_uri" in repeated:
        raise _PageError("invalid_request", "The redirect_uri parameter was sent more than once.")
    if redirect_uri not in client.redirect_uris:  # exact match, no prefix or pattern matching
        raise _PageError(
            "invalid_request",
            f"The redirect_uri '{redirect_uri}' is not registered for the app '{client.name}'.",
        )

    state = params.get("state")

    def fail(error: str, description: str) -> _RedirectError:
        return _RedirectError(redirect_uri, state, error, description)

    if repeated:
        raise fail("invalid_request", f"Parameters sent more than once: {', '.join(sorted(repeated))}.")
    response_type = params.get("response_type", "")
    if not response_type:
        raise fail("invalid_request", "The response_type parameter is required.")
    if response_type != "code":
        raise fail("unsupported_response_type", "Only response_type=code is supported.")
    challenge = params.get("code_challenge", "")
    method = params.get("code_challenge_method", "")
    if not challenge:
        raise fail("invalid_request", "PKCE is required: send code_challenge and code_challenge_method=S256.")
    if method != "S256":
        raise fail("invalid_request", "code_challenge_method must be S256.")
    if not _S256_CHALLENGE.match(challenge):
        raise fail(
            "invalid_request", "code_challenge must be BASE64URL(SHA-256(code_verifier)) without padding."
        )
    scopes = _scopes_of(params.get("scope", ""))
    if not scopes:
        raise fail("invalid_scope", "The scope parameter is required (space-separated scopes).")
    known = set(spec.all_scopes())
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise fail("invalid_scope", f"Unknown scope(s): {' '.join(unknown)}.")
    not_enabled = [s for s in scopes if s not in client.scopes]
    if not_enabled:
        raise fail("invalid_scope", f"Scope(s) not enabled for this app: {' '.join(not_enabled)}.")
    carried = {name: params[name] for name in _AUTHORIZE_PARAMS if name in params}
    return _AuthorizeRequest(
        client=client,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=state,
        code_challenge=challenge,
        params=carried,
    )


async def authorize_page(request: Request) -> Response:
    """``GET /oauth/authorize``: validate, then show the consent page."""
    store: Store = _sandbox(request).store
    params, repeated = _parse_pairs(list(request.query_params.multi_items()))
    try:
        auth = _validate_authorize(store, params, repeated)
    except _PageError as error:
        return _error_page(error.error, error.description)
    except _RedirectError as error:
        return error.response()
    return _consent_page(auth, list(store.accounts.values()))


async def authorize_decision(request: Request) -> Response:
    """``POST /oauth/authorize``: the consent form (or a script) allows or denies the request."""
    sandbox = _sandbox(request)
    store: Store = sandbox.store
    form = await _read_form(request)
    if form is None:
        return _error_page("invalid_request", f"The consent form must be posted as {_FORM}.")
    fields, repeated = form
    params = {name: fields[name] for name in _AUTHORIZE_PARAMS if name in fields}
    try:
        auth = _validate_authorize(store, params, repeated & set(_AUTHORIZE_PARAMS))
    except _PageError as error:
        return _error_page(error.error, error.description)
    except _RedirectError as error:
        return error.response()
    decision = fields.get("decision", "")
    if decision == "deny":
        return _redirect(
            auth.redirect_uri,
            {
                "error": "access_denied",
                "error_description": "The user denied access to the app.",
                "state": auth.state,
            },
        )
    if decision != "allow":
        return _consent_page(
            auth, list(store.accounts.values()), problem="Choose Allow or Deny.", status_code=400
        )
    account = store.accounts.get(fields.get("account_id", ""))
    if account is None:
        return _consent_page(
            auth,
            list(store.accounts.values()),
            problem="Choose the Klaviyo account to connect.",
            status_code=400,
        )
    now = utcnow()
    _purge(store, now)
    code = AuthorizationCode(
        code=ids.token(store.rng, nbytes=32),
        client_id=auth.client.client_id,
        account_id=account.id,
        redirect_uri=auth.redirect_uri,
        scopes=auth.scopes,
        code_challenge=auth.code_challenge,
        expires_at=now + AUTHORIZATION_CODE_TTL,
    )
    store.authorization_codes[code.code] = code
    sandbox.save_state()
    return _redirect(auth.redirect_uri, {"code": code.code, "state": auth.state})


# ---------------------------------------------------------------------------- consent page HTML

_STYLE = """
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f5f5f4; color: #1c1917;
         margin: 0; padding: 2rem 1rem; }
  main { max-width: 32rem; margin: 0 auto; background: #fff; border: 1px solid #d6d3d1; border-radius: 8px;
         padding: 1.5rem 2rem; }
  h1 { font-size: 1.35rem; margin-top: 0; } h2 { font-size: 1rem; margin-bottom: .25rem; }
  .brand { font-size: .8rem; letter-spacing: .08em; text-transform: uppercase; color: #57534e; }
  ul { padding-left: 1.2rem; } li { margin: .2rem 0; } code { font-size: .85em; color: #57534e; }
  label { display: block; font-weight: 600; margin: 1rem 0 .35rem; }
  select { width: 100%; padding: .45rem; font-size: 1rem; }
  .actions { display: flex; gap: .75rem; margin-top: 1.5rem; }
  button { flex: 1; padding: .6rem 1rem; font-size: 1rem; border-radius: 6px; cursor: pointer;
           border: 1px solid #1c1917; }
  button:focus-visible, select:focus-visible { outline: 3px solid #2563eb; outline-offset: 2px; }
  #allow { background: #1c1917; color: #fff; } #deny { background: #fff; color: #1c1917; }
  .problem { background: #fef2f2; border: 1px solid #fca5a5; padding: .6rem .8rem; border-radius: 6px; }
  .note { font-size: .85rem; color: #57534e; }
"""


_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def _page(title: str, body: str, status_code: int) -> HTMLResponse:
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
        '<p class="brand">Klaviyo sandbox</p>\n'
        f"{body}</main>\n</body>\n</html>\n"
    )
    # Like a real consent screen: never cached, never framed (clickjacking), no referrer leaks.
    # No CSP form-action: browsers apply it to the redirect after the form, which leaves for the app.
    headers = {
        **_NO_STORE,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": _CSP,
    }
    return HTMLResponse(html, status_code=status_code, headers=headers)


def _scope_label(scope: str) -> str:
    """``coupon-codes:write`` → ``Coupon codes: write``."""
    resource, _, access = scope.partition(":")
    return f"{resource.replace('-', ' ').capitalize()}: {access}"


def _consent_page(
    auth: _AuthorizeRequest, accounts: list[Account], *, problem: str | None = None, status_code: int = 200
) -> HTMLResponse:
    """The consent screen: app name, requested scopes, account chooser (stands in for login), Allow/Deny.

    Element ids and names are stable on purpose: browser tests select ``#account_id`` and click
    ``button[name=decision][value=allow]`` (``#allow``) or ``[value=deny]`` (``#deny``).
    """
    scope_items = "".join(
        f'  <li data-scope="{escape(s)}">{escape(_scope_label(s))} <code>{escape(s)}</code></li>\n'
        for s in auth.scopes
    )
    hidden = "".join(
        f'  <input type="hidden" name="{escape(k)}" value="{escape(v)}">\n' for k, v in auth.params.items()
    )
    options = "".join(
        f'    <option value="{escape(a.id)}">{escape(a.name)} ({escape(a.id)})</option>\n' for a in accounts
    )
    problem_html = f'<p class="problem" id="problem" role="alert">{escape(problem)}</p>\n' if problem else ""
    if accounts:
        chooser = (
            '  <label for="account_id">Klaviyo account</label>\n'
            '  <select id="account_id" name="account_id" required>\n'
            f"{options}  </select>\n"
        )
        allow_disabled = ""
    else:
        chooser = '  <p class="problem" id="no-accounts">The sandbox has no accounts to connect.</p>\n'
        allow_disabled = " disabled"
    name, back_to = escape(auth.client.name), escape(auth.redirect_uri)
    body = (
        f'<h1 id="consent-title"><span id="app-name">{name}</span> wants to access'
        " your Klaviyo account</h1>\n"
        f"{problem_html}"
        '<h2 id="scopes-heading">This app will be able to:</h2>\n'
        f'<ul id="scopes" aria-labelledby="scopes-heading">\n{scope_items}</ul>\n'
        '<form id="consent-form" method="post" action="/oauth/authorize">\n'
        f"{hidden}{chooser}"
        '  <div class="actions">\n'
        f'    <button type="submit" id="allow" name="decision" value="allow"{allow_disabled}>Allow</button>\n'
        '    <button type="submit" id="deny" name="decision" value="deny" formnovalidate>Deny</button>\n'
        "  </div>\n"
        "</form>\n"
        f'<p class="note">You will be sent back to <code id="redirect-uri">{back_to}</code>.</p>\n'
    )
    return _page(f"Authorize {auth.client.name} — Klaviyo sandbox", body, status_code)


def _error_page(error: str, description: str) -> HTMLResponse:
    """The page for requests that must not redirect (unknown client, unregistered redirect URI)."""
    body = (
        '<h1 id="error-title">This authorization request is not valid</h1>\n'
        f'<p role="alert"><code id="error">{escape(error)}</code></p>\n'
        f'<p id="error-description">{escape(description)}</p>\n'
        '<p class="note">Check the app\'s client_id and redirect_uri against its registration.</p>\n'
    )
    return _page("Authorization error — Klaviyo sandbox", body, 400)


# ---------------------------------------------------------------------------- token endpoint


def _authenticate_client(store: Store, request: Request, form: dict[str, str]) -> OAuthClient:
    """The client from ``Authorization: Basic`` (Klaviyo's way) or ``client_secret_post`` form fields."""
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    client_id: str | None = None
    secret: str | None = None
    used_basic = scheme.lower() == "basic"
    if used_basic:
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        if ":" in decoded:
            client_id, _, secret = decoded.partition(":")
        form_id = form.get("client_id")
        if (
            form_id is not None
            and client_id is not None
            and form_id not in (client_id, unquote_plus(client_id))
        ):
            raise OAuthError(
                401,
                "invalid_client",
                "client_id in the body differs from the Authorization header.",
                {"WWW-Authenticate": 'Basic realm="klaviyo"'},
            )
    elif "client_id" in form or "client_secret" in form:
        client_id, secret = form.get("client_id"), form.get("client_secret")
    if client_id is None or secret is None:
        raise OAuthError(
            401,
            "invalid_client",
            "Client authentication failed: send Authorization: Basic base64(client_id:client_secret).",
            {"WWW-Authenticate": 'Basic realm="klaviyo"'},
        )
    # RFC 6749 §2.3.1 form-encodes id and secret before Basic; Klaviyo's samples do not. Accept both.
    for candidate_id, candidate_secret in (
        (client_id, secret),
        (unquote_plus(client_id), unquote_plus(secret)),
    ):
        client = store.oauth_clients.get(candidate_id)
        if client is not None and hmac.compare_digest(
            client.client_secret.encode(), candidate_secret.encode()
        ):
            return client
    raise OAuthError(
        401,
        "invalid_client",
        "Client authentication failed: unknown client or wrong secret.",
        {"WWW-Authenticate": 'Basic realm="klaviyo"'} if used_basic else None,
    )


def _exchange_code(store: Store, client: OAuthClient, form: dict[str, str], now: datetime) -> JSONResponse:
    """``grant_type=authorization_code``: check the code and PKCE, create the grant, issue tokens."""
    for name in ("code", "redirect_uri"):
        if not form.get(name):
            raise OAuthError(400, "invalid_request", f"The {name} parameter is required.")
    code = store.authorization_codes.get(form["code"])
    if code is None or code.client_id != client.client_id:
        raise OAuthError(400, "invalid_grant", "The authorization code is invalid.")
    if code.used:
        # A replayed code may have been stolen: revoke what it produced (RFC 6749 §4.1.2).
        issued = store.grants.get(_grant_id_for_code(code.code))
        if issued is not None:
            _revoke_grant(store, issued)
        raise OAuthError(400, "invalid_grant", "The authorization code has already been used.")
    if code.expires_at <= now:
        raise OAuthError(400, "invalid_grant", "The authorization code has expired.")
    if form["redirect_uri"] != code.redirect_uri:
        raise OAuthError(400, "invalid_grant", "redirect_uri does not match the authorization request.")
    verifier = form.get("code_verifier", "")
    if not _VERIFIER.match(verifier):
        raise OAuthError(400, "invalid_request", 'Invalid "code_verifier"')  # Klaviyo's wording (S3)
    if not hmac.compare_digest(_s256(verifier), code.code_challenge):
        raise OAuthError(400, "invalid_grant", "Code challenge failed.")

    code.used = True
    # Installing the app again on the same account replaces the earlier installation.
    for old in store.grants.values():
        if old.client_id == client.client_id and old.account_id == code.account_id and not old.revoked:
            _revoke_grant(store, old)
    grant = Grant(
        id=_grant_id_for_code(code.code),
        client_id=client.client_id,
        account_id=code.account_id,
        scopes=list(code.scopes),
        refresh_token=ids.token(store.rng, nbytes=48),
        created_at=now,
        last_used_at=now,
    )
    store.grants[grant.id] = grant
    return _token_response(store, grant, _new_access_token(store, grant, now))


def _refresh(store: Store, client: OAuthClient, form: dict[str, str], now: datetime) -> JSONResponse:
    """``grant_type=refresh_token``: a new access token; the refresh token stays the same."""
    refresh_token = form.get("refresh_token")
    if not refresh_token:
        raise OAuthError(400, "invalid_request", "The refresh_token parameter is required.")
    grant = store.grant_by_refresh_token(refresh_token)
    # One answer for unknown, revoked and foreign tokens, so nothing leaks about other clients' tokens.
    if grant is None or grant.revoked or grant.client_id != client.client_id:
        raise OAuthError(400, "invalid_grant", "The refresh token is invalid or has been revoked.")
    if now - grant.last_used_at > REFRESH_TOKEN_IDLE_LIMIT:
        raise OAuthError(400, "invalid_grant", "The refresh token expired after 90 days without use.")
    # RFC 6749 §6: a refresh may not widen the grant. A narrower ``scope`` is accepted but has no
    # effect, because access tokens carry their grant's scopes (``AccessToken`` has no scope field).
    requested = _scopes_of(form.get("scope", ""))
    beyond = [s for s in requested if s not in grant.scopes]
    if beyond:
        raise OAuthError(400, "invalid_scope", f"Scope(s) not granted: {' '.join(beyond)}.")
    grant.last_used_at = now
    # Klaviyo keeps earlier access tokens valid until they expire and may return the same
    # refresh token (reference §1, S14 observed): so do we.
    return _token_response(store, grant, _new_access_token(store, grant, now))


async def token_endpoint(request: Request) -> Response:
    """``POST /oauth/token``: authorization-code and refresh-token grants."""
    sandbox = _sandbox(request)
    store: Store = sandbox.store
    parsed = await _read_form(request)
    form, repeated = parsed if parsed is not None else ({}, set())
    try:
        client = _authenticate_client(store, request, form)
        # Klaviyo answers a body it cannot read as a form, or a missing grant_type, with
        # ``invalid_grant_type`` (S3); an unknown grant type gets RFC 6749's ``unsupported_grant_type``.
        if parsed is None:
            raise OAuthError(400, "invalid_grant_type", f"The request body must be {_FORM}.")
        if repeated:
            raise OAuthError(
                400, "invalid_request", f"Parameters sent more than once: {', '.join(sorted(repeated))}."
            )
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise OAuthError(400, "invalid_grant_type", "The grant_type parameter is required.")
        now = utcnow()
        if grant_type == "authorization_code":
            try:
                response = _exchange_code(store, client, form, now)
            finally:
                sandbox.save_state()  # also after a replay, which revokes a grant
            return response
        if grant_type == "refresh_token":
            response = _refresh(store, client, form, now)
            _purge(store, now)
            sandbox.save_state()
            return response
        raise OAuthError(
            400,
            "unsupported_grant_type",
            f"grant_type '{grant_type}' is not supported; use authorization_code or refresh_token.",
        )
    except OAuthError as error:
        return error.response()


# ---------------------------------------------------------------------------- revoke endpoint


async def revoke_endpoint(request: Request) -> Response:
    """``POST /oauth/revoke``: revoke a refresh token (the whole grant) or one access token.

    Unknown and already revoked tokens answer 200 ``{}``, as RFC 7009 §2.2 asks: the caller's
    goal (the token is unusable) holds. Klaviyo itself may answer 400 ``invalid_grant`` there (the
    reference tells clients to treat that as "already revoked"), so clients must accept both; we
    model the RFC. Another client's token is left alone and answered the same way, so the answer
    never reveals whether a token exists.
    """
    sandbox = _sandbox(request)
    store: Store = sandbox.store
    parsed = await _read_form(request)
    form, repeated = parsed if parsed is not None else ({}, set())
    try:
        client = _authenticate_client(store, request, form)
        if parsed is None:
            raise OAuthError(400, "invalid_request", f"The request body must be {_FORM}.")
        if repeated:
            raise OAuthError(
                400, "invalid_request", f"Parameters sent more than once: {', '.join(sorted(repeated))}."
            )
        token = form.get("token")
        if not token:
            raise OAuthError(400, "invalid_request", "The token parameter is required.")
    except OAuthError as error:
        return error.response()
    # The hint only orders the lookups (RFC 7009 §2.1); an unknown hint is ignored.
    lookups = ["refresh_token", "access_token"]
    if form.get("token_type_hint") == "access_token":
        lookups.reverse()
    for kind in lookups:
        if kind == "refresh_token":
            grant = store.grant_by_refresh_token(token)
            if grant is not None:
                if grant.client_id == client.client_id and not grant.revoked:
                    _revoke_grant(store, grant)
                    sandbox.save_state()
                break
        else:
            access = store.access_tokens.get(token)
            if access is not None:
                grant = store.grants.get(access.grant_id)
                if grant is not None and grant.client_id == client.client_id:
                    del store.access_tokens[token]
                    sandbox.save_state()
                break
    return JSONResponse({}, headers=_NO_STORE)


# ---------------------------------------------------------------------------- control API


def _control_error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any] | None:
    """The JSON object body ({} when empty), or None when it is not a JSON object."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _grant_json(grant: Grant) -> dict[str, Any]:
    # Never the refresh token or access tokens: the control API shows state, not secrets.
    return {
        "id": grant.id,
        "client_id": grant.client_id,
        "account_id": grant.account_id,
        "scopes": list(grant.scopes),
        "revoked": grant.revoked,
        "created_at": grant.created_at.isoformat(),
        "last_used_at": grant.last_used_at.isoformat(),
    }


def _client_json(client: OAuthClient) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "scopes": list(client.scopes),
    }


async def control_list_grants(request: Request) -> Response:
    """``GET /_sandbox/oauth/grants?account_id=&client_id=``: grants, without token values."""
    store: Store = _sandbox(request).store
    account_id = request.query_params.get("account_id")
    client_id = request.query_params.get("client_id")
    grants = [
        _grant_json(g)
        for g in sorted(store.grants.values(), key=lambda g: g.created_at)
        if (account_id is None or g.account_id == account_id)
        and (client_id is None or g.client_id == client_id)
    ]
    return JSONResponse({"grants": grants})


async def control_revoke_grant(request: Request) -> Response:
    """``POST /_sandbox/oauth/grants/{grant_id}/revoke``: the shop uninstalls the app (or Klaviyo does)."""
    sandbox = _sandbox(request)
    grant = sandbox.store.grants.get(request.path_params["grant_id"])
    if grant is None:
        return _control_error(404, f"No grant with id {request.path_params['grant_id']}.")
    _revoke_grant(sandbox.store, grant)
    sandbox.save_state()
    return JSONResponse(_grant_json(grant))


def _valid_redirect_uri(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment and "#" not in uri


async def control_list_clients(request: Request) -> Response:
    """``GET /_sandbox/oauth/clients``: the registered OAuth apps, secrets included (test credentials)."""
    store: Store = _sandbox(request).store
    return JSONResponse({"clients": [_client_json(c) for c in store.oauth_clients.values()]})


async def control_upsert_client(request: Request) -> Response:
    """``POST /_sandbox/oauth/clients``: register an app, or update one (adds redirect URIs).

    Body ``{client_id?, client_secret?, name, redirect_uris, scopes?}``. A new app gets a generated
    id and secret when none is given and every Klaviyo scope when ``scopes`` is absent. For an
    existing ``client_id``, ``redirect_uris`` are added to the registered ones, and ``name``,
    ``client_secret`` and ``scopes`` replace the old values when given. Answers 201 (new) or 200.
    """
    sandbox = _sandbox(request)
    store: Store = sandbox.store
    body = await _json_body(request)
    if body is None:
        return _control_error(400, "The body must be a JSON object.")
    for name in ("client_id", "client_secret", "name"):
        if name in body and (not isinstance(body[name], str) or not body[name]):
            return _control_error(400, f"'{name}' must be a non-empty string.")
    redirect_uris = body.get("redirect_uris", [])
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        return _control_error(400, "'redirect_uris' must be a list of strings.")
    bad_uris = [u for u in redirect_uris if not _valid_redirect_uri(u)]
    if bad_uris:
        return _control_error(
            400, f"Redirect URIs must be absolute http(s) URLs without a fragment: {bad_uris}."
        )
    scopes = body.get("scopes")
    if scopes is not None:
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            return _control_error(400, "'scopes' must be a list of strings.")
        unknown = sorted(set(scopes) - set(spec.all_scopes()))
        if unknown:
            return _control_error(400, f"Unknown Klaviyo scope(s): {unknown}.")
        scopes = list(dict.fromkeys(scopes))

    existing = store.oauth_clients.get(body.get("client_id", ""))
    if existing is not None:
        existing.redirect_uris.extend(
            u for u in dict.fromkeys(redirect_uris) if u not in existing.redirect_uris
        )
        existing.name = body.get("name", existing.name)
        existing.client_secret = body.get("client_secret", existing.client_secret)
        if scopes is not None:
            existing.scopes = scopes
        sandbox.save_state()
        return JSONResponse(_client_json(existing))
    if "name" not in body:
        return _control_error(400, "'name' is required to register an app.")
    if not redirect_uris:
        return _control_error(400, "'redirect_uris' must list at least one URI to register an app.")
    client = OAuthClient(
        client_id=body.get("client_id") or str(uuid.UUID(int=store.rng.getrandbits(128), version=4)),
        client_secret=body.get("client_secret") or ids.token(store.rng, nbytes=48),
        name=body["name"],
        redirect_uris=list(dict.fromkeys(redirect_uris)),
        scopes=scopes if scopes is not None else spec.all_scopes(),
    )
    store.oauth_clients[client.client_id] = client
    sandbox.save_state()
    return JSONResponse(_client_json(client), status_code=201)


async def control_expire_access_tokens(request: Request) -> Response:
    """``POST /_sandbox/oauth/expire-access-tokens`` ``{account_id?, client_id?}``: expire live tokens now."""
    sandbox = _sandbox(request)
    store: Store = sandbox.store
    body = await _json_body(request)
    if body is None:
        return _control_error(400, "The body must be a JSON object.")
    account_id = body.get("account_id")
    client_id = body.get("client_id")
    now = utcnow()
    expired = 0
    for access in store.access_tokens.values():
        grant = store.grants.get(access.grant_id)
        if grant is None or access.expires_at <= now:
            continue
        if (account_id is None or grant.account_id == account_id) and (
            client_id is None or grant.client_id == client_id
        ):
            # Backdate by a second so "expired" holds even for a request arriving in the same instant.
            access.expires_at = now - timedelta(seconds=1)
            expired += 1
    sandbox.save_state()
    return JSONResponse({"expired": expired})


# ---------------------------------------------------------------------------- routes


def routes() -> list[Route]:
    """The OAuth endpoints and their control API, mounted by ``app.build_app``."""
    return [
        Route("/oauth/authorize", authorize_page, methods=["GET"]),
        Route("/oauth/authorize", authorize_decision, methods=["POST"]),
        Route("/oauth/token", token_endpoint, methods=["POST"]),
        Route("/oauth/revoke", revoke_endpoint, methods=["POST"]),
        Route("/_sandbox/oauth/grants", control_list_grants, methods=["GET"]),
        Route("/_sandbox/oauth/grants/{grant_id}/revoke", control_revoke_grant, methods=["POST"]),
        Route("/_sandbox/oauth/clients", control_list_clients, methods=["GET"]),
        Route("/_sandbox/oauth/clients", control_upsert_client, methods=["POST"]),
        Route("/_sandbox/oauth/expire-access-tokens", control_expire_access_tokens, methods=["POST"]),
    ]
