# ReLU-scale canonicalization: every (aligned or unaligned) network becomes one point of the product of spheres.


rule canonical:
    input:
        # the aligned weights for a reference name; the raw ensemble for reference `none` (the unaligned flows)
        weights=lambda w: (
            f"results/{w.experiment}/ensemble/weights.pt"
            if w.reference == "none"
            else f"results/{w.experiment}/aligned/{w.reference}/weights.pt"
        ),
    output:
        weights="results/{experiment}/canonical/{reference}/weights.pt",
    log:
        "results/{experiment}/logs/canonical/{reference}.log",
    benchmark:
        "results/{experiment}/benchmarks/canonical/{reference}.tsv"
    wildcard_constraints:
        reference="[A-Za-z0-9_]+",
    params:
        stage="weightflow.canonical.canonical_stage",
        cfg=exp_params("canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_canonical_geometry:
    input:
        # canonical weights of the unaligned ensemble and of every alignment reference, named by reference
        unpack(
            lambda w: {
                ref: f"results/{w.experiment}/canonical/{ref}/weights.pt"
                for ref in ["none", *config["experiments"][w.experiment]["alignment"]["references"]]
            }
        ),
    output:
        pdf=report(
            "results/{experiment}/figures/canonical_geometry.pdf",
            caption="../report/canonical_geometry.rst",
            category="{experiment}",
            subcategory="Canonical geometry",
        ),
        png="results/{experiment}/figures/canonical_geometry.png",
    log:
        "results/{experiment}/logs/plot_canonical_geometry.log",
    benchmark:
        "results/{experiment}/benchmarks/plot_canonical_geometry.tsv"
    params:
        stage="weightflow.plots.canonical.geometry_stage",
        cfg=exp_params("canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


ALL_TARGETS.extend(
    expand(
        "results/{experiment}/figures/canonical_geometry.pdf",
        experiment=[e for e in EXPERIMENTS if config["experiments"][e]["dataset"] != "gaussian"],
    )
)
