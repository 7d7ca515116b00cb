"""Where every file of the pipeline lives under ``results/`` — written once, here, for the rules and the stages.

Each function returns a path relative to the workflow root.  Arguments may be Snakemake wildcards
(``results.flow_model("{experiment}", "{flow}")`` is the rule's output pattern) or real names (a stage or a
notebook asking for a concrete file).  Torch-free: every Snakemake job imports it.

Layout::

    results/{experiment}/
      ensemble/weights.pt, metrics.csv                 base networks (snapshots of every run)
      aligned/{reference}/weights.pt                    the ensemble aligned onto a reference
      canonical/{form}/{reference}/weights.pt           canonical weights (form: free | sphere; reference: none | ref…)
      posterior/{method}/weights.pt                     computed posterior baselines (laplace, vi)
      flows/{flow}/model.pt, train_log.csv, selection.csv
      flows/{flow}/samples/{name}.pt                    every sampler candidate, and main / guided / control
      evaluation/{source}/summary.json, networks.csv, bma.csv, reliability.csv
      tables/*.csv|.tex, figures/*.pdf|.png, logs/, benchmarks/
"""

from __future__ import annotations

__all__ = [
    "experiment_dir",
    "ensemble_weights",
    "aligned_weights",
    "aligned_or_raw_weights",
    "canonical_weights",
    "posterior_weights",
    "benchmark",
    "flow_dir",
    "flow_file",
    "flow_model",
    "flow_samples",
    "flow_selection",
    "evaluation_file",
    "table",
    "figure",
]


def experiment_dir(experiment: str) -> str:
    return f"results/{experiment}"


def ensemble_weights(experiment: str) -> str:
    return f"results/{experiment}/ensemble/weights.pt"


def aligned_weights(experiment: str, reference: str) -> str:
    return f"results/{experiment}/aligned/{reference}/weights.pt"


def aligned_or_raw_weights(experiment: str, reference: str) -> str:
    """The ensemble itself for reference ``none``, else its alignment onto ``reference``."""
    return ensemble_weights(experiment) if reference == "none" else aligned_weights(experiment, reference)


def canonical_weights(experiment: str, form: str, reference: str) -> str:
    return f"results/{experiment}/canonical/{form}/{reference}/weights.pt"


def posterior_weights(experiment: str, method: str) -> str:
    """Draws of a computed posterior baseline (``laplace``, ``vi``)."""
    return f"results/{experiment}/posterior/{method}/weights.pt"


def benchmark(experiment: str, rule: str, *wildcards: str) -> str:
    """The Snakemake benchmark file of a job (its wall and CPU seconds)."""
    return "/".join([f"results/{experiment}/benchmarks/{rule}", *wildcards]) + ".tsv"


def flow_dir(experiment: str, flow: str) -> str:
    return f"results/{experiment}/flows/{flow}"


def flow_file(experiment: str, flow: str, name: str) -> str:
    """File ``name`` of flow ``flow`` (``model.pt``, ``train_log.csv``, ``selection.csv``, ``loglik.csv``)."""
    return f"{flow_dir(experiment, flow)}/{name}"


def flow_model(experiment: str, flow: str) -> str:
    return flow_file(experiment, flow, "model.pt")


def flow_samples(experiment: str, flow: str, name: str) -> str:
    """Samples file ``name``: a sampler candidate (e.g. ``euler``, ``guided_l10``, ``guided_l10_control``) or one
    of the selected sets ``main`` / ``guided`` / ``control`` (:data:`weightflow.names.SAMPLE_KINDS`)."""
    return f"{flow_dir(experiment, flow)}/samples/{name}.pt"


def flow_selection(experiment: str, flow: str) -> str:
    return flow_file(experiment, flow, "selection.csv")


def evaluation_file(experiment: str, source: str, name: str) -> str:
    return f"results/{experiment}/evaluation/{source}/{name}"


def table(experiment: str, name: str, suffix: str = "csv") -> str:
    return f"results/{experiment}/tables/{name}.{suffix}"


def figure(experiment: str, name: str, suffix: str = "pdf") -> str:
    return f"results/{experiment}/figures/{name}.{suffix}"
