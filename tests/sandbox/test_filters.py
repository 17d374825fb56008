"""Tests for ``klaviyo_sandbox.filters``: Klaviyo's ``filter`` grammar, validation and evaluation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from klaviyo_sandbox.filters import (
    OPERATORS,
    Condition,
    FilterError,
    compile_filter,
    matches,
    parse_filter,
    validate_filter,
)

SPEC_PATH = Path(__file__).resolve().parents[2] / "klaviyo_sandbox" / "spec" / "klaviyo-openapi.json"


def dt(*args: int) -> datetime:
    """An aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def spec_filters() -> dict[tuple[str, str], dict[str, Any]]:
    """``(METHOD, path) -> x-klaviyo-filters`` for every operation of the real spec that has filters."""
    spec = json.loads(SPEC_PATH.read_text())
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "x-klaviyo-filters" in operation:
                found[(method.upper(), path)] = operation["x-klaviyo-filters"]
    return found


# -------------------------------------------------------------------------------------- parsing


class TestParseValues:
    def test_double_quoted_string(self) -> None:
        assert parse_filter('equals(email,"a@b.com")') == [Condition("equals", "email", "a@b.com")]

    def test_single_quoted_string(self) -> None:
        assert parse_filter("equals(messages.channel,'email')") == [
            Condition("equals", "messages.channel", "email")
        ]

    def test_empty_string(self) -> None:
        assert parse_filter('equals(name,"")') == [Condition("equals", "name", "")]

    def test_string_with_commas_and_parentheses(self) -> None:
        text = 'and(contains(name,"a, (b) ),c"),equals(id,"x")),starts-with(title,"[not a list]")'
        assert parse_filter(text) == [
            Condition("contains", "name", "a, (b) ),c"),
            Condition("equals", "id", "x"),
            Condition("starts-with", "title", "[not a list]"),
        ]

    def test_string_escapes(self) -> None:
        assert parse_filter(r'equals(name,"say \"hi\"")')[0].value == 'say "hi"'
        assert parse_filter(r"equals(name,'it\'s')")[0].value == "it's"
        assert parse_filter(r'equals(name,"back\\slash")')[0].value == "back\\slash"
        assert parse_filter(r'equals(name,"a\nb")')[0].value == "a\\nb"

    def test_other_quote_inside_string(self) -> None:
        assert parse_filter("""equals(name,"it's")""")[0].value == "it's"
        assert parse_filter("""equals(name,'say "x"')""")[0].value == 'say "x"'

    def test_integers_and_floats(self) -> None:
        assert parse_filter("greater-than(timestamp,1700000000)")[0].value == 1700000000
        assert isinstance(parse_filter("greater-than(timestamp,1700000000)")[0].value, int)
        assert parse_filter("less-than(value,-3)")[0].value == -3
        assert parse_filter("greater-or-equal(percentage,33.33)")[0].value == 33.33
        assert parse_filter("greater-or-equal(x,1e3)")[0].value == 1000.0

    def test_booleans_and_null(self) -> None:
        assert parse_filter("equals(archived,true)")[0].value is True
        assert parse_filter("equals(archived,false)")[0].value is False
        assert parse_filter("equals(scheduled_at,null)") == [Condition("equals", "scheduled_at", None)]

    def test_quoted_keywords_stay_strings(self) -> None:
        assert parse_filter('equals(name,"true")')[0].value == "true"
        assert parse_filter('equals(name,"null")')[0].value == "null"
        assert parse_filter('equals(name,"42")')[0].value == "42"

    def test_lists(self) -> None:
        assert parse_filter('any(id,["a","b"])') == [Condition("any", "id", ["a", "b"])]
        assert parse_filter("any(id,['a', 'b' ,'c'])")[0].value == ["a", "b", "c"]
        assert parse_filter("any(rating,[4,5])")[0].value == [4, 5]
        assert parse_filter("any(hidden,[true,false])")[0].value == [True, False]
        assert parse_filter("any(id,[])")[0].value == []
        assert parse_filter('any(id,["a,b","c]"])')[0].value == ["a,b", "c]"]

    @pytest.mark.parametrize(
        ("literal", "expected"),
        [
            ("2023-03-01T00:00:00Z", dt(2023, 3, 1)),
            ("2023-03-01T12:30:45z", dt(2023, 3, 1, 12, 30, 45)),
            ("2023-03-01T00:00:00+00:00", dt(2023, 3, 1)),
            ("2023-03-01T02:00:00+02:00", dt(2023, 3, 1)),
            ("2023-02-28T19:00:00-05:00", dt(2023, 3, 1)),
            ("2024-11-01T00:00:00", dt(2024, 11, 1)),
            ("2024-11-01T00:00:00.123456Z", dt(2024, 11, 1, 0, 0, 0, 123456)),
            ("2024-11-01T00:00", dt(2024, 11, 1)),
            ("2023-03-01", dt(2023, 3, 1)),
        ],
    )
    def test_unquoted_datetimes(self, literal: str, expected: datetime) -> None:
        value = parse_filter(f"greater-or-equal(datetime,{literal})")[0].value
        assert value == expected
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)

    def test_field_names(self) -> None:
        for field in (
            "messages.channel",
            "integration.name",
            "_kx",
            "$email",
            "subscriptions.email.marketing.suppression.reason",
            "profile_id",
        ):
            assert parse_filter(f'equals({field},"x")')[0].field == field

    def test_has_takes_no_value(self) -> None:
        assert parse_filter("has(profile)") == [Condition("has", "profile", None)]

    def test_every_operator_parses(self) -> None:
        texts = {
            "equals": 'equals(f,"x")',
            "less-than": "less-than(f,1)",
            "less-or-equal": "less-or-equal(f,1)",
            "greater-than": "greater-than(f,1)",
            "greater-or-equal": "greater-or-equal(f,1)",
            "contains": 'contains(f,"x")',
            "contains-any": 'contains-any(f,["x","y"])',
            "contains-all": 'contains-all(f,["x","y"])',
            "starts-with": 'starts-with(f,"x")',
            "ends-with": 'ends-with(f,"x")',
            "any": 'any(f,["x"])',
            "has": "has(f)",
        }
        assert set(texts) == set(OPERATORS)
        for operator, text in texts.items():
            assert parse_filter(text)[0].operator == operator


class TestParseStructure:
    def test_documented_example(self) -> None:
        text = (
            'and(equals(metric_id,"UmeLw3"),greater-or-equal(datetime,2024-11-01T00:00:00),'
            "less-than(datetime,2024-12-01T00:00:00))"
        )
        assert parse_filter(text) == [
            Condition("equals", "metric_id", "UmeLw3"),
            Condition("greater-or-equal", "datetime", dt(2024, 11, 1)),
            Condition("less-than", "datetime", dt(2024, 12, 1)),
        ]

    def test_top_level_commas_are_and(self) -> None:
        assert parse_filter("equals(profile_id,'P1'),equals(metric_id,'M1')") == [
            Condition("equals", "profile_id", "P1"),
            Condition("equals", "metric_id", "M1"),
        ]

    def test_nested_and_is_flattened(self) -> None:
        text = "and(equals(a,1),and(equals(b,2),and(equals(c,3))),equals(d,4)),has(e)"
        assert [c.field for c in parse_filter(text)] == ["a", "b", "c", "d", "e"]

    def test_whitespace_is_ignored(self) -> None:
        text = ' and( equals( a , "x y" ) ,\tany(b, [ 1 , 2 ]) ) , has( c ) '
        assert parse_filter(text) == [
            Condition("equals", "a", "x y"),
            Condition("any", "b", [1, 2]),
            Condition("has", "c", None),
        ]

    @pytest.mark.parametrize("combinator", ["or", "not"])
    def test_or_and_not_are_rejected(self, combinator: str) -> None:
        with pytest.raises(FilterError) as excinfo:
            parse_filter(f'{combinator}(equals(a,"x"),equals(b,"y"))')
        assert f"'{combinator}'" in excinfo.value.detail

    def test_or_nested_in_and_is_rejected(self) -> None:
        with pytest.raises(FilterError, match="'or'"):
            parse_filter('and(equals(a,"x"),or(equals(b,"y")))')

    @pytest.mark.parametrize(
        "text",
        [
            'equals(a,"x"',
            'equals(a,"x"))',
            'and(equals(a,"x")',
            'and(equals(a,"x"),equals(b,"y")))',
            "equals",
            'equals a,"x")',
            ")",
        ],
    )
    def test_unbalanced_parentheses(self, text: str) -> None:
        with pytest.raises(FilterError, match="parentheses"):
            parse_filter(text)

    @pytest.mark.parametrize("operator", ["like", "eq", "Equals", "in", "between"])
    def test_unknown_operator(self, operator: str) -> None:
        with pytest.raises(FilterError) as excinfo:
            parse_filter(f'{operator}(a,"x")')
        assert f"'{operator}'" in excinfo.value.detail

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("", "empty"),
            ("   ", "empty"),
            ("equals(email,me@test.com)", "quotes"),
            ("equals(name,hello)", "quotes"),
            ('equals(a,"x)', "Unterminated string"),
            ("equals(a,'x\")", "Unterminated string"),
            ("any(a,[1,2)", "list"),
            ('any(a,["x" "y"])', "','"),
            ("any(a,[[1]])", "nested"),
            ('any(a,"x")', "list"),
            ('contains-any(a,"x")', "list"),
            ('contains-all(a,"x")', "list"),
            ('contains(a,["x"])', "single value"),
            ("less-than(a,[1])", "single value"),
            ("equals(a)", "value"),
            ("equals(a,)", "Missing value"),
            ('has(a,"x")', "no value"),
            ("and()", "at least one"),
            ('equals(a,"x"),', "end of filter"),
            ('equals(a,"x"),,equals(b,"y")', "operator"),
            ('equals(a,"x") equals(b,"y")', "Unexpected"),
            ('equals(,"x")', "field"),
            ("equals(a,2023-13-45T00:00:00Z)", "datetime"),
            ("equals(a,('x','y'))", "Unexpected"),
        ],
    )
    def test_syntax_errors(self, text: str, fragment: str) -> None:
        with pytest.raises(FilterError) as excinfo:
            parse_filter(text)
        assert fragment in excinfo.value.detail
        assert excinfo.value.detail.startswith("Invalid filter provided.")

    def test_filter_error_is_value_error_with_detail(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_filter("nope")
        assert isinstance(excinfo.value, FilterError)
        assert str(excinfo.value) == excinfo.value.detail

    def test_deep_nesting_is_an_error_not_a_crash(self) -> None:
        text = "and(" * 500 + 'equals(a,"x")' + ")" * 500
        with pytest.raises(FilterError, match="nested too deeply"):
            parse_filter(text)


# ----------------------------------------------------------------------------------- validation

PROFILES_FILTERS: dict[str, Any] = {
    "id": {"operators": {"list": ["any", "equals"], "single": ["equals"]}, "value": {"type": "string"}},
    "email": {"operators": {"list": ["any", "equals"], "single": ["equals"]}, "value": {"type": "string"}},
    "created": {
        "operators": {"single": ["greater-than", "less-than"]},
        "value": {"type": "string", "format": "date-time"},
    },
}
SEGMENT_PROFILES_FILTERS: dict[str, Any] = {
    "profile_id": {"operators": {"list": ["any", "equals"]}, "value": {"type": "string"}},
    "joined_group_at": {
        "operators": {"single": ["greater-or-equal", "greater-than", "less-or-equal", "less-than"]},
        "value": {"type": "string", "format": "date-time"},
    },
}
MIXED_FILTERS: dict[str, Any] = {
    "archived": {"operators": {"single": ["equals"]}, "value": {"type": "boolean"}},
    "rating": {
        "operators": {"list": ["any", "equals"], "single": ["equals", "greater-or-equal", "less-or-equal"]},
        "value": {"type": "integer"},
    },
    "timestamp": {"operators": {"single": ["greater-than", "less-than"]}, "value": {"type": "number"}},
    "status": {
        "operators": {"list": ["any", "equals"], "single": ["equals"]},
        "value": {"type": "string", "enum": ["live", "draft"]},
    },
    "profile": {"operators": {"none": ["has"]}, "value": None},
    "metric_id": {"operators": {"single": ["equals"], "list": ["equals"]}, "value": {"type": "string"}},
    "name": {
        "operators": {"single": ["contains", "starts-with", "ends-with", "equals"]},
        "value": {"type": "string"},
    },
}


class TestValidate:
    def test_valid_filter_passes_through(self) -> None:
        conditions = compile_filter(
            'equals(email,"a@b.com"),greater-than(created,2024-01-01T00:00:00Z)', PROFILES_FILTERS
        )
        assert conditions == [
            Condition("equals", "email", "a@b.com"),
            Condition("greater-than", "created", dt(2024, 1, 1)),
        ]

    def test_unknown_field_names_field_and_resource(self) -> None:
        with pytest.raises(FilterError) as excinfo:
            compile_filter('equals(foo,"x")', PROFILES_FILTERS, resource="profile")
        assert excinfo.value.detail.startswith("'foo' is not a valid field for the resource 'profile'.")

    def test_unknown_field_without_resource(self) -> None:
        with pytest.raises(FilterError, match="'foo' is not a valid field"):
            compile_filter('equals(foo,"x")', PROFILES_FILTERS)

    def test_disallowed_operator(self) -> None:
        with pytest.raises(FilterError) as excinfo:
            compile_filter('contains(email,"x")', PROFILES_FILTERS)
        detail = excinfo.value.detail
        assert "'contains'" in detail and "'email'" in detail
        assert "any, equals" in detail

    def test_any_not_allowed_for_metric_id(self) -> None:
        with pytest.raises(FilterError, match="'any' is not an allowed operator for the field 'metric_id'"):
            compile_filter('any(metric_id,["a","b"])', MIXED_FILTERS)

    def test_no_filters_declared_means_every_filter_is_an_error(self) -> None:
        for allowed in (None, {}):
            with pytest.raises(FilterError, match="'email'"):
                compile_filter('equals(email,"x")', allowed)
            assert validate_filter([], allowed) == []

    def test_blank_filter_compiles_to_nothing(self) -> None:
        assert compile_filter(None, PROFILES_FILTERS) == []
        assert compile_filter("", PROFILES_FILTERS) == []
        assert compile_filter("  ", None) == []

    def test_list_operator_equals_accepts_single_value_and_list(self) -> None:
        assert compile_filter('equals(profile_id,"p1")', SEGMENT_PROFILES_FILTERS) == [
            Condition("equals", "profile_id", "p1")
        ]
        assert compile_filter('equals(profile_id,["p1","p2"])', SEGMENT_PROFILES_FILTERS) == [
            Condition("equals", "profile_id", ["p1", "p2"])
        ]
        assert compile_filter('equals(metric_id,["m1"])', MIXED_FILTERS)[0].value == ["m1"]

    def test_list_given_to_single_only_field(self) -> None:
        with pytest.raises(FilterError, match="single value"):
            compile_filter('equals(name,["a","b"])', MIXED_FILTERS)

    def test_any_requires_list_value(self) -> None:
        with pytest.raises(FilterError, match="list"):
            validate_filter([Condition("any", "profile_id", "p1")], SEGMENT_PROFILES_FILTERS)

    def test_has(self) -> None:
        assert compile_filter("has(profile)", MIXED_FILTERS) == [Condition("has", "profile", None)]
        with pytest.raises(FilterError, match="'has' is not an allowed operator"):
            compile_filter("has(name)", MIXED_FILTERS)
        with pytest.raises(FilterError, match="'equals' is not an allowed operator"):
            compile_filter('equals(profile,"x")', MIXED_FILTERS)

    @pytest.mark.parametrize(
        "text",
        [
            'equals(archived,"true")',
            "equals(archived,1)",
            "equals(email,42)",
            "equals(email,true)",
            "equals(email,2024-01-01T00:00:00Z)",
            'greater-than(created,"yesterday")',
            'greater-than(created,"")',
            "greater-than(created,1700000000)",
            "greater-than(created,true)",
            'greater-or-equal(rating,"4")',
            "greater-or-equal(rating,4.5)",
            "greater-or-equal(rating,true)",
            'greater-than(timestamp,"1700000000")',
            "greater-than(timestamp,2024-01-01T00:00:00Z)",
            "greater-than(timestamp,false)",
            'any(rating,[4,"5"])',
            'any(profile_id,["a",null])',
        ],
    )
    def test_wrong_value_type(self, text: str) -> None:
        allowed = {**PROFILES_FILTERS, **SEGMENT_PROFILES_FILTERS, **MIXED_FILTERS}
        field = parse_filter(text)[0].field
        with pytest.raises(FilterError) as excinfo:
            compile_filter(text, allowed)
        assert f"'{field}'" in excinfo.value.detail

    def test_enum(self) -> None:
        assert compile_filter('equals(status,"live")', MIXED_FILTERS)[0].value == "live"
        assert compile_filter('any(status,["live","draft"])', MIXED_FILTERS)[0].value == ["live", "draft"]
        with pytest.raises(FilterError) as excinfo:
            compile_filter('equals(status,"LIVE")', MIXED_FILTERS)
        assert "'LIVE'" in excinfo.value.detail and "'status'" in excinfo.value.detail
        with pytest.raises(FilterError, match="'bogus'"):
            compile_filter('any(status,["live","bogus"])', MIXED_FILTERS)

    def test_coercions(self) -> None:
        assert compile_filter("greater-or-equal(rating,4.0)", MIXED_FILTERS)[0].value == 4
        assert isinstance(compile_filter("greater-or-equal(rating,4.0)", MIXED_FILTERS)[0].value, int)
        assert compile_filter("greater-than(timestamp,1700000000)", MIXED_FILTERS)[0].value == 1700000000
        assert compile_filter("greater-than(timestamp,1.5)", MIXED_FILTERS)[0].value == 1.5
        # A quoted ISO datetime is accepted for a date-time field and becomes an aware datetime.
        assert compile_filter('greater-than(created,"2024-01-01T01:00:00+01:00")', PROFILES_FILTERS)[
            0
        ].value == dt(2024, 1, 1)
        assert compile_filter("greater-than(created,2024-01-01)", PROFILES_FILTERS)[0].value == dt(2024, 1, 1)

    def test_null_only_with_equals(self) -> None:
        assert compile_filter("equals(email,null)", PROFILES_FILTERS) == [Condition("equals", "email", None)]
        with pytest.raises(FilterError, match="null"):
            compile_filter("greater-than(created,null)", PROFILES_FILTERS)

    def test_validate_returns_new_conditions(self) -> None:
        parsed = parse_filter('greater-than(created,"2024-01-01T00:00:00Z")')
        validated = validate_filter(parsed, PROFILES_FILTERS)
        assert parsed[0].value == "2024-01-01T00:00:00Z"
        assert validated[0].value == dt(2024, 1, 1)


# ------------------------------------------------------------------------------ the real spec

REPRESENTATIVE = [
    (
        "GET",
        "/api/events",
        'and(equals(metric_id,"UmeLw3"),greater-or-equal(datetime,2024-11-01T00:00:00),'
        "less-than(datetime,2024-12-01T00:00:00Z)),equals(profile_id,'01ABC'),has(profile),"
        "greater-than(timestamp,1700000000)",
    ),
    ("GET", "/api/events", 'equals(metric_id,["M1","M2"])'),
    (
        "GET",
        "/api/segments/{id}/profiles",
        'any(profile_id,["p1","p2"]),equals(email,"a@b.com"),greater-or-equal(joined_group_at,2024-01-01)',
    ),
    (
        "GET",
        "/api/lists/{id}/profiles",
        "equals(_kx,'abc'),less-than(joined_group_at,2024-01-01T00:00:00+02:00)",
    ),
    (
        "GET",
        "/api/campaigns",
        'equals(messages.channel,\'email\'),any(status,["Sent","Draft"]),equals(archived,false),'
        'contains(name,"Black Friday"),greater-or-equal(scheduled_at,2024-01-01T00:00:00Z)',
    ),
    ("GET", "/api/campaigns", "equals(messages.channel,'sms'),equals(status,'Cancelled: Smart Sending')"),
    (
        "GET",
        "/api/flows",
        'starts-with(name,"Welcome"),ends-with(name,"v2"),equals(trigger_type,"Added to List"),'
        "equals(created,2024-01-01T00:00:00Z),any(id,['F1'])",
    ),
    ("GET", "/api/lists", 'any(name,["Newsletter","VIP"]),greater-than(created,2024-01-01T00:00:00Z)'),
    ("GET", "/api/segments", "equals(is_active,true),any(is_active,[true]),equals(is_starred,false)"),
    (
        "GET",
        "/api/profiles",
        'any(email,["a@b.com","c@d.com"]),greater-than(updated,2024-05-01T00:00:00Z),'
        "equals(subscriptions.email.marketing.suppression.reason,'HARD_BOUNCE'),"
        "less-or-equal(subscriptions.email.marketing.list_suppressions.timestamp,2025-01-01T00:00:00Z)",
    ),
    ("GET", "/api/metrics", "equals(integration.name,'Shopify'),equals(integration.category,'eCommerce')"),
    ("GET", "/api/reviews", "any(rating,[4,5]),greater-or-equal(rating,3),equals(verified,true)"),
    ("GET", "/api/images", "greater-than(size,1024),any(hidden,[false])"),
    ("GET", "/client/reviews", "has(media),has(public_reply),equals(edited,false)"),
]


@pytest.mark.parametrize(("method", "path", "text"), REPRESENTATIVE)
def test_representative_spec_operations(
    spec_filters: dict[tuple[str, str], dict[str, Any]], method: str, path: str, text: str
) -> None:
    allowed = spec_filters[(method, path)]
    conditions = compile_filter(text, allowed)
    assert conditions
    for condition in conditions:
        assert condition.field in allowed
        if isinstance(condition.value, datetime):
            assert condition.value.tzinfo is not None


def test_spec_rejects_what_it_does_not_declare(spec_filters: dict[tuple[str, str], dict[str, Any]]) -> None:
    with pytest.raises(FilterError, match="'any'"):
        compile_filter('any(metric_id,["a"])', spec_filters[("GET", "/api/events")])
    with pytest.raises(FilterError, match="'first_name'"):
        compile_filter('equals(first_name,"x")', spec_filters[("GET", "/api/profiles")], resource="profile")
    with pytest.raises(FilterError, match="'created'"):
        compile_filter("less-than(created,2024-01-01)", spec_filters[("GET", "/api/lists")])
    with pytest.raises(FilterError, match=r"'messages\.channel'"):
        compile_filter("equals(messages.channel,'fax')", spec_filters[("GET", "/api/campaigns")])


def _sample_literal(schema: dict[str, Any] | None) -> str:
    """A valid filter literal for a ``value`` schema of ``x-klaviyo-filters``."""
    schema = schema or {}
    if schema.get("enum"):
        return json.dumps(schema["enum"][-1])
    if schema.get("format") == "date-time":
        return "2024-06-01T12:00:00Z"
    return {"boolean": "true", "integer": "5", "number": "1700000000.5"}.get(schema.get("type", ""), '"abc"')


def test_every_declared_field_and_operator_in_the_spec_validates(
    spec_filters: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Build one valid condition per (operation, field, operator group, operator) of the whole spec."""
    checked = 0
    for allowed in spec_filters.values():
        for field, declaration in allowed.items():
            literal = _sample_literal(declaration.get("value"))
            for group, operators in declaration["operators"].items():
                for operator in operators:
                    if group == "none":
                        text = f"{operator}({field})"
                    elif group == "list":
                        text = f"{operator}({field},[{literal},{literal}])"
                    else:
                        text = f"{operator}({field},{literal})"
                    [condition] = compile_filter(text, allowed)
                    assert (condition.operator, condition.field) == (operator, field)
                    checked += 1
    assert checked > 300


def test_spec_shapes_are_the_ones_handled(spec_filters: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Guard: if a new spec adds operator groups, operators or value types, this module needs a look."""
    groups: set[str] = set()
    operators: set[str] = set()
    kinds: set[tuple[Any, Any]] = set()
    for allowed in spec_filters.values():
        for declaration in allowed.values():
            groups.update(declaration["operators"])
            for names in declaration["operators"].values():
                operators.update(names)
            value = declaration.get("value") or {}
            kinds.add((value.get("type"), value.get("format")))
    assert groups <= {"single", "list", "none"}
    assert operators <= OPERATORS
    assert kinds <= {
        ("string", None),
        ("string", "date-time"),
        ("boolean", None),
        ("integer", None),
        ("number", None),
        (None, None),
    }


# ----------------------------------------------------------------------------------- evaluation


def record(**values: Any) -> Callable[[str], Any]:
    """A ``get`` for :func:`matches` reading keyword arguments."""
    return lambda field: values.get(field)


class TestMatches:
    def test_empty_conditions_match_everything(self) -> None:
        assert matches([], record())

    def test_equals_strings_case_sensitive(self) -> None:
        conditions = parse_filter('equals(email,"a@b.com")')
        assert matches(conditions, record(email="a@b.com"))
        assert not matches(conditions, record(email="A@b.com"))
        assert not matches(conditions, record())

    def test_equals_with_list_value_is_membership(self) -> None:
        conditions = parse_filter('equals(profile_id,["p1","p2"])')
        assert matches(conditions, record(profile_id="p2"))
        assert not matches(conditions, record(profile_id="p3"))

    def test_any(self) -> None:
        conditions = parse_filter('any(id,["a","b"])')
        assert matches(conditions, record(id="a"))
        assert not matches(conditions, record(id="c"))
        assert not matches(conditions, record(id=None))
        assert not matches(parse_filter("any(id,[])"), record(id="a"))

    def test_multi_valued_record_matches_when_any_element_does(self) -> None:
        assert matches(
            parse_filter("equals(messages.channel,'email')"), record(**{"messages.channel": ["sms", "email"]})
        )
        assert not matches(
            parse_filter("equals(messages.channel,'push')"), record(**{"messages.channel": ["sms"]})
        )
        assert matches(parse_filter("any(tags,['x','y'])"), record(tags=("a", "y")))
        ts = [dt(2024, 1, 1), dt(2024, 6, 1)]
        assert matches(parse_filter("greater-than(ts,2024-03-01)"), record(ts=ts))
        assert not matches(parse_filter("greater-than(ts,2024-07-01)"), record(ts=ts))

    def test_booleans(self) -> None:
        conditions = parse_filter("equals(archived,true)")
        assert matches(conditions, record(archived=True))
        assert not matches(conditions, record(archived=False))
        assert not matches(conditions, record(archived=1))
        assert not matches(conditions, record(archived="true"))
        assert not matches(parse_filter("equals(n,1)"), record(n=True))
        assert matches(parse_filter("equals(archived,false)"), record(archived=False))
        assert not matches(parse_filter("equals(archived,false)"), record(archived=None))

    def test_null(self) -> None:
        conditions = parse_filter("equals(scheduled_at,null)")
        assert matches(conditions, record(scheduled_at=None))
        assert not matches(conditions, record(scheduled_at=dt(2024, 1, 1)))

    def test_numbers(self) -> None:
        assert matches(parse_filter("greater-than(timestamp,1700000000)"), record(timestamp=1700000001))
        assert not matches(parse_filter("greater-than(timestamp,1700000000)"), record(timestamp=1700000000))
        assert matches(parse_filter("greater-or-equal(timestamp,1700000000)"), record(timestamp=1700000000))
        assert matches(parse_filter("less-than(v,2.5)"), record(v=2))
        assert matches(parse_filter("less-or-equal(v,2)"), record(v=2.0))
        assert matches(parse_filter("equals(v,2)"), record(v=2.0))
        assert not matches(parse_filter("less-than(v,2)"), record(v="1"))
        assert not matches(parse_filter("less-than(v,2)"), record(v=None))
        # An epoch-number filter against a datetime record compares instants.
        assert matches(parse_filter("greater-than(timestamp,1700000000)"), record(timestamp=dt(2024, 1, 1)))

    def test_datetimes(self) -> None:
        window = parse_filter(
            "and(greater-or-equal(datetime,2024-11-01T00:00:00),less-than(datetime,2024-12-01T00:00:00Z))"
        )
        assert matches(window, record(datetime=dt(2024, 11, 1)))
        assert matches(window, record(datetime=dt(2024, 11, 30, 23, 59, 59)))
        assert not matches(window, record(datetime=dt(2024, 12, 1)))
        assert not matches(window, record(datetime=dt(2024, 10, 31, 23, 59, 59)))
        # Other offsets, naive datetimes (UTC), ISO strings, dates and epoch numbers in records.
        assert matches(
            window, record(datetime=datetime(2024, 11, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))))
        )
        assert not matches(
            window, record(datetime=datetime(2024, 11, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))
        )
        assert matches(window, record(datetime=datetime(2024, 11, 15)))
        assert matches(window, record(datetime="2024-11-15T10:00:00Z"))
        assert matches(window, record(datetime=date(2024, 11, 15)))
        assert matches(window, record(datetime=dt(2024, 11, 15).timestamp()))
        assert not matches(window, record(datetime="not a date"))
        assert not matches(window, record(datetime=None))

    def test_datetime_equals(self) -> None:
        conditions = parse_filter("equals(created,2024-01-01T02:00:00+02:00)")
        assert matches(conditions, record(created=dt(2024, 1, 1)))
        assert matches(conditions, record(created="2024-01-01T00:00:00+00:00"))
        assert not matches(conditions, record(created=dt(2024, 1, 1, 0, 0, 1)))

    def test_comparing_mismatched_types_is_false_not_an_error(self) -> None:
        assert not matches(parse_filter("greater-than(x,2024-01-01)"), record(x=True))
        assert not matches(parse_filter("greater-than(x,5)"), record(x={"a": 1}))
        assert not matches(parse_filter('greater-than(x,"b")'), record(x=3))
        assert matches(parse_filter('greater-than(x,"b")'), record(x="c"))

    def test_string_operators(self) -> None:
        name = record(name="Black Friday Sale")
        assert matches(parse_filter('contains(name,"Friday")'), name)
        assert not matches(parse_filter('contains(name,"friday")'), name)
        assert matches(parse_filter('starts-with(name,"Black")'), name)
        assert not matches(parse_filter('starts-with(name,"Friday")'), name)
        assert matches(parse_filter('ends-with(name,"Sale")'), name)
        assert not matches(parse_filter('ends-with(name,"Black")'), name)
        assert not matches(parse_filter('contains(name,"x")'), record(name=None))
        assert not matches(parse_filter('starts-with(name,"1")'), record(name=123))

    def test_contains_on_lists(self) -> None:
        tags = record(tags=["vip", "wholesale"])
        assert matches(parse_filter('contains(tags,"vip")'), tags)
        assert not matches(parse_filter('contains(tags,"vi")'), tags)
        assert matches(parse_filter('contains-any(tags,["x","wholesale"])'), tags)
        assert not matches(parse_filter('contains-any(tags,["x","y"])'), tags)
        assert matches(parse_filter('contains-all(tags,["vip","wholesale"])'), tags)
        assert not matches(parse_filter('contains-all(tags,["vip","x"])'), tags)

    def test_contains_any_all_on_strings(self) -> None:
        text = record(content="great fit, fast shipping")
        assert matches(parse_filter('contains-any(content,["slow","fast"])'), text)
        assert not matches(parse_filter('contains-any(content,["slow","bad"])'), text)
        assert matches(parse_filter('contains-all(content,["great","shipping"])'), text)
        assert not matches(parse_filter('contains-all(content,["great","slow"])'), text)

    def test_has(self) -> None:
        conditions = parse_filter("has(profile)")
        assert matches(conditions, record(profile="P1"))
        assert matches(conditions, record(profile={"id": "P1"}))
        assert matches(conditions, record(profile=0))
        assert matches(conditions, record(profile=False))
        for empty in (None, "", [], {}):
            assert not matches(conditions, record(profile=empty))

    def test_all_conditions_must_hold(self) -> None:
        conditions = compile_filter(
            'equals(metric_id,"M1"),equals(profile_id,"P1"),greater-or-equal(datetime,2024-01-01)',
            {
                "metric_id": {"operators": {"single": ["equals"]}, "value": {"type": "string"}},
                "profile_id": {"operators": {"single": ["equals"]}, "value": {"type": "string"}},
                "datetime": {
                    "operators": {"single": ["greater-or-equal"]},
                    "value": {"type": "string", "format": "date-time"},
                },
            },
        )
        event = {"metric_id": "M1", "profile_id": "P1", "datetime": dt(2024, 2, 1)}
        assert matches(conditions, event.get)
        assert not matches(conditions, {**event, "profile_id": "P2"}.get)
        assert not matches(conditions, {**event, "datetime": dt(2023, 12, 31)}.get)

    def test_getter_called_with_field_names(self) -> None:
        seen: list[str] = []

        def get(field: str) -> Any:
            seen.append(field)
            return "x"

        matches(parse_filter('equals(a.b,"x"),equals(c,"x")'), get)
        assert seen == ["a.b", "c"]
