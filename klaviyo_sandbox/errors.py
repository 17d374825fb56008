"""Klaviyo's error documents: ``{"errors": [{"id", "status", "code", "title", "detail", "source"}]}``.

Handlers raise ``ApiError`` (or a helper below); the app turns it into the JSON body and status
Klaviyo would send. Titles and codes follow the reference's observed values.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TITLES = {
    400: ("invalid", "Invalid input."),
    401: ("not_authenticated", "Authentication credentials were not provided."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    409: ("conflict", "Conflict."),
    413: ("request_too_large", "Request entity too large."),
    415: ("unsupported_media_type", "Unsupported media type."),
    429: ("throttled", "Request was throttled."),
    500: ("error", "A server error occurred."),
    501: ("not_implemented", "Not implemented."),
    503: ("service_unavailable", "Service unavailable."),
}


class ApiError(Exception):
    """An error answer in Klaviyo's shape."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        pointer: str | None = None,
        parameter: str | None = None,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        links: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        default_code, default_title = _TITLES.get(status, ("error", "Error."))
        self.status = status
        self.detail = detail
        self.code = code or default_code
        self.title = title or default_title
        self.pointer = pointer
        self.parameter = parameter
        self.meta = meta
        self.headers = headers or {}
        self.links = links

    def body(self) -> dict[str, Any]:
        """The JSON error document."""
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
        }
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        elif self.parameter is not None:
            error["source"] = {"parameter": self.parameter}
        if self.links is not None:
            error["links"] = self.links
        if self.meta is not None:
            error["meta"] = self.meta
        return {"errors": [error]}


def invalid(detail: str, *, pointer: str | None = None, parameter: str | None = None) -> ApiError:
    """400 ``invalid``: a bad parameter (``parameter=``) or body member (``pointer=``)."""
    return ApiError(400, detail, pointer=pointer, parameter=parameter)


def not_found(resource: str, resource_id: str) -> ApiError:
    """404 in Klaviyo's words: ``List with id XYZ not found.``"""
    return ApiError(404, f"{resource} with id {resource_id} not found.")


def authentication_failed(detail: str = "Incorrect authentication credentials.") -> ApiError:
    """401 ``authentication_failed``."""
    return ApiError(
        401,
        detail,
        code="authentication_failed",
        title="Incorrect authentication credentials.",
        pointer="/data/",
    )


def not_authenticated() -> ApiError:
    """401 when no ``Authorization`` header was sent."""
    return ApiError(
        401,
        "Missing or invalid authorization scheme. Please use Klaviyo-API-Key or Bearer.",
        pointer="/data/",
    )


def permission_denied(detail: str = "You do not have permission to perform this action.") -> ApiError:
    """403 ``permission_denied``."""
    return ApiError(403, detail)


def find_or_404(records: Mapping[str, T], record_id: str, resource: str) -> T:
    """The record with this id (in the caller's account's mapping), or Klaviyo's 404 naming it."""
    record = records.get(record_id)
    if record is None:
        raise not_found(resource, record_id)
    return record
