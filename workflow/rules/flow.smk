# Flow matching: train every flow of an experiment's `flows` list; then draw every sampler candidate, score them on
# the validation split and select each flow's own sampler and its guided sampler (evaluate.smk: select_sampler).
wildcard_constraints:
    flow=FLOW_ID_PATTERN,


rule train_flow:
    input:
        weights=flow_data,
    output:
        model=results.flow_model("{experiment}", "{flow}"),
        log_csv=results.flow_file("{experiment}", "{flow}", "train_log.csv"),
    log:
        "results/{experiment}/logs/train_flow/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/train_flow/{flow}.tsv"
    threads: lambda wc: flow_params(config, wc.experiment, wc.flow, ("flow",))["flow"]["threads"]
    resources:
        gpu=1,
    params:
        stage="weightflow.flow.stages.train_stage",
        cfg=flow_exp_params("ensemble", "flow", "model", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_gaussian_sanity:
    input:
        target=results.ensemble_weights("{experiment}"),
        samples=lambda wc: results.flow_samples(wc.experiment, flow_ids(wc.experiment)[0], "candidates"),
    output:
        pdf=report(
            "results/{experiment}/figures/gaussian_sanity.pdf",
            caption="../report/gaussian_sanity.rst",
            category="{experiment}",
            subcategory="Flows",
        ),
        png="results/{experiment}/figures/gaussian_sanity.png",
        csv="results/{experiment}/tables/gaussian_sanity.csv",
    log:
        "results/{experiment}/logs/plot_gaussian_sanity.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_gaussian_sanity.tsv"
    params:
        stage="weightflow.plots.gaussian.sanity_stage",
        cfg=exp_params(),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


for _e in EXPERIMENTS:
    ALL_TARGETS.extend(results.flow_model(_e, f) for f in flow_ids(_e))
    if not has_data(_e) and flow_ids(_e):
        ALL_TARGETS.append(f"results/{_e}/figures/gaussian_sanity.pdf")
