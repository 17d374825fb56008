"""Choosing where subscribers are pushed: the integration app's JSON API and the CLI."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from connectors.klaviyo.connections import ConnectionState
from tests.integration_app.test_cli import cli

if TYPE_CHECKING:
    from tests.integration_app.conftest import Stack

PATH = "/integrations/klaviyo/push-settings"


def _list(stack: Stack, name: str, opt_in_process: str = "single_opt_in") -> str:
    created = stack.control.post(
        f"/_sandbox/accounts/{stack.accounts[0]}/lists", json={"name": name, "opt_in_process": opt_in_process}
    )
    assert created.status_code == 201, created.text
    return created.json()["data"]["id"]


def test_push_settings_api_validates_against_the_accounts_lists(stack: Stack) -> None:
    stack.connect("shop-1")
    newsletter, texts = _list(stack, "Newsletter", "double_opt_in"), _list(stack, "Texts")

    listed = stack.web.get("/integrations/klaviyo/lists", params={"account": "shop-1"})
    assert listed.status_code == 200
    assert {(r["id"], r["name"], r["opt_in_process"]) for r in listed.json()["data"]} >= {
        (newsletter, "Newsletter", "double_opt_in"),
        (texts, "Texts", "single_opt_in"),
    }
    assert stack.web.get(PATH, params={"account": "shop-1"}).status_code == 404  # nothing chosen yet

    saved = stack.web.put(
        PATH, params={"account": "shop-1"}, json={"email_list_id": newsletter, "sms_list_id": texts}
    )
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert (body["email_list_id"], body["sms_list_id"], body["same_list"]) == (newsletter, texts, False)
    assert body["list_names"] == {newsletter: "Newsletter", texts: "Texts"}

    same = stack.web.put(
        PATH, params={"account": "shop-1"}, json={"list_id": newsletter, "sms_countries": ["us"]}
    )
    assert same.status_code == 200 and same.json()["same_list"] is True
    assert same.json()["sms_countries"] == ["US"]
    assert stack.web.get(PATH, params={"account": "shop-1"}).json()["sms_list_id"] == newsletter


def test_push_settings_api_refuses_bad_input_and_keeps_what_was_saved(stack: Stack) -> None:
    stack.connect("shop-1")
    good = _list(stack, "Good")
    assert stack.web.put(PATH, params={"account": "shop-1"}, json={"list_id": good}).status_code == 200

    cases = [
        ({"list_id": "Nope12"}, 422, "unknown_list"),
        ({"list_id": good, "colour": "blue"}, 400, "invalid_settings"),
        ({"email_list_id": 7}, 400, "invalid_settings"),
        ({}, 400, "invalid_settings"),
        ({"list_id": good, "sms_countries": ["XX"]}, 400, "invalid_settings"),
        ({"list_id": good, "enabled": "yes"}, 400, "invalid_settings"),
        ([1, 2], 400, "invalid_settings"),
    ]
    for body, status, reason in cases:
        response = stack.web.put(PATH, params={"account": "shop-1"}, json=body)
        assert (response.status_code, response.json()["error"]) == (status, reason), body
    garbled = stack.web.put(PATH, params={"account": "shop-1"}, content=b"{not json")
    assert garbled.status_code == 400
    other_site = stack.web.put(
        PATH, params={"account": "shop-1"}, json={"list_id": good}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert other_site.status_code == 403
    assert stack.web.put(PATH, params={"account": "nobody"}, json={"list_id": good}).status_code == 404
    assert stack.web.get(PATH, params={"account": "shop-1"}).json()["email_list_id"] == good

    stack.store.set_state("shop-1", ConnectionState.NEEDS_REAUTH, "refresh failed")
    blocked = stack.web.put(PATH, params={"account": "shop-1"}, json={"list_id": good})
    assert blocked.status_code == 409


def test_push_settings_cli(stack: Stack) -> None:
    stack.connect("shop-1")
    emails, texts = _list(stack, "Emails"), _list(stack, "Texts")

    none_yet = cli(stack, "push-settings", "shop-1")
    assert none_yet.returncode == 4 and "no push settings" in none_yet.stderr

    chosen = cli(stack, "push-settings", "shop-1", "--email-list", emails, "--sms-list", texts, "--json")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["list_names"] == {emails: "Emails", texts: "Texts"}

    # Unset options keep their value; 'none' stops a channel.
    no_sms = cli(stack, "push-settings", "shop-1", "--sms-list", "none", "--sms-countries", "us,ca", "--json")
    settings = json.loads(no_sms.stdout)
    assert (settings["email_list_id"], settings["sms_list_id"], settings["sms_countries"]) == (
        emails,
        None,
        ["CA", "US"],
    )

    unknown = cli(stack, "push-settings", "shop-1", "--list", "Nope12")
    assert unknown.returncode == 2 and "'Nope12' does not exist" in unknown.stderr
    shown = cli(stack, "push-settings", "shop-1")
    assert shown.returncode == 0 and f"email subscribers -> {emails} (Emails)" in shown.stdout

    off = cli(stack, "push-settings", "shop-1", "--disable", "--json")
    assert json.loads(off.stdout)["enabled"] is False
    # Switched off, the push still runs, for opt-outs only (tests/push): here it gets as far as the
    # warehouse, which dbt has not built, and says so (no traceback).
    opt_outs_only = cli(stack, "push", "shop-1")
    assert opt_outs_only.returncode == 4 and "Traceback" not in opt_outs_only.stderr
    assert "klaviyo_push.account_lists is missing" in opt_outs_only.stderr
