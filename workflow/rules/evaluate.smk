# Evaluation: choose each flow's samplers on the validation split (select_sampler), score every source of networks
# (evaluate_networks), the samples / samplers / selection tables, the figures bma, calibration, diversity, steps.
# Sources (evaluate_inputs.smk): the flows' own samples, the baselines, each guided sample set and its control.

include: "evaluate_inputs.smk"


rule select_sampler:
    input:
        model=results.flow_model("{experiment}", "{flow}"),
    output:
        candidates=results.flow_samples("{experiment}", "{flow}", "candidates"),
        selection=results.flow_selection("{experiment}", "{flow}"),
    log:
        "results/{experiment}/logs/select_sampler/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/select_sampler/{flow}.tsv"
    threads: 1
    params:
        stage="weightflow.evaluate.stages.select_stage",
        cfg=exp_params("sampling"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule evaluate_networks:
    input:
        unpack(evaluation_inputs),
    output:
        networks=results.evaluation_file("{experiment}", "{source}", "networks.csv"),
        bma=results.evaluation_file("{experiment}", "{source}", "bma.csv"),
        reliability=results.evaluation_file("{experiment}", "{source}", "reliability.csv"),
        summary=results.evaluation_file("{experiment}", "{source}", "summary.json"),
    log:
        "results/{experiment}/logs/evaluate_networks/{source}.log",
    benchmark:
        "results/{experiment}/benchmarks/evaluate_networks/{source}.tsv"
    wildcard_constraints:
        source=SOURCE_PATTERN,
    params:
        stage="weightflow.evaluate.stages.evaluate_stage",
        cfg=exp_params("evaluation"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


# The tables: each reads only small per-source / per-flow files.
TABLES = {
    "samples": dict(stage="table_stage", input=lambda: {"summaries": evaluation_files("summary.json")}),
    "samplers": dict(stage="samplers_stage", input=lambda: {
        "candidates": lambda wc: [flow_samples(wc.experiment, f)["candidates"] for f in flow_ids(wc.experiment)],
        "selections": lambda wc: [flow_samples(wc.experiment, f)["selection"] for f in flow_ids(wc.experiment)]}),
    "selection": dict(stage="selection_table_stage", input=lambda: {
        "selections": lambda wc: [flow_samples(wc.experiment, f)["selection"] for f in flow_ids(wc.experiment)]}),
}
for _name, _table in TABLES.items():

    rule:
        name:
            f"{_name}_table"
        input:
            **_table["input"](),
        output:
            csv=report(
                f"results/{{experiment}}/tables/{_name}.csv",
                caption=f"../report/{_name}_table.rst",
                category="{experiment}",
                subcategory="Tables",
            ),
            tex=f"results/{{experiment}}/tables/{_name}.tex",
        log:
            f"results/{{experiment}}/logs/{_name}_table.log",
        benchmark:
            f"results/{{experiment}}/benchmarks/{_name}_table.tsv"
        params:
            stage=f"weightflow.evaluate.stages.{_table['stage']}",
            cfg=exp_params("evaluation"),
        conda:
            CONDA_ENV
        script:
            "../scripts/stage.py"


rule evaluate_steps:
    input:
        model=results.flow_model("{experiment}", "{flow}"),
        selection=results.flow_selection("{experiment}", "{flow}"),
    output:
        csv="results/{experiment}/evaluation/steps/{flow}.csv",
    log:
        "results/{experiment}/logs/evaluate_steps/{flow}.log",
    benchmark:
        "results/{experiment}/benchmarks/evaluate_steps/{flow}.tsv"
    wildcard_constraints:
        flow=FLOW_ID_PATTERN,
    threads: 1
    params:
        stage="weightflow.evaluate.stages.steps_stage",
        cfg=exp_params("evaluation"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


# The figures: the flows' own samples and the baselines drawn in figures (bma, calibration, diversity); the
# quality-vs-steps curves of evaluation.steps_flows (steps).
FIGURES = {
    "bma": dict(stage="bma_stage", input=lambda: {"bma": evaluation_files("bma.csv", figure_sources)}),
    "calibration": dict(stage="calibration_stage", input=lambda: {
        "reliability": evaluation_files("reliability.csv", figure_sources),
        "summaries": evaluation_files("summary.json", figure_sources)}),
    "diversity": dict(stage="diversity_stage", input=lambda: {
        "summaries": evaluation_files("summary.json", figure_sources)}),
    "steps": dict(stage="steps_stage", input=lambda: {
        "steps": lambda wc: [f"results/{wc.experiment}/evaluation/steps/{f}.csv" for f in steps_flows(wc.experiment)],
        "metrics": "results/{experiment}/ensemble/metrics.csv"}),
}
for _name, _figure in FIGURES.items():

    rule:
        name:
            f"plot_{_name}"
        input:
            **_figure["input"](),
        output:
            pdf=report(
                f"results/{{experiment}}/figures/{_name}.pdf",
                caption=f"../report/{_name}.rst",
                category="{experiment}",
                subcategory="Evaluation",
            ),
            png=f"results/{{experiment}}/figures/{_name}.png",
        log:
            f"results/{{experiment}}/logs/plot_{_name}.log",
        benchmark:
            f"results/{{experiment}}/benchmarks/plot_{_name}.tsv"
        params:
            stage=f"weightflow.plots.evaluation.{_figure['stage']}",
            cfg=exp_params("evaluation"),
        conda:
            CONDA_ENV
        script:
            "../scripts/stage.py"


rule fidelity_table:
    input:
        unpack(fidelity_inputs),
    output:
        csv=report(
            "results/{experiment}/tables/fidelity.csv",
            caption="../report/fidelity_table.rst",
            category="{experiment}",
            subcategory="Tables",
        ),
        tex="results/{experiment}/tables/fidelity.tex",
    log:
        "results/{experiment}/logs/fidelity_table.log",
    benchmark:
        "results/{experiment}/benchmarks/fidelity_table.tsv"
    params:
        stage="weightflow.evaluate.stages.fidelity_stage",
        cfg=exp_params("evaluation"),
        sources=lambda wc: fidelity_params(wc)["sources"],
        reference=lambda wc: fidelity_params(wc)["reference"],
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_fidelity:
    input:
        table="results/{experiment}/tables/fidelity.csv",
    output:
        pdf=report(
            "results/{experiment}/figures/fidelity.pdf",
            caption="../report/fidelity.rst",
            category="{experiment}",
            subcategory="Evaluation",
        ),
        png="results/{experiment}/figures/fidelity.png",
    log:
        "results/{experiment}/logs/plot_fidelity.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_fidelity.tsv"
    params:
        stage="weightflow.plots.fidelity.fidelity_figure_stage",
        cfg=exp_params(),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_training:
    input:
        logs=lambda wc: [results.flow_file(wc.experiment, f, "train_log.csv") for f in flow_ids(wc.experiment)],
    output:
        pdf=report(
            "results/{experiment}/figures/training.pdf",
            caption="../report/training.rst",
            category="{experiment}",
            subcategory="Evaluation",
        ),
        png="results/{experiment}/figures/training.png",
        csv="results/{experiment}/tables/training.csv",
    log:
        "results/{experiment}/logs/plot_training.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_training.tsv"
    params:
        stage="weightflow.plots.training.training_stage",
        cfg=exp_params(),
        flows=lambda wc: flow_ids(wc.experiment),
        budgets=training_budgets,
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


for _e in EXPERIMENTS:
    if not evaluated(_e):
        continue
    if experiment_config(_e)["evaluation"]["reference_posterior"]:
        ALL_TARGETS.extend(f"results/{_e}/{t}" for t in ("tables/fidelity.csv", "figures/fidelity.pdf"))
    ALL_TARGETS.extend(f"results/{_e}/{t}" for t in ("tables/samples.csv", "figures/bma.pdf",
                                                    "figures/calibration.pdf", "figures/diversity.pdf"))
    if flow_ids(_e):
        ALL_TARGETS.extend(f"results/{_e}/tables/{t}.csv" for t in ("samplers", "selection", "training"))
    if steps_flows(_e):
        ALL_TARGETS.append(f"results/{_e}/figures/steps.pdf")
