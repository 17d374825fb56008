"""dbt inside the Dagster step's process (``run_dbt_in_process``): a terminated run stops dbt cleanly.

Dagster terminates a run with SIGINT. dbt, running in the step's process, must see it as the
KeyboardInterrupt it handles (cancel the query, stop its worker), the nodes that finished must
still be reported, and the warehouse file must be free afterwards for other processes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestration.assets import dbt as dbt_assets
from tests.dbt.warehouse_scenario import AS_OF, build_warehouse


def _interrupt_after_nodes(log: Path, nodes: int, timeout: float = 120) -> threading.Thread:
    """SIGINT this process once dbt's log shows node number ``nodes`` starting."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        pattern = re.compile(rf'"msg": "{nodes} of \d+ START')
        while time.monotonic() < deadline:
            if log.exists() and pattern.search(log.read_text(errors="replace")):
                signal.raise_signal(signal.SIGINT)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_terminating_a_dbt_build_stops_dbt_reports_finished_nodes_and_frees_the_file(
    tmp_path: Path, materialize_dbt
):
    database = (tmp_path / "warehouse.duckdb").resolve()
    build_warehouse(database)
    log = dbt_assets.dbt_target_path(database) / "dbt.log"
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append("outside dbt"))  # never pytest's
    try:
        watcher = _interrupt_after_nodes(log, nodes=30)
        result = materialize_dbt(database, AS_OF)
        watcher.join(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == []  # the signal arrived while dbt ran
    assert not result.success
    materialized = result.get_asset_materialization_events()
    assert 0 < len(materialized) < 33  # what finished before the interrupt is reported, not more
    # dbt's node threads are gone, and its DuckDB connection with them
    assert not [t for t in threading.enumerate() if t.name.endswith("(worker)")]
    write = "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('create table t (i int)')"
    writer = subprocess.run([sys.executable, "-c", write, str(database)], capture_output=True, text=True)
    assert writer.returncode == 0, writer.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
