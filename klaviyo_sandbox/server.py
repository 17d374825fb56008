"""Start a sandbox in-process (the CLI, the tests, the demo) or in its own process (the benchmarks).

``running_sandbox()`` serves on a real loopback socket (port 0 picks a free port) with uvicorn in
a background thread, so callers talk HTTP to it exactly as they would to Klaviyo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from klaviyo_sandbox.app import Faults, SandboxApp, build_app
from klaviyo_sandbox.ratelimit import parse_mode
from klaviyo_sandbox.store import Store


def create_sandbox(
    seed: str = "demo",
    *,
    rate_limits: str = "klaviyo",
    fault_rate: float = 0.0,
    state: Path | None = None,
    access_token_ttl_seconds: int = 3600,
) -> SandboxApp:
    """A sandbox with its store seeded (or loaded from ``state`` when that file exists)."""
    from klaviyo_sandbox.seed import seed_store

    store = Store.load(state) if state is not None and state.exists() else seed_store(Store(), seed)
    store.access_token_ttl_seconds = access_token_ttl_seconds
    sandbox = SandboxApp(
        store=store, limiter=parse_mode(rate_limits), faults=Faults(error_rate=fault_rate), state_path=state
    )
    build_app(sandbox)
    sandbox.save_state()
    sandbox.flush_state()
    return sandbox


@dataclass
class RunningSandbox:
    """A sandbox being served: its ``base_url`` and the ``SandboxApp`` behind it."""

    base_url: str
    sandbox: SandboxApp
    server: uvicorn.Server


@contextmanager
def running_sandbox(
    sandbox: SandboxApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[RunningSandbox]:
    """Serve ``sandbox`` on ``host:port`` in a thread until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    actual_port = sock.getsockname()[1]
    config = uvicorn.Config(
        sandbox.asgi, log_level=log_level, access_log=False, lifespan="on", timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="klaviyo-sandbox"
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Klaviyo sandbox did not start")
        time.sleep(0.02)
    try:
        yield RunningSandbox(base_url=f"http://{host}:{actual_port}", sandbox=sandbox, server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def start_sandbox_process(
    seed: str = "empty", rate_limits: str = "klaviyo"
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Serve a sandbox in a subprocess on a free loopback port (its own CPU, as Klaviyo would be).

    Returns the process (terminate it when done) and its start-up summary: ``base_url`` and the
    ``accounts`` with their private keys. ``rate_limits`` as for ``--rate-limits``.
    """
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "klaviyo_sandbox.cli", "serve", "--port", "0", "--json"),
            *("--seed", seed, "--rate-limits", rate_limits),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())
