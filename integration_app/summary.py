"""What a connection looks like to people and scripts: one summary shared by the pages, the JSON
endpoint and the CLI. Never a token; only facts about it (when it expires, which scopes it carries)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectors.klaviyo.connections import Connection, ConnectionState
from connectors.klaviyo.oauth import missing_scopes

STATE_LABELS: dict[ConnectionState, str] = {
    ConnectionState.ACTIVE: "Active",
    ConnectionState.INACTIVE: "Inactive (switched off)",
    ConnectionState.NEEDS_REAUTH: "Needs re-authorization",
    ConnectionState.REMOVED: "Removed",
}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def connection_summary(connection: Connection) -> dict[str, Any]:
    """The connection as a JSON-ready dict (ISO-8601 UTC times; ``missing_scopes`` against what this
    release requires)."""
    missing = missing_scopes(connection.granted_scopes)
    removed = connection.state is ConnectionState.REMOVED
    return {
        "recart_account_id": connection.recart_account_id,
        "klaviyo_account_id": connection.klaviyo_account_id,
        "state": connection.state.value,
        "state_label": STATE_LABELS[connection.state],
        "state_reason": connection.state_reason,
        "granted_scopes": list(connection.granted_scopes),
        "missing_scopes": [] if removed else list(missing),
        "scopes_ok": not removed and not missing,
        "access_token_expires_at": _iso(connection.access_token_expires_at),
        "token_version": connection.token_version,
        "last_refreshed_at": _iso(connection.last_refreshed_at),
        "has_webhook_secret": connection.has_webhook_secret,
        "created_at": _iso(connection.created_at),
        "updated_at": _iso(connection.updated_at),
    }


def describe_expiry(expires_at: datetime | None, now: datetime | None = None) -> str:
    """``"in 59 min"`` / ``"expired 3 min ago"`` / ``"—"``: when the access token expires, for people.

    An expired access token is normal: it is refreshed on the next API call.
    """
    if expires_at is None:
        return "—"
    current = now or datetime.now(UTC)
    seconds = int((expires_at - current).total_seconds())
    span = abs(seconds)
    if span < 90:
        amount = f"{span} s"
    elif span < 90 * 60:
        amount = f"{round(span / 60)} min"
    elif span < 48 * 3600:
        amount = f"{round(span / 3600)} h"
    else:
        amount = f"{round(span / 86400)} d"
    return f"in {amount}" if seconds >= 0 else f"expired {amount} ago"
