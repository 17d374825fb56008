"""Fixtures for the Recart landing-zone tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recart.landing_helpers import Landing


@pytest.fixture
def landing(tmp_path: Path) -> Landing:
    """An empty landing zone and warehouse under ``tmp_path``."""
    return Landing(tmp_path / "landing", tmp_path / "warehouse.duckdb")
