"""Handlers of Klaviyo's ``/api/`` operations, one module per resource family.

Each module registers its functions with ``@handler(operationId, …)``; ``register_all`` imports
them all once. Operations of the spec without a handler answer 501, naming the operation.
"""

from __future__ import annotations

import importlib

MODULES = (
    "accounts",
    "profiles",
    "groups",
    "subscriptions",
    "imports",
    "metrics",
    "events",
    "flows",
    "campaigns",
    "webhooks",
)


def register_all() -> None:
    """Import every resource module so its handlers are registered."""
    for name in MODULES:
        try:
            importlib.import_module(f"klaviyo_sandbox.resources.{name}")
        except ModuleNotFoundError as exc:  # a family not written yet answers 501
            if exc.name != f"klaviyo_sandbox.resources.{name}":
                raise
