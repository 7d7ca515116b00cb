# The reference posterior's convergence diagnostics (ArviZ) for experiments whose "ensemble" is HMC
# (ensemble.optimizer: hmc, rule train_ensemble), and the computed Bayesian baselines (Laplace around the MAP
# ensemble, mean-field VI), each a weights file like an ensemble's (names.POSTERIOR_BASELINES).

include: "posterior_inputs.smk"


rule hmc_diagnostics:
    input:
        weights=results.ensemble_weights("{experiment}"),
    output:
        csv="results/{experiment}/tables/hmc_diagnostics.csv",
        summary="results/{experiment}/tables/hmc_summary.json",
    log:
        "results/{experiment}/logs/hmc_diagnostics.log",
    benchmark:
        "results/{experiment}/benchmarks/hmc_diagnostics.tsv"
    params:
        stage="weightflow.posterior.stages.diagnostics_stage",
        cfg=posterior_params("hmc"),
        benchmark=lambda wc: results.benchmark(wc.experiment, "train_ensemble"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule posterior_baseline:
    input:
        ensemble=results.ensemble_weights("{experiment}"),
    output:
        weights=results.posterior_weights("{experiment}", "{method}"),
    log:
        "results/{experiment}/logs/posterior/{method}.log",
    benchmark:
        "results/{experiment}/benchmarks/posterior/{method}.tsv"
    wildcard_constraints:
        method="|".join(POSTERIOR_BASELINES),
    params:
        stage=lambda wc: POSTERIOR_BASELINES[wc.method],
        cfg=lambda wc: posterior_params(wc.method)(wc),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


ALL_TARGETS.extend(f"results/{e}/tables/hmc_diagnostics.csv" for e in EXPERIMENTS
                   if experiment_config(e)["ensemble"]["optimizer"] == "hmc")
