"""Recart's app data: the landing zone (JSON Lines / Parquet change export) and its raw tables.

``models`` holds the raw-table contract, ``landing`` finds landing files, ``loader`` loads them into
DuckDB (each file once, every unreadable row rejected with a reason), ``demo_data`` writes a
deterministic landing zone for the demo shops. No Dagster here: ``orchestration.assets.recart``
wraps these as assets.
"""
