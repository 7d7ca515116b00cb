"""Checks on a (schema-validated) config that a JSON schema cannot express, and per-experiment params.

The schema (config/schema.yaml) types every field and fills defaults; :func:`check_config` then checks
cross-field consistency (layer sizes vs the dataset's features and classes, ...).  Errors name the field
as a dotted path, e.g. ``experiments.breast_cancer.layer_sizes``.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["ConfigError", "check_config", "check_evaluation_config", "experiment_params", "DATASET_SHAPES"]

# (num_features, num_classes) of each dataset with data.
DATASET_SHAPES = {
    "breast_cancer": (30, 2),
    "digits": (64, 10),
    "wine": (13, 3),
    "iris": (4, 3),
    "mnist": (784, 10),
    "fashion_mnist": (784, 10),
}


class ConfigError(ValueError):
    """An inconsistent config; the message names the field."""


def check_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the field when an experiment is inconsistent."""
    for name, exp in config["experiments"].items():
        where = f"experiments.{name}"
        sizes = exp["layer_sizes"]
        shape = DATASET_SHAPES.get(exp["dataset"])
        if shape is not None and (sizes[0], sizes[-1]) != shape:
            raise ConfigError(
                f"{where}.layer_sizes: {sizes} does not fit dataset {exp['dataset']!r}, which has "
                f"{shape[0]} features and {shape[1]} classes (layer_sizes must start with {shape[0]} and end with {shape[1]})"
            )
        ens = exp.get("ensemble", {})
        if ens and ens.get("burn_in_epochs", 0) >= ens.get("epochs", 1):
            raise ConfigError(
                f"{where}.ensemble.burn_in_epochs: {ens['burn_in_epochs']} must be smaller than epochs ({ens['epochs']}), "
                "or no snapshot is ever taken"
            )
    if all("evaluation" in exp and "flows" in exp for exp in config["experiments"].values()):
        check_evaluation_config(config)


# Experiment fields every stage sees (the data and the architecture); the sections are handed out per rule.
BASE_FIELDS = ("dataset", "data_root", "layer_sizes", "seed", "val_fraction", "test_fraction")


def check_evaluation_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the field if ``evaluation.sgld`` or ``evaluation.steps_flows`` of an
    experiment does not refer to what exists (an experiment with the same data; the experiment's own flows)."""
    experiments = config["experiments"]
    for name, exp in experiments.items():
        section = exp["evaluation"]
        where = f"experiments.{name}.evaluation"
        other = section["sgld"]
        if other is not None:
            if other not in experiments:
                raise ConfigError(f"{where}.sgld: no experiment named {other!r}")
            for key in ("dataset", "seed", "layer_sizes", "val_fraction", "test_fraction"):
                if experiments[other][key] != exp[key]:
                    raise ConfigError(f"{where}.sgld: experiment {other!r} has {key} {experiments[other][key]!r}, "
                                      f"this one {exp[key]!r}; they must match")
            if experiments[other]["ensemble"]["optimizer"] != "sgld":
                raise ConfigError(f"{where}.sgld: experiment {other!r} trains with optimizer "
                                  f"{experiments[other]['ensemble']['optimizer']!r}, not sgld")
        unknown = sorted(set(section["steps_flows"] or []) - set(exp["flows"]))
        if unknown:
            raise ConfigError(f"{where}.steps_flows: {unknown} are not flows of this experiment ({exp['flows']})")


def experiment_params(config: dict[str, Any], name: str, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The config of experiment ``name`` (a deep copy) plus its ``name`` and the global ``device``.

    With ``sections``, only the base fields (:data:`BASE_FIELDS`) and those sections are kept: a rule declares
    the sections its stage reads, so that editing one section of the config reruns only the rules that use it.
    """
    exp = copy.deepcopy(config["experiments"][name])
    if sections is not None:
        exp = {k: v for k, v in exp.items() if k in BASE_FIELDS or k in sections}
    exp["name"] = name
    exp["device"] = config.get("device", "auto")
    return exp
