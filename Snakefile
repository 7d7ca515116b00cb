# weightflow: geometric flow models over neural network weights.
#   snakemake --cores 2                       every table and figure of config/config.yaml
#   snakemake --cores 2 results/breast_cancer/figures/ensemble_training.pdf   one target
#   snakemake --profile profiles/slurm        the same DAG on a SLURM cluster
# Rules live in workflow/rules/*.smk and only call weightflow stages (src/weightflow).
from snakemake.utils import min_version, validate

min_version("9.0")


# The default config unless the command line names one (`--configfile` replaces it instead of extending it).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"



validate(config, "config/schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/canonical.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/flow.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/likelihood.smk"
include: "workflow/rules/posterior.smk"
include: "workflow/rules/transfer.smk"


# Figures and tables only read small CSV/weights files: on a cluster they run on the submitting node instead of
# as SLURM jobs (each job costs a queue wait plus a Snakemake start-up inside the allocation).
localrules:
    all,
    plot_ensemble_training,
    plot_canonical_geometry,
    plot_loss_barriers,
    plot_gaussian_sanity,
    samples_table,
    samplers_table,
    selection_table,
    fidelity_table,
    plot_fidelity,
    transfer_table,
    architecture_table,
    plot_initialization,
    plot_scaling,
    plot_bma,
    plot_calibration,
    plot_diversity,
    plot_steps,
    plot_loglik,


rule all:
    default_target: True
    input:
        ALL_TARGETS,
