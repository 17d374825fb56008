"""Helpers for the Recart landing-zone tests: real files in ``tmp_path``, a real DuckDB warehouse."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb

from warehouse.duckdb_file import read_connection


class Landing:
    """A landing zone under ``tmp_path`` and the warehouse file beside it."""

    def __init__(self, root: Path, warehouse: Path) -> None:
        self.root = root
        self.warehouse = warehouse

    def path(self, entity: str, account: str | None, name: str) -> Path:
        """Where a file lands (``account=None``: directly under the entity folder)."""
        folder = self.root / "recart" / entity
        if account is not None:
            folder = folder / account
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def jsonl(
        self, entity: str, account: str | None, name: str, lines: Iterable[dict[str, Any] | str]
    ) -> Path:
        """Write JSON Lines; strings are written verbatim (for broken lines)."""
        path = self.path(entity, account, name)
        text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        path.write_text(text, encoding="utf-8")
        return path

    def parquet(self, entity: str, account: str | None, name: str, query: str) -> Path:
        """Write the result of a DuckDB query as Parquet."""
        path = self.path(entity, account, name)
        con = duckdb.connect()
        try:
            con.execute("set timezone = 'UTC'")
            con.execute(f"copy ({query}) to '{path}' (format parquet)")
        finally:
            con.close()
        return path

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows from the warehouse."""
        with read_connection(self.warehouse) as conn:
            return conn.execute(sql, params or []).fetchall()


def subscriber(subscriber_id: str, **fields: Any) -> dict[str, Any]:
    """A valid subscriber record with overrides."""
    return {"subscriber_id": subscriber_id, "updated_at": "2026-01-02T03:04:05Z", **fields}
