# Base-network ensembles: R runs trained as one vectorized computation, snapshots along each run — or the draws of
# full-batch HMC chains (the reference posterior), which every later stage takes the same way.


rule train_ensemble:
    output:
        weights=results.ensemble_weights("{experiment}"),
        metrics="results/{experiment}/ensemble/metrics.csv",
    log:
        "results/{experiment}/logs/train_ensemble.log",
    benchmark:
        "results/{experiment}/benchmarks/train_ensemble.tsv"
    threads: 2
    params:
        # vectorized training of R runs, or HMC's chains (ensemble.optimizer: hmc): names.ENSEMBLE_STAGES
        stage=lambda wc: ENSEMBLE_STAGES[experiment_config(wc.experiment)["ensemble"]["optimizer"]],
        cfg=exp_params("ensemble", "posterior"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_ensemble_training:
    input:
        metrics="results/{experiment}/ensemble/metrics.csv",
    output:
        pdf=report(
            "results/{experiment}/figures/ensemble_training.pdf",
            caption="../report/ensemble_training.rst",
            category="{experiment}",
            subcategory="Ensemble",
        ),
        png="results/{experiment}/figures/ensemble_training.png",
    log:
        "results/{experiment}/logs/plot_ensemble_training.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_ensemble_training.tsv"
    params:
        stage="weightflow.plots.ensemble.training_stage",
        cfg=exp_params("ensemble"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


ALL_TARGETS.extend(f"results/{e}/figures/ensemble_training.pdf" for e in EXPERIMENTS if evaluated(e))
