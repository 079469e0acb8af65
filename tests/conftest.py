"""Shared test helpers: temporary suites and results folders, the shared real data."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FLOWBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def write_suite(tmp_path):
    """write_suite(text, name="t") -> path of a suite file with that YAML (dedented)."""

    def write(text: str, name: str = "t") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def results(tmp_path) -> Path:
    return tmp_path / "results"
