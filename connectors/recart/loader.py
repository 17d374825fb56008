"""Load the Recart landing zone into the warehouse's raw tables: each file once, nothing dropped.

One run per entity:

1. **Find** the entity's landing files and compare them with ``recart.loaded_files`` (read without
   the write lock). A file already loaded is skipped without reading it when its size is unchanged
   and it was not modified after it was loaded; otherwise its SHA-256 decides: same content → skip,
   new content under a loaded name → rejected (landing files are immutable).
2. **Validate** every new file outside the write lock, into a private staging DuckDB file next to
   the warehouse. JSON Lines are read as text lines (``read_csv`` with one column, so a bad line
   cannot take the file down) and parsed with DuckDB's JSON functions; their rows are staged.
   Parquet is read with ``read_parquet`` and only its rejected rows are staged (copying millions of
   good rows twice would double the cost); every value is cast to the contract's type, and each row
   either loads or gets a rejection with its file, line/row number and reasons. A whole unreadable
   file (corrupt Parquet, wrong place, unsupported type, unusable column type) gets one rejection
   with ``_row`` null.
3. **Publish** in one write transaction: attach the staging file, decide again against the current
   ``loaded_files`` (another run may have loaded the same file meanwhile), append the staged rows,
   the validated Parquet rows (same SELECT, straight from the landing file), the rejections and the
   ``loaded_files`` records, commit. The rows' ``_loaded_at`` is taken here, under the write lock
   that every dbt build also holds: a row can never become visible with a ``_loaded_at`` older
   than a build that has already run, so incremental models need no long look-back for late
   commits (``incremental_lookback_hours``). ``loaded_files.loaded_at`` keeps the run's start,
   taken before any file was read (step 1 compares file modification times with it).

Rows are appended as given (change data): dbt picks the latest ``updated_at`` per key and honours
``deleted``. Blank lines are not records; fields the contract does not name are ignored.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pandas as pd

from connectors.recart.landing import (
    SUPPORTED_SUFFIXES,
    LandingFile,
    default_landing_root,
    file_sha256,
    scan_landing,
    valid_account_id,
)
from connectors.recart.models import ENTITIES, SCHEMA, Column, Entity, Kind, all_ddl
from warehouse.duckdb_file import default_path, read_connection, write_connection

# JSON Lines are read as one text column per line. The delimiter is a 4-byte sequence that valid
# JSON can never contain (control characters must be escaped); a file that does contain it, or
# that is not UTF-8, makes DuckDB's reader fail and is read line by line in Python instead.
_LINES_READER = (
    "read_csv({path}, columns={{'line': 'VARCHAR'}}, header=false, delim='\x01\x02\x03\x04', "
    "quote='', escape='', auto_detect=false, new_line='\\n')"
)
# JSON value types read as text or numbers (ids sent as numbers keep their digits).
_JSON_SCALARS = "('VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE')"
# Errors that mean the SQL we generate is wrong (never the data): they fail the run.
_OUR_MISTAKES = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)
_MAX_EXPLAINED_JSON_ERRORS = 1_000  # per file; further malformed lines get the short reason
_CHANGED = (
    "file content changed after it was loaded (different SHA-256 under the same name); landing "
    "files are immutable: write corrected or new data under a new file name"
)
_SAMPLE_SIZE = 5
_SHOWN_VALUE_CHARS = 80

_EXPECTATIONS: dict[Kind, str] = {
    Kind.TEXT: "is not a string",
    Kind.BOOL: "is not true or false",
    Kind.TIMESTAMP: "is not an ISO-8601 timestamp",
    Kind.DECIMAL: "is not a decimal number that fits decimal(18,2)",
    Kind.INTEGER: "is not an integer",
    Kind.JSON_OBJECT: "is not a JSON object",
    Kind.TEXT_LIST: "is not an array of strings",
}


@dataclass(frozen=True)
class FileOutcome:
    """What one run did with one file."""

    file: str  # relative to the landing root, as in ``_file``
    account_id: str | None
    rows_loaded: int
    rows_rejected: int
    rejection: str | None = None  # set when the whole file was rejected
    duplicate_keys: int = 0  # keys that occur more than once among the file's loaded rows


@dataclass(frozen=True)
class LoadResult:
    """The outcome of loading one entity."""

    entity: str
    loaded_at: datetime
    files_seen: int
    files_skipped: int  # already loaded, unchanged
    files: tuple[FileOutcome, ...]  # newly recorded in ``loaded_files`` by this run
    seconds: float
    write_seconds: float = 0.0  # time spent holding the warehouse write lock
    rejection_samples: tuple[dict[str, Any], ...] = field(default=())

    @property
    def files_loaded(self) -> int:
        """Files recorded by this run (including wholly rejected ones)."""
        return len(self.files)

    @property
    def files_rejected(self) -> int:
        """Files rejected as a whole by this run."""
        return sum(1 for f in self.files if f.rejection is not None)

    @property
    def rows_loaded(self) -> int:
        """Rows appended to the raw table."""
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_rejected(self) -> int:
        """Rejection rows written (a wholly rejected file counts one)."""
        return sum(f.rows_rejected for f in self.files)

    @property
    def duplicate_keys(self) -> int:
        """Keys that occur more than once within one file, summed over this run's files."""
        return sum(f.duplicate_keys for f in self.files)

    def summary(self) -> dict[str, Any]:
        """The figures as a plain dict (for logs and metadata)."""
        return {
            "entity": self.entity,
            "files_seen": self.files_seen,
            "files_loaded": self.files_loaded,
            "files_skipped": self.files_skipped,
            "files_rejected": self.files_rejected,
            "rows_loaded": self.rows_loaded,
            "rows_rejected": self.rows_rejected,
            "duplicate_keys": self.duplicate_keys,
            "seconds": round(self.seconds, 3),
            "write_seconds": round(self.write_seconds, 3),
        }


@dataclass
class _Known:
    """What ``loaded_files`` already holds for one path."""

    shas: set[str]
    last_size: int
    last_loaded_at: datetime


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the ``recart`` schema and all its tables if missing (call under the write lock)."""
    for ddl in all_ddl():
        conn.execute(ddl)


def load_entity(
    entity: str,
    landing_root: Path | str | None = None,
    warehouse_path: Path | str | None = None,
    *,
    known_accounts: Collection[str] | None = None,
) -> LoadResult:
    """Load the new landing files of one entity into ``recart.raw_<entity>``.

    ``known_accounts`` (optional) restricts which account directories are accepted; without it any
    well-formed Recart account id is. Safe to run concurrently with itself and other writers.
    """
    spec = ENTITIES[entity]
    root = Path(landing_root) if landing_root is not None else default_landing_root()
    warehouse = Path(warehouse_path) if warehouse_path is not None else default_path()
    started = time.monotonic()
    # Taken before any file is read: a file modified after this instant is re-hashed next run.
    loaded_at = datetime.now(UTC)
    files = scan_landing(root, [spec.name])
    known, tables_exist = _read_known(warehouse, spec)

    warehouse.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".recart-stage-", dir=warehouse.parent) as tmp:
        stage_path = Path(tmp) / "stage.duckdb"
        staged, skipped, samples = _stage(stage_path, spec, files, known, loaded_at, known_accounts)
        publish_started = time.monotonic()
        if not staged:
            if not tables_exist:
                with write_connection(warehouse) as conn:
                    ensure_tables(conn)
            outcomes: tuple[FileOutcome, ...] = ()
        else:
            outcomes = _publish(warehouse, stage_path, spec, staged, loaded_at)
        write_seconds = time.monotonic() - publish_started
    kept = {o.file for o in outcomes}
    return LoadResult(
        entity=spec.name,
        loaded_at=loaded_at,
        files_seen=len(files),
        files_skipped=skipped + len(staged) - len(outcomes),
        files=outcomes,
        seconds=time.monotonic() - started,
        write_seconds=write_seconds,
        rejection_samples=tuple(s for s in samples if s["file"] in kept)[:_SAMPLE_SIZE],
    )


def load_all(
    landing_root: Path | str | None = None,
    warehouse_path: Path | str | None = None,
    *,
    entities: Iterable[str] | None = None,
    known_accounts: Collection[str] | None = None,
) -> dict[str, LoadResult]:
    """Load every entity (or the given ones), one after the other."""
    return {
        name: load_entity(name, landing_root, warehouse_path, known_accounts=known_accounts)
        for name in (entities if entities is not None else ENTITIES)
    }


# ---------------------------------------------------------------------------- 1. what is known


def _read_known(warehouse: Path, spec: Entity) -> tuple[dict[str, _Known], bool]:
    known: dict[str, _Known] = {}
    with read_connection(warehouse) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "select table_name from information_schema.tables where table_schema = ?", [SCHEMA]
            ).fetchall()
        }
        if "loaded_files" in tables:
            rows = conn.execute(
                f"select _file, sha256, size_bytes, loaded_at from {SCHEMA}.loaded_files"
                " where entity = ? order by loaded_at",
                [spec.name],
            ).fetchall()
            for path, sha, size, at in rows:
                entry = known.setdefault(path, _Known(set(), size, at))
                entry.shas.add(sha)
                entry.last_size, entry.last_loaded_at = size, at
    return known, {"loaded_files", "rejections", spec.table} <= tables


# ---------------------------------------------------------------------------- 2. staging


@dataclass(frozen=True)
class _Staged:
    file: LandingFile
    sha256: str
    rejection: str | None
    rows_loaded: int
    rows_rejected: int
    duplicate_keys: int
    # Parquet rows are not copied into the staging file (that would write every row twice): the
    # publish step inserts them straight from the landing file with this validated SELECT.
    direct_sql: str | None = None


def _stage(
    stage_path: Path,
    spec: Entity,
    files: list[LandingFile],
    known: dict[str, _Known],
    loaded_at: datetime,
    known_accounts: Collection[str] | None,
) -> tuple[list[_Staged], int, list[dict[str, Any]]]:
    staged: list[_Staged] = []
    samples: list[dict[str, Any]] = []
    skipped = 0
    stage = duckdb.connect(str(stage_path))
    try:
        stage.execute("set timezone = 'UTC'")  # timestamps without an offset are UTC
        stage.execute(_stage_rows_ddl(spec, "rows"))
        for file in files:
            previous = known.get(file.relative)
            if previous is not None and _unchanged_since_load(file, previous):
                skipped += 1
                continue
            sha = file_sha256(file.path)
            if previous is not None:
                if sha in previous.shas:
                    skipped += 1
                    continue
                staged.append(_Staged(file, sha, _CHANGED, 0, 1, 0))
                continue
            problem = _placement_problem(file, known_accounts)
            if problem is not None:
                staged.append(_Staged(file, sha, problem, 0, 1, 0))
                continue
            try:
                item = _stage_file(stage, spec, file, sha)
            except _OUR_MISTAKES:
                raise  # a bug in the generated SQL must fail the run, not reject the file
            except duckdb.Error as exc:  # e.g. a Parquet file that is corrupt past its footer
                stage.execute("delete from rows where _file = ?", [file.relative])
                for table in ("lines", "raw_lines"):
                    stage.execute(f"drop table if exists {table}")
                item = _Staged(file, sha, _unreadable(file, exc), 0, 1, 0)
            staged.append(item)
            if item.rejection is None:
                for row, reason in stage.execute(
                    "select _row, reason from rows where _file = ? and reason is not null"
                    f" order by _row limit {_SAMPLE_SIZE}",
                    [file.relative],
                ).fetchall():
                    samples.append({"file": file.relative, "row": row, "reason": reason})
        for item in staged:
            if item.rejection is not None:
                samples.append({"file": item.file.relative, "row": None, "reason": item.rejection})
    finally:
        stage.close()
    return staged, skipped, samples


def _stage_file(stage: duckdb.DuckDBPyConnection, spec: Entity, file: LandingFile, sha: str) -> _Staged:
    """Validate one file: rejected rows (and JSON Lines' good rows) go to the staging table."""
    direct_sql: str | None = None
    if file.suffix == ".jsonl":
        _stage_jsonl(stage, spec, file)
        source = f"(select * from rows where _file = {_lit(file.relative)})"
    else:
        problem, direct_sql = _plan_parquet(stage, spec, file)
        if problem is not None:
            return _Staged(file, sha, problem, 0, 1, 0)
        assert direct_sql is not None
        stage.execute(f"insert into rows select * from ({direct_sql}) where reason is not null")
        source = f"({direct_sql})"
    loaded, rejected, duplicates = stage.execute(
        f"""
        select
            count(*) filter (where reason is null),
            count(*) filter (where reason is not null),
            (select count(*) from (
                select 1 from {source} where reason is null
                group by account_id, {", ".join(spec.key)} having count(*) > 1
            ))
        from {source}
        """
    ).fetchone()
    return _Staged(file, sha, None, loaded, rejected, duplicates, direct_sql)


def _unchanged_since_load(file: LandingFile, previous: _Known) -> bool:
    # Hashing every loaded file on every run would cost O(landing zone); a rewrite changes the
    # mtime (writers rename a new file into place), so only files touched since their load are hashed.
    return file.size_bytes == previous.last_size and file.mtime_ns < previous.last_loaded_at.timestamp() * 1e9


def _placement_problem(file: LandingFile, known_accounts: Collection[str] | None) -> str | None:
    expected = f"recart/{file.entity}/<account_id>/<name>.jsonl|.parquet"
    if file.account_id is None:
        return f"file is not inside an account directory (expected {expected})"
    if not valid_account_id(file.account_id):
        return f"account directory {file.account_id!r} is not a valid Recart account id"
    if known_accounts is not None and file.account_id not in known_accounts:
        return f"account directory {file.account_id!r} is not a known Recart account"
    if file.suffix not in SUPPORTED_SUFFIXES:
        return f"unsupported file type {file.suffix or '(none)'!r}: expected .jsonl or .parquet"
    return None


def _unreadable(file: LandingFile, exc: Exception) -> str:
    kind = "Parquet" if file.suffix == ".parquet" else "JSON Lines"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"unreadable {kind} file: {first_line}"


def _stage_rows_ddl(spec: Entity, name: str) -> str:
    columns = ", ".join(
        ["account_id varchar"]
        + [f"{c.name} {c.sql_type}" for c in spec.columns]
        + ["_file varchar", "_row bigint", "reason varchar", "raw_line varchar"]
    )
    return f"create table {name} ({columns})"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ------------------------------------------------------------------- JSON Lines


def _stage_jsonl(stage: duckdb.DuckDBPyConnection, spec: Entity, file: LandingFile) -> None:
    try:
        # A single-file scan keeps the file's order, so row_number() is the line number.
        stage.execute(
            "create temp table raw_lines as select row_number() over () as _row, line, false as bad_utf8"
            f" from {_LINES_READER.format(path=_lit(str(file.path)))}"
        )
    except duckdb.Error:
        stage.execute("drop table if exists raw_lines")
        stage.register("py_lines", _python_lines(file.path))
        stage.execute("create temp table raw_lines as select * from py_lines")
        stage.unregister("py_lines")
    # Blank lines are not records (a trailing newline, spacing): skipped, not rejected.
    stage.execute(
        """
        create temp table lines as
        select _row, line,
            case
                when bad_utf8 then 'line is not valid UTF-8'
                when not json_valid(line) then 'malformed JSON'
                when json_type(line) <> 'OBJECT' then 'expected a JSON object, got ' || lower(json_type(line))
            end as problem
        from raw_lines
        where line is not null and trim(line, ' \t\r') <> ''
        """
    )
    stage.execute("drop table raw_lines")
    _explain_malformed(stage)
    account, path = _lit(file.account_id or ""), _lit(file.relative)
    stage.execute(
        f"insert into rows (account_id, _file, _row, reason, raw_line)"
        f" select {account}, {path}, _row, problem, line from lines where problem is not null"
    )
    struct = json.dumps({c.name: "JSON" for c in (*spec.columns, Column("account_id"))})
    fields = ",\n".join(
        f"s.{c.name} as __j_{c.name}, json_type(s.{c.name}) as __t_{c.name}, s.{c.name}->>'$' as __x_{c.name}"
        for c in (*spec.columns, Column("account_id"))
    )
    values = ",\n".join(f"{_json_value(c)} as __v_{c.name}" for c in spec.columns)
    errors = [_json_error(c) for c in spec.columns]
    errors.append(
        f"case when __x_account_id is not null and __x_account_id <> {account} then "
        f"'account_id ' || left(__j_account_id::varchar, {_SHOWN_VALUE_CHARS}) || "
        f"' differs from the account directory ' || {_lit(json.dumps(file.account_id))} end"
    )
    outputs = ", ".join(_output(c) for c in spec.columns)
    stage.execute(
        f"""
        insert into rows
        with parsed as (
            select _row, line, from_json(line, {_lit(struct)}) as s from lines where problem is null
        ), fields as (
            select _row, line, {fields} from parsed
        ), typed as (
            select *, {values} from fields
        ), judged as (
            select *, nullif(concat_ws('; ', {", ".join(errors)}), '') as reason from typed
        )
        select {account}, {outputs}, {path}, _row, reason, case when reason is not null then line end
        from judged
        """
    )
    stage.execute("drop table lines")


def _python_lines(path: Path) -> pd.DataFrame:
    """The file's lines with their numbers, decoding each on its own (the slow, tolerant path)."""
    rows: list[int] = []
    lines: list[str] = []
    bad: list[bool] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\n")
            try:
                text, bad_utf8 = raw.decode("utf-8"), False
            except UnicodeDecodeError:
                text, bad_utf8 = raw.decode("utf-8", errors="replace"), True
            rows.append(number)
            lines.append(text.replace("\x00", "\ufffd"))
            bad.append(bad_utf8)
    return pd.DataFrame(
        {
            "_row": pd.Series(rows, dtype="int64"),
            "line": pd.Series(lines, dtype=object),
            "bad_utf8": pd.Series(bad, dtype=bool),
        }
    )


def _explain_malformed(stage: duckdb.DuckDBPyConnection) -> None:
    """Add the parser's message (position and cause) to the first malformed lines of a file."""
    rows = stage.execute(
        f"select _row, line from lines where problem = 'malformed JSON' order by _row"
        f" limit {_MAX_EXPLAINED_JSON_ERRORS}"
    ).fetchall()
    updates = []
    for row, line in rows:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            updates.append((f"malformed JSON: {exc}", row))
    if updates:
        stage.executemany("update lines set problem = ? where _row = ?", updates)


def _json_value(c: Column) -> str:
    t, x, j = f"__t_{c.name}", f"__x_{c.name}", f"__j_{c.name}"
    match c.kind:
        case Kind.TEXT:
            return f"case when {t} in {_JSON_SCALARS} then {x} end"
        case Kind.ENUM:
            choices = ", ".join(_lit(v) for v in c.choices)
            return f"case when {t} = 'VARCHAR' and lower(trim({x})) in ({choices}) then lower(trim({x})) end"
        case Kind.BOOL:
            return f"case when {t} = 'BOOLEAN' then {x} = 'true' end"
        case Kind.TIMESTAMP:
            return f"case when {t} = 'VARCHAR' then try_cast({x} as timestamptz) end"
        case Kind.DECIMAL:
            return f"case when {t} in {_JSON_SCALARS} then try_cast({x} as decimal(18,2)) end"
        case Kind.INTEGER:
            return (
                f"case when {t} in {_JSON_SCALARS} and try_cast({x} as double) = try_cast({x} as integer)"
                f" then try_cast({x} as integer) end"
            )
        case Kind.JSON_OBJECT:
            return f"case when {t} = 'OBJECT' then {j} end"
        case Kind.TEXT_LIST:
            return (
                f"case when {t} = 'ARRAY' and len(list_filter(json_type({j}, '$[*]'),"
                f" lambda e: e <> 'VARCHAR')) = 0 then from_json({j}, '[\"VARCHAR\"]') end"
            )
    raise AssertionError(c.kind)


def _json_error(c: Column) -> str:
    t, j, v = f"__t_{c.name}", f"__j_{c.name}", f"__v_{c.name}"
    return _error(c, present=f"{t} is not null", shown=f"{j}::varchar", value=v)


def _error(c: Column, *, present: str, shown: str, value: str) -> str:
    """The reason(s) a column's value is rejected, or NULL. ``value`` is its converted form."""
    expectation = f"is not one of {', '.join(c.choices)}" if c.kind is Kind.ENUM else _EXPECTATIONS[c.kind]
    invalid = (
        f"case when {present} and {value} is null then "
        f"{_lit(c.name + ': ')} || left({shown}, {_SHOWN_VALUE_CHARS}) || {_lit(' ' + expectation)} end"
    )
    if not c.required:
        return invalid
    blank = f" when trim({value}) = '' then {_lit(c.name + ' is blank')}" if c.kind is Kind.TEXT else ""
    return f"coalesce(case when not ({present}) then {_lit('missing ' + c.name)}{blank} end, {invalid})"


def _output(c: Column) -> str:
    value = f"__v_{c.name}"
    return f"coalesce({value}, false) as {c.name}" if c.default_false else f"{value} as {c.name}"


# ------------------------------------------------------------------- Parquet

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT"}
_INTEGER_TYPES |= {"UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}


def _is_nested(duck_type: str) -> bool:
    return duck_type.endswith("]") or duck_type.startswith(("STRUCT", "MAP", "UNION"))


def _is_text(duck_type: str) -> bool:
    return duck_type in ("VARCHAR", "JSON")


def _is_numeric(duck_type: str) -> bool:
    return duck_type in _INTEGER_TYPES or duck_type in _FLOAT_TYPES or duck_type.startswith("DECIMAL")


def _parquet_value(c: Column, duck_type: str) -> str | None:
    """The conversion of a Parquet column to the contract's type; None if its type cannot be read."""
    col = _ident(c.name)
    match c.kind:
        case Kind.TEXT:
            return None if _is_nested(duck_type) else f"cast({col} as varchar)"
        case Kind.ENUM:
            if _is_nested(duck_type):
                return None
            choices = ", ".join(_lit(v) for v in c.choices)
            text = f"lower(trim(cast({col} as varchar)))"
            return f"case when {text} in ({choices}) then {text} end"
        case Kind.BOOL:
            if duck_type == "BOOLEAN":
                return col
            return f"try_cast({col} as boolean)" if _is_text(duck_type) else None
        case Kind.TIMESTAMP:
            if duck_type.startswith("TIMESTAMP") or duck_type == "DATE" or _is_text(duck_type):
                return f"try_cast({col} as timestamptz)"
            return None
        case Kind.DECIMAL:
            ok = _is_numeric(duck_type) or _is_text(duck_type)
            return f"try_cast({col} as decimal(18,2))" if ok else None
        case Kind.INTEGER:
            if duck_type in _INTEGER_TYPES:
                return f"try_cast({col} as integer)"
            if _is_numeric(duck_type) or _is_text(duck_type):
                return (
                    f"case when try_cast({col} as double) = try_cast({col} as integer)"
                    f" then try_cast({col} as integer) end"
                )
            return None
        case Kind.JSON_OBJECT:
            if duck_type.startswith(("STRUCT", "MAP")):
                return f"to_json({col})"
            if _is_text(duck_type):
                return f"case when json_valid({col}) and json_type({col}) = 'OBJECT' then {col}::json end"
            return None
        case Kind.TEXT_LIST:
            if duck_type.endswith("[]") and not _is_nested(duck_type[:-2]):
                return f"cast({col} as varchar[])"
            if _is_text(duck_type):
                return (
                    f"case when json_valid({col}) and json_type({col}) = 'ARRAY' and len(list_filter("
                    f"json_type({col}::json, '$[*]'), lambda e: e <> 'VARCHAR')) = 0"
                    f" then from_json({col}, '[\"VARCHAR\"]') end"
                )
            return None
    raise AssertionError(c.kind)


def _plan_parquet(
    stage: duckdb.DuckDBPyConnection, spec: Entity, file: LandingFile
) -> tuple[str | None, str | None]:
    """``(whole-file problem, None)`` or ``(None, SELECT of every row with its reason)``."""
    source = f"read_parquet({_lit(str(file.path))})"
    try:
        described = stage.execute(f"describe select * from {source}").fetchall()
    except _OUR_MISTAKES:
        raise
    except duckdb.Error as exc:
        return _unreadable(file, exc), None
    types = {row[0]: row[1] for row in described}
    problems: list[str] = []
    values: list[str] = []
    errors: list[str] = []
    for c in spec.columns:
        duck_type = types.get(c.name)
        if duck_type is None:
            if c.required:
                problems.append(f"Parquet file has no column {c.name} (required)")
            values.append(f"null::{c.sql_type} as __v_{c.name}")
            continue
        value = _parquet_value(c, duck_type)
        if value is None:
            problems.append(f"column {c.name} has Parquet type {duck_type}, which cannot be read as {c.kind}")
            continue
        values.append(f"{value} as __v_{c.name}")
        errors.append(
            _error(
                c,
                present=f"{_ident(c.name)} is not null",
                shown=f"to_json({_ident(c.name)})::varchar",
                value=f"__v_{c.name}",
            )
        )
    if problems:
        return "; ".join(problems), None
    account = _lit(file.account_id or "")
    if "account_id" in types and not _is_nested(types["account_id"]):
        errors.append(
            f"case when cast(account_id as varchar) <> {account} then 'account_id ' || "
            f"left(to_json(account_id)::varchar, {_SHOWN_VALUE_CHARS}) || ' differs from the account "
            f"directory ' || {_lit(json.dumps(file.account_id))} end"
        )
    original = ", ".join(f"{_ident(name)} := {_ident(name)}" for name in types)
    outputs = ", ".join(_output(c) for c in spec.columns)
    select = f"""
        with typed as (
            select *, file_row_number + 1 as __row, {", ".join(values)}
            from read_parquet({_lit(str(file.path))}, file_row_number = true)
        ), judged as (
            select *, nullif(concat_ws('; ', {", ".join(errors) or "null"}), '') as reason from typed
        )
        select {account} as account_id, {outputs}, {_lit(file.relative)} as _file, __row as _row, reason,
            case when reason is not null then to_json(struct_pack({original}))::varchar end as raw_line
        from judged
    """
    return None, select


# ---------------------------------------------------------------------------- 3. publishing


def _publish(
    warehouse: Path, stage_path: Path, spec: Entity, staged: list[_Staged], loaded_at: datetime
) -> tuple[FileOutcome, ...]:
    columns = ", ".join(["account_id", *(c.name for c in spec.columns), "_file", "_row"])
    with write_connection(warehouse) as conn:
        # The rows' _loaded_at: now, holding the lock a dbt build holds too (see the module doc).
        published_at = datetime.now(UTC)
        ensure_tables(conn)
        conn.execute(f"attach {_lit(str(stage_path))} as stage (read_only)")
        try:
            conn.execute("begin transaction")
            # Decide again under the lock: another run may have recorded some of these files meanwhile.
            current: dict[str, set[str]] = {}
            for path, sha in conn.execute(
                f"select _file, sha256 from {SCHEMA}.loaded_files where entity = ?"
                " and _file in (select unnest(?::varchar[]))",
                [spec.name, [s.file.relative for s in staged]],
            ).fetchall():
                current.setdefault(path, set()).add(sha)
            outcomes: list[FileOutcome] = []
            decided: list[tuple[Any, ...]] = []
            direct: list[_Staged] = []
            for item in staged:
                shas = current.get(item.file.relative)
                if shas is not None and item.sha256 in shas:
                    continue  # loaded by a concurrent run
                if item.direct_sql is not None and _touched(item.file):
                    continue  # rewritten since it was validated: the next run judges it afresh
                rejection = item.rejection
                if shas is not None and rejection is None:
                    rejection = _CHANGED
                full = rejection is None
                if full and item.direct_sql is not None:
                    direct.append(item)
                outcome = FileOutcome(
                    file=item.file.relative,
                    account_id=item.file.account_id,
                    rows_loaded=item.rows_loaded if full else 0,
                    rows_rejected=item.rows_rejected if full else 1,
                    rejection=rejection,
                    duplicate_keys=item.duplicate_keys if full else 0,
                )
                outcomes.append(outcome)
                decided.append(
                    (
                        outcome.file,
                        outcome.account_id,
                        item.file.size_bytes,
                        item.sha256,
                        rejection,
                        outcome.rows_loaded,
                        outcome.rows_rejected,
                    )
                )
            conn.execute(
                "create or replace temp table decided (_file varchar, account_id varchar, size_bytes bigint,"
                " sha256 varchar, rejection varchar, rows_loaded bigint, rows_rejected bigint)"
            )
            if decided:
                conn.executemany("insert into decided values (?, ?, ?, ?, ?, ?, ?)", decided)
            full_files = "(select _file from decided where rejection is null)"
            conn.execute("set timezone = 'UTC'")  # the direct SELECTs read offset-less times as UTC
            for item in direct:
                conn.execute(
                    f"insert into {spec.qualified_table} ({columns}, _loaded_at)"
                    f" select {columns}, ? from ({item.direct_sql}) where reason is null",
                    [published_at],
                )
            conn.execute(
                f"insert into {spec.qualified_table} ({columns}, _loaded_at)"
                f" select {columns}, ? from stage.rows where reason is null and _file in {full_files}",
                [published_at],
            )
            conn.execute(
                f"insert into {SCHEMA}.rejections"
                " select account_id, ?, _file, _row, reason, raw_line, ? from stage.rows"
                f" where reason is not null and _file in {full_files}",
                [spec.name, published_at],
            )
            conn.execute(
                f"insert into {SCHEMA}.rejections select account_id, ?, _file, null, rejection, null, ?"
                " from decided where rejection is not null",
                [spec.name, published_at],
            )
            conn.execute(
                f"insert into {SCHEMA}.loaded_files select ?, account_id, _file, size_bytes, sha256,"
                " rows_loaded, rows_rejected, ? from decided",
                [spec.name, loaded_at],
            )
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        finally:
            conn.execute("drop table if exists decided")
            conn.execute("detach stage")
    return tuple(outcomes)


def _touched(file: LandingFile) -> bool:
    try:
        stat = file.path.stat()
    except FileNotFoundError:
        return True
    return (stat.st_size, stat.st_mtime_ns) != (file.size_bytes, file.mtime_ns)


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m connectors.recart.loader``: load the landing zone once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, default=None, help="landing root (RECART_LANDING_PATH)")
    parser.add_argument("--warehouse", type=Path, default=None, help="DuckDB file (WAREHOUSE_DUCKDB_PATH)")
    parser.add_argument("--entity", action="append", choices=sorted(ENTITIES), help="default: all")
    args = parser.parse_args(argv)
    for result in load_all(args.landing, args.warehouse, entities=args.entity).values():
        print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
