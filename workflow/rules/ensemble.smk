# Base-network ensembles: R runs trained as one vectorized computation, snapshots along each run.


rule train_ensemble:
    output:
        weights="results/{experiment}/ensemble/weights.pt",
        metrics="results/{experiment}/ensemble/metrics.csv",
    log:
        "results/{experiment}/logs/train_ensemble.log",
    benchmark:
        "results/{experiment}/benchmarks/train_ensemble.tsv"
    threads: 2
    params:
        stage="weightflow.ensemble.train_stage",
        cfg=exp_params("ensemble"),
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


ALL_TARGETS.extend(
    expand(
        "results/{experiment}/figures/ensemble_training.pdf",
        experiment=[e for e in EXPERIMENTS if config["experiments"][e]["dataset"] != "gaussian"],
    )
)
