# Flow matching: train every flow of an experiment's `flows` list, then sample it with every configured sampler.
wildcard_constraints:
    flow=FLOW_ID_PATTERN,
    sampler=r"[A-Za-z0-9_]+",


rule train_flow:
    input:
        weights=lambda wc: FlowSpec.parse(wc.flow).data_path(wc.experiment),
    output:
        model="results/{experiment}/flows/{flow}/model.pt",
        log_csv="results/{experiment}/flows/{flow}/train_log.csv",
    log:
        "results/{experiment}/logs/train_flow/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/train_flow/{flow}.tsv"
    threads: 1
    resources:
        gpu=1,
    params:
        stage="weightflow.flow.stages.train_stage",
        cfg=exp_params("ensemble", "flow", "model"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule sample_flow:
    input:
        model="results/{experiment}/flows/{flow}/model.pt",
    output:
        samples="results/{experiment}/flows/{flow}/samples/{sampler}.pt",
    log:
        "results/{experiment}/logs/sample_flow/{flow}/{sampler}.log",
    benchmark:
        "results/{experiment}/benchmarks/sample_flow/{flow}/{sampler}.tsv"
    threads: 1
    params:
        stage="weightflow.flow.stages.sample_stage",
        cfg=exp_params("sampling"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_gaussian_sanity:
    input:
        target="results/{experiment}/ensemble/weights.pt",
        samples=lambda wc: expand(
            "results/{experiment}/flows/{flow}/samples/{sampler}.pt",
            experiment=wc.experiment,
            flow=flow_ids(wc.experiment)[0],
            sampler=flow_samplers(wc.experiment),
        ),
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
    ALL_TARGETS.extend(
        expand("results/{experiment}/flows/{flow}/{file}", experiment=_e, flow=flow_ids(_e),
               file=["model.pt", "train_log.csv"])
        + expand("results/{experiment}/flows/{flow}/samples/{sampler}.pt", experiment=_e, flow=flow_ids(_e),
                 sampler=flow_samplers(_e))
    )
    if config["experiments"][_e]["dataset"] == "gaussian" and flow_ids(_e):
        ALL_TARGETS.append(f"results/{_e}/figures/gaussian_sanity.pdf")
