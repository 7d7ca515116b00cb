# Input functions and source lists of the evaluation rules (workflow/rules/evaluate.smk).
from weightflow.names import BASELINES, SAMPLE_KINDS, source_of, split_source

# the {source} wildcard: a baseline, a flow id (its own samples), or a flow id with the suffix of the guided samples
# or of their control (weightflow.names.SAMPLE_KINDS)
SOURCE_PATTERN = "|".join([*BASELINES, rf"(?:{FLOW_ID_PATTERN})(?:\{SAMPLE_KINDS['guided'].suffix}|\{SAMPLE_KINDS['control'].suffix})?"])


def guided_flows(experiment):
    """Flows whose guided samples (and guidance-alone control) are evaluated: evaluation.guided_flows (null = all),
    when a sampler with guidance is configured."""
    exp = experiment_config(experiment)
    if not any(opts.get("guidance", 0) > 0 for opts in exp["sampling"]["samplers"].values()):
        return []
    chosen = exp["evaluation"]["guided_flows"]
    return exp["flows"] if chosen is None else chosen


def baseline_sources(experiment):
    """The baselines of an experiment, in BASELINES order: those its config names (Baseline.present), and the
    ensemble's canonical copies in the forms its flows use."""
    exp = experiment_config(experiment)
    forms = {flow_representation(config, experiment, f) for f in exp["flows"]}
    copies = {"ensemble_canonical": "canonical-free" in forms, "ensemble_sphere": "canonical-sphere" in forms}
    return [name for name, base in BASELINES.items() if (base.present(exp) if base.present else copies[name])]


def evaluation_sources(experiment):
    """Every source of the samples table."""
    guided = [source_of(f, kind) for f in guided_flows(experiment) for kind in ("guided", "control")]
    return [*flow_ids(experiment), *baseline_sources(experiment), *guided]


def figure_sources(experiment):
    """Sources of the BMA, calibration and diversity figures: the flows' own samples and the baselines drawn there."""
    return [*flow_ids(experiment), *(b for b in baseline_sources(experiment) if BASELINES[b].in_figures)]


def steps_flows(experiment):
    exp = experiment_config(experiment)
    chosen = exp["evaluation"]["steps_flows"]
    return exp["flows"] if chosen is None else chosen


def evaluation_inputs(wildcards):
    """The files of source {source}: a baseline's weights file, or a flow's sample candidates and selection."""
    name, kind = split_source(wildcards.source)
    if kind is None:
        return {"weights": BASELINES[name].weights(wildcards.experiment, experiment_config(wildcards.experiment))}
    return flow_samples(wildcards.experiment, name)


def evaluation_files(name, sources=evaluation_sources):
    """Input function: file ``name`` of every source (``sources(experiment)``) of the experiment."""
    return lambda wildcards: [results.evaluation_file(wildcards.experiment, s, name)
                              for s in sources(wildcards.experiment)]


def fidelity_sources(experiment):
    """The sources of the fidelity table, each a dict for the fidelity stage (weightflow.evaluate.stages):
    the experiment's baselines compared with the posterior, its flows' own samples, and the flows of the reference
    posterior's experiment (trained on HMC draws); with their input files, and the benchmark files of the jobs
    that made them (costs) and their training data (upstream)."""
    exp = experiment_config(experiment)
    reference = exp["evaluation"]["reference_posterior"]
    ensemble_cost = [results.benchmark(experiment, "train_ensemble")]
    costs = {"ensemble": ensemble_cost, "deep_ensemble": ensemble_cost,
             "laplace": ensemble_cost + [results.benchmark(experiment, "posterior", "laplace")],
             "vi": [results.benchmark(experiment, "posterior", "vi")]}
    for field in ("sgld", "sghmc"):
        if exp["evaluation"][field]:
            costs[field] = [results.benchmark(exp["evaluation"][field], "train_ensemble")]
    sources = []
    for name in baseline_sources(experiment):
        if BASELINES[name].posterior:
            sources.append({"source": name, "experiment": experiment, "label": BASELINES[name].label,
                            "files": {"weights": BASELINES[name].weights(experiment, exp)},
                            "costs": costs.get(name, []), "upstream": []})
    for owner, trained_on in ((experiment, "ensemble"), (reference, "HMC draws")):
        for flow in flow_ids(owner):
            spec = FlowSpec.parse(flow)
            upstream = [results.benchmark(owner, "train_ensemble")]
            if spec.alignment != "none":
                upstream.append(results.benchmark(owner, "align", spec.alignment))
            if spec.representation == "canonical":
                upstream.append(results.benchmark(owner, "canonical", flow_form(owner, flow), spec.alignment))
            label = " / ".join(p for p in (spec.geometry, spec.alignment, spec.coupling, spec.variant) if p)
            sources.append({"source": flow, "experiment": owner, "trained_on": trained_on,
                            "label": f"{label} (flow on {trained_on})", "files": flow_samples(owner, flow),
                            "costs": [results.benchmark(owner, "train_flow", flow),
                                      results.benchmark(owner, "select_sampler", flow)],
                            "upstream": upstream})
    for i, source in enumerate(sources):
        source["inputs"] = {role: f"s{i}_{role}" for role in source["files"]}
    return sources


def fidelity_inputs(wildcards):
    """The fidelity stage's input files: the reference posterior's draws and every source's files."""
    exp = experiment_config(wildcards.experiment)
    files = {"reference": results.ensemble_weights(exp["evaluation"]["reference_posterior"])}
    for source in fidelity_sources(wildcards.experiment):
        files.update({source["inputs"][role]: path for role, path in source["files"].items()})
    return files


def fidelity_params(wildcards):
    exp = experiment_config(wildcards.experiment)
    reference = exp["evaluation"]["reference_posterior"]
    return {"sources": [{k: v for k, v in s.items() if k != "files"} for s in fidelity_sources(wildcards.experiment)],
            "reference": {"source": "hmc", "experiment": reference, "label": BASELINES["hmc"].label,
                          "costs": [results.benchmark(reference, "train_ensemble")]}}


def training_budgets(wildcards):
    """Per flow of the experiment: its vector field, width, steps and batch (the variant's overrides merged)."""
    budgets = {}
    for flow in flow_ids(wildcards.experiment):
        p = flow_params(config, wildcards.experiment, flow, ("model", "flow"))
        budgets[flow] = {"model": p["model"]["name"], "width": p["model"].get("width"),
                         "iterations": p["flow"]["iterations"], "batch_size": p["flow"]["batch_size"]}
    return budgets

