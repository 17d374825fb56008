"""Errors of the Klaviyo connector, by meaning. Callers catch these, never HTTP library types.

Every API error names the endpoint (method and path) and carries Klaviyo's error id, status and
code, so a failed run says exactly which call failed and why.
"""

from __future__ import annotations


class KlaviyoError(Exception):
    """Base class of everything the connector raises."""


class KlaviyoApiError(KlaviyoError):
    """An error answer (or no answer) from the Klaviyo API."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        code: str | None = None,
        error_id: str | None = None,
        detail: str | None = None,
        pointer: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        # JSON pointer (or query parameter) of the offending input, e.g. /data/attributes/profiles/data/7
        self.pointer = pointer
        self.status = status
        self.code = code
        self.error_id = error_id
        self.detail = detail
        parts = [message, f"endpoint={endpoint}"]
        if status is not None:
            parts.append(f"status={status}")
        if code:
            parts.append(f"code={code}")
        if error_id:
            parts.append(f"error_id={error_id}")
        if detail:
            parts.append(f"detail={detail!r}")
        super().__init__(" ".join(parts))


class AuthenticationError(KlaviyoApiError):
    """401: the key or token is missing, wrong, expired or revoked."""


class PermissionDeniedError(KlaviyoApiError):
    """403: authenticated, but a scope or entitlement is missing."""


class NotFoundError(KlaviyoApiError):
    """404: the resource does not exist (in this account)."""


class InvalidRequestError(KlaviyoApiError):
    """400/405/409/413/415/422: the request itself is wrong; retrying cannot help."""


class RateLimitedError(KlaviyoApiError):
    """429 after the retry budget was spent."""


class ServerError(KlaviyoApiError):
    """5xx, or the connection failed or timed out, after the retry budget was spent."""


class MalformedResponseError(KlaviyoApiError):
    """Klaviyo answered 2xx with a body we cannot read (not JSON:API, missing members)."""


# ---------------------------------------------------------------------------- connection lifecycle


class EncryptionKeyError(KlaviyoError):
    """The encryption key is missing or malformed, or cannot decrypt what the store holds."""


class ConnectionError_(KlaviyoError):  # trailing underscore: not the builtin ConnectionError
    """Base of connection-state errors: the connection cannot be used for API calls right now."""

    def __init__(self, recart_account_id: str, message: str) -> None:
        self.recart_account_id = recart_account_id
        super().__init__(f"Klaviyo connection of Recart account {recart_account_id!r}: {message}")


class ConnectionNotFound(ConnectionError_):
    """No connection for this Recart account."""


class ConnectionInactive(ConnectionError_):
    """The shop switched the connection off: no API calls at all."""


class NeedsReauthorization(ConnectionError_):
    """Refresh failed with invalid_grant, or a required scope is missing: the shop must reconnect."""


class ConnectionRemoved(ConnectionError_):
    """The connection was removed (revoked at Klaviyo, secrets wiped)."""


class ConnectionReplaced(ConnectionError_):
    """The shop connected another Klaviyo account while work bound to the previous one was running
    (a push whose ledger is that account's): the work stops; the next run uses the new account."""


class OAuthCallbackError(KlaviyoError):
    """The OAuth callback cannot complete; ``user_message`` is safe to show to the person."""

    def __init__(self, user_message: str, *, reason: str) -> None:
        self.user_message = user_message
        self.reason = reason  # machine-readable: access_denied, invalid_state, expired_state, token_error, …
        super().__init__(f"{reason}: {user_message}")
