"""Shared fixture: the smoke workflow run once per session (helpers in snakemake_runner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from snakemake_runner import run_snakemake


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory) -> Path:
    """A working directory in which the whole smoke DAG (`rule all` of config/smoke.yaml) has run once."""
    workdir = tmp_path_factory.mktemp("smoke")
    run_snakemake(workdir, "--cores", "2")
    return workdir
