# Log-likelihoods under every flow (weightflow.likelihood): held-out ensemble snapshots, the flow's own samples,
# samples of the other flows of the same representation (raw, or canonical weights of one form) and prior draws.


rule likelihood:
    input:
        model=results.flow_model("{experiment}", "{flow}"),
        data=flow_data,
        samples=lambda wc: flow_samples(wc.experiment, wc.flow)["candidates"],
        selection=lambda wc: flow_samples(wc.experiment, wc.flow)["selection"],
        others=lambda wc: [flow_samples(wc.experiment, other)["candidates"] for other in same_representation(wc)],
        other_selections=lambda wc: [flow_samples(wc.experiment, o)["selection"] for o in same_representation(wc)],
    output:
        csv="results/{experiment}/flows/{flow}/loglik.csv",
    log:
        "results/{experiment}/logs/likelihood/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/likelihood/{flow}.tsv"
    threads: 1
    params:
        stage="weightflow.likelihood.stage.likelihood_stage",
        cfg=flow_exp_params("likelihood"),
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


ALL_TARGETS.extend(f"results/{e}/figures/loglik.pdf" for e in EXPERIMENTS if flow_ids(e) and (evaluated(e) or not has_data(e)))
