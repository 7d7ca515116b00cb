# Params and input functions of the transfer rules (workflow/rules/transfer.smk).


def transfer_params(*sections):
    """params.cfg with the transfer section and the data fields of task B (transfer.task_config)."""

    def params(wildcards):
        cfg = experiment_params(config, wildcards.experiment, ("transfer", *sections))
        task = cfg["transfer"]["task"]
        if task is not None:
            cfg["transfer"]["task_config"] = experiment_params(config, task, ())
        return cfg

    return params


def transfer_settings(experiment):
    return experiment_config(experiment)["transfer"]


TRANSFER_FILES = {"candidates": "candidates.pt", "selection": "selection.csv"}


def transfer_files(kind, name):
    """Input function: file ``name`` (candidates | selection) of every flow of ``transfer_flows(experiment, kind)``,
    under ``results/{experiment}/{kind}/{flow}/``."""
    folder = "architecture" if kind == "architecture" else "transfer"
    return lambda wc: [f"results/{wc.experiment}/{folder}/{f}/{TRANSFER_FILES[name]}"
                       for f in transfer_flows(wc.experiment, kind)]


def transfer_flows(experiment, kind):
    """transfer.flows (kind transfer), transfer.initialization.flows (initialization), or the flows of
    transfer.architecture.flows with a graph field (architecture)."""
    settings = transfer_settings(experiment)
    if kind == "transfer":
        return settings["flows"]
    if kind == "initialization":
        return settings["initialization"]["flows"]
    return [f for f in settings["architecture"]["flows"] if graph_field(experiment, f)]


def graph_field(experiment, flow):
    """Whether the flow's vector field is a graph network (carried to other architectures)."""
    return flow_params(config, experiment, flow, ("model",))["model"]["name"] in GRAPH_MODELS
