"""The integration service's pages: connect a shop's Klaviyo account with OAuth, see and switch the
connection, disconnect it. Starlette on uvicorn; every page is plain HTML with stable element ids.

Routes::

    GET  /integrations/klaviyo/connect?account=ID       302 to Klaviyo's consent screen
    GET  /oauth/klaviyo/callback?code&state              finish OAuth (or show why it could not)
    GET  /integrations/klaviyo/status?account=ID         the connection, with its switches
    GET  /integrations/klaviyo/status.json?account=ID    the same as JSON
    POST /integrations/klaviyo/{activate|deactivate|disconnect}?account=ID
    GET  /integrations/klaviyo/lists?account=ID          the account's Klaviyo lists (JSON), to choose from
    GET  /integrations/klaviyo/push-settings?account=ID  where subscribers are pushed (JSON)
    PUT  /integrations/klaviyo/push-settings?account=ID  choose: {"list_id"} or {"email_list_id",
                                                          "sms_list_id"}, "sms_countries", "enabled"
    GET  /healthz

What the person sees is always a plain sentence and a way forward ("Try again", "Update Klaviyo
connection"): never a stack trace, a token, or Klaviyo's raw answer.

Not here yet: who may manage which Recart account. In production these routes sit behind Recart's
session (or a signed link from the Recart app); here the account id in the query is trusted. Cross-site
POSTs are refused (``Origin`` / ``Sec-Fetch-Site``), and pages cannot be framed, so another site cannot
switch a connection off in the shop's browser.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from html import escape
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.klaviyo.client import KlaviyoClient
from connectors.klaviyo.connections import Connection, ConnectionState, ConnectionStore
from connectors.klaviyo.errors import (
    ConnectionError_,
    ConnectionNotFound,
    KlaviyoApiError,
    KlaviyoError,
    NeedsReauthorization,
    OAuthCallbackError,
)
from connectors.klaviyo.oauth import KlaviyoOAuth, valid_recart_account_id
from connectors.klaviyo.push_settings import (
    PushSettingsError,
    UnknownListError,
    push_settings_from_json,
    save_push_settings,
)
from integration_app.summary import STATE_LABELS, connection_summary, describe_expiry

log = logging.getLogger(__name__)

CONNECT_PATH = "/integrations/klaviyo/connect"
CALLBACK_PATH = "/oauth/klaviyo/callback"
STATUS_PATH = "/integrations/klaviyo/status"
PUSH_SETTINGS_PATH = "/integrations/klaviyo/push-settings"
LISTS_PATH = "/integrations/klaviyo/lists"

#: Called after every callback: ``(recart_account_id or None, connection or None, error or None)``.
CallbackListener = Callable[[str | None, Connection | None, OAuthCallbackError | None], None]

# HTTP status of each callback failure: the request itself was bad (400), the person said no (403),
# or Klaviyo did not play along when we finished the exchange (502).
_CALLBACK_STATUS = {
    "invalid_state": 400,
    "expired_state": 400,
    "authorization_error": 400,
    "access_denied": 403,
    "token_error": 502,
    "klaviyo_unavailable": 502,
    "account_lookup_failed": 502,
}
_CALLBACK_TITLES = {
    "access_denied": "Klaviyo was not connected",
    "invalid_state": "This connection link is not valid",
    "expired_state": "This connection link has expired",
}
# Notices after a switch, by key: the page never echoes text from the query string.
_NOTICES = {
    "activated": "The Klaviyo connection is switched on.",
    "deactivated": "The Klaviyo connection is switched off. Recart makes no Klaviyo calls for this shop.",
    "disconnected": "Klaviyo was disconnected: access was revoked at Klaviyo and the stored tokens deleted.",
}
_ACTIONS = ("activate", "deactivate", "disconnect")

_STYLE = """
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f6f6f4; color: #1c1917;
         margin: 0; padding: 2rem 1rem; line-height: 1.45; }
  main { max-width: 36rem; margin: 0 auto; background: #fff; border: 1px solid #d6d3d1; border-radius: 8px;
         padding: 1.5rem 2rem; }
  h1 { font-size: 1.35rem; margin-top: 0; }
  .brand { font-size: .8rem; letter-spacing: .08em; text-transform: uppercase; color: #57534e; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .35rem 1rem; }
  dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
  .state { display: inline-block; padding: .1rem .5rem; border-radius: 999px; font-weight: 600; }
  .state-active { background: #dcfce7; } .state-inactive { background: #e7e5e4; }
  .state-needs_reauth { background: #fef3c7; } .state-removed { background: #fee2e2; }
  .notice { background: #eff6ff; border: 1px solid #93c5fd; padding: .6rem .8rem; border-radius: 6px; }
  .problem { background: #fef2f2; border: 1px solid #fca5a5; padding: .6rem .8rem; border-radius: 6px; }
  .actions { display: flex; flex-wrap: wrap; gap: .75rem; margin-top: 1.25rem; align-items: center; }
  .actions form { margin: 0; }
  .button, button { display: inline-block; padding: .5rem 1rem; font-size: 1rem; border-radius: 6px;
           cursor: pointer; border: 1px solid #1c1917; background: #fff; color: #1c1917;
           text-decoration: none; }
  .primary { background: #1c1917; color: #fff; }
  .danger { border-color: #b91c1c; color: #b91c1c; }
  :focus-visible { outline: 3px solid #2563eb; outline-offset: 2px; }
  code { font-size: .85em; color: #57534e; }
  label { display: block; font-weight: 600; margin: .75rem 0 .35rem; }
  input[type=text] { padding: .45rem; font-size: 1rem; width: 100%; box-sizing: border-box; }
"""
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",  # the switches must not be clickjacked
    # The callback URL carries the code and state: never hand it to another site as a Referer.
    # ("same-origin", not "no-referrer": with no-referrer browsers send ``Origin: null`` on our own
    # form posts, and the cross-site check below could no longer tell them from forged ones.)
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


# ---------------------------------------------------------------------------- HTML helpers


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)} — Recart</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n"
        '<p class="brand">Recart · Klaviyo integration</p>\n'
        f"{body}</main>\n</body>\n</html>\n"
    )
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


def _url(path: str, **params: str) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _message_page(
    title: str,
    message: str,
    status_code: int,
    *,
    reason: str | None = None,
    try_again: str | None = None,
    extra: str = "",
) -> HTMLResponse:
    """A plain explanation with a "Try again" link (when there is somewhere to go back to)."""
    reason_attr = f' data-reason="{escape(reason)}"' if reason else ""
    link = (
        f'<p class="actions"><a id="try-again" class="button primary" href="{escape(try_again)}">'
        "Try again</a></p>\n"
        if try_again
        else ""
    )
    body = (
        f'<h1 id="page-title">{escape(title)}</h1>\n'
        f'<p id="message" class="problem" role="alert"{reason_attr}>{escape(message)}</p>\n'
        f"{extra}{link}"
    )
    return _page(title, body, status_code)


def _account_form(action: str, button: str) -> str:
    """A small form asking for the Recart account id (shown when a link arrived without one)."""
    return (
        f'<form id="account-form" method="get" action="{escape(action)}">\n'
        '  <label for="account">Recart account id</label>\n'
        '  <input type="text" id="account" name="account" required maxlength="128">\n'
        f'  <p class="actions"><button type="submit" id="account-submit" class="primary">{escape(button)}'
        "</button></p>\n</form>\n"
    )


def _missing_account(action: str, button: str, given: str | None) -> HTMLResponse:
    message = (
        "This link does not say which Recart account to use."
        if not given
        else "That is not a valid Recart account id."
    )
    return _message_page(
        "Which Recart account?",
        message,
        400,
        reason="invalid_account",
        extra=_account_form(action, button),
    )


def _connection_details(connection: Connection) -> str:
    """The facts of a connection as a definition list (ids are what browser tests read)."""
    summary = connection_summary(connection)
    state = connection.state.value
    reason = connection.state_reason or "—"
    scopes_ok = "yes" if summary["scopes_ok"] else "no"
    if summary["missing_scopes"]:
        scopes_ok += f" (missing: {' '.join(summary['missing_scopes'])})"
    if connection.state is ConnectionState.REMOVED:
        expiry = "—"
    else:
        expiry = describe_expiry(connection.access_token_expires_at)
    return (
        '<dl id="connection">\n'
        f'  <dt>Recart account</dt><dd id="recart-account">{escape(connection.recart_account_id)}</dd>\n'
        f'  <dt>Klaviyo account</dt><dd id="klaviyo-account">{escape(connection.klaviyo_account_id or "—")}'
        "</dd>\n"
        f'  <dt>Status</dt><dd><span id="connection-state" class="state state-{escape(state)}"'
        f' data-state="{escape(state)}">{escape(STATE_LABELS[connection.state])}</span></dd>\n'
        f'  <dt>Reason</dt><dd id="state-reason">{escape(reason)}</dd>\n'
        f'  <dt>Permissions</dt><dd id="scopes-ok" data-ok="{str(summary["scopes_ok"]).lower()}">'
        f"{escape(scopes_ok)}</dd>\n"
        f'  <dt>Access token</dt><dd id="token-expires">{escape(expiry)}</dd>\n'
        "</dl>\n"
    )


def _action_form(action: str, account: str, label: str, css: str = "") -> str:
    target = _url(f"/integrations/klaviyo/{action}", account=account)
    css_attr = f' class="{css}"' if css else ""
    return (
        f'<form id="{action}-form" method="post" action="{escape(target)}">'
        f'<button type="submit" id="{action}"{css_attr}>{escape(label)}</button></form>\n'
    )


def _status_actions(connection: Connection) -> str:
    """The buttons that make sense in the connection's state."""
    account = connection.recart_account_id
    connect = escape(_url(CONNECT_PATH, account=account))
    parts: list[str] = []
    if connection.state is ConnectionState.ACTIVE:
        parts.append(_action_form("deactivate", account, "Switch off"))
        parts.append(_action_form("disconnect", account, "Disconnect Klaviyo", "danger"))
    elif connection.state is ConnectionState.INACTIVE:
        parts.append(_action_form("activate", account, "Switch on", "primary"))
        parts.append(_action_form("disconnect", account, "Disconnect Klaviyo", "danger"))
    elif connection.state is ConnectionState.NEEDS_REAUTH:
        parts.append(
            f'<a id="update-connection" class="button primary" href="{connect}">'
            "Update Klaviyo connection</a>\n"
        )
        parts.append(_action_form("disconnect", account, "Disconnect Klaviyo", "danger"))
    else:
        parts.append(f'<a id="connect" class="button primary" href="{connect}">Connect Klaviyo again</a>\n')
    return f'<div class="actions" id="actions">\n{"".join(parts)}</div>\n'


def _state_explanation(connection: Connection) -> str:
    text = {
        ConnectionState.ACTIVE: "Recart syncs with this Klaviyo account.",
        ConnectionState.INACTIVE: "Switched off: Recart makes no Klaviyo calls for this shop until you "
        "switch it on again.",
        ConnectionState.NEEDS_REAUTH: "Klaviyo needs you to approve the connection again (for example "
        "because access was revoked or Recart needs a new permission). Nothing syncs until then.",
        ConnectionState.REMOVED: "Disconnected: access was revoked at Klaviyo and the stored tokens "
        "were deleted.",
    }[connection.state]
    return f'<p id="state-explanation">{escape(text)}</p>\n'


def _json_problem(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": reason, "detail": detail}, status_code=status, headers={"Cache-Control": "no-store"}
    )


def _connector_problem(error: Exception, log_as: str, consequence: str) -> JSONResponse:
    """A JSON API answer for the connector's errors: not connected 404, a connection in the wrong
    state 409, Klaviyo refused or unreachable 502 (logged as ``log_as``)."""
    if isinstance(error, ConnectionNotFound):
        return _json_problem(404, "not_connected", "This Recart account has no Klaviyo connection.")
    if isinstance(error, ConnectionError_):
        return _json_problem(409, "wrong_state", f"The Klaviyo connection cannot be used: {error}")
    log.warning("%s: %s", log_as, error)
    return _json_problem(502, "klaviyo_unavailable", f"Klaviyo could not be reached; {consequence}.")


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _cross_site(request: Request) -> bool:
    """A POST another site (or another port of this host) made the browser send (CSRF): refuse it.

    Browsers label requests with ``Sec-Fetch-Site``; older ones only send ``Origin``. Scripts and the
    CLI send neither, and are let through (this is CSRF protection, not authentication).
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" != f"{request.url.scheme}://{request.url.netloc}"


# ---------------------------------------------------------------------------- endpoints


class _Endpoints:
    """Request handlers bound to one ``KlaviyoOAuth`` and ``ConnectionStore``."""

    def __init__(
        self, oauth: KlaviyoOAuth, store: ConnectionStore, on_callback: CallbackListener | None
    ) -> None:
        self.oauth = oauth
        self.store = store
        self.on_callback = on_callback

    async def connect(self, request: Request) -> Response:
        """Send the person to Klaviyo's consent screen for the Recart account in ``?account=``."""
        account = request.query_params.get("account")
        if not valid_recart_account_id(account):
            return _missing_account(CONNECT_PATH, "Connect Klaviyo", account)
        assert account is not None
        try:
            url = self.oauth.start_authorization(account)
        except KlaviyoError as error:
            log.error("Cannot start a Klaviyo authorization: %s", error)
            return _message_page(
                "Klaviyo cannot be connected right now",
                "The Klaviyo integration is not configured on this server. Please contact Recart support.",
                503,
                reason="not_configured",
            )
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    async def callback(self, request: Request) -> Response:
        """Klaviyo sends the browser back here with ``code`` and ``state`` (or ``error``)."""
        params = request.query_params
        try:
            connection = await self.oauth.complete_authorization(
                params.get("state"),
                code=params.get("code"),
                error=params.get("error"),
                error_description=params.get("error_description"),
            )
        except OAuthCallbackError as error:
            account = getattr(error, "recart_account_id", None)
            log.info("Klaviyo callback failed (%s) for account %s", error.reason, account)
            self._notify(account, None, error)
            title = _CALLBACK_TITLES.get(error.reason, "Klaviyo could not be connected")
            return _message_page(
                title,
                error.user_message,
                _CALLBACK_STATUS.get(error.reason, 400),
                reason=error.reason,
                try_again=_url(CONNECT_PATH, account=account) if account else None,
                extra=""
                if account
                else '<p id="start-over">Start again from the Klaviyo page of your Recart account.</p>\n',
            )
        self._notify(connection.recart_account_id, connection, None)
        return self._connected_page(connection)

    def _connected_page(self, connection: Connection) -> HTMLResponse:
        account = connection.recart_account_id
        status_link = escape(_url(STATUS_PATH, account=account))
        if connection.state is ConnectionState.ACTIVE:
            title = "Klaviyo connected"
            lead = "Recart is now connected to your Klaviyo account."
            next_step = f'<a id="status-link" class="button primary" href="{status_link}">View connection</a>'
        else:
            title = "Klaviyo connected, but permissions are missing"
            lead = (
                "Klaviyo did not grant every permission Recart needs, so nothing will sync yet. "
                "Please update the connection and approve all requested permissions."
            )
            next_step = (
                f'<a id="update-connection" class="button primary" '
                f'href="{escape(_url(CONNECT_PATH, account=account))}">Update Klaviyo connection</a>'
                f'<a id="status-link" class="button" href="{status_link}">View connection</a>'
            )
        body = (
            f'<h1 id="page-title">{escape(title)}</h1>\n<p id="message">{escape(lead)}</p>\n'
            f'{_connection_details(connection)}<p class="actions">{next_step}</p>\n'
        )
        return _page(title, body)

    def _notify(
        self, account: str | None, connection: Connection | None, error: OAuthCallbackError | None
    ) -> None:
        if self.on_callback is None:
            return
        try:
            self.on_callback(account, connection, error)
        except Exception:  # a listener must never break the person's page
            log.exception("callback listener failed")

    async def status(self, request: Request) -> Response:
        """The connection of ``?account=``, its state and the switches that apply."""
        account = request.query_params.get("account")
        if not valid_recart_account_id(account):
            return _missing_account(STATUS_PATH, "Show connection", account)
        assert account is not None
        connection = self.store.get(account)
        if connection is None:
            connect = escape(_url(CONNECT_PATH, account=account))
            body = (
                '<h1 id="page-title">Klaviyo is not connected</h1>\n'
                f'<p id="message">Recart account <code id="recart-account">{escape(account)}</code> has no '
                "Klaviyo connection yet.</p>\n"
                '<span id="connection-state" data-state="not_connected" hidden></span>\n'
                f'<p class="actions"><a id="connect" class="button primary" href="{connect}">'
                "Connect Klaviyo</a></p>\n"
            )
            return _page("Klaviyo is not connected", body, 404)
        notice_key = request.query_params.get("notice", "")
        notice = (
            f'<p id="notice" class="notice" role="status">{escape(_NOTICES[notice_key])}</p>\n'
            if notice_key in _NOTICES
            else ""
        )
        body = (
            '<h1 id="page-title">Klaviyo connection</h1>\n'
            f"{notice}{_state_explanation(connection)}{_connection_details(connection)}"
            f"{_status_actions(connection)}"
        )
        return _page("Klaviyo connection", body)

    async def status_json(self, request: Request) -> Response:
        """The connection of ``?account=`` as JSON (``connection_summary``)."""
        account = request.query_params.get("account")
        if not valid_recart_account_id(account):
            return JSONResponse(
                {"error": "invalid_account", "detail": "pass ?account=<Recart account id>"},
                status_code=400,
                headers={"Cache-Control": "no-store"},
            )
        assert account is not None
        connection = self.store.get(account)
        if connection is None:
            return JSONResponse(
                {"error": "not_connected", "recart_account_id": account},
                status_code=404,
                headers={"Cache-Control": "no-store"},
            )
        return JSONResponse(connection_summary(connection), headers={"Cache-Control": "no-store"})

    async def action(self, request: Request) -> Response:
        """``POST /integrations/klaviyo/{activate|deactivate|disconnect}?account=``."""
        action = request.path_params["action"]
        account = request.query_params.get("account")
        if action not in _ACTIONS:
            return self._action_problem(request, 404, "unknown_action", "There is no such action.", None)
        if _cross_site(request):
            return self._action_problem(
                request, 403, "cross_site", "This request came from another site and was refused.", None
            )
        if not valid_recart_account_id(account):
            return self._action_problem(
                request, 400, "invalid_account", "Pass ?account=<Recart account id>.", None
            )
        assert account is not None
        try:
            if action == "disconnect":
                connection = await self.oauth.disconnect(account)
                notice = "disconnected"
            else:
                connection = self.oauth.set_active(account, action == "activate")
                notice = f"{action}d"
        except ConnectionNotFound:
            return self._action_problem(
                request, 404, "not_connected", "This Recart account has no Klaviyo connection.", account
            )
        except ConnectionError_ as error:
            message = (
                "This connection needs to be updated with Klaviyo before it can be switched on or off."
                if isinstance(error, NeedsReauthorization)
                else "This connection was removed. Connect Klaviyo again to use it."
            )
            return self._action_problem(request, 409, "wrong_state", message, account)
        except KlaviyoApiError as error:
            log.warning("Disconnect of account %s failed: %s", account, error)
            return self._action_problem(
                request,
                502,
                "klaviyo_unavailable",
                "We could not reach Klaviyo to revoke access, so the connection was kept. "
                "Please try again in a few minutes.",
                account,
            )
        except TimeoutError:  # the connection's refresh lock stayed taken (a refresh hung on Klaviyo)
            log.warning("Disconnect of account %s timed out waiting for its token refresh", account)
            return self._action_problem(
                request,
                503,
                "busy",
                "Klaviyo access is being renewed for this shop right now, so the connection was kept. "
                "Please try again in a minute.",
                account,
            )
        if _wants_json(request):
            return JSONResponse(connection_summary(connection), headers={"Cache-Control": "no-store"})
        # Post/redirect/get: reloading the status page never repeats the action.
        return RedirectResponse(_url(STATUS_PATH, account=account, notice=notice), status_code=303)

    def _action_problem(
        self, request: Request, status: int, reason: str, message: str, account: str | None
    ) -> Response:
        if _wants_json(request):
            return JSONResponse(
                {"error": reason, "detail": message},
                status_code=status,
                headers={"Cache-Control": "no-store"},
            )
        back = _url(STATUS_PATH, account=account) if account else None
        extra = (
            f'<p><a id="status-link" href="{escape(back)}">Back to the connection</a></p>\n' if back else ""
        )
        return _message_page("That did not work", message, status, reason=reason, extra=extra)

    # ------------------------------------------------------------------------ subscriber push (JSON API)

    async def push_settings(self, request: Request) -> Response:
        """``GET`` / ``PUT`` the push settings of ``?account=`` (lists checked at Klaviyo before saving)."""
        account = request.query_params.get("account")
        if not valid_recart_account_id(account):
            return _json_problem(400, "invalid_account", "Pass ?account=<Recart account id>.")
        assert account is not None
        if request.method == "GET":
            current = self.store.push_settings(account)
            if current is None:
                return _json_problem(404, "not_configured", "No lists chosen for this account yet.")
            return JSONResponse(current.as_dict(), headers={"Cache-Control": "no-store"})
        if _cross_site(request):
            return _json_problem(403, "cross_site", "This request came from another site and was refused.")
        try:
            body = await request.json()
        except ValueError:
            return _json_problem(400, "invalid_json", "The body must be JSON.")
        try:
            choice = push_settings_from_json(account, body)
            saved = await save_push_settings(self.oauth.settings, self.store, choice)
        except UnknownListError as error:
            return _json_problem(422, "unknown_list", str(error))
        except PushSettingsError as error:
            return _json_problem(400, "invalid_settings", str(error))
        except (ConnectionError_, KlaviyoApiError) as error:
            return _connector_problem(error, f"Push settings of {account} not saved", "nothing was saved")
        return JSONResponse(saved.as_dict(), headers={"Cache-Control": "no-store"})

    async def lists(self, request: Request) -> Response:
        """The Klaviyo lists of ``?account=`` (id, name, opt-in process), for choosing push targets."""
        account = request.query_params.get("account")
        if not valid_recart_account_id(account):
            return _json_problem(400, "invalid_account", "Pass ?account=<Recart account id>.")
        assert account is not None
        try:
            async with KlaviyoClient(self.oauth.settings, self.oauth.credentials(account)) as client:
                found = [
                    {"id": k.id, "name": k.name, "opt_in_process": k.opt_in_process}
                    async for k in client.iter_lists()
                ]
        except (ConnectionError_, KlaviyoApiError) as error:
            return _connector_problem(error, f"Lists of {account} not read", "nothing was read")
        return JSONResponse({"data": found}, headers={"Cache-Control": "no-store"})

    async def healthz(self, request: Request) -> Response:
        """Liveness plus a cheap read of the connection store."""
        try:
            count = len(self.store.list())
        except Exception:
            log.exception("health check: the connection store cannot be read")
            return JSONResponse({"status": "error", "store": "unreadable"}, status_code=503)
        return JSONResponse({"status": "ok", "connections": count})


class _PlainServerErrors:
    """Any unexpected failure becomes a plain page (or JSON), never a stack trace; the log has the details.

    A middleware of our own rather than Starlette's ``Exception`` handler: that one re-raises after
    answering, and uvicorn then drops the keep-alive connection under the browser's next request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; answer 500 ourselves if it fails before a response started."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            request = Request(scope)
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            if _wants_json(request) or request.url.path.endswith(".json"):
                response: Response = JSONResponse({"error": "server_error"}, status_code=500)
            else:
                response = _message_page(
                    "Something went wrong",
                    "Something went wrong on our side. Please try again in a few minutes.",
                    500,
                    reason="server_error",
                )
            await response(scope, receive, send)


def build_app(
    oauth: KlaviyoOAuth, store: ConnectionStore, *, on_callback: CallbackListener | None = None
) -> Starlette:
    """The integration app. ``on_callback`` (optional) hears the outcome of every OAuth callback."""
    endpoints = _Endpoints(oauth, store, on_callback)
    routes = [
        Route(CONNECT_PATH, endpoints.connect, methods=["GET"]),
        Route(CALLBACK_PATH, endpoints.callback, methods=["GET"]),
        Route(STATUS_PATH, endpoints.status, methods=["GET"]),
        Route(f"{STATUS_PATH}.json", endpoints.status_json, methods=["GET"]),
        Route("/integrations/klaviyo/{action}", endpoints.action, methods=["POST"]),
        Route(PUSH_SETTINGS_PATH, endpoints.push_settings, methods=["GET", "PUT"]),
        Route(LISTS_PATH, endpoints.lists, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_PlainServerErrors)])
    app.state.oauth = oauth
    app.state.store = store
    return app
