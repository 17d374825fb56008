"""The dbt project's tests: the manifest, a scenario warehouse, and ways to run dbt against it.

``@dbt_assets`` reads dbt's manifest when ``orchestration.assets.dbt`` is imported; the root
``tests/conftest.py`` runs ``dbt parse`` once per session when the manifest is missing or stale.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from warehouse_scenario import AS_OF, build_warehouse

from orchestration.dbt_manifest import DBT_PROJECT_DIR, dbt_location_args, run_dbt

# The scenario's second account reads national phone numbers as British.
SCENARIO_VARS = json.dumps({"as_of": AS_OF.isoformat(), "phone_default_countries": {"brit": "GB"}})

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


@dataclass
class BuiltWarehouse:
    """The scenario warehouse after one full ``dbt build``."""

    path: Path
    build: subprocess.CompletedProcess[str]

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        conn = duckdb.connect(str(self.path), read_only=True)
        try:
            conn.execute("set timezone = 'UTC'")
            return conn.execute(sql, params or []).fetchall()
        finally:
            conn.close()

    def copy(self, to: Path) -> Path:
        """A copy of the built warehouse file to change freely."""
        shutil.copyfile(self.path, to)
        return to


@pytest.fixture(scope="session")
def built_warehouse(tmp_path_factory: pytest.TempPathFactory) -> BuiltWarehouse:
    """The scenario's raw tables, then ``dbt build`` (models, data tests, unit tests) as of AS_OF."""
    work = tmp_path_factory.mktemp("dbt_build")
    database = work / "warehouse.duckdb"
    build_warehouse(database)
    build = run_dbt(["build", "--vars", SCENARIO_VARS], database, work)
    return BuiltWarehouse(database, build)


@pytest.fixture
def dbt_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., bool]]:
    """Run dbt in this process (no 4 s start-up per call) against a database of the caller's choice,
    as Dagster's builds do (``run_dbt_in_process``: the file is released after each call, so the
    test can read it in between). ``last_result`` keeps dbt's result of the last call.
    """
    from orchestration.assets.dbt import run_dbt_in_process

    def invoke(args: list[str], database: Path, project_dir: Path = DBT_PROJECT_DIR) -> bool:
        location = dbt_location_args(tmp_path / "target", project_dir, log_path=tmp_path / "logs")
        monkeypatch.setenv("WAREHOUSE_DUCKDB_PATH", str(database))
        run = run_dbt_in_process([*args, "--quiet", *location])
        invoke.last_result = run.result  # type: ignore[attr-defined]
        return run.success

    yield invoke
