# Permutation alignment of every ensemble network onto each reference, and loss barriers before/after.

rule align:
    input:
        weights=results.ensemble_weights("{experiment}"),
    output:
        weights=results.aligned_weights("{experiment}", "{reference}"),
    log:
        "results/{experiment}/logs/align/{reference}.log",
    benchmark:
        "results/{experiment}/benchmarks/align/{reference}.tsv"
    threads: 1  # small batched tensors: a second thread only adds synchronization
    params:
        stage="weightflow.align.references.align_stage",
        cfg=exp_params("alignment"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule loss_barriers:
    input:
        ensemble=results.ensemble_weights("{experiment}"),
        aligned=results.aligned_weights("{experiment}", "{reference}"),
    output:
        csv="results/{experiment}/barriers/{reference}.csv",
    log:
        "results/{experiment}/logs/loss_barriers/{reference}.log",
    benchmark:
        "results/{experiment}/benchmarks/loss_barriers/{reference}.tsv"
    threads: 1  # small batched tensors: a second thread only adds synchronization
    params:
        stage="weightflow.barriers.barriers_stage",
        cfg=exp_params("alignment"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_loss_barriers:
    input:
        csvs=lambda wc: expand(
            "results/{experiment}/barriers/{reference}.csv",
            experiment=wc.experiment,
            reference=alignment_references(wc.experiment),
        ),
    output:
        pdf=report(
            "results/{experiment}/figures/loss_barriers.pdf",
            caption="../report/loss_barriers.rst",
            category="{experiment}",
            subcategory="Alignment",
        ),
        png="results/{experiment}/figures/loss_barriers.png",
    log:
        "results/{experiment}/logs/plot_loss_barriers.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_loss_barriers.tsv"
    params:
        stage="weightflow.plots.barriers.loss_barriers_stage",
        cfg=exp_params("alignment"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


ALL_TARGETS.extend(f"results/{e}/figures/loss_barriers.pdf" for e in EXPERIMENTS if evaluated(e))
