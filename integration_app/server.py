"""Serve an ASGI app with uvicorn on a real socket in a background thread (the CLI's ``connect`` waits
for the OAuth callback this way; tests start the integration app the same way)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0 picks a free one); ``OSError`` if taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextmanager
def serving(
    app: ASGIApp, sock: socket.socket, *, log_level: str = "warning", start_timeout: float = 15.0
) -> Iterator[str]:
    """Serve ``app`` on the bound ``sock`` until the block ends; yields the base URL."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="integration-app"
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the integration app did not start")
        time.sleep(0.02)
    shown_host = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown_host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
