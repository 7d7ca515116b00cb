"""Run one pipeline stage the same way from Snakemake, a notebook or a test.

A *stage* is a function ``fn(job: StageJob) -> None`` in a weightflow module (e.g.
``weightflow.ensemble.train_stage``).  Snakemake rules call the single script ``workflow/scripts/stage.py``,
which calls :func:`run_stage` with the job's inputs, outputs, params, wildcards, threads and log file.
:func:`run_stage` sets torch's thread count and the allocator (:func:`weightflow.utils.keep_freed_memory`),
routes ``logging``, warnings and progress bars to the log file, times the stage, and re-raises errors after
logging them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from weightflow.utils import keep_freed_memory

__all__ = ["StageJob", "run_stage", "resolve_stage", "benchmark_seconds"]

log = logging.getLogger("weightflow")


@dataclass
class StageJob:
    """What a stage gets: named input/output paths, params (the experiment config and more), wildcards."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    wildcards: dict[str, str] = field(default_factory=dict)
    threads: int = 1

    def output_path(self, name: str) -> Path:
        path = Path(self.outputs[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def resolve_stage(name: str) -> Callable[[StageJob], None]:
    """``'weightflow.ensemble.train_stage'`` → the function."""
    module, _, attr = name.rpartition(".")
    if not module.startswith("weightflow"):
        raise ValueError(f"stage {name!r} is not a weightflow function")
    return getattr(importlib.import_module(module), attr)


@contextlib.contextmanager
def _log_to(path: str | Path | None):
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(logging.INFO)
        logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting is chatty
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
                yield
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(old_level)


def run_stage(stage: str, job: StageJob, log_file: str | Path | None = None) -> None:
    """Run stage ``stage`` on ``job``, logging to ``log_file`` (stderr when None)."""
    fn = resolve_stage(stage)
    torch.set_num_threads(max(1, int(job.threads)))
    kept = keep_freed_memory()
    with _log_to(log_file):
        log.info("stage %s: wildcards=%s threads=%d, allocator keeps freed memory: %s", stage, job.wildcards,
                 job.threads, kept)
        start = time.perf_counter()
        try:
            fn(job)
        except Exception:
            log.exception("stage %s failed", stage)
            raise
        log.info("stage %s finished in %.1f s", stage, time.perf_counter() - start)
    if log_file is not None:
        print(f"weightflow: {stage} {job.wildcards} done (log: {log_file})", file=sys.stderr)


def benchmark_seconds(paths: Iterable[str | Path]) -> tuple[float, float]:
    """``(cpu seconds, wall seconds)`` summed over Snakemake benchmark files (columns ``cpu_time`` — all threads —
    and ``s``; the mean over a file's repeats); NaN when one is missing (e.g. its job ran in another directory)."""
    import pandas as pd

    cpu = wall = 0.0
    for path in paths:
        if not Path(path).is_file():
            return math.nan, math.nan
        frame = pd.read_csv(path, sep="\t")
        cpu += float(frame["cpu_time"].mean())
        wall += float(frame["s"].mean())
    return cpu, wall
