"""Runs for different accounts in parallel processes share one DuckDB file without lock failures."""

from __future__ import annotations

import multiprocessing

import dagster as dg

from orchestration.assets.klaviyo import klaviyo_segment_sync
from orchestration.partitions import klaviyo_accounts
from orchestration.resources import KlaviyoResource, WarehouseResource


def _run_partition(klaviyo_config: dict, warehouse_path: str, partition: str, queue) -> None:
    """In a child process: materialize one account's sync (as Dagster's multiprocess executor would)."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(klaviyo_accounts.name, [partition])
    result = dg.materialize(
        [klaviyo_segment_sync],
        resources={
            "klaviyo": KlaviyoResource(**klaviyo_config),
            "warehouse": WarehouseResource(path=warehouse_path),
        },
        partition_key=partition,
        instance=instance,
        raise_on_error=False,
    )
    errors = [str(e.event_specific_data.error) for e in result.get_step_failure_events()]
    queue.put((partition, result.success, errors))


def test_two_accounts_sync_in_parallel_processes(world):
    world.connect("shop-a", 0)
    world.connect("shop-b", 1)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    config = world.klaviyo.model_dump()
    processes = [
        context.Process(target=_run_partition, args=(config, world.warehouse.path, shop, queue))
        for shop in ("shop-a", "shop-b")
    ]
    for process in processes:
        process.start()
    outcomes = sorted(queue.get(timeout=240) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert outcomes == [("shop-a", True, []), ("shop-b", True, [])]
    store = world.running.sandbox.store
    with world.warehouse.read() as conn:
        counts = dict(
            conn.execute(
                "select account_id, count(*) from klaviyo.raw_group_members where valid_to is null group by 1"
            ).fetchall()
        )
    for shop, index in (("shop-a", 0), ("shop-b", 1)):
        account = store.accounts[world.accounts[index]["id"]]
        expected = sum(len(g.members) for g in (*account.segments.values(), *account.lists.values()))
        assert counts[shop] == expected
