# Shared helpers for every rules file: the experiment config, consistency checks, the target list.
from weightflow.config import check_config, experiment_params

check_config(config)

# The conda env of every rule (for `--sdm conda`); relative to workflow/rules/.
CONDA_ENV = "../../envs/weightflow.yaml"
EXPERIMENTS = list(config["experiments"])
# Every rules file appends the files that `rule all` must build.
ALL_TARGETS = []


def exp_params(wildcards):
    """The experiment's validated config plus global settings, handed to a stage as params.cfg."""
    return experiment_params(config, wildcards.experiment)


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
