# Log-likelihoods under every flow (weightflow.likelihood): held-out ensemble snapshots, the flow's own samples,
# samples of the other flows of the same representation (raw or canonical weights) and prior draws.

rule likelihood:
    input:
        model="results/{experiment}/flows/{flow}/model.pt",
        data=lambda wc: FlowSpec.parse(wc.flow).data_path(wc.experiment),
        samples=lambda wc: loglik_samples(wc.experiment, wc.flow),
        others=lambda wc: [
            loglik_samples(wc.experiment, other)
            for other in config["experiments"][wc.experiment]["flows"]
            if other != wc.flow
            and FlowSpec.parse(other).representation == FlowSpec.parse(wc.flow).representation
        ],
    output:
        csv="results/{experiment}/flows/{flow}/loglik.csv",
    log:
        "results/{experiment}/logs/likelihood/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/likelihood/{flow}.tsv"
    threads: 1
    params:
        stage="weightflow.likelihood.stage.likelihood_stage",
        cfg=exp_params("likelihood"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_loglik:
    input:
        csvs=lambda wc: expand(
            "results/{experiment}/flows/{flow}/loglik.csv",
            experiment=wc.experiment,
            flow=config["experiments"][wc.experiment]["flows"],
        ),
    output:
        pdf=report(
            "results/{experiment}/figures/loglik.pdf",
            caption="../report/loglik.rst",
            category="{experiment}",
            subcategory="Likelihoods",
        ),
        png="results/{experiment}/figures/loglik.png",
        summary="results/{experiment}/tables/loglik_summary.csv",
    log:
        "results/{experiment}/logs/plot_loglik.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_loglik.tsv"
    params:
        stage="weightflow.plots.loglik.loglik_stage",
        cfg=exp_params(),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


ALL_TARGETS.extend(
    f"results/{e}/figures/loglik.pdf" for e in EXPERIMENTS if config["experiments"][e]["flows"]
)
