"""Opening the warehouse's DuckDB file safely from many processes.

DuckDB lets one process write a file at a time, and while it writes, readers in other processes
fail too ("Could not set lock on file … Conflicting lock is held"). Dagster runs each account's
sync in its own process, so every write goes through ``write_connection()``: a cross-process file
lock (``fcntl``) serialises the short write windows, and opening is retried while another process
(a dbt run, a notebook) holds DuckDB's own lock. Reads use ``read_connection()`` with the same
retries. The API extraction never happens inside these windows.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

# dbt keeps the file open for a whole build (profiles.yml keep_open), about a minute at 1M
# subscribers: readers and writers wait a build out rather than fail.
LOCK_RETRY_SECONDS = 30 * 60.0


def default_path() -> Path:
    """The warehouse file: ``WAREHOUSE_DUCKDB_PATH`` or ``.state/warehouse.duckdb``."""
    return Path(os.environ.get("WAREHOUSE_DUCKDB_PATH", ".state/warehouse.duckdb"))


def _connect(path: Path, read_only: bool, deadline: float) -> duckdb.DuckDBPyConnection:
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextmanager
def write_lock(path: Path | str | None = None, timeout: float = LOCK_RETRY_SECONDS) -> Iterator[Path]:
    """Hold the warehouse's cross-process write lock (``<file>.writelock``) for the block.

    Every writer takes it: our loads through ``write_connection`` and dbt runs around the CLI.
    """
    path = Path(path) if path is not None else default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path.with_suffix(path.suffix + ".writelock"), "a+") as lock_file:
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {timeout:.0f}s for the warehouse write lock on {path}"
                    ) from None
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def write_connection(
    path: Path | str | None = None, timeout: float = LOCK_RETRY_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection held under the warehouse's cross-process write lock.

    Keep the block short: fetch from APIs before entering it.
    """
    deadline = time.monotonic() + timeout
    with write_lock(path, timeout) as locked:
        conn = _connect(locked, read_only=False, deadline=deadline)
        try:
            yield conn
        finally:
            conn.close()


@contextmanager
def read_connection(
    path: Path | str | None = None, timeout: float = LOCK_RETRY_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection, retried while a writer holds the file."""
    path = Path(path) if path is not None else default_path()
    if not path.exists():  # a read-only open cannot create the file
        with write_connection(path, timeout):
            pass
    conn = _connect(path, read_only=True, deadline=time.monotonic() + timeout)
    try:
        yield conn
    finally:
        conn.close()
