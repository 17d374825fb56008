"""Test helpers for anyone exercising the sandbox: an HTTP client that checks every body.

``KlaviyoTestClient`` validates every response it receives against the schema Klaviyo's own
OpenAPI spec gives for that operation and status (errors against the spec's error body), so no
test can pass on a body Klaviyo would never send.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import jsonschema

from klaviyo_sandbox import spec
from klaviyo_sandbox.server import RunningSandbox

REVISION = spec.SPEC_REVISION


class KlaviyoTestClient:
    """httpx2 client for the sandbox's /api/ that validates each body against the spec."""

    def __init__(self, base_url: str, authorization: str | None, revision: str | None = REVISION) -> None:
        headers = {"accept": "application/vnd.api+json"}
        if authorization:
            headers["authorization"] = authorization
        if revision:
            headers["revision"] = revision
        self.http = httpx2.Client(base_url=base_url, headers=headers, timeout=30)

    def request(self, method: str, path: str, *, validate: bool = True, **kwargs: Any) -> httpx2.Response:
        """Send a request; check the body against the spec unless ``validate=False``."""
        if "json" in kwargs:
            kwargs.setdefault("headers", {})["content-type"] = "application/vnd.api+json"
        response = self.http.request(method, path, **kwargs)
        if validate:
            check_against_spec(method, response)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx2.Response:
        """GET."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx2.Response:
        """POST."""
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx2.Response:
        """PATCH."""
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx2.Response:
        """DELETE."""
        return self.request("DELETE", path, **kwargs)

    def iter_pages(self, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every page of a collection, following ``links.next``."""
        url: str | None = path
        params = kwargs.pop("params", None)
        while url:
            response = self.get(url, params=params, **kwargs)
            assert response.status_code == 200, response.text
            body = response.json()
            yield body
            url, params = body["links"].get("next"), None

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


def check_against_spec(method: str, response: httpx2.Response) -> None:
    """Assert the body is what the spec allows for this operation and status."""
    path = response.request.url.path
    if not path.startswith("/api/"):
        return
    if response.status_code >= 400:
        errors = list(spec.error_validator().iter_errors(response.json()))
        assert not errors, f"error body off-spec: {errors[0].message}"
        return
    op, _, _ = spec.match(method, path)
    assert op is not None, f"no spec operation for {method} {path}"
    if not response.content:
        assert response.status_code in (202, 204), (
            f"{op.operation_id} answered {response.status_code} with no body"
        )
        return
    sparse = any(name.startswith("fields[") for name in response.request.url.params)
    validator = spec.response_validator(op.operation_id, response.status_code, sparse=sparse)
    error = jsonschema.exceptions.best_match(validator.iter_errors(response.json()))
    if error is not None:
        deepest = error
        while deepest.context:  # oneOf/anyOf: show the closest alternative's own failure
            deepest = jsonschema.exceptions.best_match(deepest.context)
        raise AssertionError(
            f"{op.operation_id} {response.status_code} body off-spec at "
            f"/{'/'.join(map(str, deepest.absolute_path))}: {deepest.message[:400]}"
        )


def api_client(running: RunningSandbox, account_index: int = 0, **kwargs: Any) -> KlaviyoTestClient:
    """A private-key client for the n-th seeded account."""
    account = list(running.sandbox.store.accounts.values())[account_index]
    return KlaviyoTestClient(running.base_url, f"Klaviyo-API-Key {account.private_api_key}", **kwargs)


def approve_consent(authorize_url: str, account_id: str, decision: str = "allow") -> dict[str, str]:
    """Answer the sandbox's consent page for ``authorize_url`` as a person would (no browser).

    Posts the consent form for ``account_id`` with ``decision`` ("allow" or "deny") and returns the
    query the sandbox redirects back with (``code`` and ``state``, or ``error``). Used by tests and
    by the demo to connect shops without a human step.
    """
    location = httpx2.URL(authorize_url)
    params = dict(location.params.multi_items())
    response = httpx2.post(
        str(location.copy_with(query=None)),
        data={**params, "account_id": account_id, "decision": decision},
        follow_redirects=False,
        timeout=30,
    )
    if response.status_code != 302:
        raise RuntimeError(
            f"the sandbox refused the consent form: {response.status_code} {response.text[:200]}"
        )
    return dict(httpx2.URL(response.headers["location"]).params.multi_items())


def register_oauth_app(
    control: httpx2.Client, redirect_uri: str, scopes: list[str] | None = None, name: str = "Recart"
) -> dict[str, Any]:
    """Register a new OAuth app at the sandbox (``POST /_sandbox/oauth/clients``) with one
    redirect URI and, when given, the scopes it may ask for; returns its ``client_id`` and
    ``client_secret``. ``control`` is a client of the sandbox's base URL."""
    body: dict[str, Any] = {"name": name, "redirect_uris": [redirect_uri]}
    if scopes is not None:
        body["scopes"] = scopes
    response = control.post("/_sandbox/oauth/clients", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"the sandbox refused the app: {response.status_code} {response.text[:200]}")
    return response.json()
