"""How fast the sandbox serves 100-member segment pages, next to a bare ASGI endpoint.

Both servers run as separate processes (one uvicorn worker each, as the sandbox runs in tests);
one asyncio client with a fixed number of concurrent requests drives each for the same time.
The sandbox side walks the largest demo segment page by page with real cursors, limits off.
The bare side returns a pre-built body of the same size from a minimal ASGI app: the ceiling of
uvicorn + HTTP + JSON on this machine. Klaviyo's steady ceiling is 750 requests a minute per
account (12.5/s), so the sandbox must stay far above 10× that (125 pages/s).

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from klaviyo_sandbox.server import start_sandbox_process

REVISION = "2026-07-15"
KLAVIYO_STEADY_PER_SECOND = 750 / 60


def serve_bare(port: int, body_file: str) -> None:
    """The comparison server: one pre-built body for every request."""
    import uvicorn

    body = Path(body_file).read_bytes()
    headers = [(b"content-type", b"application/vnd.api+json"), (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _drive(make_request, seconds: float, concurrency: int) -> tuple[int, int]:
    """Run ``concurrency`` workers for ``seconds``; count answered requests and bytes."""
    done = 0
    size = 0
    stop_at = time.perf_counter() + seconds

    async def worker(worker_id: int) -> None:
        nonlocal done, size
        state: dict = {"worker": worker_id}
        while time.perf_counter() < stop_at:
            response = await make_request(state)
            if response.status_code != 200:
                raise RuntimeError(f"unexpected {response.status_code}: {response.text[:200]}")
            done += 1
            size += len(response.content)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done, size


async def measure(seconds: float, concurrency: int) -> dict:
    """Start both servers, drive each, and return the figures."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sandbox, info = start_sandbox_process("demo", "off")
    bare = None
    try:
        base = info["base_url"]
        key = info["accounts"][0]["private_api_key"]
        headers = {"Authorization": f"Klaviyo-API-Key {key}", "revision": REVISION}
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as api:
            segments = []
            url = "/api/segments"
            while url:
                page = (await api.get(url)).json()
                segments.extend(page["data"])
                url = page["links"]["next"]
            counts = {}
            for segment in segments:
                answer = await api.get(
                    f"/api/segments/{segment['id']}", params={"additional-fields[segment]": "profile_count"}
                )
                counts[segment["id"]] = answer.json()["data"]["attributes"]["profile_count"]
            largest = max(counts, key=counts.get)
            first_url = f"/api/segments/{largest}/profiles?page[size]=100"
            sample = await api.get(first_url)
            body = sample.content

            async def sandbox_request(state: dict) -> httpx2.Response:
                response = await api.get(state.get("next") or first_url)
                state["next"] = response.json()["links"]["next"]
                return response

            await _drive(sandbox_request, 1.0, concurrency)  # warm-up
            sandbox_done, _ = await _drive(sandbox_request, seconds, concurrency)

        body_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-body-{os.getpid()}.json"
        body_file.write_bytes(body)
        port = _free_port()
        bare = subprocess.Popen(
            [sys.executable, __file__, "--serve-bare", str(port), str(body_file)], env=env
        )
        _wait_up(f"http://127.0.0.1:{port}/")
        async with httpx2.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as plain:

            async def bare_request(state: dict) -> httpx2.Response:
                return await plain.get("/api/segments/x/profiles?page[size]=100", headers=headers)

            await _drive(bare_request, 1.0, concurrency)
            bare_done, _ = await _drive(bare_request, seconds, concurrency)
        body_file.unlink(missing_ok=True)
    finally:
        for proc in (sandbox, bare):
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    sandbox_rate = sandbox_done / seconds
    bare_rate = bare_done / seconds
    return {
        "benchmark": "sandbox_throughput",
        "seconds_per_side": seconds,
        "concurrency": concurrency,
        "segment_members": counts[largest],
        "page_bytes": len(body),
        "sandbox_pages_per_s": round(sandbox_rate, 1),
        "sandbox_members_per_s": round(sandbox_rate * 100, 1),
        "bare_asgi_pages_per_s": round(bare_rate, 1),
        "sandbox_vs_bare_ratio": round(sandbox_rate / bare_rate, 3),
        "klaviyo_steady_ceiling_per_s": KLAVIYO_STEADY_PER_SECOND,
        "sandbox_vs_klaviyo_steady_ratio": round(sandbox_rate / KLAVIYO_STEADY_PER_SECOND, 1),
        "meets_10x_klaviyo_steady": sandbox_rate > 10 * KLAVIYO_STEADY_PER_SECOND,
    }


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "BODY_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return
    figures = asyncio.run(measure(args.seconds, args.concurrency))
    print(
        f"sandbox: {figures['sandbox_pages_per_s']} pages/s ({figures['sandbox_members_per_s']} members/s) "
        f"of {figures['page_bytes']} bytes each"
    )
    print(
        f"bare ASGI endpoint, same body: {figures['bare_asgi_pages_per_s']} pages/s "
        f"→ sandbox/bare = {figures['sandbox_vs_bare_ratio']}"
    )
    print(
        f"Klaviyo steady ceiling: {KLAVIYO_STEADY_PER_SECOND:.1f} requests/s per account → sandbox serves "
        f"{figures['sandbox_vs_klaviyo_steady_ratio']}× that"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
