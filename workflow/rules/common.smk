# Shared helpers for every rules file: the experiment config, consistency checks, the target list.
from weightflow.config import check_config, experiment_params
from weightflow.flow.spec import FLOW_ID_PATTERN, FlowSpec

check_config(config)

# The conda env of every rule (for `--sdm conda`); relative to workflow/rules/.
CONDA_ENV = "../../envs/weightflow.yaml"
EXPERIMENTS = list(config["experiments"])
# Every rules file appends the files that `rule all` must build.
ALL_TARGETS = []


def exp_params(*sections):
    """A params function giving a stage (as params.cfg) the experiment's base fields (data, architecture, seed),
    the global settings and only the named config sections: editing one section reruns only the rules that
    read it (Snakemake reruns a job when its params change)."""

    def params(wildcards):
        return experiment_params(config, wildcards.experiment, sections)

    return params


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),


def alignment_references(experiment):
    """The experiment's reference names (config alignment.references)."""
    return config["experiments"][experiment]["alignment"]["references"]


def flow_ids(experiment):
    """The experiment's flow ids (config flows)."""
    return config["experiments"][experiment]["flows"]


def flow_samplers(experiment):
    """The experiment's sampler names (config sampling.samplers)."""
    return list(config["experiments"][experiment]["sampling"]["samplers"])


def loglik_samples(experiment, flow):
    """The samples file of the flow's main sampler (config sampling.main)."""
    main = config["experiments"][experiment]["sampling"]["main"]
    return f"results/{experiment}/flows/{flow}/samples/{main}.pt"
