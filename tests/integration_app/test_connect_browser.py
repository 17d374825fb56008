"""The connect flow as a shop owner clicks it, in headless Chromium: the integration app's connect link →
the sandbox's consent page → choose the Klaviyo account → Allow (or Deny) → the callback page → the
status page, and the switches on it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from connectors.klaviyo.connections import ConnectionState

if TYPE_CHECKING:
    from tests.integration_app.conftest import Stack

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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright (its own browser download cannot work here)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def test_shop_connects_klaviyo_through_the_real_pages(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{stack.app_url}/integrations/klaviyo/connect?account=shop-1")
        # Klaviyo's (the sandbox's) consent page: our app asks for every required scope.
        expect(page).to_have_url(re.compile(re.escape(f"{stack.sandbox.base_url}/oauth/authorize?")))
        expect(page.locator("#app-name")).to_have_text("Recart")
        page.select_option("#account_id", stack.accounts[1])
        page.click("button[name=decision][value=allow]")

        page.wait_for_url(f"{stack.redirect_uri}*")
        expect(page.locator("#page-title")).to_have_text("Klaviyo connected")
        expect(page.locator("#klaviyo-account")).to_have_text(stack.accounts[1])
        expect(page.locator("#connection-state")).to_have_attribute("data-state", "active")

        page.click("#status-link")
        page.wait_for_url(f"{stack.app_url}/integrations/klaviyo/status?account=shop-1")
        expect(page.locator("#connection-state")).to_have_attribute("data-state", "active")
        expect(page.locator("#connection-state")).to_have_text("Active")
        expect(page.locator("#scopes-ok")).to_have_attribute("data-ok", "true")

        # The switches: off, on, and disconnect, each a small same-origin form.
        page.click("#deactivate")
        expect(page.locator("#connection-state")).to_have_attribute("data-state", "inactive")
        expect(page.locator("#notice")).to_contain_text("switched off")
        assert stack.store.require("shop-1").state is ConnectionState.INACTIVE
        page.click("#activate")
        expect(page.locator("#connection-state")).to_have_attribute("data-state", "active")
        page.click("#disconnect")
        expect(page.locator("#connection-state")).to_have_attribute("data-state", "removed")
        expect(page.locator("#connect")).to_be_visible()
        assert [g["revoked"] for g in stack.grants()] == [True]
    finally:
        page.close()


def test_shop_denies_and_can_try_again(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{stack.app_url}/integrations/klaviyo/connect?account=shop-2")
        page.click("button[name=decision][value=deny]")
        page.wait_for_url(f"{stack.redirect_uri}*")
        expect(page.locator("#page-title")).to_have_text("Klaviyo was not connected")
        expect(page.locator("#message")).to_contain_text("You chose not to connect Klaviyo")
        assert stack.store.get("shop-2") is None

        page.click("#try-again")  # straight back to the consent page, with a fresh state
        expect(page).to_have_url(re.compile(re.escape(f"{stack.sandbox.base_url}/oauth/authorize?")))
        page.select_option("#account_id", stack.accounts[0])
        page.click("button[name=decision][value=allow]")
        page.wait_for_url(f"{stack.redirect_uri}*")
        expect(page.locator("#page-title")).to_have_text("Klaviyo connected")
        assert stack.store.require("shop-2").klaviyo_account_id == stack.accounts[0]
    finally:
        page.close()
