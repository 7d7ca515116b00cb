"""Run the repository's Snakemake workflow from tests (bounded by a timeout, in a given working directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(workdir: Path, *args: str, configfile: str | Path = REPO / "config" / "smoke.yaml",
                  timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile with ``workdir`` as working directory (bounded by ``timeout``)."""
    cmd = [*SNAKEMAKE, *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile)]
    env = dict(os.environ, WEIGHTFLOW_PROGRESS="0")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
