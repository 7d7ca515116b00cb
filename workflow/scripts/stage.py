"""The one script every rule runs: hand the Snakemake job to the weightflow stage named in params.stage."""

import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: parallel jobs sharing cores (Snakemake --cores N, shared
# cluster nodes) otherwise slow each other down many times over. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sm = snakemake  # noqa: F821 (injected by Snakemake)
# torch.compile's C++ compilation (model.compile on CPU) uses the job's cores, not every core of the node.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, int(sm.threads))))
# The workflow runs the weightflow of its own repository (also inside `--sdm conda` envs, which install only the
# dependencies): <repo>/workflow/scripts/stage.py -> <repo>/src.
sys.path.insert(0, str(Path(sm.scriptdir).resolve().parents[1] / "src"))

from weightflow.runner import StageJob, run_stage  # noqa: E402

params = dict(sm.params.items())
run_stage(
    params.pop("stage"),
    StageJob(
        inputs=dict(sm.input.items()),
        outputs=dict(sm.output.items()),
        params=params,
        wildcards=dict(sm.wildcards.items()),
        threads=sm.threads,
    ),
    log_file=sm.log[0] if sm.log else None,
)
