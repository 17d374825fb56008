"""Hostile and unusual input: every answer is a Klaviyo-shaped 4xx (never a 500, never a dead
connection), and nothing a client can store breaks later reads.

Regression tests for bugs found by fuzzing every implemented operation.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from klaviyo_sandbox.app import HANDLERS
from klaviyo_sandbox.testing import api_client

JSONAPI = {"content-type": "application/vnd.api+json"}


@pytest.fixture(scope="module")
def empty(make_sandbox_module):
    return make_sandbox_module("empty", rate_limits="off")


@pytest.fixture(scope="module")
def make_sandbox_module():
    from contextlib import ExitStack

    from klaviyo_sandbox.server import create_sandbox, running_sandbox

    with ExitStack() as stack:
        yield lambda seed, **options: stack.enter_context(running_sandbox(create_sandbox(seed, **options)))


@pytest.fixture(scope="module")
def api(empty):
    client = api_client(empty)
    yield client
    client.close()


@pytest.fixture(scope="module")
def demo_api(sandbox):
    client = api_client(sandbox)
    yield client
    client.close()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["status"] == status
    return error


def _cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _profile_body(email: str, **attributes) -> dict:
    return {"data": {"type": "profile", "attributes": {"email": email, **attributes}}}


# ---------------------------------------------------------------------------- request bodies


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000 + b"]" * 5000,  # stdlib json: RecursionError
        b'{"data": ' + b"1" * 5000 + b"}",  # stdlib json: ValueError (int digit limit)
        b'{"data": {"type": "profile", "attributes": {"email": NaN}}}',
        b"\xff\xfe{}",
    ],
    ids=["deep-nesting", "5000-digit-int", "nan", "not-utf8"],
)
def test_unparseable_bodies_are_400_and_the_connection_survives(demo_api, raw):
    error = _error(demo_api.post("/api/profiles", content=raw, headers=JSONAPI), 400)
    assert error["source"] == {"pointer": "/data"}
    assert "Malformed JSON" in error["detail"]
    assert demo_api.get("/api/accounts").status_code == 200  # same keep-alive connection


def test_lone_surrogates_are_refused_rather_than_stored(api):
    raw = b'{"data": {"type": "profile", "attributes": {"email": "s@example.com", "first_name": "\\ud800"}}}'
    _error(api.post("/api/profiles", content=raw, headers=JSONAPI), 400)
    assert api.get("/api/profiles", params={"filter": 'equals(email,"s@example.com")'}).json()["data"] == []


def test_integers_beyond_64_bits_are_stored_in_a_renderable_form(api):
    # Used to be stored as a Python int that orjson cannot encode: every later read of the
    # profile (and the --state file) failed with a 500.
    created = api.post("/api/profiles", json=_profile_body("big@example.com", properties={"n": 10**30}))
    assert created.status_code == 201, created.text
    profile_id = created.json()["data"]["id"]
    read = api.get(f"/api/profiles/{profile_id}")
    assert read.status_code == 200
    assert read.json()["data"]["attributes"]["properties"]["n"] == pytest.approx(1e30)
    assert api.get("/api/profiles", params={"page[size]": 100}).status_code == 200


def test_profile_payloads_are_limited_to_100kb_as_the_spec_states(api):
    big = "x" * (110 * 1024)
    error = _error(
        api.post("/api/profiles", json=_profile_body("huge@example.com", properties={"b": big})), 413
    )
    assert error["detail"] == "The maximum allowed payload size is 100KB."
    _error(
        api.post("/api/profile-import", json=_profile_body("huge@example.com", properties={"b": big})), 413
    )
    ok = api.post("/api/profiles", json=_profile_body("fits@example.com", properties={"b": "x" * 90_000}))
    assert ok.status_code == 201, ok.text


# ---------------------------------------------------------------------------- datetimes


def test_datetimes_without_a_utc_instant_are_400_not_stored(api):
    # 0001-01-01T00:30+01:00 is 31 Dec of year 0 in UTC: it used to be stored and then every
    # render of the event (and of its profile's last_event_date) raised OverflowError.
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "time": "0001-01-01T00:30:00+01:00",
                "properties": {},
                "metric": {"data": {"type": "metric", "attributes": {"name": "Edge"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "edge@example.com"}}},
            },
        }
    }
    error = _error(api.post("/api/events", json=body), 400)
    assert error["source"] == {"pointer": "/data/attributes/time"}
    assert api.get("/api/events", params={"page[size]": 1000}).status_code == 200


@pytest.mark.parametrize(
    ("path", "filter_"),
    [
        ("/api/events", "less-than(datetime,0001-01-01T00:00:00+01:00)"),
        ("/api/events", "greater-than(datetime,9999-12-31T23:59:59-05:00)"),
        ("/api/profiles", "greater-than(created,0001-01-01T00:00:00+05:00)"),
        ("/api/events", "greater-than(timestamp," + "1" * 5000 + ")"),
    ],
)
def test_filter_values_python_cannot_represent_are_400(demo_api, path, filter_):
    error = _error(demo_api.get(path, params={"filter": filter_}), 400)
    assert error["source"] == {"parameter": "filter"}


# ---------------------------------------------------------------------------- cursors


@pytest.fixture(scope="module")
def big_segment(sandbox):
    account = next(iter(sandbox.sandbox.store.accounts.values()))
    return account, max(account.segments.values(), key=lambda s: len(s.members))


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(["2024-01-01T00:00:00", "x"]),  # naive datetime: used to raise TypeError on compare
        _cursor(["0001-01-01T00:00:00+01:00", "x"]),
        base64.urlsafe_b64encode(b"[" * 3000).decode(),  # used to raise RecursionError
        _cursor({"a": 1}),
    ],
)
def test_forged_membership_cursors_are_400(demo_api, big_segment, cursor):
    _, segment = big_segment
    for path in (
        f"/api/segments/{segment.id}/profiles",
        f"/api/segments/{segment.id}/relationships/profiles",
    ):
        error = _error(demo_api.get(path, params={"page[cursor]": cursor}), 400)
        assert error["source"] == {"parameter": "page[cursor]"}


@pytest.mark.parametrize("path", ["/api/profiles", "/api/events", "/api/lists", "/api/metrics"])
def test_deeply_nested_cursors_are_400(demo_api, path):
    cursor = base64.urlsafe_b64encode(b"[" * 3000).decode()
    assert _error(demo_api.get(path, params={"page[cursor]": cursor}), 400)["source"] == {
        "parameter": "page[cursor]"
    }


# ---------------------------------------------------------------------------- methods, last resort


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PUT"])
def test_any_other_method_gets_klaviyos_405_with_allow(demo_api, method):
    response = demo_api.request(method, "/api/lists")
    error = _error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"


def test_an_unexpected_error_still_answers_a_klaviyo_500(api, monkeypatch):
    def broken(ctx):
        raise RuntimeError("a sandbox bug")

    monkeypatch.setitem(HANDLERS, "get_lists", broken)
    error = _error(api.get("/api/lists"), 500)
    assert error["code"] == "error"
    monkeypatch.undo()
    assert api.get("/api/lists").status_code == 200  # the connection was not dropped


# ---------------------------------------------------------------------------- control API


def test_control_api_refuses_what_the_api_could_not_render(empty, control, api):
    ctl = control(empty)
    account = next(iter(empty.sandbox.store.accounts.values())).id
    for profiles in ("abc", [1], [{"email": 5}], [{"email": "p@example.com", "properties": "x"}]):
        response = ctl.post(f"/_sandbox/accounts/{account}/profiles", json={"profiles": profiles})
        assert response.status_code == 400, response.text
    assert ctl.post(f"/_sandbox/accounts/{account}/profiles", content=b"[" * 5000).status_code == 400
    response = ctl.post(
        f"/_sandbox/accounts/{account}/lists", json={"name": "l", "joined_at": "0001-01-01T00:00:00+01:00"}
    )
    assert response.status_code == 400
    response = ctl.post(f"/_sandbox/accounts/{account}/lists", json={"name": "l", "members": "nobody"})
    assert response.status_code == 400
    assert api.get("/api/profiles", params={"page[size]": 100}).status_code == 200


# ---------------------------------------------------------------------------- state file


def test_a_failed_state_write_is_retried_and_never_stops_the_flusher(tmp_path):
    from klaviyo_sandbox.server import create_sandbox

    sandbox = create_sandbox("empty", state=tmp_path / "state.json")
    real_save = sandbox.store.save
    calls = []

    def flaky_save(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError("disk full")
        real_save(path)

    sandbox.store.save = flaky_save  # type: ignore[method-assign]
    sandbox.save_state()

    async def run() -> None:
        task = asyncio.create_task(sandbox.flush_periodically(every_seconds=0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(calls) >= 2:
                break
        assert not task.done()  # the failure did not end the task
        task.cancel()

    asyncio.run(run())
    assert len(calls) == 2 and sandbox.dirty is False


def test_reseeding_drops_events_queued_for_the_old_worlds_webhooks(make_sandbox, control):
    running = make_sandbox("empty", rate_limits="off")
    api, ctl = api_client(running), control(running)  # the first empty account has Advanced KDP
    assert ctl.put("/_sandbox/webhook-settings", json={"batch_window_seconds": 30}).status_code == 200
    hook = {
        "type": "webhook",
        "attributes": {"name": "w", "endpoint_url": "http://127.0.0.1:9/hook", "secret_key": "s" * 20},
        "relationships": {"webhook-topics": {"data": [{"type": "webhook-topic", "id": "event:api.viewed"}]}},
    }
    event = {
        "type": "event",
        "attributes": {
            "properties": {},
            "metric": {"data": {"type": "metric", "attributes": {"name": "Viewed"}}},
            "profile": {"data": {"type": "profile", "attributes": {"email": "v@example.com"}}},
        },
    }
    assert api.post("/api/events", json={"data": event}).status_code == 202  # creates the metric/topic
    assert api.post("/api/webhooks", json={"data": hook}).status_code == 201, "webhook"
    event["attributes"]["unique_id"] = "second"
    assert api.post("/api/events", json={"data": event}).status_code == 202
    dispatcher = running.sandbox.webhooks
    assert dispatcher.pending_count() == 1
    assert ctl.post("/_sandbox/seed", json={"seed": "empty"}).status_code == 200
    assert dispatcher.pending_count() == 0


def test_large_bodies_are_schema_checked_off_the_event_loop(api, monkeypatch):
    # Validating a 10,000-profile import takes most of a second; on the event loop it stalled
    # every other client for that long.
    import threading

    from klaviyo_sandbox import app

    threads: list[str] = []
    real = app._first_schema_error

    def recording(validator, body):
        threads.append(threading.current_thread().name)
        return real(validator, body)

    monkeypatch.setattr(app, "_first_schema_error", recording)
    profiles = [
        {"type": "profile", "attributes": {"email": f"bulk{n}@example.com", "properties": {"pad": "x" * 300}}}
        for n in range(1000)
    ]
    job = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": profiles}}}}
    assert api.post("/api/profile-bulk-import-jobs", json=job).status_code == 202
    profiles[-1]["attributes"]["email"] = 7  # schema error found in the worker thread: still a 400
    error = _error(api.post("/api/profile-bulk-import-jobs", json=job), 400)
    assert error["source"]["pointer"] == "/data/attributes/profiles/data/999/attributes/email"
    assert (
        api.post("/api/lists", json={"data": {"type": "list", "attributes": {"name": "small"}}}).status_code
        == 201
    )
    assert len(threads) == 3
    assert "klaviyo-sandbox" not in threads[:2]  # the two large bodies: a worker thread
    assert threads[2] == "klaviyo-sandbox"  # a small body: on the server's own thread


def test_control_writes_apply_to_the_world_current_when_the_body_arrived(make_sandbox, control):
    # The handler used to look its account up, then await the body: a reseed meanwhile left it
    # writing into the discarded world while answering 201.
    running = make_sandbox("empty", rate_limits="off")
    ctl, reseeder = control(running), control(running)
    account = next(iter(running.sandbox.store.accounts.values())).id

    def slow_body():
        yield b'{"profiles": [{"email": '
        assert reseeder.post("/_sandbox/seed", json={"seed": "empty"}).status_code == 200
        yield b'"late@example.com"}]}'

    response = ctl.post(f"/_sandbox/accounts/{account}/profiles", content=slow_body())
    assert response.status_code == 201, response.text
    assert running.sandbox.store.accounts[account].find_profile(email="late@example.com") is not None


def test_api_writes_apply_to_the_world_current_when_the_body_arrived(make_sandbox, control):
    running = make_sandbox("empty", rate_limits="off")
    api, reseeder = api_client(running), control(running)
    account = next(iter(running.sandbox.store.accounts.values())).id  # same id and key after a reseed

    def slow_body():
        yield b'{"data": {"type": "profile", "attributes": '
        assert reseeder.post("/_sandbox/seed", json={"seed": "empty"}).status_code == 200
        yield b'{"email": "late@example.com"}}}'

    response = api.post("/api/profiles", content=slow_body(), headers=JSONAPI)
    assert response.status_code == 201, response.text
    assert running.sandbox.store.accounts[account].find_profile(email="late@example.com") is not None
