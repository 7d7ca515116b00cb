"""Names that the config schema, the workflow rules and the stages share — each written once, here.

This module imports nothing but the standard library: every Snakemake (and SLURM) job parses the rules, which
read these names, and must not pay for importing torch.

* :data:`REFERENCES` — alignment reference kinds (``alignment.references``): ``ref<k>`` and ``medoid``;
  :data:`REFERENCE_PATTERN` is the regular expression of a reference name (the schema's pattern and the rules'
  wildcard constraint are checked against / built from it).
* :data:`CANONICAL_FORMS` — the two canonical forms of the last layer (``canonical.last_layer``).
* :data:`ENSEMBLE_STAGES` — how each ``ensemble.optimizer`` makes an experiment's networks (training, or HMC).
* :data:`BASELINES` — the non-flow sources of networks the evaluation scores, in table order, with their row
  labels; :data:`SAMPLE_KINDS` — the three sample sets of every flow (its own samples, guided samples, the
  guidance-alone control) and the suffix that makes each an evaluation source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from weightflow import results

__all__ = [
    "ReferenceKind",
    "REFERENCES",
    "REFERENCE_PATTERN",
    "parse_reference",
    "CANONICAL_FORMS",
    "GRAPH_MODELS",
    "ENSEMBLE_STAGES",
    "Baseline",
    "POSTERIOR_BASELINES",
    "BASELINES",
    "SampleKind",
    "SAMPLE_KINDS",
    "source_of",
    "split_source",
]


@dataclass(frozen=True)
class ReferenceKind:
    """One kind of alignment reference: the regular expression of its names and what it selects."""

    pattern: str
    description: str


REFERENCES: dict[str, ReferenceKind] = {
    "ref": ReferenceKind(r"ref[0-9]+", "ref<k>: the final weights of run k"),
    "medoid": ReferenceKind(
        r"medoid",
        "medoid: the final-weights network with the smallest summed weight-matched squared L2 distance to the others",
    ),
}
REFERENCE_PATTERN = "|".join(kind.pattern for kind in REFERENCES.values())


def parse_reference(name: str) -> tuple[str, int | None]:
    """``'ref3'`` → ``('ref', 3)``, ``'medoid'`` → ``('medoid', None)``; a :class:`ValueError` lists the kinds."""
    for kind, spec in REFERENCES.items():
        match = re.fullmatch(spec.pattern, name)
        if match:
            digits = re.sub(r"\D", "", name)
            return kind, (int(digits) if digits else None)
    kinds = "; ".join(spec.description for spec in REFERENCES.values())
    raise ValueError(f"unknown reference {name!r} (alignment.references): use one of — {kinds}")


# Vector fields that read a network as its neural graph (equivariant, any hidden widths): they can be carried to
# another architecture (weightflow.models.MODELS[name].equivariant; tests/test_names.py checks).
GRAPH_MODELS = ("ngt", "ngt_dense", "pna")

# free: hidden neurons on unit spheres, the last layer Euclidean (function-preserving);
# sphere: the thesis' form, the last layer on the sphere of radius R (logits divided by s_L).
CANONICAL_FORMS = ("free", "sphere")


# How each ``ensemble.optimizer`` produces an experiment's "ensemble" (rule ``train_ensemble``): minibatch training
# of R runs (adam, sgd; the Langevin samplers sgld, sghmc), or full-batch HMC over chains (hmc: the reference
# posterior, posterior.hmc settings) — either way a weights file that alignment, canonicalization and flows take.
ENSEMBLE_STAGES: dict[str, str] = {
    "adam": "weightflow.ensemble.train_stage",
    "sgd": "weightflow.ensemble.train_stage",
    "sgld": "weightflow.ensemble.train_stage",
    "sghmc": "weightflow.ensemble.train_stage",
    "hmc": "weightflow.posterior.stages.hmc_ensemble_stage",
}


def _other_experiment(field: str) -> Callable[[str, dict[str, Any]], str]:
    """The ensemble file of the experiment named in ``evaluation.{field}``."""
    return lambda e, cfg: results.ensemble_weights(cfg["evaluation"][field])


def _named(field: str) -> Callable[[dict[str, Any]], bool]:
    return lambda cfg: cfg["evaluation"].get(field) is not None


def _listed(method: str) -> Callable[[dict[str, Any]], bool]:
    return lambda cfg: method in (cfg["evaluation"].get("posterior_baselines") or [])


@dataclass(frozen=True)
class Baseline:
    """A non-flow source of networks.

    ``label``: its row label; ``weights(experiment, experiment_config)``: its weights file; ``present(config)``:
    whether an experiment has it (``None``: decided by the experiment's flows — the canonical copies of the
    ensemble exist in the forms its flows use); ``stream``: the key of its random evaluation subsets — a source
    holding the same networks in another form (the canonical copies of the ensemble) shares the ensemble's, so
    both are scored on the same networks and BMA subsets; ``in_figures``: drawn in the BMA, calibration and
    diversity figures; ``posterior``: compared with the reference posterior in the fidelity table.
    """

    label: str
    description: str
    weights: Callable[[str, dict[str, Any]], str]
    stream: str
    present: Callable[[dict[str, Any]], bool] | None = lambda cfg: True
    in_figures: bool = True
    posterior: bool = True


BASELINES: dict[str, Baseline] = {
    "ensemble": Baseline("Target", "every snapshot of the ensemble: the distribution the flows are trained on",
                         lambda e, cfg: results.ensemble_weights(e), "ensemble"),
    "ensemble_canonical": Baseline(
        "Target (canonical)", "the ensemble snapshots through the canonical stage in the function-preserving form "
        "(last layer free)", lambda e, cfg: results.canonical_weights(e, "free", "none"), "ensemble", None,
        in_figures=False, posterior=False),
    "ensemble_sphere": Baseline(
        "Target (thesis form)", "the ensemble snapshots in the thesis' canonical form (last layer on a sphere)",
        lambda e, cfg: results.canonical_weights(e, "sphere", "none"), "ensemble", None, in_figures=False,
        posterior=False),
    "deep_ensemble": Baseline("Deep ensemble", "the final weights of every ensemble run",
                              lambda e, cfg: results.ensemble_weights(e), "deep_ensemble"),
    "sgld": Baseline("SGLD", "the snapshots of the SGLD experiment named in evaluation.sgld",
                     _other_experiment("sgld"), "sgld", _named("sgld")),
    "sghmc": Baseline("SGHMC", "the snapshots of the SGHMC experiment named in evaluation.sghmc",
                      _other_experiment("sghmc"), "sghmc", _named("sghmc")),
    "laplace": Baseline("Laplace", "Laplace approximations around the ensemble's final weights, sampled (posterior.laplace)",
                        lambda e, cfg: results.posterior_weights(e, "laplace"), "laplace", _listed("laplace")),
    "vi": Baseline("Mean-field VI", "mean-field Gaussian variational posteriors, sampled (posterior.vi)",
                   lambda e, cfg: results.posterior_weights(e, "vi"), "vi", _listed("vi")),
    "hmc": Baseline("HMC (reference)", "the draws of the HMC experiment named in evaluation.reference_posterior",
                    _other_experiment("reference_posterior"), "hmc", _named("reference_posterior"), posterior=False),
}
# Computed posterior baselines of an experiment (evaluation.posterior_baselines) and the stage that draws each.
POSTERIOR_BASELINES: dict[str, str] = {"laplace": "weightflow.posterior.stages.laplace_stage",
                                       "vi": "weightflow.posterior.stages.vi_stage"}


@dataclass(frozen=True)
class SampleKind:
    """One of a flow's sample sets: its file name under ``flows/{flow}/samples/`` and its source-id suffix."""

    file: str
    suffix: str
    label: str


SAMPLE_KINDS: dict[str, SampleKind] = {
    "main": SampleKind("main", "", "flow"),
    "guided": SampleKind("guided", "+guided", "guided"),
    "control": SampleKind("control", "+control", "guidance only"),
}


def source_of(flow_id: str, kind: str) -> str:
    """The evaluation source id of a flow's sample set: ``flow_id`` itself for its own samples,
    ``flow_id + '+guided'`` / ``'+control'`` for the guided samples and their guidance-alone control."""
    return flow_id + SAMPLE_KINDS[kind].suffix


def split_source(source: str) -> tuple[str, str | None]:
    """``(flow id or baseline name, sample kind)``: ``'geometric-ref0-ot+guided'`` → ``('geometric-ref0-ot',
    'guided')``; a baseline gives ``(name, None)``; a flow id without suffix gives ``(id, 'main')``."""
    if source in BASELINES:
        return source, None
    for kind, spec in SAMPLE_KINDS.items():
        if spec.suffix and source.endswith(spec.suffix):
            return source[: -len(spec.suffix)], kind
    return source, "main"
