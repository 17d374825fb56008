"""Recart demo data at scale: how long generating and loading take, next to DuckDB's bare copy.

Generates the landing zone at ``--scale`` (default ``100k``: 100k subscribers, 1M orders; ``1m``
is 1M subscribers and 10M orders), loads it with ``connectors.recart.loader`` (validation, a
rejection for every unreadable row, each file once) and, for the comparison, copies the same
Parquet files into a second DuckDB file with a bare ``create table … as select * from
read_parquet(…)``: the ceiling of reading and storing those rows on this machine. The ratio is
what validation and bookkeeping cost. A second load shows the idle re-run.

Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import duckdb

from connectors.recart.demo_data import SCALES, generate
from connectors.recart.loader import load_all

BIG = ("orders", "order_lines")


def bare_copy(landing: Path, warehouse: Path) -> tuple[int, float]:
    """Rows and seconds of copying the orders and lines Parquet files as they are (no validation,
    no bookkeeping, no JSON Lines)."""
    started = time.monotonic()
    rows = 0
    con = duckdb.connect(str(warehouse))
    try:
        for entity in BIG:
            glob = str(landing / "recart" / entity / "*" / "*.parquet")
            con.execute(f"create table {entity} as select * from read_parquet('{glob}')")
            rows += con.execute(f"select count(*) from {entity}").fetchone()[0]
    finally:
        con.close()
    return rows, time.monotonic() - started


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="100k")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recart-bench-") as tmp:
        work = args.keep or Path(tmp)
        landing = work / "landing"
        summary = generate(landing, scale=args.scale, overwrite=True)
        print(f"generated {summary.rows} in {summary.seconds:.1f}s", flush=True)

        started = time.monotonic()
        results = load_all(landing, work / "warehouse.duckdb")
        load_seconds = time.monotonic() - started
        for result in results.values():
            print(json.dumps(result.summary()), flush=True)
        big_rows = sum(results[name].rows_loaded for name in BIG)
        big_seconds = sum(results[name].seconds for name in BIG)
        started = time.monotonic()
        idle = load_all(landing, work / "warehouse.duckdb")
        rerun_seconds = time.monotonic() - started
        assert all(r.rows_loaded == 0 for r in idle.values()), "a re-run must load nothing"

        bare_rows, bare_seconds = bare_copy(landing, work / "bare.duckdb")
        figures = {
            "scale": args.scale,
            "generate_seconds": round(summary.seconds, 1),
            "rows_generated": sum(summary.rows.values()),
            "load_seconds": round(load_seconds, 1),
            "rows_loaded": sum(r.rows_loaded for r in results.values()),
            "write_lock_seconds": round(sum(r.write_seconds for r in results.values()), 1),
            "rerun_seconds": round(rerun_seconds, 2),
            "orders_and_lines_rows": big_rows,
            "orders_and_lines_seconds": round(big_seconds, 1),
            "bare_copy_rows": bare_rows,
            "bare_copy_seconds": round(bare_seconds, 1),
            "loader_vs_bare_copy": round(big_seconds / max(bare_seconds, 1e-9), 2),
        }
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
