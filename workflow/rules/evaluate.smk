# Evaluation: metrics, BMA curves, calibration, diversity of every source of networks; the samples table and
# the figures bma, calibration, diversity, steps (one rule each, so each regenerates alone); the samplers table
# (every flow's samples from every sampler).
# Sources: ensemble (snapshots: the flows' target), deep_ensemble (final weights per run), sgld (the ensemble of
# the experiment named in evaluation.sgld) and every flow id (its samples from sampling.main).

include: "evaluate_inputs.smk"


rule evaluate_networks:
    input:
        weights=evaluation_weights,
    output:
        networks="results/{experiment}/evaluation/{source}/networks.csv",
        bma="results/{experiment}/evaluation/{source}/bma.csv",
        reliability="results/{experiment}/evaluation/{source}/reliability.csv",
        summary="results/{experiment}/evaluation/{source}/summary.json",
    log:
        "results/{experiment}/logs/evaluate_networks/{source}.log",
    benchmark:
        "results/{experiment}/benchmarks/evaluate_networks/{source}.tsv"
    wildcard_constraints:
        source=SOURCE_PATTERN,
    params:
        stage="weightflow.evaluate.stages.evaluate_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule samples_table:
    input:
        summaries=evaluation_files("summary.json"),
    output:
        csv=report(
            "results/{experiment}/tables/samples.csv",
            caption="../report/samples_table.rst",
            category="{experiment}",
            subcategory="Tables",
        ),
        tex="results/{experiment}/tables/samples.tex",
    log:
        "results/{experiment}/logs/samples_table.log",
    benchmark:
        "results/{experiment}/benchmarks/samples_table.tsv"
    params:
        stage="weightflow.evaluate.stages.table_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule samplers_table:
    input:
        samples=lambda wc: expand(
            "results/{experiment}/flows/{flow}/samples/{sampler}.pt",
            experiment=wc.experiment,
            flow=flow_ids(wc.experiment),
            sampler=flow_samplers(wc.experiment),
        ),
    output:
        csv=report(
            "results/{experiment}/tables/samplers.csv",
            caption="../report/samplers_table.rst",
            category="{experiment}",
            subcategory="Tables",
        ),
        tex="results/{experiment}/tables/samplers.tex",
    log:
        "results/{experiment}/logs/samplers_table.log",
    benchmark:
        "results/{experiment}/benchmarks/samplers_table.tsv"
    params:
        stage="weightflow.evaluate.stages.samplers_stage",
        cfg=exp_params("evaluation"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_bma:
    input:
        bma=evaluation_files("bma.csv"),
    output:
        pdf=report(
            "results/{experiment}/figures/bma.pdf",
            caption="../report/bma.rst",
            category="{experiment}",
            subcategory="Evaluation",
        ),
        png="results/{experiment}/figures/bma.png",
    log:
        "results/{experiment}/logs/plot_bma.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_bma.tsv"
    params:
        stage="weightflow.plots.evaluation.bma_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_calibration:
    input:
        reliability=evaluation_files("reliability.csv"),
        summaries=evaluation_files("summary.json"),
    output:
        pdf=report(
            "results/{experiment}/figures/calibration.pdf",
            caption="../report/calibration.rst",
            category="{experiment}",
            subcategory="Evaluation",
        ),
        png="results/{experiment}/figures/calibration.png",
    log:
        "results/{experiment}/logs/plot_calibration.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_calibration.tsv"
    params:
        stage="weightflow.plots.evaluation.calibration_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_diversity:
    input:
        summaries=evaluation_files("summary.json"),
    output:
        pdf=report(
            "results/{experiment}/figures/diversity.pdf",
            caption="../report/diversity.rst",
            category="{experiment}",
            subcategory="Evaluation",
        ),
        png="results/{experiment}/figures/diversity.png",
    log:
        "results/{experiment}/logs/plot_diversity.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_diversity.tsv"
    params:
        stage="weightflow.plots.evaluation.diversity_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule evaluate_steps:
    input:
        model="results/{experiment}/flows/{flow}/model.pt",
    output:
        csv="results/{experiment}/evaluation/steps/{flow}.csv",
    log:
        "results/{experiment}/logs/evaluate_steps/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/evaluate_steps/{flow}.tsv"
    wildcard_constraints:
        flow=FLOW_ID_PATTERN,
    threads: 2
    params:
        stage="weightflow.evaluate.stages.steps_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_steps:
    input:
        steps=lambda wildcards: expand(
            "results/{experiment}/evaluation/steps/{flow}.csv",
            experiment=wildcards.experiment,
            flow=steps_flows(wildcards.experiment),
        ),
        metrics="results/{experiment}/ensemble/metrics.csv",
    output:
        pdf=report(
            "results/{experiment}/figures/steps.pdf",
            caption="../report/steps.rst",
            category="{experiment}",
            subcategory="Evaluation",
        ),
        png="results/{experiment}/figures/steps.png",
    log:
        "results/{experiment}/logs/plot_steps.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_steps.tsv"
    params:
        stage="weightflow.plots.evaluation.steps_stage",
        cfg=exp_params("evaluation", "canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


for _e in evaluated_experiments():
    ALL_TARGETS.extend(
        expand(
            "results/{experiment}/{target}",
            experiment=_e,
            target=["tables/samples.csv", "figures/bma.pdf", "figures/calibration.pdf", "figures/diversity.pdf"],
        )
    )
    if flow_ids(_e):
        ALL_TARGETS.append(f"results/{_e}/tables/samplers.csv")
    if steps_flows(_e):
        ALL_TARGETS.append(f"results/{_e}/figures/steps.pdf")
