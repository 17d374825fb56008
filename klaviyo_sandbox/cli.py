"""``klaviyo-sandbox serve``: run the local Klaviyo stand-in and print what it serves."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from klaviyo_sandbox.server import create_sandbox, running_sandbox


def _fault_rate(value: str) -> float:
    rate = float(value)
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("--fault-rate must be between 0 and 1")
    return rate


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="klaviyo-sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the sandbox over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--seed", choices=["demo", "empty"], default="demo")
    serve.add_argument(
        "--rate-limits", default="klaviyo", help="klaviyo (default), off, or xN (every limit × N)"
    )
    serve.add_argument(
        "--fault-rate", type=_fault_rate, default=0.0, help="share of /api/ requests answered 500/503 (0..1)"
    )
    serve.add_argument("--state", type=Path, default=None, help="persist state in this JSON file")
    serve.add_argument(
        "--access-token-ttl", type=int, default=3600, help="OAuth access-token lifetime, seconds"
    )
    serve.add_argument("--json", action="store_true", help="print the start-up summary as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``klaviyo-sandbox``."""
    args = build_parser().parse_args(argv)
    from klaviyo_sandbox.control import account_summary

    try:
        sandbox = create_sandbox(
            args.seed,
            rate_limits=args.rate_limits,
            fault_rate=args.fault_rate,
            state=args.state,
            access_token_ttl_seconds=args.access_token_ttl,
        )
    except ValueError as exc:
        print(f"klaviyo-sandbox: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with running_sandbox(sandbox, host=args.host, port=args.port) as running:
        accounts = [account_summary(sandbox.store, a) for a in sandbox.store.accounts.values()]
        if args.json:
            print(json.dumps({"base_url": running.base_url, "accounts": accounts}), flush=True)
        else:
            print(
                f"Klaviyo sandbox serving at {running.base_url}  (seed={args.seed}, "
                f"rate limits={args.rate_limits}, fault rate={args.fault_rate})"
            )
            print(
                f"  point a Klaviyo client at it: base URL {running.base_url}, "
                f"authorize URL {running.base_url}/oauth/authorize"
            )
            for account in accounts:
                counts = ", ".join(f"{v} {k}" for k, v in account["counts"].items())
                print(f"  account {account['id']}  {account['name']!r}  key {account['private_api_key']}")
                print(f"    {counts}")
            for client in accounts[0]["oauth_clients"] if accounts else []:
                print(
                    f"  OAuth app {client['name']!r}: client_id={client['client_id']} "
                    f"redirect_uris={client['redirect_uris']}"
                )
            print("  control API: GET /_sandbox/accounts · Ctrl-C stops", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
