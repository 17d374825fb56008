"""The dbt manifest that ``@dbt_assets`` reads at import: is it stale, and parse it; the folders
of one dbt invocation (``dbt_location_args``, for every way this project runs dbt); and dbt as a
subprocess against a database of the caller's choice (tests, benchmarks).

Kept apart from ``orchestration.assets.dbt`` because that module cannot even be imported without
the manifest. ``python -m orchestration.dbt_manifest`` (``make dbt-parse``) parses when stale.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"
MANIFEST = DBT_PROJECT_DIR / "target" / "manifest.json"
# The venv's dbt, whether or not the venv's bin is on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))
DBT_PARSE_COMMAND = [
    DBT_EXECUTABLE,
    "parse",
    "--quiet",
    "--project-dir",
    str(DBT_PROJECT_DIR),
    "--profiles-dir",
    str(DBT_PROJECT_DIR),
]
_NOT_SOURCES = {"target", "logs", "dbt_packages"}


def manifest_is_stale() -> bool:
    """True when the manifest is missing or older than a file of the dbt project."""
    if not MANIFEST.exists():
        return True
    built = MANIFEST.stat().st_mtime
    for folder, dirs, files in os.walk(DBT_PROJECT_DIR):
        dirs[:] = [d for d in dirs if d not in _NOT_SOURCES and not d.startswith(".")]
        if any(Path(folder, name).stat().st_mtime > built for name in files):
            return True
    return False


def parse_if_stale() -> bool:
    """Run ``dbt parse`` (no database needed) when the manifest is stale; True when it ran."""
    if not manifest_is_stale():
        return False
    subprocess.run(
        DBT_PARSE_COMMAND,
        check=True,
        cwd=DBT_PROJECT_DIR.parent,
        env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
    )
    return True


def dbt_location_args(
    target_path: Path, project_dir: Path = DBT_PROJECT_DIR, log_path: Path | None = None
) -> list[str]:
    """dbt's folders for one invocation: the project (its ``profiles.yml`` beside it), the target
    folder, and the log folder (the target folder unless given; ``dbt.log`` as JSON lines)."""
    return [
        "--project-dir", str(project_dir),
        "--profiles-dir", str(project_dir),
        "--target-path", str(target_path),
        "--log-path", str(log_path or target_path),
        "--log-format-file", "json",
        "--no-use-colors",
    ]  # fmt: skip


def run_dbt(
    args: list[str], database: Path, work: Path, project_dir: Path = DBT_PROJECT_DIR, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``dbt <args>`` in a subprocess with the project's own profile, against the DuckDB ``database``.

    Artifacts and logs go to ``work``, so the repository's manifest is left alone. (Dagster's
    builds run dbt in their own process instead: ``orchestration.assets.dbt.run_dbt_in_process``.)
    """
    return subprocess.run(
        [DBT_EXECUTABLE, *args, *dbt_location_args(work / "target", project_dir, log_path=work / "logs")],
        capture_output=True,
        text=True,
        cwd=DBT_PROJECT_DIR.parent,
        timeout=timeout,
        env={**os.environ, "WAREHOUSE_DUCKDB_PATH": str(database), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
    )


if __name__ == "__main__":
    print("dbt manifest parsed" if parse_if_stale() else "dbt manifest up to date")
