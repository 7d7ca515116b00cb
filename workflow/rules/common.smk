# Shared helpers for every rules file: the experiment config, consistency checks, the target list, file paths.
import sys

import yaml

from weightflow import results
from weightflow.config import check_config, check_flows, experiment_params, flow_params, flow_representation
from weightflow.dataset_registry import missing_data
from weightflow.flow.spec import FLOW_ID_PATTERN, FlowSpec
from weightflow.names import CANONICAL_FORMS, ENSEMBLE_STAGES, GRAPH_MODELS, REFERENCE_PATTERN

check_config(config)
# variants: each merged section is validated against the schema of its section
check_flows(config, yaml.safe_load(open(workflow.source_path("../../config/schema.yaml"))))

# The conda env of every rule (for `--sdm conda`); relative to workflow/rules/.
CONDA_ENV = "../../envs/weightflow.yaml"
# Experiments whose dataset files are absent here (MNIST's IDX files: no package ships them) are left out of the
# DAG with a message naming the folder and the remedy; every other experiment runs.
SKIPPED = {name: reason for name, exp in config["experiments"].items()
           if (reason := missing_data(exp["dataset"], exp.get("data_root")))}
for _name, _reason in SKIPPED.items():
    print(f"weightflow: experiment {_name!r} left out of the DAG: {_reason}", file=sys.stderr)
EXPERIMENTS = [name for name in config["experiments"] if name not in SKIPPED]
# Every rules file appends the files that `rule all` must build.
ALL_TARGETS = []


def exp_params(*sections):
    """A params function giving a stage (as params.cfg) the experiment's base fields (data, architecture, seed),
    the global settings and only the named config sections: editing one section reruns only the rules that
    read it (Snakemake reruns a job when its params change)."""

    def params(wildcards):
        return experiment_params(config, wildcards.experiment, sections)

    return params


def flow_exp_params(*sections):
    """Like :func:`exp_params`, for rules with a ``{flow}`` wildcard; the flow's variant overrides its sections."""

    def params(wildcards):
        return flow_params(config, wildcards.experiment, wildcards.flow, sections)

    return params


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
    reference=REFERENCE_PATTERN,
    form="|".join(CANONICAL_FORMS),


def experiment_config(experiment):
    return config["experiments"][experiment]


def has_data(experiment):
    """Experiments with data to score networks on (the Gaussian sanity experiment has none)."""
    return experiment_config(experiment)["dataset"] != "gaussian"


def evaluated(experiment):
    """Experiments with tables and figures of their own (evaluation.enabled; baseline experiments have none)."""
    return has_data(experiment) and experiment_config(experiment)["evaluation"]["enabled"]


def alignment_references(experiment):
    """The experiment's reference names (config alignment.references)."""
    return experiment_config(experiment)["alignment"]["references"]


def flow_ids(experiment):
    """The experiment's flow ids (config flows)."""
    return experiment_config(experiment)["flows"]


def flow_form(experiment, flow):
    """The canonical form (free | sphere) a flow uses: its effective canonical.last_layer."""
    return flow_params(config, experiment, flow, ("canonical",))["canonical"]["last_layer"]


def flow_data(wildcards):
    """The weights file flow {flow} trains on."""
    spec = FlowSpec.parse(wildcards.flow)
    return spec.data_path(wildcards.experiment, flow_form(wildcards.experiment, wildcards.flow))


def flow_samples(experiment, flow):
    """The flow's sample candidates and its selection (its own samples = the `main` selection)."""
    return {"candidates": results.flow_samples(experiment, flow, "candidates"),
            "selection": results.flow_selection(experiment, flow)}


def same_representation(wildcards):
    """The other flows of the experiment that model the same networks as {flow} (flow_representation)."""
    mine = flow_representation(config, wildcards.experiment, wildcards.flow)
    return [f for f in flow_ids(wildcards.experiment)
            if f != wildcards.flow and flow_representation(config, wildcards.experiment, f) == mine]
