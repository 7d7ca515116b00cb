"""Checks on a (schema-validated) config that a JSON schema cannot express, and per-experiment params.

The schema (config/schema.yaml) types every field and fills defaults; :func:`check_config` then checks
cross-field consistency (layer sizes vs the dataset's features and classes, ...).  Errors name the field
as a dotted path, e.g. ``experiments.breast_cancer.layer_sizes``.
"""

from __future__ import annotations

import copy
from typing import Any

from weightflow.dataset_registry import dataset_shapes

__all__ = ["ConfigError", "check_config", "check_evaluation_config", "check_flows", "experiment_params", "flow_params",
           "flow_representation", "deep_merge", "DATASET_SHAPES", "VARIANT_SECTIONS"]

# (num_features, num_classes) of each dataset with data, from the one registry (weightflow.dataset_registry).
DATASET_SHAPES = dataset_shapes()


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
    check_flows(config)


# Config sections a flow variant (``variants.{name}``) may override.
VARIANT_SECTIONS = ("model", "flow", "canonical")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override``'s entries (nested dicts merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_flows(config: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` naming the field when a flow id names an alignment reference that is not in
    ``alignment.references``, or a variant that ``variants`` does not define; with the parsed ``schema``, also
    validate every variant's merged sections against the schema of their section."""
    from weightflow.flow.spec import FlowSpec  # torch-free

    for name, exp in config["experiments"].items():
        where = f"experiments.{name}"
        references = set(exp.get("alignment", {}).get("references", [])) | {"none"}
        variants = exp.get("variants", {})
        for index, flow_id in enumerate(exp.get("flows", [])):
            spec = FlowSpec.parse(flow_id)
            if spec.alignment not in references:
                raise ConfigError(f"{where}.flows[{index}]: {flow_id!r} aligns onto {spec.alignment!r}, which is not "
                                  f"in alignment.references {sorted(references - {'none'})} (or 'none')")
            if spec.variant is not None and spec.variant not in variants:
                raise ConfigError(f"{where}.flows[{index}]: {flow_id!r} names variant {spec.variant!r}, which "
                                  f"{where}.variants does not define (defined: {sorted(variants)})")
        if schema is None:
            continue
        import jsonschema

        for variant, overrides in variants.items():
            for section, values in overrides.items():
                merged = deep_merge(exp.get(section, {}), values)
                validator = jsonschema.Draft202012Validator(schema["$defs"][section])
                for error in validator.iter_errors(merged):
                    path = ".".join(str(p) for p in error.absolute_path)
                    raise ConfigError(f"{where}.variants.{variant}.{section}{'.' + path if path else ''}: "
                                      f"{error.message}")


# Experiment fields every stage sees (the data and the architecture); the sections are handed out per rule.
BASE_FIELDS = ("dataset", "data_root", "layer_sizes", "seed", "val_fraction", "test_fraction", "max_examples")


# Evaluation fields naming another experiment, and the optimizer that experiment must use.
OTHER_EXPERIMENTS = {"sgld": "sgld", "sghmc": "sghmc", "reference_posterior": "hmc"}


def check_evaluation_config(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the field if ``evaluation.sgld`` / ``sghmc`` / ``reference_posterior``,
    ``evaluation.steps_flows`` or ``evaluation.guided_flows`` of an experiment does not refer to what exists (an
    experiment with the same data and the right optimizer; the experiment's own flows), or ``sampling.main`` is not
    an unguided sampler."""
    experiments = config["experiments"]
    for name, exp in experiments.items():
        section = exp["evaluation"]
        where = f"experiments.{name}.evaluation"
        for field, optimizer in OTHER_EXPERIMENTS.items():
            other = section.get(field)
            if other is None:
                continue
            if other not in experiments:
                raise ConfigError(f"{where}.{field}: no experiment named {other!r}")
            for key in ("dataset", "seed", "layer_sizes", "val_fraction", "test_fraction", "max_examples"):
                if experiments[other][key] != exp[key]:
                    raise ConfigError(f"{where}.{field}: experiment {other!r} has {key} {experiments[other][key]!r}, "
                                      f"this one {exp[key]!r}; they must match")
            if experiments[other]["ensemble"]["optimizer"] != optimizer:
                raise ConfigError(f"{where}.{field}: experiment {other!r} trains with optimizer "
                                  f"{experiments[other]['ensemble']['optimizer']!r}, not {optimizer}")
        for field in ("steps_flows", "guided_flows"):
            unknown = sorted(set(section.get(field) or []) - set(exp["flows"]))
            if unknown:
                raise ConfigError(f"{where}.{field}: {unknown} are not flows of this experiment ({exp['flows']})")
        check_transfer_config(name, exp, experiments)
        sampling = exp.get("sampling", {})
        main, samplers = sampling.get("main"), sampling.get("samplers", {})
        if main is not None and (main not in samplers or samplers[main].get("guidance", 0) > 0):
            unguided = sorted(n for n, o in samplers.items() if o.get("guidance", 0) <= 0)
            raise ConfigError(f"experiments.{name}.sampling.main: {main!r} is not an unguided sampler of "
                              f"sampling.samplers (unguided: {unguided}); a flow's own samples are never guided")
        if exp["flows"] and samplers and all(o.get("guidance", 0) > 0 for o in samplers.values()):
            raise ConfigError(f"experiments.{name}.sampling.samplers: every sampler is guided; the flows' own "
                              "samples need one without guidance (e.g. euler: {steps: 100})")


def check_transfer_config(name: str, exp: dict[str, Any], experiments: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the field when ``transfer`` names a task of another shape, flows the
    experiment does not train, or a wider architecture that changes more than hidden widths."""
    transfer = exp.get("transfer") or {}
    where = f"experiments.{name}.transfer"
    task = transfer.get("task")
    if task is not None:
        if task not in experiments:
            raise ConfigError(f"{where}.task: no experiment named {task!r}")
        sizes, other = exp["layer_sizes"], experiments[task]["layer_sizes"]
        if (sizes[0], sizes[-1]) != (other[0], other[-1]):
            raise ConfigError(f"{where}.task: experiment {task!r} has {other[0]} inputs and {other[-1]} classes, "
                              f"this one {sizes[0]} and {sizes[-1]}; guidance needs the same")
    elif transfer.get("flows") or transfer.get("initialization", {}).get("flows"):
        raise ConfigError(f"{where}.task: transfer.flows need a task to transfer to")
    groups = {"flows": transfer.get("flows", []), "architecture.flows": transfer.get("architecture", {}).get("flows", []),
              "scaling.flows": transfer.get("scaling", {}).get("flows", []),
              "initialization.flows": transfer.get("initialization", {}).get("flows", [])}
    for field, flows in groups.items():
        allowed = exp["flows"] if field != "initialization.flows" else groups["flows"]
        unknown = sorted(set(flows) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}.{field}: {unknown} are not in {'flows' if allowed is exp['flows'] else where + '.flows'}")
    wide = transfer.get("architecture", {}).get("layer_sizes")
    if groups["architecture.flows"] and wide is None:
        raise ConfigError(f"{where}.architecture.layer_sizes: needed by architecture.flows")
    if wide is not None:
        sizes = exp["layer_sizes"]
        if len(wide) != len(sizes) or wide[0] != sizes[0] or wide[-1] != sizes[-1]:
            raise ConfigError(f"{where}.architecture.layer_sizes: {wide} must keep the layers, inputs and classes of "
                              f"{sizes} (only hidden widths may change)")


def flow_params(config: dict[str, Any], name: str, flow_id: str, sections: tuple[str, ...]) -> dict[str, Any]:
    """:func:`experiment_params` of experiment ``name`` for flow ``flow_id``: the flow's variant (the id's fourth
    part, ``variants.{variant}``) overrides the experiment's ``model`` / ``flow`` / ``canonical`` / ``likelihood``
    sections, so a flow's rules rerun when its own effective settings change, and only then."""
    from weightflow.flow.spec import FlowSpec  # torch-free

    params = experiment_params(config, name, sections)
    variant = FlowSpec.parse(flow_id).variant
    if variant is not None:
        for section, values in config["experiments"][name]["variants"][variant].items():
            if section in params:
                params[section] = deep_merge(params[section], values)
    return params


def flow_representation(config: dict[str, Any], name: str, flow_id: str) -> str:
    """What networks flow ``flow_id`` models: ``'raw'`` or ``'canonical-{form}'`` (its effective
    ``canonical.last_layer``); flows of one representation can score each other's samples."""
    from weightflow.flow.spec import FlowSpec  # torch-free

    spec = FlowSpec.parse(flow_id)
    if spec.representation == "raw":
        return "raw"
    return f"canonical-{flow_params(config, name, flow_id, ('canonical',))['canonical']['last_layer']}"


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
