"""The raw-table contract of Recart's app data: entities, their columns and the warehouse DDL.

Every entity of the landing zone (``<root>/recart/<entity>/<account_id>/<name>.jsonl|.parquet``)
loads into ``recart.raw_<entity>`` with the columns below, in this order, followed by ``_file``,
``_row`` and ``_loaded_at``. The dbt project's sources are written against these tables, so the
names, order and types here are a contract: change them together with ``dbt_project``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

SCHEMA = "recart"


class Kind(StrEnum):
    """How a landing value is read and validated (see ``connectors.recart.loader``)."""

    TEXT = "text"  # strings kept as given (numbers are accepted and kept as their text)
    ENUM = "enum"  # one of ``Column.choices``, compared case-insensitively, stored lower-case
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # ISO-8601; a value without an offset is taken as UTC
    DECIMAL = "decimal"  # money, decimal(18,2)
    INTEGER = "integer"
    JSON_OBJECT = "json_object"
    TEXT_LIST = "text_list"  # an array of strings


_SQL_TYPES: dict[Kind, str] = {
    Kind.TEXT: "varchar",
    Kind.ENUM: "varchar",
    Kind.BOOL: "boolean",
    Kind.TIMESTAMP: "timestamptz",
    Kind.DECIMAL: "decimal(18,2)",
    Kind.INTEGER: "integer",
    Kind.JSON_OBJECT: "json",
    Kind.TEXT_LIST: "varchar[]",
}


@dataclass(frozen=True)
class Column:
    """One data column of a raw table."""

    name: str
    kind: Kind = Kind.TEXT
    required: bool = False  # a row without it (missing, null or blank) is rejected
    choices: tuple[str, ...] = ()  # for ``Kind.ENUM``
    default_false: bool = False  # a missing boolean reads as false (``deleted``)

    @property
    def sql_type(self) -> str:
        """The DuckDB type of the column."""
        return _SQL_TYPES[self.kind]


@dataclass(frozen=True)
class Entity:
    """One entity of the landing zone and its raw table."""

    name: str  # the landing directory, e.g. ``order_lines``
    key: tuple[str, ...]  # identifies a record within an account; later ``updated_at`` supersedes
    columns: tuple[Column, ...]  # data columns after ``account_id``, in table order
    description: str

    @property
    def table(self) -> str:
        """The raw table's name, e.g. ``raw_order_lines``."""
        return f"raw_{self.name}"

    @property
    def qualified_table(self) -> str:
        """``recart.raw_<entity>``."""
        return f"{SCHEMA}.{self.table}"

    @property
    def column_names(self) -> tuple[str, ...]:
        """All columns of the raw table, in order."""
        return ("account_id", *(c.name for c in self.columns), "_file", "_row", "_loaded_at")


def _ts(name: str, required: bool = False) -> Column:
    return Column(name, Kind.TIMESTAMP, required=required)


def _id(name: str) -> Column:
    return Column(name, Kind.TEXT, required=True)


_UPDATED_AT = _ts("updated_at", required=True)  # change data: the version of the row
_DELETED = Column("deleted", Kind.BOOL, default_false=True)

FLOW_STATUSES = ("draft", "active", "paused", "archived")
CAMPAIGN_STATUSES = ("draft", "scheduled", "sent", "cancelled")
CONSUMER_TYPES = ("flow", "campaign")

ENTITIES: dict[str, Entity] = {
    entity.name: entity
    for entity in (
        Entity(
            "subscribers",
            ("subscriber_id",),
            (
                _id("subscriber_id"),
                Column("email"),  # as given: normalisation happens in dbt
                Column("phone"),
                Column("external_id"),
                Column("email_consent", Kind.BOOL),
                _ts("email_consent_at"),
                Column("sms_consent", Kind.BOOL),
                _ts("sms_consent_at"),
                _ts("email_opted_out_at"),
                _ts("sms_opted_out_at"),
                Column("custom_attributes", Kind.JSON_OBJECT),
                Column("source"),
                _ts("created_at"),
                _UPDATED_AT,
                _DELETED,
            ),
            "Recart subscribers as the app exports them: email and phone as given (messy), consent and "
            "opt-out times, custom attributes, source. Change data: the latest updated_at per "
            "(account_id, subscriber_id) wins; deleted marks a removal.",
        ),
        Entity(
            "orders",
            ("order_id",),
            (
                _id("order_id"),
                Column("subscriber_id"),
                Column("email"),
                _ts("placed_at"),
                Column("total_amount", Kind.DECIMAL),
                Column("currency"),
                Column("status"),
                _UPDATED_AT,
                _DELETED,
            ),
            "Shop orders seen by Recart. Change data: the latest updated_at per (account_id, order_id) wins.",
        ),
        Entity(
            "order_lines",
            ("order_id", "line_id"),
            (
                _id("order_id"),
                _id("line_id"),
                Column("product_id"),
                Column("quantity", Kind.INTEGER),
                Column("unit_price", Kind.DECIMAL),
                _UPDATED_AT,
            ),
            "Order lines. Change data: the latest updated_at per (account_id, order_id, line_id) wins.",
        ),
        Entity(
            "products",
            ("product_id",),
            (
                _id("product_id"),
                Column("title"),
                Column("tags", Kind.TEXT_LIST),
                _UPDATED_AT,
                _DELETED,
            ),
            "Products with their tags. Change data: the latest updated_at per (account_id, product_id) wins.",
        ),
        Entity(
            "automated_flows",
            ("flow_id",),
            (
                _id("flow_id"),
                Column("name"),
                Column("status", Kind.ENUM, required=True, choices=FLOW_STATUSES),
                Column("trigger"),
                _UPDATED_AT,
                _DELETED,
            ),
            "Recart automated flows: status (draft, active, paused, archived) and trigger.",
        ),
        Entity(
            "campaigns",
            ("campaign_id",),
            (
                _id("campaign_id"),
                Column("name"),
                Column("status", Kind.ENUM, required=True, choices=CAMPAIGN_STATUSES),
                _ts("scheduled_at"),
                _UPDATED_AT,
                _DELETED,
            ),
            "Recart campaigns: status (draft, scheduled, sent, cancelled) and schedule.",
        ),
        Entity(
            "segment_usages",
            ("consumer_type", "consumer_id", "segment_name"),
            (
                Column("consumer_type", Kind.ENUM, required=True, choices=CONSUMER_TYPES),
                _id("consumer_id"),
                _id("segment_name"),  # the analyst segment: a dbt model under models/segments/
                _UPDATED_AT,
                _DELETED,
            ),
            "Which analyst segment (dbt model under models/segments/) each Recart flow or campaign "
            "targets; deleted marks a usage that ended.",
        ),
    )
}


def raw_table_ddl(entity: Entity) -> str:
    """``create table if not exists`` for an entity's raw table."""
    columns = ",\n    ".join(
        ["account_id varchar not null"]
        + [f"{c.name} {c.sql_type}" for c in entity.columns]
        + ["_file varchar not null", "_row bigint", "_loaded_at timestamptz not null"]
    )
    return f"create table if not exists {entity.qualified_table} (\n    {columns}\n)"


BOOKKEEPING_DDL: tuple[str, ...] = (
    f"create schema if not exists {SCHEMA}",
    f"""
    create table if not exists {SCHEMA}.rejections (
        account_id varchar,
        entity varchar not null,
        _file varchar not null,
        _row bigint,
        reason varchar not null,
        raw_line varchar,
        rejected_at timestamptz not null
    )
    """,
    f"""
    create table if not exists {SCHEMA}.loaded_files (
        entity varchar not null,
        account_id varchar,
        _file varchar not null,
        size_bytes bigint not null,
        sha256 varchar not null,
        rows_loaded bigint not null,
        rows_rejected bigint not null,
        loaded_at timestamptz not null
    )
    """,
)


def all_ddl() -> list[str]:
    """Every statement that creates the ``recart`` schema's tables (idempotent)."""
    return [*BOOKKEEPING_DDL, *(raw_table_ddl(entity) for entity in ENTITIES.values())]
