# ReLU-scale canonicalization: every (aligned or unaligned) network becomes one point of the product of spheres, in
# the function-preserving form (free last layer) or the thesis' form (last layer on a sphere): the {form} wildcard.


rule canonical:
    input:
        # the aligned weights for a reference name; the raw ensemble for reference `none` (the unaligned flows)
        weights=lambda w: results.aligned_or_raw_weights(w.experiment, w.reference),
    output:
        weights=results.canonical_weights("{experiment}", "{form}", "{reference}"),
    log:
        "results/{experiment}/logs/canonical/{form}/{reference}.log",
    benchmark:
        "results/{experiment}/benchmarks/canonical/{form}/{reference}.tsv"
    wildcard_constraints:
        reference=f"none|{REFERENCE_PATTERN}",
    params:
        stage="weightflow.canonical.canonical_stage",
        cfg=exp_params("canonical"),
    conda:
        CONDA_ENV
    script:
        "../scripts/stage.py"


rule plot_canonical_geometry:
    input:
        # canonical weights (thesis form: every layer on spheres) of the unaligned ensemble and of every
        # alignment reference, named by reference
        unpack(
            lambda w: {
                ref: results.canonical_weights(w.experiment, "sphere", ref)
                for ref in ["none", *alignment_references(w.experiment)]
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


ALL_TARGETS.extend(f"results/{e}/figures/canonical_geometry.pdf" for e in EXPERIMENTS if evaluated(e))
