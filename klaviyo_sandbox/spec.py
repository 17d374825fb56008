"""Klaviyo's OpenAPI spec (bundled), read once and indexed for the sandbox and its tests.

Everything the sandbox enforces per operation comes from here rather than from hand-copied tables:
path patterns, scopes (``x-klaviyo-scopes``), rate-limit tiers (``x-klaviyo-ratelimit``, plus the
stricter ``additional-fields`` limits stated in each description), allowed filters
(``x-klaviyo-filters``), ``page[size]`` bounds, sparse-fieldset and include enums, and the JSON
schemas of request and response bodies.

Schemas are converted from OpenAPI 3.0 to JSON Schema (``nullable`` becomes a ``null`` type,
``allOf`` members are merged, ``oneOf`` is read as ``anyOf``).
With ``closed=True`` every object that lists its ``properties`` rejects others: Klaviyo answers 400
for an unknown attribute, and the tests use the same closure to prove the sandbox never invents one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

SPEC_PATH = Path(__file__).parent / "spec" / "klaviyo-openapi.json"
SPEC_REVISION = "2026-07-15"

_METHODS = ("get", "post", "patch", "put", "delete")
_RATE = re.compile(r"^(\d+)/([smd])$")
_EXTRA_LIMIT = re.compile(
    r"Rate limits when using the `([^`=]+)=([^`]+)` parameter[^:]*:<br>Burst: `(\d+)/s`<br>Steady: `(\d+)/m`"
)
_PAGE_SIZE = re.compile(r"Default: (\d+)\. Min: (\d+)\. Max: (\d+)\.")
# "The maximum allowed payload size is 100KB." (not the "... per-profile is" variants)
_PAYLOAD_LIMIT = re.compile(r"The maximum allowed payload size is (\d+) ?([KM]B)\.")
#: Klaviyo's request-body limit for every API that states none (reference §2: 5 MB).
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class RateLimit:
    """A fixed-window limit: ``burst`` per second and ``steady`` per minute (``daily`` per day if set)."""

    burst: int
    steady: int
    daily: int | None = None

    @property
    def tier(self) -> str:
        """A short name of the tier, e.g. ``75/s,750/m``, used as part of the limiter's bucket key."""
        return f"{self.burst}/s,{self.steady}/m" + (f",{self.daily}/d" if self.daily else "")


@dataclass(frozen=True)
class QueryParam:
    """A declared query parameter: its schema and, for list parameters, the allowed items."""

    name: str
    required: bool
    schema: dict[str, Any]

    @property
    def is_list(self) -> bool:
        """True for comma-separated parameters (``fields[…]``, ``include``, ``additional-fields[…]``)."""
        return self.schema.get("type") == "array"

    @property
    def enum(self) -> list[Any] | None:
        """Allowed values (of the items, for list parameters), when the spec restricts them."""
        source = self.schema.get("items", {}) if self.is_list else self.schema
        return source.get("enum")


@dataclass(frozen=True)
class Operation:
    """One operation of the spec with everything the sandbox enforces for it."""

    operation_id: str
    method: str
    path: str
    pattern: re.Pattern[str]
    scopes: tuple[str, ...]
    rate_limit: RateLimit
    extra_limits: dict[str, RateLimit]  # "additional-fields[list]=profile_count" -> limit
    filters: dict[str, Any] | None
    page_size: tuple[int, int, int] | None  # default, min, max
    query: dict[str, QueryParam]
    request_schema_ref: str | None
    response_schema_refs: dict[str, str] = field(default_factory=dict)  # "200" -> "#/components/..."
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # from "The maximum allowed payload size is …"

    @property
    def literal_segments(self) -> int:
        """How many path segments are literal: more specific routes are matched first."""
        return sum(1 for part in self.path.split("/") if part and not part.startswith("{"))


@cache
def load_spec() -> dict[str, Any]:
    """The raw bundled spec (read once)."""
    return json.loads(SPEC_PATH.read_text())


def _parse_rate(value: str) -> tuple[int, str]:
    match = _RATE.match(value)
    if not match:
        raise ValueError(f"unreadable rate limit {value!r} in the spec")
    return int(match.group(1)), match.group(2)


def _rate_limit(raw: dict[str, str]) -> RateLimit:
    burst, _ = _parse_rate(raw["burst"])
    steady, _ = _parse_rate(raw["steady"])
    daily = _parse_rate(raw["daily"])[0] if "daily" in raw else None
    return RateLimit(burst=burst, steady=steady, daily=daily)


def _path_pattern(path: str) -> re.Pattern[str]:
    # Klaviyo accepts both ``/api/profiles/ID`` and ``/api/profiles/ID/``.
    regex = re.sub(r"\{([^}]+)\}", lambda m: f"(?P<{m.group(1).replace('-', '_')}>[^/]+)", path.rstrip("/"))
    return re.compile(f"^{regex}/?$")


def _max_body_bytes(description: str) -> int:
    found = _PAYLOAD_LIMIT.search(description)
    if not found:
        return DEFAULT_MAX_BODY_BYTES
    return int(found.group(1)) * (1024 if found.group(2) == "KB" else 1024 * 1024)


def _json_ref(content: dict[str, Any] | None) -> str | None:
    if not content:
        return None
    for media in content.values():
        ref = media.get("schema", {}).get("$ref")
        if ref:
            return ref
    return None


@cache
def operations() -> tuple[Operation, ...]:
    """Every operation of the spec, most specific paths first."""
    spec = load_spec()
    found: list[Operation] = []
    for path, item in spec["paths"].items():
        for method in _METHODS:
            op = item.get(method)
            if not op:
                continue
            query: dict[str, QueryParam] = {}
            page_size = None
            for param in op.get("parameters", []):
                if param["in"] != "query":
                    continue
                query[param["name"]] = QueryParam(param["name"], bool(param.get("required")), param["schema"])
                if param["name"] == "page[size]":
                    schema = param["schema"]
                    page_size = (schema.get("default", 20), schema.get("minimum", 1), schema["maximum"])
            extra = {
                f"{m.group(1)}={m.group(2)}": RateLimit(int(m.group(3)), int(m.group(4)))
                for m in _EXTRA_LIMIT.finditer(op.get("description", ""))
            }
            responses = {
                status: ref
                for status, response in op.get("responses", {}).items()
                if (ref := _json_ref(response.get("content")))
            }
            found.append(
                Operation(
                    operation_id=op["operationId"],
                    method=method.upper(),
                    path=path,
                    pattern=_path_pattern(path),
                    scopes=tuple(op.get("x-klaviyo-scopes", [])),
                    rate_limit=_rate_limit(op["x-klaviyo-ratelimit"]),
                    extra_limits=extra,
                    filters=op.get("x-klaviyo-filters"),
                    page_size=page_size,
                    query=query,
                    request_schema_ref=_json_ref(op.get("requestBody", {}).get("content")),
                    response_schema_refs=responses,
                    max_body_bytes=_max_body_bytes(op.get("description", "")),
                )
            )
    found.sort(key=lambda o: (-o.literal_segments, o.path))
    return tuple(found)


@cache
def operation_by_id(operation_id: str) -> Operation:
    """The operation with this ``operationId``."""
    for op in operations():
        if op.operation_id == operation_id:
            return op
    raise KeyError(operation_id)


def match(method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
    """Find the operation for a request: ``(operation, path params, path_exists)``.

    ``path_exists`` is True when some operation has this path under another method (→ 405).
    """
    path_exists = False
    for op in operations():
        found = op.pattern.match(path)
        if not found:
            continue
        if op.method == method:
            return op, found.groupdict(), True
        path_exists = True
    return None, {}, path_exists


def methods_for(path: str) -> list[str]:
    """The methods some operation of the spec serves at this path (for a 405's ``Allow``)."""
    return sorted({op.method for op in operations() if op.pattern.match(path)})


def all_scopes() -> list[str]:
    """Every scope any operation of the spec requires, sorted."""
    return sorted({scope for op in operations() for scope in op.scopes})


# ---------------------------------------------------------------------------- JSON Schema


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = load_spec()["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _merge_all_of(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Deep-merge ``allOf`` members so that closing objects later sees every property at once."""
    merged: dict[str, Any] = {}
    for part in parts:
        part = _resolve(part)
        if "allOf" in part:
            part = _merge_all_of(part["allOf"])
        for key, value in part.items():
            if key == "properties" and key in merged:
                props = dict(merged["properties"])
                for name, schema in value.items():
                    if name in props and isinstance(schema, dict) and isinstance(props[name], dict):
                        left, right = _resolve(props[name]), _resolve(schema)
                        if "properties" in left or "properties" in right:
                            props[name] = _merge_all_of([left, right])
                            continue
                    props[name] = (
                        schema if name not in props else {**_resolve(props[name]), **_resolve(schema)}
                    )
                merged["properties"] = props
            elif key == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged[key] = value
    return merged


def _to_json_schema(node: Any, closed: bool, sparse: bool = False) -> Any:
    """OpenAPI 3.0 schema → JSON Schema (``nullable``, optional closure of objects).

    ``sparse`` is for answers to ``fields[…]`` requests: members the spec marks required may then
    be absent, as Klaviyo omits everything that was not asked for (types and closure still hold).
    """
    if isinstance(node, list):
        return [_to_json_schema(item, closed, sparse) for item in node]
    if not isinstance(node, dict):
        return node
    if "allOf" in node:
        rest = {key: value for key, value in node.items() if key != "allOf"}
        node = {**_merge_all_of(node["allOf"]), **rest}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "nullable" or (sparse and key == "required"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _to_json_schema(schema, closed, sparse) for name, schema in value.items()}
        else:
            # ``oneOf`` becomes ``anyOf``: the spec's alternatives overlap (e.g. number | integer,
            # or resources differing only in optional members), so "exactly one" rejects valid bodies.
            out["anyOf" if key == "oneOf" else key] = _to_json_schema(value, closed, sparse)
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out or "anyOf" in out or "allOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
    if closed and isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


# Where live Klaviyo answers differ from its spec, the sandbox follows the live answers and the
# schemas are corrected here, each with its evidence (reference §2 and §9, S14 recordings).
SPEC_ERRATA: dict[str, dict[str, Any]] = {
    # Collection links: live bodies carry "next": null on the last page and "prev": null.
    "CollectionLinks": {
        "properties": {
            "self": {"type": "string", "format": "uri"},
            "prev": {"type": "string", "format": "uri", "nullable": True},
            "next": {"type": "string", "format": "uri", "nullable": True},
        },
    },
}


def _schemas_with_errata() -> dict[str, Any]:
    schemas = dict(load_spec()["components"]["schemas"])
    for name, patch in SPEC_ERRATA.items():
        schemas[name] = {**schemas[name], **patch}
    return schemas


@cache
def _registry(closed: bool, sparse: bool = False) -> referencing.Registry:
    converted = {"components": {"schemas": _to_json_schema(_schemas_with_errata(), closed, sparse)}}
    resource = referencing.Resource.from_contents(
        converted, default_specification=referencing.jsonschema.DRAFT7
    )
    return referencing.Registry().with_resource("urn:klaviyo-spec", resource)


@cache
def validator(ref: str, closed: bool = True, sparse: bool = False) -> jsonschema.Draft7Validator:
    """A validator for the schema at ``ref`` (e.g. ``#/components/schemas/ProfileCreateQuery``)."""
    return jsonschema.Draft7Validator({"$ref": f"urn:klaviyo-spec{ref}"}, registry=_registry(closed, sparse))


def response_validator(
    operation_id: str, status: int, closed: bool = True, sparse: bool = False
) -> jsonschema.Draft7Validator:
    """A validator for the body the spec gives for this operation and status (``sparse``: fields[…] asked)."""
    op = operation_by_id(operation_id)
    ref = op.response_schema_refs.get(str(status)) or op.response_schema_refs.get(f"{str(status)[0]}XX")
    if ref is None:
        raise KeyError(f"{operation_id} has no JSON body for status {status} in the spec")
    return validator(ref, closed, sparse)


@cache
def error_validator() -> jsonschema.Draft7Validator:
    """A validator for Klaviyo's error body (``components.responses.ClientError``).

    Left open: real error bodies also carry ``status``, ``links`` and ``meta``, which the spec omits.
    """
    schema = load_spec()["components"]["responses"]["ClientError"]["content"]["application/vnd.api+json"]
    return jsonschema.Draft7Validator(_to_json_schema(schema["schema"], closed=False))
