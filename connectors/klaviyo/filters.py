"""A small builder for Klaviyo's ``filter`` query parameter.

    >>> since = datetime(2024, 11, 1, tzinfo=UTC)
    >>> str(and_(equals("metric_id", "UmeLw3"), greater_or_equal("datetime", since)))
    'equals(metric_id,"UmeLw3"),greater-or-equal(datetime,2024-11-01T00:00:00+00:00)'

Strings are double-quoted with backslash escapes; datetimes go bare as ISO 8601 in UTC with
``+00:00`` (Klaviyo's grammar takes them unquoted); numbers, booleans and ``null`` go bare; lists
as ``["a","b"]``. Several filters joined with commas mean AND. URL encoding is the HTTP client's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

__all__ = [
    "Filter",
    "and_",
    "any_of",
    "contains",
    "ends_with",
    "equals",
    "greater_or_equal",
    "greater_than",
    "has",
    "less_or_equal",
    "less_than",
    "render_value",
    "starts_with",
]

Scalar = str | int | float | bool | datetime | date | None
_FIELD = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.\-]*$")


@dataclass(frozen=True)
class Filter:
    """One filter expression (or several AND-ed); ``str()`` gives the query-parameter value."""

    text: str

    def __str__(self) -> str:
        return self.text


def render_value(value: Scalar | Iterable[Scalar]) -> str:
    """A value in Klaviyo's filter grammar."""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            # A naive datetime is ambiguous; guessing a zone would shift an incremental cursor silently.
            raise ValueError(f"filter datetimes must be timezone-aware, got {value!r}")
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Iterable):
        return "[" + ",".join(render_value(item) for item in value) + "]"
    raise TypeError(f"cannot put {type(value).__name__} into a Klaviyo filter")


def _field(name: str) -> str:
    if not _FIELD.match(name):
        raise ValueError(f"not a Klaviyo filter field: {name!r}")
    return name


def _op(operator: str, field: str, value: Scalar | Iterable[Scalar]) -> Filter:
    return Filter(f"{operator}({_field(field)},{render_value(value)})")


def equals(field: str, value: Scalar) -> Filter:
    """``equals(field,value)``."""
    return _op("equals", field, value)


def any_of(field: str, values: Iterable[Scalar]) -> Filter:
    """``any(field,[v1,v2,…])``: the field equals one of the values."""
    values = list(values)
    if not values:
        raise ValueError(f"any_of({field!r}) needs at least one value")
    return _op("any", field, values)


def greater_than(field: str, value: Scalar) -> Filter:
    """``greater-than(field,value)``."""
    return _op("greater-than", field, value)


def greater_or_equal(field: str, value: Scalar) -> Filter:
    """``greater-or-equal(field,value)``."""
    return _op("greater-or-equal", field, value)


def less_than(field: str, value: Scalar) -> Filter:
    """``less-than(field,value)``."""
    return _op("less-than", field, value)


def less_or_equal(field: str, value: Scalar) -> Filter:
    """``less-or-equal(field,value)``."""
    return _op("less-or-equal", field, value)


def contains(field: str, value: Scalar) -> Filter:
    """``contains(field,value)``."""
    return _op("contains", field, value)


def starts_with(field: str, value: str) -> Filter:
    """``starts-with(field,value)``."""
    return _op("starts-with", field, value)


def ends_with(field: str, value: str) -> Filter:
    """``ends-with(field,value)``."""
    return _op("ends-with", field, value)


def has(field: str) -> Filter:
    """``has(field)``: the related resource exists (events: ``has(profile)``)."""
    return Filter(f"has({_field(field)})")


def and_(*filters: Filter | str | None) -> Filter:
    """Several filters AND-ed (comma-joined: Klaviyo reads top-level commas as AND); ``None`` is skipped."""
    parts = [str(f) for f in filters if f is not None and str(f)]
    if not parts:
        raise ValueError("and_() needs at least one filter")
    return Filter(",".join(parts))
