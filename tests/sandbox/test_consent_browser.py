"""The OAuth consent page, clicked through by a person in a real headless Chromium."""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from playwright.sync_api import sync_playwright

from klaviyo_sandbox.testing import register_oauth_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def callback_server() -> Iterator[tuple[str, list[str]]]:
    """A stand-in for the integration app's callback: records the query it is sent back with."""
    seen: list[str] = []

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/oauth/klaviyo/callback"):  # not the browser's favicon request
                seen.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(b"callback received")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/oauth/klaviyo/callback", seen
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_person_allows_or_denies_on_the_consent_page(
    make_sandbox, control, callback_server, browser, decision
):
    redirect, seen = callback_server
    running = make_sandbox(seed="empty", rate_limits="off")
    ctl = control(running)
    app = register_oauth_app(ctl, redirect, ["accounts:read", "lists:read"])
    accounts = ctl.get("/_sandbox/accounts").json()["data"]
    verifier = secrets.token_urlsafe(48)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": app["client_id"],
            "redirect_uri": redirect,
            "scope": "accounts:read lists:read",
            "state": "shop-42 xyz/+",
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    page = browser.new_page()
    page.goto(f"{running.base_url}/oauth/authorize?{query}")
    assert "Recart" in page.inner_text("#app-name")
    assert sorted(page.locator("#scopes li").evaluate_all("els => els.map(e => e.dataset.scope)")) == [
        "accounts:read",
        "lists:read",
    ]
    page.select_option("#account_id", accounts[1]["id"])
    page.click(f"button[name=decision][value={decision}]")
    page.wait_for_url(f"{redirect}*")
    page.close()
    returned = parse_qs(urlsplit(seen[-1]).query)
    assert returned["state"] == ["shop-42 xyz/+"]
    if decision == "deny":
        assert returned["error"] == ["access_denied"] and "code" not in returned
        return
    token = httpx2.post(
        f"{running.base_url}/oauth/token",
        auth=(app["client_id"], app["client_secret"]),
        data={
            "grant_type": "authorization_code",
            "code": returned["code"][0],
            "code_verifier": verifier,
            "redirect_uri": redirect,
        },
    ).json()
    me = httpx2.get(
        f"{running.base_url}/api/accounts",
        headers={"Authorization": f"Bearer {token['access_token']}", "revision": "2026-07-15"},
    )
    assert me.json()["data"][0]["id"] == accounts[1]["id"]  # the account the person chose
