"""``recart-klaviyo``: run the integration app and manage Klaviyo connections from a terminal.

    recart-klaviyo serve [--host 127.0.0.1] [--port 8000]
    recart-klaviyo connect ACCOUNT [--open] [--timeout 300]
    recart-klaviyo status [ACCOUNT] [--json]
    recart-klaviyo activate|deactivate|disconnect ACCOUNT [--json]
    recart-klaviyo push-settings ACCOUNT [--list ID | --email-list ID --sms-list ID]
                                 [--sms-countries US,CA] [--enable | --disable] [--json]
    recart-klaviyo push ACCOUNT [--dry-run] [--json]

Configuration comes from the environment: ``KLAVIYO_CLIENT_ID``, ``KLAVIYO_CLIENT_SECRET``,
``KLAVIYO_REDIRECT_URI``, ``KLAVIYO_BASE_URL``, ``KLAVIYO_AUTHORIZE_URL`` (see ``KlaviyoSettings``) and
``RECART_STATE_DB``, ``RECART_ENCRYPTION_KEY`` (see ``ConnectionStore``); ``push`` reads the desired
state from ``WAREHOUSE_DUCKDB_PATH`` (default ``.state/warehouse.duckdb``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import sys
import time
import webbrowser
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import uvicorn

from connectors.klaviyo.config import KlaviyoSettings
from connectors.klaviyo.connections import Connection, ConnectionState, ConnectionStore, EncryptionKeyError
from connectors.klaviyo.errors import (
    ConnectionError_,
    ConnectionNotFound,
    KlaviyoError,
    NeedsReauthorization,
    OAuthCallbackError,
)
from connectors.klaviyo.oauth import KlaviyoOAuth, valid_recart_account_id
from connectors.klaviyo.push_settings import (
    DEFAULT_SMS_COUNTRIES,
    PushSettings,
    PushSettingsError,
    normalize_countries,
    save_push_settings,
)
from integration_app.app import CALLBACK_PATH, build_app
from integration_app.server import bind, serving
from integration_app.summary import connection_summary, describe_expiry

EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed: Klaviyo refused or was unreachable, the person denied access
EXIT_USAGE = 2  # bad arguments or missing configuration (argparse uses 2 as well)
EXIT_NOT_FOUND = 3  # no connection for that Recart account
EXIT_NEEDS_ATTENTION = 4  # the connection exists but is not active (or cannot be switched in its state)
EXIT_TIMEOUT = 5  # connect: nobody finished the consent screen in time

EPILOG = """exit codes:
  0  done (status ACCOUNT: the connection is active)
  1  the operation failed (Klaviyo refused or was unreachable; access was denied)
  2  bad arguments or missing configuration
  3  no Klaviyo connection for that Recart account
  4  the connection needs attention (inactive, needs re-authorization or removed)
  5  connect: timed out waiting for the OAuth callback
"""

log = logging.getLogger("recart_klaviyo")


class CliError(Exception):
    """A failure to report as ``error: <message>`` with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- configuration


def _settings(*, need_app: bool) -> KlaviyoSettings:
    settings = KlaviyoSettings.from_env()
    if need_app:
        missing = [
            name
            for name, value in (
                ("KLAVIYO_CLIENT_ID", settings.client_id),
                ("KLAVIYO_CLIENT_SECRET", settings.client_secret),
            )
            if not value
        ]
        if missing:
            raise CliError(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: export the OAuth "
                "app's credentials from Klaviyo's developer settings (for the sandbox: `klaviyo-sandbox "
                "serve` prints them).",
                EXIT_USAGE,
            )
    return settings


def _store() -> ConnectionStore:
    try:
        return ConnectionStore.from_env()
    except EncryptionKeyError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except (OSError, ValueError) as error:
        raise CliError(f"cannot open the connection store: {error}", EXIT_USAGE) from None


def _account(value: str) -> str:
    if not valid_recart_account_id(value):
        raise CliError(
            f"not a valid Recart account id: {value!r} (1–128 letters, digits and ._:@-)", EXIT_USAGE
        )
    return value


# ---------------------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    ]
    head = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    return "\n".join([head.rstrip(), *(line.rstrip() for line in lines)])


def _status_row(connection: Connection, now: datetime) -> list[str]:
    summary = connection_summary(connection)
    removed = connection.state is ConnectionState.REMOVED
    if removed:
        scopes = "—"
    elif summary["scopes_ok"]:
        scopes = "yes"
    else:
        scopes = "no: " + " ".join(summary["missing_scopes"])
    expires = "—" if removed else describe_expiry(connection.access_token_expires_at, now)
    return [
        connection.recart_account_id,
        connection.klaviyo_account_id or "—",
        connection.state.value,
        connection.state_reason or "—",
        scopes,
        expires,
    ]


def _print_connection(connection: Connection, as_json: bool) -> None:
    if as_json:
        _print_json(connection_summary(connection))
        return
    header = ["ACCOUNT", "KLAVIYO ACCOUNT", "STATE", "REASON", "SCOPES OK", "TOKEN EXPIRES"]
    print(_table([_status_row(connection, datetime.now(UTC))], header))


# ---------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace) -> int:
    """Show one connection (exit 0 only when active) or all of them."""
    store = _store()
    try:
        if args.account:
            account = _account(args.account)
            connection = store.get(account)
            if connection is None:
                if args.json:
                    _print_json({"error": "not_connected", "recart_account_id": account})
                raise CliError(f"Recart account {account!r} has no Klaviyo connection", EXIT_NOT_FOUND)
            _print_connection(connection, args.json)
            return EXIT_OK if connection.state is ConnectionState.ACTIVE else EXIT_NEEDS_ATTENTION
        connections = store.list()
        if args.json:
            _print_json([connection_summary(c) for c in connections])
            return EXIT_OK
        if not connections:
            print("No Klaviyo connections yet. Connect one with: recart-klaviyo connect ACCOUNT")
            return EXIT_OK
        now = datetime.now(UTC)
        header = ["ACCOUNT", "KLAVIYO ACCOUNT", "STATE", "REASON", "SCOPES OK", "TOKEN EXPIRES"]
        print(_table([_status_row(c, now) for c in connections], header))
        return EXIT_OK
    finally:
        store.close()


def cmd_switch(args: argparse.Namespace) -> int:
    """``activate`` / ``deactivate`` / ``disconnect`` one connection."""
    account = _account(args.account)
    need_app = args.command == "disconnect"  # only disconnecting talks to Klaviyo
    settings = _settings(need_app=need_app)
    store = _store()
    try:
        oauth = KlaviyoOAuth(settings, store)
        try:
            if args.command == "disconnect":
                connection = asyncio.run(oauth.disconnect(account))
                done = "disconnected (access revoked at Klaviyo, tokens deleted)"
            else:
                connection = oauth.set_active(account, args.command == "activate")
                done = "switched on" if args.command == "activate" else "switched off"
        except ConnectionNotFound:
            raise CliError(f"Recart account {account!r} has no Klaviyo connection", EXIT_NOT_FOUND) from None
        except NeedsReauthorization as error:
            raise CliError(
                f"{error}. Reconnect with: recart-klaviyo connect {account}", EXIT_NEEDS_ATTENTION
            ) from None
        except ConnectionError_ as error:
            raise CliError(str(error), EXIT_NEEDS_ATTENTION) from None
        except KlaviyoError as error:
            raise CliError(f"{args.command} failed; the connection was kept: {error}", EXIT_FAILED) from None
        if args.json:
            _print_json(connection_summary(connection))
        else:
            print(f"Klaviyo connection of {account}: {done}.")
        return EXIT_OK
    finally:
        store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the integration app until interrupted."""
    settings = _settings(need_app=True)
    store = _store()
    try:
        app = build_app(KlaviyoOAuth(settings, store), store)
        print(
            f"Integration app on http://{args.host}:{args.port} — connect a shop at "
            f"http://{args.host}:{args.port}/integrations/klaviyo/connect?account=ACCOUNT\n"
            f"OAuth redirect URI (must be registered with Klaviyo): {settings.redirect_uri}",
            flush=True,
        )
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="off")
        # Config() has just set up uvicorn's loggers; keep OAuth codes and states out of the access log.
        logging.getLogger("uvicorn.access").addFilter(RedactCallbackQuery())
        uvicorn.Server(config).run()
        return EXIT_OK
    finally:
        store.close()


class RedactCallbackQuery(logging.Filter):
    """Drops the query string of OAuth callback requests from uvicorn's access log.

    The query holds the authorization code and the state: short-lived, but credentials all the same.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the path argument of an access-log record; never drops a record."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2]
            if path.startswith(CALLBACK_PATH) and "?" in path:
                record.args = (*args[:2], f"{path.split('?', 1)[0]}?[redacted]", *args[3:])
        return True


def _connect_events(store: ConnectionStore, account: str) -> int:
    """How many times the account was (re)connected so far: a new one means our callback landed."""
    return sum(1 for event in store.history(account) if event["kind"] in ("connected", "reconnected"))


def cmd_connect(args: argparse.Namespace) -> int:
    """Print (or open) the authorize URL, serve the callback, and wait until the connection lands."""
    account = _account(args.account)
    settings = _settings(need_app=True)
    redirect = urlsplit(settings.redirect_uri)
    host = args.host or redirect.hostname or "127.0.0.1"
    port = args.port or redirect.port or (443 if redirect.scheme == "https" else 80)
    store = _store()
    try:
        oauth = KlaviyoOAuth(settings, store)
        outcomes: queue.Queue[tuple[Connection | None, OAuthCallbackError | None]] = queue.Queue()

        def heard(who: str | None, connection: Connection | None, error: OAuthCallbackError | None) -> None:
            if who == account:
                outcomes.put((connection, error))
            elif error is not None:
                # A stale or foreign link (unknown state): the person may still finish the real one.
                print(f"Ignored a callback that is not ours ({error.reason}).", file=sys.stderr, flush=True)

        app = build_app(oauth, store, on_callback=heard)
        try:
            sock = bind(host, port)
        except OSError as error:
            # Another process (say `recart-klaviyo serve`) already listens there: it will take the
            # callback and write the store, which we poll.
            sock = None
            print(
                f"Note: {host}:{port} is in use ({error.strerror}); assuming the integration app runs there "
                "and waiting for the connection to appear in the store.",
                file=sys.stderr,
            )
        before = _connect_events(store, account)
        url = oauth.start_authorization(account)
        if sock is None:
            _show_authorize_url(url, account, args.open, args.timeout)
            return _wait_for_connection(store, account, before, outcomes, args.timeout)
        with serving(app, sock):
            _show_authorize_url(url, account, args.open, args.timeout)
            return _wait_for_connection(store, account, before, outcomes, args.timeout)
    finally:
        store.close()


def _show_authorize_url(url: str, account: str, open_browser: bool, timeout: float) -> None:
    print(f"Connect Klaviyo for Recart account {account}: open this URL in a browser and approve access:")
    print(url, flush=True)
    if open_browser and not webbrowser.open(url):
        print("(could not open a browser; open the URL yourself)", file=sys.stderr)
    print(f"Waiting up to {timeout:g} s for Klaviyo to send the browser back…", file=sys.stderr, flush=True)


def _wait_for_connection(
    store: ConnectionStore,
    account: str,
    before: int,
    outcomes: queue.Queue[tuple[Connection | None, OAuthCallbackError | None]],
    timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection, error = outcomes.get(timeout=0.25)
        except queue.Empty:
            connection, error = None, None
            if _connect_events(store, account) > before:
                connection = store.get(account)
        if error is not None:
            raise CliError(f"Klaviyo was not connected ({error.reason}): {error.user_message}", EXIT_FAILED)
        if connection is not None:
            _print_connection(connection, as_json=False)
            if connection.state is ConnectionState.ACTIVE:
                klaviyo = connection.klaviyo_account_id
                print(f"Klaviyo connected: Recart account {account} → Klaviyo account {klaviyo}.")
                return EXIT_OK
            print(
                f"Connected, but the connection needs re-authorization ({connection.state_reason}).",
                file=sys.stderr,
            )
            return EXIT_NEEDS_ATTENTION
    raise CliError(f"timed out after {timeout:g} s waiting for the OAuth callback", EXIT_TIMEOUT)


# ---------------------------------------------------------------------------- subscriber push


def cmd_push_settings(args: argparse.Namespace) -> int:
    """Show an account's push settings, or change them (validated against its Klaviyo lists)."""
    account = _account(args.account)
    changing = any(
        v is not None for v in (args.list, args.email_list, args.sms_list, args.sms_countries, args.enabled)
    )
    store = _store()
    try:
        current = store.push_settings(account)
        if not changing:
            if current is None:
                if store.get(account) is None:
                    raise CliError(f"Recart account {account!r} has no Klaviyo connection", EXIT_NOT_FOUND)
                raise CliError(
                    f"{account} has no push settings yet: choose with --list ID (or --email-list/--sms-list)",
                    EXIT_NEEDS_ATTENTION,
                )
            _print_settings(current, args.json)
            return EXIT_OK
        if args.list and (args.email_list or args.sms_list):
            raise CliError("give --list (one list for both) or --email-list/--sms-list, not both", EXIT_USAGE)
        email_list = _chosen_list(args.list or args.email_list, current.email_list_id if current else None)
        sms_list = _chosen_list(args.list or args.sms_list, current.sms_list_id if current else None)
        countries = (
            normalize_countries(args.sms_countries.split(","))
            if args.sms_countries is not None
            else (current.sms_countries if current else DEFAULT_SMS_COUNTRIES)
        )
        enabled = args.enabled if args.enabled is not None else (current.enabled if current else True)
        try:
            choice = PushSettings(account, email_list, sms_list, countries, enabled)
            with _klaviyo_errors(account, "could not check the lists at Klaviyo; nothing saved"):
                saved = asyncio.run(save_push_settings(_settings(need_app=True), store, choice))
        except PushSettingsError as error:
            raise CliError(str(error), EXIT_USAGE) from None
        _print_settings(saved, args.json)
        return EXIT_OK
    finally:
        store.close()


@contextmanager
def _klaviyo_errors(account: str, failed: str) -> Iterator[None]:
    """The connector's errors as ``CliError``: no connection (3), a connection that needs attention
    (4), or Klaviyo refused or was unreachable, or a lock of the account stayed taken (1, after
    ``failed``)."""
    try:
        yield
    except ConnectionNotFound:
        raise CliError(f"Recart account {account!r} has no Klaviyo connection", EXIT_NOT_FOUND) from None
    except ConnectionError_ as error:
        raise CliError(str(error), EXIT_NEEDS_ATTENTION) from None
    except KlaviyoError as error:
        raise CliError(f"{failed}: {error}", EXIT_FAILED) from None
    except TimeoutError as error:  # a per-account lock stayed taken (a refresh or a push still running)
        raise CliError(f"{failed}: {error}", EXIT_FAILED) from None


def _chosen_list(given: str | None, current: str | None) -> str | None:
    """A list option: unset keeps the current list, ``none`` stops pushing that channel."""
    if given is None:
        return current
    return None if given.lower() == "none" else given


def _print_settings(settings: PushSettings, as_json: bool) -> None:
    if as_json:
        _print_json(settings.as_dict())
        return

    def named(list_id: str | None) -> str:
        return f"{list_id} ({settings.list_names.get(list_id, '?')})" if list_id else "- (not pushed)"

    print(f"Subscriber push of {settings.recart_account_id}: {'on' if settings.enabled else 'off'}")
    print(f"  email subscribers -> {named(settings.email_list_id)}")
    print(
        f"  SMS subscribers   -> {named(settings.sms_list_id)}"
        + ("  (same list)" if settings.same_list else "")
    )
    print(f"  SMS countries:       {', '.join(settings.sms_countries)}")


def cmd_push(args: argparse.Namespace) -> int:
    """Push one account's subscribers now (or print the plan with --dry-run)."""
    from orchestration.subscriber_push import PushNotConfigured, push_connected_account
    from warehouse.duckdb_file import default_path

    account = _account(args.account)
    store = _store()
    try:
        with _klaviyo_errors(account, "push failed (what Klaviyo accepted is in the ledger)"):
            try:
                plan, result = asyncio.run(
                    push_connected_account(
                        _settings(need_app=True), store, account, default_path(), dry_run=args.dry_run
                    )
                )
            except PushNotConfigured as error:
                raise CliError(str(error), EXIT_NEEDS_ATTENTION) from None
        if args.json:
            _print_json({"plan": plan.summary(), "result": result.as_metadata() if result else None})
        elif result is None:
            print(plan.render())
        else:
            figures = result.as_metadata()
            print(
                f"Pushed {account}: {figures['subscribed']} subscribed, "
                f"{figures['unsubscribed']} unsubscribed, {figures['rejected']} rejected, "
                f"{figures['unchanged']} unchanged, "
                f"{figures['api_calls']} API calls in {figures['seconds']:.1f} s"
            )
            if not plan.settings.enabled:
                held_back = plan.not_pushed.get("push switched off", 0)
                print(
                    f"The push of {account} is switched off: opt-outs only ({held_back} consents held back)."
                )
        return EXIT_OK
    finally:
        store.close()


# ---------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``recart-klaviyo`` argument parser."""
    parser = _Parser(
        prog="recart-klaviyo",
        description="Run the Klaviyo integration app and manage shops' Klaviyo connections.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve the integration app (connect pages, OAuth callback)")
    serve.add_argument("--host", default=os.environ.get("RECART_APP_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("RECART_APP_PORT", "8000")))
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(func=cmd_serve)

    connect = commands.add_parser(
        "connect", help="connect a Recart account: print the Klaviyo URL and wait for the callback"
    )
    connect.add_argument("account", help="Recart account id")
    connect.add_argument("--open", action="store_true", help="open the URL in the default browser")
    connect.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    connect.add_argument(
        "--host", help="listen address for the callback (default: from KLAVIYO_REDIRECT_URI)"
    )
    connect.add_argument(
        "--port", type=int, help="listen port for the callback (default: from the redirect URI)"
    )
    connect.set_defaults(func=cmd_connect)

    status = commands.add_parser("status", help="show connections (one, or all)")
    status.add_argument("account", nargs="?", help="Recart account id (default: every connection)")
    status.add_argument("--json", action="store_true", help="JSON instead of a table")
    status.set_defaults(func=cmd_status)

    for name, text in (
        ("activate", "switch a connection on"),
        ("deactivate", "switch a connection off (no Klaviyo calls until activated)"),
        ("disconnect", "revoke access at Klaviyo and delete the stored tokens"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("account", help="Recart account id")
        command.add_argument("--json", action="store_true", help="print the connection as JSON")
        command.set_defaults(func=cmd_switch)

    push_settings = commands.add_parser(
        "push-settings", help="show or choose the Klaviyo lists Recart subscribers are pushed into"
    )
    push_settings.add_argument("account", help="Recart account id")
    push_settings.add_argument("--list", help="one list for email and SMS subscribers")
    push_settings.add_argument("--email-list", help="the list for email subscribers ('none': no email push)")
    push_settings.add_argument("--sms-list", help="the list for SMS subscribers ('none': no SMS push)")
    push_settings.add_argument("--sms-countries", help="countries the account's SMS covers, e.g. US,CA")
    switch = push_settings.add_mutually_exclusive_group()
    switch.add_argument("--enable", dest="enabled", action="store_const", const=True, default=None)
    switch.add_argument(
        "--disable",
        dest="enabled",
        action="store_const",
        const=False,
        help="stop pushing consent (opt-outs of contacts the push subscribed still go out)",
    )
    push_settings.add_argument("--json", action="store_true", help="print the settings as JSON")
    push_settings.set_defaults(func=cmd_push_settings)

    push = commands.add_parser("push", help="push an account's consented subscribers to Klaviyo now")
    push.add_argument("account", help="Recart account id")
    push.add_argument("--dry-run", action="store_true", help="print the plan; no API call, nothing written")
    push.add_argument("--json", action="store_true", help="print the figures as JSON")
    push.set_defaults(func=cmd_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``recart-klaviyo``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
