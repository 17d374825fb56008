# make demo · make test — each bootstraps .venv from uv.lock on a clean checkout.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export UV_SYSTEM_CERTS ?= 1
export UV_COMPILE_BYTECODE ?= 1
export DBT_SEND_ANONYMOUS_USAGE_STATS ?= false

.PHONY: dbt-parse demo dev test test-all lint lint-sql sandbox bench venv browser clean

venv: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv sync --frozen --extra dev
	@touch $@

dbt-parse: venv  ## dbt's manifest, which the Dagster definitions read at import (parsed when stale)
	$(BIN)/python -m orchestration.dbt_manifest

demo: venv dbt-parse  ## the main job end to end on the embedded default: sandbox, OAuth, Dagster sync into DuckDB
	$(BIN)/python -m orchestration.demo

browser:
	@scripts/ensure-chromium.sh

test: venv browser dbt-parse  ## the test suite (heavy scenarios are marked `integration` and run in `make test-all`)
	$(BIN)/pytest -m "not integration" -q

test-all: venv browser dbt-parse
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# sqlfluff's dbt templater lives in its own venv: sqlfluff-templater-dbt would move the project's
# click. Pinned to the project's dbt (pyproject.toml); the venv is rebuilt when these pins change.
SQLFLUFF_VENV := .venv-sqlfluff
SQLFLUFF_PINS := sqlfluff==4.4.0 sqlfluff-templater-dbt==4.4.0 dbt-core==1.11.16 dbt-duckdb==1.11.1

$(SQLFLUFF_VENV)/.synced: Makefile
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	rm -rf $(SQLFLUFF_VENV)
	uv venv --quiet --python 3.11 $(SQLFLUFF_VENV)
	uv pip install --quiet --python $(SQLFLUFF_VENV) $(SQLFLUFF_PINS)
	@touch $@

# Run from the project folder: sqlfluff takes the templater only from the working directory's .sqlfluff.
lint-sql: $(SQLFLUFF_VENV)/.synced  ## sqlfluff (dbt templater, dbt_project/.sqlfluff) on the dbt project
	cd dbt_project && WAREHOUSE_DUCKDB_PATH=:memory: ../$(SQLFLUFF_VENV)/bin/sqlfluff lint . --processes 2

sandbox: venv  ## serve the sandbox on 127.0.0.1:8765 until Ctrl-C
	$(BIN)/klaviyo-sandbox serve --seed demo --port 8765

dev: venv dbt-parse  ## after `make demo`: serve the demo's sandbox world and open Dagster on the demo warehouse
	@test -f .env || { echo "run 'make demo' first (it writes .env)"; exit 1; }
	set -m; $(BIN)/klaviyo-sandbox serve --seed demo --port 8765 --state .state/demo/sandbox.json & \
	  trap 'kill -INT $$!' EXIT; set -a; . ./.env; set +a; $(BIN)/dg dev -w workspace.yaml -p 3000

bench: venv dbt-parse  ## every benchmark (about 17 minutes); each ends with one JSON line of figures
	$(BIN)/python bench/sandbox_throughput.py
	$(BIN)/python bench/extract_members.py
	$(BIN)/python bench/segment_sync.py
	$(BIN)/python bench/dbt_build.py
	$(BIN)/python bench/subscriber_push.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
