"""Configuration of the Klaviyo connector, from the environment with working embedded defaults.

The sandbox and Klaviyo are one setting apart: ``KLAVIYO_BASE_URL`` (API, token and revoke
endpoints) and ``KLAVIYO_AUTHORIZE_URL`` (the browser step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

KLAVIYO_BASE_URL = "https://a.klaviyo.com"
KLAVIYO_AUTHORIZE_URL = "https://www.klaviyo.com/oauth/authorize"
# The one place the API revision is pinned (the bundled spec's revision).
REVISION = "2026-07-15"
USER_AGENT = "recart-klaviyo-integration/0.1 (+https://recart.com)"

# Every scope the integration needs; a connection granted fewer is "needs re-authorization".
REQUIRED_SCOPES: tuple[str, ...] = (
    "accounts:read",
    "campaigns:read",
    "events:read",
    "flows:read",
    "lists:read",
    "lists:write",
    "metrics:read",
    "profiles:read",
    "profiles:write",
    "segments:read",
    "subscriptions:write",
    "webhooks:read",
    "webhooks:write",
)


@dataclass(frozen=True)
class KlaviyoSettings:
    """Where Klaviyo is and who we are to it. Secrets live here only in memory."""

    base_url: str = KLAVIYO_BASE_URL
    authorize_url: str = KLAVIYO_AUTHORIZE_URL
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    redirect_uri: str = "http://127.0.0.1:8000/oauth/klaviyo/callback"
    scopes: tuple[str, ...] = REQUIRED_SCOPES
    revision: str = REVISION

    @property
    def token_url(self) -> str:
        """``POST`` here to exchange a code or refresh a token (always ``a.klaviyo.com``, never www)."""
        return f"{self.base_url.rstrip('/')}/oauth/token"

    @property
    def revoke_url(self) -> str:
        """``POST`` here to revoke a token."""
        return f"{self.base_url.rstrip('/')}/oauth/revoke"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> KlaviyoSettings:
        """Read ``KLAVIYO_*`` variables (missing ones keep the defaults above)."""
        env = os.environ if environ is None else environ
        return cls(
            base_url=env.get("KLAVIYO_BASE_URL", KLAVIYO_BASE_URL),
            authorize_url=env.get("KLAVIYO_AUTHORIZE_URL", KLAVIYO_AUTHORIZE_URL),
            client_id=env.get("KLAVIYO_CLIENT_ID", ""),
            client_secret=env.get("KLAVIYO_CLIENT_SECRET", ""),
            redirect_uri=env.get("KLAVIYO_REDIRECT_URI", cls.redirect_uri),
        )
