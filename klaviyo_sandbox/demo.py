"""``make demo``: start the sandbox on the demo seed and show what it serves, over real HTTP.

It grows with each capability of the project; for now it demonstrates the Klaviyo stand-in:
accounts and keys, the OAuth app, and a few real API calls (segments, one page of members, a
rate-limit header), then stops.
"""

from __future__ import annotations

import time

import httpx2

from klaviyo_sandbox.server import create_sandbox, running_sandbox
from klaviyo_sandbox.spec import SPEC_REVISION


def get_politely(api: httpx2.Client, url: str, **params: str) -> httpx2.Response:
    """GET, waiting out 429s as Klaviyo asks (``Retry-After``), as every client of ours must."""
    while True:
        response = api.get(url, params=params or None)
        if response.status_code != 429:
            response.raise_for_status()
            return response
        THROTTLED.append(url)
        time.sleep(int(response.headers["retry-after"]))


THROTTLED: list[str] = []


def main() -> None:
    """Run the demo."""
    sandbox = create_sandbox("demo")
    with running_sandbox(sandbox) as running:
        control = httpx2.get(f"{running.base_url}/_sandbox/accounts").json()["data"]
        print(f"Klaviyo sandbox at {running.base_url} (spec revision {SPEC_REVISION}, Klaviyo's rate limits)")
        for account in control:
            counts = ", ".join(f"{v} {k}" for k, v in account["counts"].items())
            print(f"- account {account['id']} {account['name']!r}: {counts}")
        client = control[0]["oauth_clients"][0]
        print(
            f"- OAuth app {client['name']!r} client_id={client['client_id']} "
            f"redirect_uris={client['redirect_uris']}"
        )

        account = control[0]
        headers = {
            "Authorization": f"Klaviyo-API-Key {account['private_api_key']}",
            "revision": SPEC_REVISION,
            "accept": "application/vnd.api+json",
        }
        with httpx2.Client(base_url=running.base_url, headers=headers, timeout=30) as api:
            segments = []
            url: str | None = "/api/segments"
            while url:
                page = api.get(url).json()
                segments.extend(page["data"])
                url = page["links"]["next"]
            print(f"\nGET /api/segments for {account['name']!r}: {len(segments)} segments")
            print("  (profile_count has its own limit of 1/s, 15/min: the demo waits out each 429)")
            for segment in segments:
                count = get_politely(
                    api, f"/api/segments/{segment['id']}", **{"additional-fields[segment]": "profile_count"}
                ).json()
                print(
                    f"  {segment['id']}  {segment['attributes']['name']:<32} "
                    f"{count['data']['attributes']['profile_count']:>6} members"
                )
            members = api.get(
                f"/api/segments/{segments[0]['id']}/profiles",
                params={"page[size]": 100, "fields[profile]": "email,phone_number,joined_group_at"},
            )
            body = members.json()
            print(
                f"\nGET /api/segments/{segments[0]['id']}/profiles?page[size]=100 → "
                f"{len(body['data'])} members, "
                f"next page: {'yes' if body['links']['next'] else 'no'}"
            )
            for row in body["data"][:3]:
                print(f"  {row['id']}  {row['attributes']}")
            print(
                f"  RateLimit-Limit: {members.headers.get('ratelimit-limit')}  "
                f"RateLimit-Remaining: {members.headers.get('ratelimit-remaining')}"
            )
            print(f"  429 answers waited out: {len(THROTTLED)}")
    print(
        "\nsandbox stopped. `make sandbox` serves it until Ctrl-C; README shows how to point a client at it."
    )


if __name__ == "__main__":
    main()
