"""The one script every rule runs: hand the Snakemake job to the weightflow stage named in params.stage."""

from weightflow.runner import StageJob, run_stage

sm = snakemake  # noqa: F821 (injected by Snakemake)
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
