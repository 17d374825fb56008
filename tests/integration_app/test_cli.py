"""``recart-klaviyo`` as a separate process: status, the switches, connect end to end, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx2

from connectors.klaviyo.connections import ConnectionState
from integration_app.server import bind

if TYPE_CHECKING:
    from tests.integration_app.conftest import Stack

ENTRY_POINT = Path(sys.executable).with_name("recart-klaviyo")
COMMAND = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "integration_app.cli"]


def cli(
    stack: Stack, *args: str, drop: tuple[str, ...] = (), timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``recart-klaviyo`` with the stack's environment (minus ``drop``, plus ``env``)."""
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    environ.update({k: v for k, v in stack.env.items() if k not in drop}, **env)
    return subprocess.run(
        [*COMMAND, *args], env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_status_json_lists_connections(stack: Stack) -> None:
    empty = cli(stack, "status", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == []

    stack.connect("shop-1", stack.accounts[0])
    stack.connect("shop-2", stack.accounts[1])
    listed = cli(stack, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["recart_account_id"], r["klaviyo_account_id"], r["state"]) for r in rows] == [
        ("shop-1", stack.accounts[0], "active"),
        ("shop-2", stack.accounts[1], "active"),
    ]
    assert all(r["scopes_ok"] for r in rows)
    for account in ("shop-1", "shop-2"):
        tokens = stack.store.tokens(account)
        assert tokens.access_token not in listed.stdout and tokens.refresh_token not in listed.stdout

    one = cli(stack, "status", "shop-2", "--json")
    assert one.returncode == 0 and json.loads(one.stdout)["klaviyo_account_id"] == stack.accounts[1]

    table = cli(stack, "status")
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "ACCOUNT",
        "KLAVIYO",
        "ACCOUNT",
        "STATE",
        "REASON",
        "SCOPES",
        "OK",
        "TOKEN",
        "EXPIRES",
    ]
    assert lines[0].split()[:5] == ["shop-1", stack.accounts[0], "active", "—", "yes"]
    assert "in " in lines[0]  # token expires "in 60 min"


def test_deactivate_activate_and_disconnect(stack: Stack) -> None:
    stack.connect("shop-1", stack.accounts[0])
    off = cli(stack, "deactivate", "shop-1")
    assert off.returncode == 0, off.stderr
    assert "switched off" in off.stdout
    assert stack.store.require("shop-1").state is ConnectionState.INACTIVE
    status = cli(stack, "status", "shop-1", "--json")
    assert status.returncode == 4 and json.loads(status.stdout)["state"] == "inactive"

    on = cli(stack, "activate", "shop-1", "--json")
    assert on.returncode == 0 and json.loads(on.stdout)["state"] == "active"

    gone = cli(stack, "disconnect", "shop-1")
    assert gone.returncode == 0, gone.stderr
    assert stack.store.require("shop-1").state is ConnectionState.REMOVED
    assert [g["revoked"] for g in stack.grants()] == [True]
    again = cli(stack, "activate", "shop-1")
    assert again.returncode == 4 and "removed" in again.stderr.lower()


def test_errors_are_clear_with_meaningful_exit_codes(stack: Stack) -> None:
    unknown = cli(stack, "deactivate", "nobody")
    assert unknown.returncode == 3 and "has no Klaviyo connection" in unknown.stderr
    assert cli(stack, "status", "nobody").returncode == 3
    invalid = cli(stack, "status", "shop 1")
    assert invalid.returncode == 2 and "not a valid Recart account id" in invalid.stderr
    assert cli(stack, "frobnicate").returncode == 2
    assert cli(stack, "deactivate").returncode == 2

    no_key = cli(stack, "status", drop=("RECART_ENCRYPTION_KEY",))
    assert no_key.returncode == 2
    assert "RECART_ENCRYPTION_KEY is not set" in no_key.stderr and "Traceback" not in no_key.stderr

    wrong_key = cli(stack, "status", RECART_ENCRYPTION_KEY="not-a-key")
    assert wrong_key.returncode == 2 and "RECART_ENCRYPTION_KEY" in wrong_key.stderr

    for command in (["connect", "shop-1"], ["disconnect", "shop-1"], ["serve"]):
        no_client = cli(stack, *command, drop=("KLAVIYO_CLIENT_ID",))
        assert no_client.returncode == 2, command
        assert "KLAVIYO_CLIENT_ID is not set" in no_client.stderr and "Traceback" not in no_client.stderr


def test_disconnect_keeps_the_connection_when_klaviyo_is_unreachable(stack: Stack) -> None:
    stack.connect("shop-1", stack.accounts[0])
    dead = bind("127.0.0.1", 0)  # a port nothing answers on (bound, never listening)
    port = dead.getsockname()[1]
    try:
        failed = cli(stack, "disconnect", "shop-1", KLAVIYO_BASE_URL=f"http://127.0.0.1:{port}")
    finally:
        dead.close()
    assert failed.returncode == 1 and "the connection was kept" in failed.stderr
    assert stack.store.require("shop-1").state is ConnectionState.ACTIVE


def _connect_process(stack: Stack, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start ``recart-klaviyo connect`` on a fresh callback port registered at the sandbox."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # the CLI binds it itself a moment later
    redirect = f"http://127.0.0.1:{port}/oauth/klaviyo/callback"
    updated = stack.control.post(
        "/_sandbox/oauth/clients", json={"client_id": stack.client_id, "redirect_uris": [redirect]}
    )
    assert updated.status_code == 200, updated.text
    environ = {**os.environ, **stack.env, "KLAVIYO_REDIRECT_URI": redirect}
    process = subprocess.Popen(
        [*COMMAND, "connect", *args], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, environ


def _read_authorize_url(process: subprocess.Popen[str], timeout: float = 30) -> str:
    assert process.stdout is not None
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("http"):
                found.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, "the CLI printed no authorize URL"
    return found[0]


def test_connect_prints_the_url_and_waits_for_the_callback(stack: Stack) -> None:
    process, _ = _connect_process(stack, "shop-9", "--timeout", "60")
    try:
        url = _read_authorize_url(process)
        assert url.startswith(f"{stack.sandbox.base_url}/oauth/authorize?")
        callback = stack.consent(url, stack.accounts[1])
        page = httpx2.get(callback, timeout=30)  # the browser lands on the CLI's own server
        assert page.status_code == 200 and "Klaviyo connected" in page.text
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"Klaviyo connected: Recart account shop-9 → Klaviyo account {stack.accounts[1]}" in out
    connection = stack.store.require("shop-9")
    assert connection.state is ConnectionState.ACTIVE and connection.klaviyo_account_id == stack.accounts[1]


def test_connect_reports_a_denial(stack: Stack) -> None:
    process, _ = _connect_process(stack, "shop-9", "--timeout", "60")
    try:
        callback = stack.consent(_read_authorize_url(process), stack.accounts[0], decision="deny")
        assert httpx2.get(callback, timeout=30).status_code == 403
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and "access_denied" in err
    assert stack.store.get("shop-9") is None


def test_connect_times_out(stack: Stack) -> None:
    process, _ = _connect_process(stack, "shop-9", "--timeout", "1")
    started = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 5 and "timed out" in err
    assert time.monotonic() - started < 30


def test_connect_uses_a_running_server_when_the_port_is_taken(stack: Stack) -> None:
    """With `serve` already on the redirect URI's port, connect only waits for the store to change."""
    port = urlsplit(stack.redirect_uri).port
    assert port is not None
    process = subprocess.Popen(
        [*COMMAND, "connect", "shop-7", "--timeout", "60"],
        env={**os.environ, **stack.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        callback = stack.consent(_read_authorize_url(process), stack.accounts[0])
        assert stack.web.get(callback).status_code == 200  # the test's app server takes the callback
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "is in use" in err and "Klaviyo connected" in out


def test_serve_runs_the_app_and_keeps_codes_out_of_its_log(stack: Stack) -> None:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # `serve` binds it
    redirect = f"http://127.0.0.1:{port}/oauth/klaviyo/callback"
    stack.control.post(
        "/_sandbox/oauth/clients", json={"client_id": stack.client_id, "redirect_uris": [redirect]}
    )
    environ = {**os.environ, **stack.env, "KLAVIYO_REDIRECT_URI": redirect}
    process = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(port)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "serve did not start"
            time.sleep(0.1)
        with httpx2.Client(base_url=base, timeout=30) as web:
            authorize = web.get("/integrations/klaviyo/connect", params={"account": "shop-5"})
            assert authorize.status_code == 302
            callback = stack.consent(authorize.headers["location"], stack.accounts[0])
            query = parse_qs(urlsplit(callback).query)
            page = web.get(callback)
            assert page.status_code == 200 and "Klaviyo connected" in page.text
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert stack.store.require("shop-5").state is ConnectionState.ACTIVE
    assert "/oauth/klaviyo/callback?[redacted]" in out  # uvicorn writes its access log to stdout
    assert query["code"][0] not in err + out and query["state"][0] not in err + out
