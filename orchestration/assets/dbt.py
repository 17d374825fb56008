"""The dbt project (``dbt_project/``) as Dagster assets: one asset per model, dbt tests as checks.

(No ``from __future__ import annotations`` here: Dagster reads the parameter annotations.)

- Asset keys mirror warehouse tables: a model is ``[<schema>, <model>]`` (``marts/segment_members``),
  a source is ``[<source>, <table>]`` — ``recart/raw_subscribers``, ``klaviyo/raw_group_members`` —,
  i.e. the very assets the loaders define, so lineage needs no extra mapping.
- Groups come from the folder: ``staging``, ``intermediate``, ``marts``, ``segments``.
- ``@dbt_assets`` reads ``dbt_project/target/manifest.json`` when this module is imported, so a
  build step makes it first (Makefile, CI, the tests' conftest):
  ``.venv/bin/dbt parse --quiet --project-dir dbt_project --profiles-dir dbt_project``
  (``DBT_PARSE_COMMAND``; parsing needs no database). Under ``dg dev`` the manifest is re-parsed
  only when a project file is newer than it: ``dg`` sets ``DAGSTER_IS_DEV_CLI`` in every process,
  and an unguarded ``prepare_if_dev()`` would re-parse in every step process.
- dbt writes the same DuckDB file as the loaders and dbt-duckdb does not wait for a writer, so a
  build runs under the warehouse's cross-process write lock (``<db>.writelock``, the lock
  ``warehouse.duckdb_file.write_connection`` takes): syncs wait for the build, the build waits for
  a sync's short write window (``warehouse.duckdb_file.write_lock``). The profile also retries
  opening while a reader holds the file.
- dbt runs in the step's own process (``run_dbt_in_process``: dbt's programmatic ``dbtRunner``, as
  Astronomer Cosmos does), not as dagster-dbt's ``dbt`` subprocess. The step process has already
  imported dbt (loading these definitions does), and the subprocess path cost ~5.5 s before any
  SQL: ``dbt --version`` (dagster-dbt asks, 2.1 s), an adapter set up in this process, then a
  second Python importing dbt again (3.3 s for a one-view build). In process the same build takes
  1.3-1.6 s. dagster-dbt still does the rest: which dbt nodes a Dagster selection means
  (``get_updated_cli_invocation_params_for_context``), and dbt's result events to Dagster
  outputs and asset checks (``DbtCoreCliEventMessage``), from the same event dicts its subprocess
  reader parses out of dbt's JSON log lines.
- dbt re-parses the whole project (~2 s) unless it finds its saved parse
  (``<target>/partial_parse.msgpack``) made with the same profile (the DuckDB path is part of it)
  and the same ``--vars``. So each warehouse gets its own, lasting target folder
  (``dbt_target_path``), and ``as_of`` reaches dbt as the environment variable ``RECART_AS_OF``
  (read only at execution time, ``dbt_project/macros/as_of.sql``), not ``--vars``.
"""

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtProject, dbt_assets

# Not public API (their versions are pinned by uv.lock): Dagster's SIGINT-to-exception helper, and
# the two pieces of dagster-dbt's own `DbtCliResource.cli` that map a Dagster selection to dbt's
# and dbt's result events to Dagster's. Reusing them keeps the in-process build's behaviour the
# subprocess's.
from dagster._utils.interrupts import raise_interrupts_as  # isort: skip
from dagster_dbt.asset_utils import DBT_INDIRECT_SELECTION_ENV, get_updated_cli_invocation_params_for_context
from dagster_dbt.core.dbt_cli_event import DbtCoreCliEventMessage

from orchestration.dbt_manifest import (
    DBT_EXECUTABLE,
    DBT_PARSE_COMMAND,
    DBT_PROJECT_DIR,
    dbt_location_args,
    manifest_is_stale,
)
from orchestration.resources import WarehouseResource
from warehouse.duckdb_file import write_lock

# A daily build waits this long for a sync's write window (those are seconds long).
WRITE_LOCK_TIMEOUT_SECONDS = 30 * 60
SEGMENTS_FOLDER = "segments"
SEGMENT_MEMBERS = "segment_members"
SEGMENT_MEMBERS_KEY = dg.AssetKey(["marts", SEGMENT_MEMBERS])

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)


@contextmanager
def _venv_on_path() -> Iterator[None]:
    """dagster-dbt's preparer runs ``dbt`` from PATH: make it the venv's while it does."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(DBT_EXECUTABLE).parent), before])
    try:
        yield
    finally:
        os.environ["PATH"] = before


# Only under `dg dev` (prepare_if_dev checks DAGSTER_IS_DEV_CLI), and only when something changed.
if manifest_is_stale():
    with _venv_on_path():
        dbt_project.prepare_if_dev()
if not dbt_project.manifest_path.exists():
    raise FileNotFoundError(
        f"{dbt_project.manifest_path} is missing: run `{' '.join(DBT_PARSE_COMMAND)}` "
        "(make dbt-parse) before loading the Dagster definitions."
    )


class WarehouseDbtTranslator(DagsterDbtTranslator):
    """Keys that mirror warehouse tables, groups from the folder, and segment lineage."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            # The loaders' own assets: recart/raw_subscribers, klaviyo/raw_groups, ...
            return dg.AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        return dg.AssetKey(
            [dbt_resource_props["schema"], dbt_resource_props.get("alias") or dbt_resource_props["name"]]
        )

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        fqn = dbt_resource_props.get("fqn") or []
        return fqn[1] if len(fqn) > 2 else None  # staging / intermediate / marts / segments

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props["resource_type"] == "model" and props["name"] == SEGMENT_MEMBERS:
            # segment_members inlines every segment model (found through dbt's graph at run time,
            # which dbt's own dependencies cannot express): show them as its upstream.
            segments = [
                self.get_asset_key(node)
                for node in manifest["nodes"].values()
                if node["resource_type"] == "model"
                and len(node["fqn"]) > 2
                and node["fqn"][1] == SEGMENTS_FOLDER
            ]
            known = {dep.asset_key for dep in spec.deps}
            spec = spec.merge_attributes(deps=[key for key in segments if key not in known])
        return spec


class DbtBuildConfig(dg.Config):
    """Run config of a build (all optional)."""

    full_refresh: bool = False  # rebuild incremental models from scratch
    # Judge "now" at this ISO time (segments, outdated groups); default: the run's start. Reaches dbt
    # as RECART_AS_OF, which dbt_project/macros/as_of.sql checks.
    as_of: str | None = None


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_args(config: DbtBuildConfig) -> list[str]:
    """The dbt command line of a build (no ``--vars``: a new value costs a full re-parse).

    Unit tests are left out: they test the SQL on fixed inputs, not the data, so they belong to
    development and CI (``make test`` runs them: ``tests/dbt``), not to every production build.
    """
    args = ["build", "--exclude-resource-type", "unit_test"]
    if config.full_refresh:
        args.append("--full-refresh")
    return args


def build_environment(config: DbtBuildConfig, database: Path) -> dict[str, str]:
    """The environment of a build's dbt process: the warehouse, and ``as_of`` as ``RECART_AS_OF``.

    Empty when not given (the macro then takes the run's start), so that a ``RECART_AS_OF`` left in
    this process's own environment cannot change what a build without ``as_of`` means.
    """
    return {
        # dbt runs in the project folder: give it the warehouse as an absolute path.
        "WAREHOUSE_DUCKDB_PATH": str(database),
        "RECART_AS_OF": config.as_of or "",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def dbt_target_path(database: Path) -> Path:
    """dbt's target folder for builds of ``database`` (a resolved path): the same one every run.

    The DuckDB path is part of the profile that dbt checks before reusing a saved parse, so a
    parse made for another warehouse (dagster-dbt's default: a fresh folder per run with a copy of
    ``target/partial_parse.msgpack``) meant a parse from scratch on every build. In its own lasting
    folder dbt reuses the parse it saved on the previous build of that warehouse (and re-parses
    only changed files). dbt also writes its artifacts here (``manifest.json``,
    ``run_results.json``, compiled SQL: dagster-dbt reads them through ``target_path``) and
    ``dbt.log`` (JSON lines, rotated by dbt).
    """
    digest = hashlib.sha256(str(database).encode()).hexdigest()[:12]
    return dbt_project.project_dir / dbt_project.target_path / f"warehouse-{digest}"


# dbt's events that carry a node's result: dagster-dbt turns these into outputs and checks.
RESULT_EVENTS = frozenset({"LogModelResult", "LogTestResult", "LogSeedResult", "LogSnapshotResult"})


@dataclass
class DbtRun:
    """What one in-process dbt invocation did: dbt's own result, and what its events said."""

    result: Any  # dbt's dbtRunnerResult: success, result (the nodes' results), exception
    # each node's result event as a dict, the shape of a line of dbt's JSON log
    result_events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # dbt's error-level messages

    @property
    def success(self) -> bool:
        """Whether dbt succeeded (every node passed or warned)."""
        return bool(self.result.success)

    @property
    def interrupt(self) -> BaseException | None:
        """Ctrl-C or a terminated Dagster run (dbt returns even that as its result's exception):
        dbt cancelled its query and stopped; the caller reports what finished and raises this."""
        exception = self.result.exception
        return None if exception is None or isinstance(exception, Exception) else exception

    def failure(self) -> str:
        """Why it failed, for a Dagster failure: dbt's error messages, or what stopped dbt itself."""
        stopped = self.result.exception
        reasons = self.errors or ([repr(stopped)] if stopped is not None else [])
        return "dbt build failed:\n" + "\n".join(reasons or ["(dbt reported no reason)"])


def run_dbt_in_process(args: Sequence[str]) -> DbtRun:
    """``dbt <args>`` in this process, with dbt's programmatic runner; the environment is read now.

    dbt keeps its DuckDB connection open for the whole invocation (``keep_open``); it is closed
    here afterwards, so that the warehouse file is free for other processes once this returns.

    An interrupt (SIGINT: Ctrl-C, or Dagster terminating the run) reaches dbt as the
    KeyboardInterrupt it handles — it cancels the running query and stops its worker — not as
    Dagster's own interrupt error, which dbt would not recognise. It comes back in ``interrupt``
    (with the results of the nodes that finished) for the caller to raise again.
    """
    from dbt.cli.main import dbtRunner  # the rest of dbt came with the definitions: 0.14 s more
    from dbt_common.events.functions import msg_to_dict

    events: list[dict[str, Any]] = []
    errors: list[str] = []

    def collect(message: Any) -> None:  # called from dbt's worker threads: list appends only
        if message.info.name in RESULT_EVENTS:
            events.append(msg_to_dict(message))
        elif message.info.level == "error":
            errors.append(message.info.msg)

    try:
        with raise_interrupts_as(KeyboardInterrupt):
            result = dbtRunner(callbacks=[collect]).invoke(list(args))
    finally:
        _close_dbt_duckdb_connection()
    return DbtRun(result, events, errors)


def _close_dbt_duckdb_connection() -> None:
    """Close the DuckDB database dbt-duckdb keeps for the process (its own cleanup only drops it)."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with DuckDBConnectionManager._LOCK:
        environment = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
        if environment is not None:
            environment.close()


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=WarehouseDbtTranslator(),
    pool="warehouse_dbt",
)
def warehouse_dbt_assets(
    context: dg.AssetExecutionContext,
    config: DbtBuildConfig,
    warehouse: WarehouseResource,
):
    """``dbt build`` of the selected models with their data tests, in this process, under the write lock.

    dbt's unit tests are not run here (they run in development and CI: ``make test``); data tests
    are, and each becomes an asset check. The nodes' outputs and checks are reported when dbt is
    done (a failed build reports the nodes that succeeded, then fails naming dbt's errors).
    """
    database = Path(warehouse.path).resolve()
    target_path = dbt_target_path(database)
    # The dbt nodes this Dagster selection means, as dagster-dbt's own `dbt.cli` would compute
    # them (a large selection becomes a selector file in a temporary copy of the project).
    selection = get_updated_cli_invocation_params_for_context(
        context=context, manifest={}, dagster_dbt_translator=WarehouseDbtTranslator()
    )
    project_dir = Path(selection.dbt_project.project_dir) if selection.dbt_project else DBT_PROJECT_DIR
    environment = build_environment(config, database)
    if selection.indirect_selection:
        environment[DBT_INDIRECT_SELECTION_ENV] = selection.indirect_selection
    args = [*build_args(config), *selection.selection_args, *dbt_location_args(target_path, project_dir)]
    context.log.info(f"dbt {' '.join(args)}")
    # The lock is held from before dbt starts until it is done: two builds of one warehouse never
    # overlap, so they can share one target folder (partial_parse.msgpack, run_results.json).
    with write_lock(database, timeout=WRITE_LOCK_TIMEOUT_SECONDS), _environment(**environment):
        run = run_dbt_in_process(args)
    events = (
        event
        for raw_event in run.result_events
        for event in DbtCoreCliEventMessage(raw_event, event_history_metadata={}).to_default_asset_events(
            manifest=selection.manifest,
            dagster_dbt_translator=selection.dagster_dbt_translator,
            context=context,
            target_path=target_path,
            project=dbt_project,
        )
    )
    yield from segment_members_last(context, events)
    if run.interrupt is not None:
        raise run.interrupt
    if not run.success:
        raise dg.Failure(description=run.failure())


def segment_members_last(context: dg.AssetExecutionContext, events: Iterable[Any]) -> Iterator[Any]:
    """Hold back segment_members' events until the stream ends.

    Dagster wants a multi-asset's outputs in topological order, and segment_members is downstream
    of every segment model here (see the translator) while dbt, which does not know that, may
    build it before some of them (it inlines their code, so its result is the same either way).
    """
    held = []
    for event in events:
        if isinstance(event, dg.Output):
            key = context.assets_def.keys_by_output_name.get(event.output_name)
        else:
            key = getattr(event, "asset_key", None)
        if key == SEGMENT_MEMBERS_KEY:
            held.append(event)
        else:
            yield event
    yield from held
