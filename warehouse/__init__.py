"""The warehouse's own storage logic (DuckDB): safe multi-process access and the Klaviyo
membership history. No Dagster and no HTTP here: ``orchestration`` calls into it."""
