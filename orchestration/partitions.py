"""Partitions: one per connected Recart account (its Klaviyo connection), kept in step by a sensor."""

from __future__ import annotations

import dagster as dg

# Partition key = the Recart account id that owns the Klaviyo connection.
klaviyo_accounts = dg.DynamicPartitionsDefinition(name="klaviyo_accounts")
