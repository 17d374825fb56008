"""Klaviyo's ``filter`` query-parameter grammar: parse, validate, evaluate.

The grammar (see https://developers.klaviyo.com/en/docs/filtering_)::

    filter     := expression ("," expression)*          -- top-level commas mean AND
    expression := "and" "(" expression ("," expression)* ")"
                | "has" "(" field ")"
                | operator "(" field "," value ")"
    value      := string | number | "true" | "false" | "null" | datetime | "[" [value ("," value)*] "]"

Strings are quoted with ``"`` or ``'`` (a backslash escapes the next quote or backslash); numbers,
booleans, ``null`` and ISO-8601 datetimes/dates are bare. ``or(...)`` and ``not(...)`` are not part of
Klaviyo's grammar and are rejected. Whitespace between tokens is ignored.

Each endpoint declares in the OpenAPI spec (``x-klaviyo-filters``) which fields it filters on, with
which operators and which value type::

    {"email": {"operators": {"list": ["any", "equals"], "single": ["equals"]}, "value": {"type": "string"}},
     "profile": {"operators": {"none": ["has"]}, "value": None}}

``single`` operators take one value, ``list`` operators take a ``[...]`` list (``equals`` listed there
also accepts a single value), ``none`` operators (``has``) take no value. :func:`validate_filter`
enforces that and coerces values to the declared type; :func:`matches` evaluates the result against a
record. Nothing here knows about HTTP: the caller turns :class:`FilterError` into a 400 response whose
``detail`` is :attr:`FilterError.detail` and whose ``source`` is ``{"parameter": "filter"}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

__all__ = [
    "OPERATORS",
    "Condition",
    "FilterError",
    "compile_filter",
    "matches",
    "parse_filter",
    "validate_filter",
]

#: Operators comparing a field with one value.
SCALAR_OPERATORS = frozenset(
    {
        "less-than",
        "less-or-equal",
        "greater-than",
        "greater-or-equal",
        "contains",
        "starts-with",
        "ends-with",
    }
)
#: Operators whose value must be a ``[...]`` list.
LIST_OPERATORS = frozenset({"any", "contains-any", "contains-all"})
#: Every operator of the grammar (``and`` is a combinator, not an operator).
OPERATORS = SCALAR_OPERATORS | LIST_OPERATORS | {"equals", "has"}
_UNSUPPORTED_COMBINATORS = frozenset({"or", "not"})
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "less-than": lambda a, b: a < b,
    "less-or-equal": lambda a, b: a <= b,
    "greater-than": lambda a, b: a > b,
    "greater-or-equal": lambda a, b: a >= b,
}
_MAX_DEPTH = 32
_INVALID = "Invalid filter provided."

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z-]*")
_FIELD_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.\-]*")
_BARE_RE = re.compile(r"[^\s,()\[\]\"']+")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[Tt].*)?")


class FilterError(ValueError):
    """An invalid ``filter``; :attr:`detail` is the short, Klaviyo-style message for the 400 response."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Condition:
    """One ``operator(field, value)`` term of an AND-ed filter.

    ``value`` is a Python value: ``str``, ``int``, ``float``, ``bool``, ``None``, an aware UTC
    ``datetime``, or a ``list`` of those (``any``/``contains-any``/``contains-all`` and list-``equals``).
    It is ``None`` for ``has``.
    """

    operator: str
    field: str
    value: Any = None


# ---------------------------------------------------------------------------------------- parsing


def parse_filter(text: str) -> list[Condition]:
    """Parse a ``filter`` string into AND-ed conditions (top-level commas and nested ``and()`` flattened).

    Raises :class:`FilterError` on any syntax error (including ``or``/``not`` and unknown operators).
    Values are parsed as literals only; types are checked against an endpoint by :func:`validate_filter`.
    """
    return _Parser(text).parse()


class _Parser:
    """Recursive-descent parser over the raw (URL-decoded) filter text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- helpers

    def _skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _peek(self) -> str:
        self._skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _error(self, message: str) -> FilterError:
        return FilterError(f"{_INVALID} {message}")

    def _expect(self, char: str) -> None:
        found = self._peek()
        if found == char:
            self.pos += 1
            return
        if char in "()" or found in ("", ")"):
            raise self._error("Verify your parentheses match.")
        raise self._error(f"Expected '{char}' at position {self.pos}, found '{found}'.")

    # -- grammar

    def parse(self) -> list[Condition]:
        if not self.text.strip():
            raise self._error("The filter is empty.")
        conditions = self._expressions(depth=0)
        if self._peek():
            if self._peek() == ")":
                raise self._error("Verify your parentheses match.")
            raise self._error(f"Unexpected '{self._peek()}' at position {self.pos}.")
        return conditions

    def _expressions(self, depth: int) -> list[Condition]:
        conditions = self._expression(depth)
        while self._peek() == ",":
            self.pos += 1
            conditions.extend(self._expression(depth))
        return conditions

    def _expression(self, depth: int) -> list[Condition]:
        if depth > _MAX_DEPTH:
            raise self._error("The filter is nested too deeply.")
        self._skip_ws()
        match = _NAME_RE.match(self.text, self.pos)
        if match is None:
            if self._peek() == ")":
                raise self._error("Verify your parentheses match.")
            if self.pos >= len(self.text):
                raise self._error("Unexpected end of filter; expected an expression like equals(f,v).")
            raise self._error(f"Expected an operator like equals(...) at position {self.pos}.")
        name = match.group()
        if name in _UNSUPPORTED_COMBINATORS:
            raise self._error(
                f"'{name}' is not a supported filter operator; combine conditions with and() or commas."
            )
        if name != "and" and name not in OPERATORS:
            raise self._error(f"'{name}' is not a supported filter operator.")
        self.pos = match.end()
        self._expect("(")
        if name == "and":
            if self._peek() == ")":
                raise self._error("'and' requires at least one expression.")
            conditions = self._expressions(depth + 1)
            self._expect(")")
            return conditions
        field = self._field(name)
        value: Any = None
        if name == "has":
            if self._peek() == ",":
                raise self._error("'has' takes a field and no value, e.g. has(profile).")
        else:
            if self._peek() != ",":
                raise self._error(f"'{name}' requires a field and a value, e.g. {name}(field,value).")
            self.pos += 1
            value = self._value(name)
        self._expect(")")
        return [Condition(name, field, value)]

    def _field(self, operator: str) -> str:
        self._skip_ws()
        match = _FIELD_RE.match(self.text, self.pos)
        if match is None:
            raise self._error(f"'{operator}' requires a field name at position {self.pos}.")
        self.pos = match.end()
        return match.group()

    def _value(self, operator: str) -> Any:
        is_list = self._peek() == "["
        value = self._list() if is_list else self._scalar()
        if operator in LIST_OPERATORS and not is_list:
            raise self._error(f'\'{operator}\' requires a list value, e.g. {operator}(field,["a","b"]).')
        if operator in SCALAR_OPERATORS and is_list:
            raise self._error(f"'{operator}' requires a single value, not a list.")
        return value

    def _list(self) -> list[Any]:
        self.pos += 1  # the "["
        items: list[Any] = []
        if self._peek() == "]":
            self.pos += 1
            return items
        while True:
            if self._peek() == "[":
                raise self._error("Lists cannot be nested.")
            items.append(self._scalar())
            char = self._peek()
            self.pos += 1
            if char == "]":
                return items
            if char != ",":
                if char in ("", ")"):
                    raise self._error("Unterminated list; expected ']'.")
                raise self._error(f"Expected ',' or ']' in list at position {self.pos - 1}.")

    def _scalar(self) -> Any:
        char = self._peek()
        if char in ("'", '"'):
            return self._string(char)
        match = _BARE_RE.match(self.text, self.pos)
        if match is None:
            if char in ("", ")", ","):
                raise self._error(f"Missing value at position {self.pos}.")
            raise self._error(f"Unexpected '{char}' at position {self.pos}.")
        self.pos = match.end()
        return _bare_literal(match.group(), self._error)

    def _string(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "\\" and self.pos + 1 < len(text):
                following = text[self.pos + 1]
                out.append(following if following in ("'", '"', "\\") else char + following)
                self.pos += 2
                continue
            if char == quote:
                self.pos += 1
                return "".join(out)
            out.append(char)
            self.pos += 1
        raise self._error(f"Unterminated string starting at position {start}.")


def _bare_literal(token: str, error: Callable[[str], FilterError]) -> Any:
    """Interpret an unquoted token: boolean, ``null``, integer, float or ISO-8601 datetime/date."""
    if token == "true":
        return True
    if token == "false":
        return False
    if token == "null":
        return None
    if _DATE_RE.fullmatch(token):
        parsed = _parse_datetime(token)
        if parsed is None:
            raise error(f"'{token}' is not a valid ISO-8601 datetime.")
        return parsed
    if _INT_RE.fullmatch(token):
        try:
            return int(token)
        except ValueError as exc:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise error(f"'{token[:40]}…' is not a valid number.") from exc
    if _FLOAT_RE.fullmatch(token):
        return float(token)
    raise error(f"Unquoted value '{token}': strings must be enclosed in quotes.")


def _parse_datetime(text: str) -> datetime | None:
    """Parse an ISO-8601/RFC-3339 datetime or date; naive values are UTC. ``None`` when unparseable."""
    candidate = text.strip()
    if candidate[-1:] in ("z", "Z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        return _aware(datetime.fromisoformat(candidate))
    except (ValueError, OverflowError):  # OverflowError: no UTC instant (0001-01-01T00:00+05:00)
        return None


def _aware(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive means UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ------------------------------------------------------------------------------------- validation


def validate_filter(
    conditions: list[Condition],
    allowed: Mapping[str, Any] | None,
    *,
    resource: str | None = None,
) -> list[Condition]:
    """Check ``conditions`` against an operation's ``x-klaviyo-filters`` mapping; return coerced copies.

    Every field must be declared, every operator allowed for that field in the value's shape
    (single value, list, or none for ``has``), and every value of the declared type (``string``
    with optional ``enum``, ``string``/``date-time``, ``integer``, ``number``, ``boolean``). Date-time
    values become aware UTC datetimes (quoted ISO strings are accepted too); integral floats become ints.
    ``allowed`` of ``None``/empty means the endpoint does not filter, so any condition is an error.
    ``resource`` (e.g. ``"profile"``) only improves the error message.
    """
    if conditions and not allowed:
        raise FilterError(
            f"'{conditions[0].field}' is not a valid field"
            + (f" for the resource '{resource}'." if resource else ".")
            + " This endpoint does not support filtering."
        )
    return [_validate_condition(condition, allowed or {}, resource) for condition in conditions]


def compile_filter(
    text: str | None,
    allowed: Mapping[str, Any] | None,
    *,
    resource: str | None = None,
) -> list[Condition]:
    """:func:`parse_filter` then :func:`validate_filter`; ``None`` or a blank string means no conditions."""
    if text is None or not text.strip():
        return []
    return validate_filter(parse_filter(text), allowed, resource=resource)


def _validate_condition(condition: Condition, allowed: Mapping[str, Any], resource: str | None) -> Condition:
    field, operator, value = condition.field, condition.operator, condition.value
    spec = allowed.get(field)
    if not isinstance(spec, Mapping):
        where = f" for the resource '{resource}'" if resource else ""
        raise FilterError(
            f"'{field}' is not a valid field{where}. Filterable fields: {', '.join(sorted(allowed))}."
        )
    groups: Mapping[str, Sequence[str]] = spec.get("operators") or {}
    single = set(groups.get("single") or ())
    listed = set(groups.get("list") or ())
    valueless = set(groups.get("none") or ())
    every = single | listed | valueless
    if operator not in every:
        raise FilterError(
            f"'{operator}' is not an allowed operator for the field '{field}'. "
            f"Allowed operators: {', '.join(sorted(every))}."
        )
    schema: Mapping[str, Any] = spec.get("value") or {}
    if operator in valueless:
        return Condition(operator, field, None)
    if isinstance(value, list):
        if operator not in listed:
            raise FilterError(f"'{operator}' on the field '{field}' takes a single value, not a list.")
        return Condition(operator, field, [_coerce(field, item, schema) for item in value])
    if operator not in single and not (operator == "equals" and operator in listed):
        raise FilterError(f"'{operator}' on the field '{field}' requires a list value, e.g. [\"a\",\"b\"].")
    if value is None:
        if operator != "equals":
            raise FilterError(f"'{operator}' on the field '{field}' cannot compare with null.")
        return Condition(operator, field, None)
    return Condition(operator, field, _coerce(field, value, schema))


def _describe(value: Any) -> str:
    """``value`` spelled as it would appear in a filter, for error messages."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return f"'{value}'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _coerce(field: str, value: Any, schema: Mapping[str, Any]) -> Any:
    """``value`` converted to the type ``schema`` declares, or :class:`FilterError` naming the field."""
    kind = schema.get("type")
    expected: str | None = None
    result: Any = value
    if value is None:
        expected = "a non-null value"
    elif kind == "string" and schema.get("format") == "date-time":
        result = value if isinstance(value, datetime) else None
        if isinstance(value, str):
            result = _parse_datetime(value) if value.strip() else None
        expected = None if result is not None else "an ISO-8601 datetime such as 2024-01-01T00:00:00Z"
    elif kind == "string":
        expected = None if isinstance(value, str) else "a quoted string"
    elif kind == "boolean":
        expected = None if isinstance(value, bool) else "true or false"
    elif kind == "integer":
        if isinstance(value, float) and value.is_integer():
            result = int(value)
        expected = None if isinstance(result, int) and not isinstance(result, bool) else "an integer"
    elif kind == "number":
        expected = None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if expected is not None:
        raise FilterError(f"Invalid value {_describe(value)} for the field '{field}': expected {expected}.")
    choices = schema.get("enum")
    if choices and result not in choices:
        raise FilterError(
            f"{_describe(value)} is not a valid value for the field '{field}'. "
            f"Valid values: {', '.join(str(choice) for choice in choices)}."
        )
    return result


# ------------------------------------------------------------------------------------- evaluation


def matches(conditions: Sequence[Condition], get: Callable[[str], Any]) -> bool:
    """True when the record satisfies every condition (AND); ``get(field)`` reads the record's value.

    ``get`` may return a list/tuple/set for a multi-valued field: ``contains``/``contains-any``/
    ``contains-all`` then test membership in it, and every other operator matches when *any* element
    matches. ``contains*``/``starts-with``/``ends-with`` on strings are substring tests; all string
    comparisons are case-sensitive (callers pre-normalise where Klaviyo is not). Datetimes compare as
    aware UTC instants (a record's naive datetime, ``date``, ISO string or epoch number is converted);
    booleans only equal booleans; ``equals(field,null)`` matches a missing value; ``has(field)`` is true
    when the value is neither ``None`` nor empty. A value that cannot be compared does not match.
    """
    return all(_condition_holds(condition, get(condition.field)) for condition in conditions)


def _is_multi(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes | list | tuple | set | frozenset | dict):
        return len(value) == 0
    return False


def _condition_holds(condition: Condition, actual: Any) -> bool:
    operator, expected = condition.operator, condition.value
    if operator == "has":
        return not _is_empty(actual)
    if operator in ("contains", "contains-any", "contains-all"):
        return _contains(operator, actual, expected)
    if _is_multi(actual):
        if operator == "equals" and expected is None:
            return len(actual) == 0
        return any(_scalar_holds(operator, item, expected) for item in actual)
    return _scalar_holds(operator, actual, expected)


def _scalar_holds(operator: str, actual: Any, expected: Any) -> bool:
    if operator in ("equals", "any"):
        if isinstance(expected, list):
            return any(_equal(actual, option) for option in expected)
        return _equal(actual, expected)
    if operator == "starts-with":
        return isinstance(actual, str) and isinstance(expected, str) and actual.startswith(expected)
    if operator == "ends-with":
        return isinstance(actual, str) and isinstance(expected, str) and actual.endswith(expected)
    compare = _COMPARISONS.get(operator)
    if compare is None:
        return False
    pair = _comparable(actual, expected)
    if pair is None:
        return False
    try:
        return compare(*pair)
    except TypeError:
        return False


def _contains(operator: str, actual: Any, expected: Any) -> bool:
    wanted = expected if isinstance(expected, list) else [expected]
    if isinstance(actual, str):
        hits = [isinstance(item, str) and item in actual for item in wanted]
    elif _is_multi(actual):
        hits = [any(_equal(element, item) for element in actual) for item in wanted]
    else:
        return False
    if operator == "contains-all":
        return all(hits)
    return any(hits)


def _equal(actual: Any, expected: Any) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and actual == expected
    pair = _comparable(actual, expected)
    return pair is not None and pair[0] == pair[1]


def _to_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        return _parse_datetime(value) if value.strip() else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _comparable(actual: Any, expected: Any) -> tuple[Any, Any] | None:
    """Bring a record value and a filter value to one comparable type, or ``None`` if they do not mix."""
    if actual is None or expected is None or isinstance(actual, bool) or isinstance(expected, bool):
        return None
    if isinstance(expected, datetime | date):
        converted = _to_datetime(actual)
        wanted = _to_datetime(expected)
        return None if converted is None or wanted is None else (converted, wanted)
    if isinstance(expected, int | float):
        if isinstance(actual, int | float):
            return actual, expected
        if isinstance(actual, datetime):
            return _aware(actual).timestamp(), expected
        return None
    if isinstance(expected, str):
        if isinstance(actual, str):
            return actual, expected
        if isinstance(actual, datetime | date):
            wanted = _to_datetime(expected)
            converted = _to_datetime(actual)
            return None if wanted is None or converted is None else (converted, wanted)
        return None
    return None if type(actual) is not type(expected) else (actual, expected)
