# Input functions and source lists of the evaluation rules (workflow/rules/evaluate.smk).
from weightflow.flow.spec import FLOW_ID_PATTERN

BASELINE_SOURCES = ("ensemble", "deep_ensemble", "sgld")
# the {source} wildcard: a baseline or a flow id
SOURCE_PATTERN = "|".join([*BASELINE_SOURCES, FLOW_ID_PATTERN])


def evaluated_experiments():
    """Experiments with data to score networks on (the Gaussian sanity experiment has none)."""
    return [e for e in EXPERIMENTS if config["experiments"][e]["dataset"] != "gaussian"]


def evaluation_sources(experiment):
    exp = config["experiments"][experiment]
    sgld = ["sgld"] if exp["evaluation"]["sgld"] else []
    return ["ensemble", "deep_ensemble", *sgld, *exp["flows"]]


def steps_flows(experiment):
    exp = config["experiments"][experiment]
    chosen = exp["evaluation"]["steps_flows"]
    return exp["flows"] if chosen is None else chosen


def evaluation_weights(wildcards):
    """The weights file of source {source}."""
    exp, source = config["experiments"][wildcards.experiment], wildcards.source
    if source in ("ensemble", "deep_ensemble"):
        return f"results/{wildcards.experiment}/ensemble/weights.pt"
    if source == "sgld":
        return f"results/{exp['evaluation']['sgld']}/ensemble/weights.pt"
    return f"results/{wildcards.experiment}/flows/{source}/samples/{exp['sampling']['main']}.pt"


def evaluation_files(name):
    """Input function: file ``name`` of every source of the experiment."""
    return lambda wildcards: expand(
        "results/{experiment}/evaluation/{source}/{name}",
        experiment=wildcards.experiment,
        source=evaluation_sources(wildcards.experiment),
        name=name,
    )
