"""Fault injection at run time, the CLI, and persisted state across restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from klaviyo_sandbox.testing import api_client


def test_fail_next_then_recover(make_sandbox, control):
    running = make_sandbox(rate_limits="off")
    api, ctl = api_client(running), control(running)
    assert (
        ctl.put("/_sandbox/faults", json={"fail_next": 2, "statuses": [503]}).json()["data"]["fail_next"] == 2
    )
    assert [api.get("/api/lists").status_code for _ in range(3)] == [503, 503, 200]
    error = api.get("/api/lists")
    assert error.status_code == 200


def test_error_rate_and_path_prefix(make_sandbox, control):
    running = make_sandbox(rate_limits="off")
    api, ctl = api_client(running), control(running)
    ctl.put("/_sandbox/faults", json={"error_rate": 1.0, "statuses": [500], "path_prefix": "/api/segments"})
    response = api.get("/api/segments")
    assert response.status_code == 500 and response.json()["errors"][0]["status"] == 500
    assert api.get("/api/lists").status_code == 200  # outside the prefix
    ctl.put("/_sandbox/faults", json={"error_rate": 0})
    assert api.get("/api/segments").status_code == 200


def test_dropped_connection_is_a_transport_error(make_sandbox, control):
    running = make_sandbox(rate_limits="off")
    api, ctl = api_client(running), control(running)
    ctl.put("/_sandbox/faults", json={"drop_rate": 1.0})
    with pytest.raises(httpx2.TransportError):
        api.get("/api/lists")
    ctl.put("/_sandbox/faults", json={"drop_rate": 0})
    assert api_client(running).get("/api/lists").status_code == 200


def test_added_latency_is_reported_back(make_sandbox, control):
    running = make_sandbox(rate_limits="off")
    ctl = control(running)
    assert ctl.put("/_sandbox/faults", json={"latency_ms": 20}).json()["data"]["latency_ms"] == 20
    assert api_client(running).get("/api/lists").status_code == 200


@pytest.mark.parametrize("body", [{"error_rate": 2}, {"statuses": [404]}, {"latency_ms": -1}])
def test_bad_fault_settings_are_400(make_sandbox, control, body):
    ctl = control(make_sandbox(rate_limits="off"))
    assert ctl.put("/_sandbox/faults", json=body).status_code == 400


def test_fault_rate_option(make_sandbox):
    running = make_sandbox(rate_limits="off", fault_rate=1.0)
    assert api_client(running).get("/api/lists").status_code in (500, 503)


def _serve(*args: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "klaviyo_sandbox.cli", "serve", "--port", "0", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0


def test_cli_serves_and_prints_accounts(tmp_path: Path):
    proc, info = _serve("--seed", "empty", "--rate-limits", "off")
    try:
        assert info["base_url"].startswith("http://127.0.0.1:")
        assert len(info["accounts"]) >= 2 and info["accounts"][0]["private_api_key"].startswith("pk_")
        listed = httpx2.get(f"{info['base_url']}/_sandbox/accounts").json()["data"]
        assert [a["id"] for a in listed] == [a["id"] for a in info["accounts"]]
    finally:
        _stop(proc)


def test_cli_rejects_bad_options():
    result = subprocess.run(
        [sys.executable, "-m", "klaviyo_sandbox.cli", "serve", "--rate-limits", "fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "rate-limits" in result.stderr


def test_state_file_survives_a_restart(tmp_path: Path):
    state = tmp_path / "sandbox.json"
    proc, info = _serve("--seed", "empty", "--rate-limits", "off", "--state", str(state))
    key = info["accounts"][0]["private_api_key"]
    headers = {
        "Authorization": f"Klaviyo-API-Key {key}",
        "revision": "2026-07-15",
        "content-type": "application/vnd.api+json",
    }
    try:
        body = {"data": {"type": "profile", "attributes": {"email": "kept@example.com"}}}
        created = httpx2.post(f"{info['base_url']}/api/profiles", json=body, headers=headers)
        assert created.status_code == 201
    finally:
        _stop(proc)
    assert state.exists()
    proc, info = _serve("--seed", "empty", "--rate-limits", "off", "--state", str(state))
    try:
        found = httpx2.get(
            f"{info['base_url']}/api/profiles",
            headers=headers,
            params={"filter": 'equals(email,"kept@example.com")'},
        )
        assert [p["id"] for p in found.json()["data"]] == [created.json()["data"]["id"]]
    finally:
        _stop(proc)
