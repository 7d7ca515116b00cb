# Flows beyond their own task and architecture (weightflow.evaluate.transfer, .initialization): guided transfer to
# task B (transfer.task), flow samples as initializations on B, architecture transfer, vector-field scaling.


include: "transfer_inputs.smk"


for _kind, _stage in (("transfer", "transfer_stage"), ("architecture", "architecture_stage")):

    rule:
        name:
            f"{_kind}_flow"
        input:
            model=results.flow_model("{experiment}", "{flow}"),
        output:
            candidates=f"results/{{experiment}}/{_kind}/{{flow}}/candidates.pt",
            selection=f"results/{{experiment}}/{_kind}/{{flow}}/selection.csv",
        log:
            f"results/{{experiment}}/logs/{_kind}_flow/{{flow}}.log",
        benchmark:
            f"results/{{experiment}}/benchmarks/{_kind}_flow/{{flow}}.tsv"
        params:
            stage=f"weightflow.evaluate.transfer.{_stage}",
            cfg=transfer_params(),
        conda:
            CONDA_ENV
        script:
            "../scripts/stage.py"


rule transfer_table:
    input:
        task_ensemble=lambda wc: results.ensemble_weights(transfer_settings(wc.experiment)["task"]),
        candidates=transfer_files("transfer", "candidates"),
        selections=transfer_files("transfer", "selection"),
    output:
        csv=report("results/{experiment}/tables/transfer.csv", caption="../report/transfer_table.rst",
                   category="{experiment}", subcategory="Transfer"),
        tex="results/{experiment}/tables/transfer.tex",
    log:
        "results/{experiment}/logs/transfer_table.log",
    benchmark:
        "results/{experiment}/benchmarks/transfer_table.tsv"
    params:
        stage="weightflow.evaluate.transfer.transfer_table_stage",
        cfg=transfer_params(),
        flows=lambda wc: transfer_flows(wc.experiment, "transfer"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule architecture_table:
    input:
        own_candidates=lambda wc: [flow_samples(wc.experiment, f)["candidates"]
                                   for f in transfer_flows(wc.experiment, "architecture")],
        own_selections=lambda wc: [flow_samples(wc.experiment, f)["selection"]
                                   for f in transfer_flows(wc.experiment, "architecture")],
        candidates=transfer_files("architecture", "candidates"),
        selections=transfer_files("architecture", "selection"),
    output:
        csv=report("results/{experiment}/tables/architecture.csv", caption="../report/architecture_table.rst",
                   category="{experiment}", subcategory="Transfer"),
        tex="results/{experiment}/tables/architecture.tex",
    log:
        "results/{experiment}/logs/architecture_table.log",
    benchmark:
        "results/{experiment}/benchmarks/architecture_table.tsv"
    params:
        stage="weightflow.evaluate.transfer.architecture_table_stage",
        cfg=transfer_params(),
        flows=lambda wc: transfer_flows(wc.experiment, "architecture"),
        flat_flows=lambda wc: [f for f in transfer_settings(wc.experiment)["architecture"]["flows"]
                               if not graph_field(wc.experiment, f)],
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule initialization:
    input:
        candidates=transfer_files("initialization", "candidates"),
        selections=transfer_files("initialization", "selection"),
    output:
        curves="results/{experiment}/transfer/initialization.csv",
        csv=report("results/{experiment}/tables/initialization.csv", caption="../report/initialization_table.rst",
                   category="{experiment}", subcategory="Transfer"),
    log:
        "results/{experiment}/logs/initialization.log",
    benchmark:
        "results/{experiment}/benchmarks/initialization.tsv"
    threads: 2
    params:
        stage="weightflow.evaluate.initialization.initialization_stage",
        cfg=transfer_params("ensemble"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_initialization:
    input:
        curves="results/{experiment}/transfer/initialization.csv",
    output:
        pdf=report("results/{experiment}/figures/initialization.pdf", caption="../report/initialization.rst",
                   category="{experiment}", subcategory="Transfer"),
        png="results/{experiment}/figures/initialization.png",
    log:
        "results/{experiment}/logs/plot_initialization.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_initialization.tsv"
    params:
        stage="weightflow.plots.transfer.initialization_figure_stage",
        cfg=transfer_params(),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_scaling:
    input:
        summaries=lambda wc: [results.evaluation_file(wc.experiment, f, "summary.json")
                              for f in transfer_settings(wc.experiment)["scaling"]["flows"]],
    output:
        pdf=report("results/{experiment}/figures/scaling.pdf", caption="../report/scaling.rst",
                   category="{experiment}", subcategory="Transfer"),
        png="results/{experiment}/figures/scaling.png",
        csv="results/{experiment}/tables/scaling.csv",
    log:
        "results/{experiment}/logs/plot_scaling.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_scaling.tsv"
    params:
        stage="weightflow.plots.transfer.scaling_figure_stage",
        cfg=exp_params(),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


for _e in EXPERIMENTS:
    if not evaluated(_e):
        continue
    _t = transfer_settings(_e)
    if _t["task"] in SKIPPED:  # task B's data are absent here: its targets go, the rest of the experiment stays
        print(f"weightflow: experiment {_e!r}: tables/transfer.csv and figures/initialization.pdf left out of the "
              f"DAG: its transfer.task {_t['task']!r} is left out (above)", file=sys.stderr)
    elif _t["task"] and _t["flows"]:
        ALL_TARGETS.append(f"results/{_e}/tables/transfer.csv")
        if _t["initialization"]["flows"]:
            ALL_TARGETS.append(f"results/{_e}/figures/initialization.pdf")
    if _t["architecture"]["flows"]:
        ALL_TARGETS.append(f"results/{_e}/tables/architecture.csv")
    if _t["scaling"]["flows"]:
        ALL_TARGETS.append(f"results/{_e}/figures/scaling.pdf")
