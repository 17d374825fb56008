"""Fixtures for the integration app: a sandbox, an OAuth app registered there whose redirect URI is a
real integration app served on loopback, and the app's store (a SQLite file in ``tmp_path`` encrypted
with a key made for the test and passed the way production passes it, through the environment)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from cryptography.fernet import Fernet

from connectors.klaviyo.config import REQUIRED_SCOPES, KlaviyoSettings
from connectors.klaviyo.connections import ConnectionStore
from connectors.klaviyo.oauth import KlaviyoOAuth
from integration_app.app import build_app
from integration_app.server import bind, serving
from klaviyo_sandbox.server import RunningSandbox


@dataclass
class Stack:
    """Sandbox + integration app + store, and HTTP clients for both servers."""

    sandbox: RunningSandbox
    control: httpx2.Client  # the sandbox (control API, consent form)
    web: httpx2.Client  # the integration app, redirects not followed
    app_url: str
    client_id: str
    client_secret: str
    store: ConnectionStore
    oauth: KlaviyoOAuth
    accounts: list[str]
    env: dict[str, str]  # the environment a `recart-klaviyo` process needs for this stack

    @property
    def redirect_uri(self) -> str:
        """Where Klaviyo sends the browser back."""
        return f"{self.app_url}/oauth/klaviyo/callback"

    def consent(self, authorize_url: str, account_id: str, decision: str = "allow") -> str:
        """Answer the sandbox consent form for ``authorize_url``; returns the callback URL to follow."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query, keep_blank_values=True).items()}
        response = self.control.post(
            "/oauth/authorize", data={**query, "account_id": account_id, "decision": decision}
        )
        assert response.status_code == 302, response.text
        return response.headers["location"]

    def start(self, account: str) -> str:
        """``GET /integrations/klaviyo/connect``; returns the authorize URL it redirects to."""
        response = self.web.get("/integrations/klaviyo/connect", params={"account": account})
        assert response.status_code == 302, response.text
        return response.headers["location"]

    def connect(self, account: str, klaviyo_account: str | None = None) -> httpx2.Response:
        """The whole flow over HTTP; returns the callback page."""
        callback = self.consent(self.start(account), klaviyo_account or self.accounts[0])
        assert callback.startswith(self.redirect_uri)
        return self.web.get(callback)

    def grants(self) -> list[dict[str, Any]]:
        """This app's grants at the sandbox."""
        return self.control.get("/_sandbox/oauth/grants", params={"client_id": self.client_id}).json()[
            "grants"
        ]


@pytest.fixture
def make_stack(
    make_sandbox: Callable[..., RunningSandbox],
    control: Callable[[RunningSandbox], httpx2.Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Stack]]:
    """Start a stack; ``app_scopes`` are the scopes enabled on the app at Klaviyo."""
    with ExitStack() as exits:

        def start(app_scopes: list[str] | None = None) -> Stack:
            running = make_sandbox(seed="empty", rate_limits="off")
            ctl = control(running)
            sock = bind("127.0.0.1", 0)  # bound first: the redirect URI must name the port
            app_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            registered = ctl.post(
                "/_sandbox/oauth/clients",
                json={
                    "name": "Recart",
                    "redirect_uris": [f"{app_url}/oauth/klaviyo/callback"],
                    "scopes": app_scopes if app_scopes is not None else list(REQUIRED_SCOPES),
                },
            )
            assert registered.status_code == 201, registered.text
            app = registered.json()
            env = {
                "KLAVIYO_BASE_URL": running.base_url,
                "KLAVIYO_AUTHORIZE_URL": f"{running.base_url}/oauth/authorize",
                "KLAVIYO_CLIENT_ID": app["client_id"],
                "KLAVIYO_CLIENT_SECRET": app["client_secret"],
                "KLAVIYO_REDIRECT_URI": f"{app_url}/oauth/klaviyo/callback",
                "RECART_STATE_DB": str(tmp_path / "state.db"),
                "RECART_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            }
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            store = exits.enter_context(ConnectionStore.from_env())
            settings = KlaviyoSettings.from_env()
            oauth = KlaviyoOAuth(settings, store)
            served_url = exits.enter_context(serving(build_app(oauth, store), sock))
            assert served_url == app_url
            web = exits.enter_context(httpx2.Client(base_url=app_url, timeout=30, follow_redirects=False))
            return Stack(
                sandbox=running,
                control=ctl,
                web=web,
                app_url=app_url,
                client_id=app["client_id"],
                client_secret=app["client_secret"],
                store=store,
                oauth=oauth,
                accounts=[a["id"] for a in ctl.get("/_sandbox/accounts").json()["data"]],
                env=env,
            )

        yield start


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """A stack whose app has every required scope."""
    return make_stack()
