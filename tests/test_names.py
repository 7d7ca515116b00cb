"""One place for each name: the schema's enums and patterns, the rules' wildcards and the stages all come from the
registries (weightflow.names, weightflow.flow.spec, weightflow.manifold, weightflow.flow.couplings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from weightflow import results
from weightflow.config import ConfigError, check_flows, flow_params, flow_representation
from weightflow.flow.couplings import COUPLINGS
from weightflow.flow.objectives import OBJECTIVES
from weightflow.flow.spec import COUPLING_NAMES, FLOW_ID_PATTERN, GEOMETRIES, FlowSpec
from weightflow.manifold import GEOMETRY_CLASSES, ProductSpheres
from weightflow.models import MODELS
from weightflow.names import (
    BASELINES,
    CANONICAL_FORMS,
    ENSEMBLE_STAGES,
    GRAPH_MODELS,
    POSTERIOR_BASELINES,
    REFERENCE_PATTERN,
    parse_reference,
    source_of,
    split_source,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
DEFS = SCHEMA["$defs"]


def test_schema_patterns_and_enums_are_the_registries():
    assert DEFS["experiment"]["properties"]["flows"]["items"]["pattern"] == f"^{FLOW_ID_PATTERN}$"
    assert DEFS["alignment"]["properties"]["references"]["items"]["pattern"] == f"^(?:{REFERENCE_PATTERN})$"
    assert DEFS["canonical"]["properties"]["last_layer"]["enum"] == list(CANONICAL_FORMS)
    assert DEFS["model"]["properties"]["name"]["enum"] == list(MODELS)
    assert DEFS["flow"]["properties"]["objective"]["enum"] == list(OBJECTIVES)
    assert set(COUPLING_NAMES) == set(COUPLINGS)
    assert {g.path for g in GEOMETRIES.values()} | {g.prior for g in GEOMETRIES.values()} <= set(GEOMETRY_CLASSES)
    assert ProductSpheres.LAST_LAYER_FORMS == CANONICAL_FORMS
    assert DEFS["ensemble"]["properties"]["optimizer"]["enum"] == list(ENSEMBLE_STAGES)
    assert DEFS["evaluation"]["properties"]["posterior_baselines"]["items"]["enum"] == list(POSTERIOR_BASELINES)
    assert set(GRAPH_MODELS) == {name for name, cls in MODELS.items() if getattr(cls, "equivariant", False)}
    variant_sections = DEFS["experiment"]["properties"]["variants"]["additionalProperties"]["properties"]
    assert all(section in DEFS for section in variant_sections)


def test_flow_ids_and_their_data_files():
    assert FlowSpec.parse("geometric-ref0-ot") == FlowSpec("geometric", "ref0", "ot")
    spec = FlowSpec.parse("geometric-ref0-ot-ngt")
    assert (spec.variant, spec.base_id, spec.id) == ("ngt", "geometric-ref0-ot", "geometric-ref0-ot-ngt")
    assert FlowSpec.parse("euclidean-none-independent").data_path("e", "free") == "results/e/ensemble/weights.pt"
    assert FlowSpec.parse("euclidean-ref0-ot").data_path("e", "sphere") == "results/e/aligned/ref0/weights.pt"
    assert FlowSpec.parse("normalized-none-ot").data_path("e", "free") == "results/e/canonical/free/none/weights.pt"
    assert FlowSpec.parse("geometric-ref0-ot-x").data_path("e", "sphere") == results.canonical_weights("e", "sphere",
                                                                                                       "ref0")
    for bad in ("spherical-none-ot", "geometric-ref0-ot-a-b", "geometric-ref-0-ot", "geometric-ref0-sinkhorn"):
        with pytest.raises(ValueError, match="flow id"):
            FlowSpec.parse(bad)


def test_reference_names():
    assert parse_reference("ref12") == ("ref", 12) and parse_reference("medoid") == ("medoid", None)
    assert re.fullmatch(REFERENCE_PATTERN, "ref3") and not re.fullmatch(REFERENCE_PATTERN, "none")
    with pytest.raises(ValueError, match="ref<k>"):
        parse_reference("reference")


def test_sources_round_trip():
    for kind in ("main", "guided", "control"):
        assert split_source(source_of("geometric-ref0-ot-ngt", kind)) == ("geometric-ref0-ot-ngt", kind)
    for name in BASELINES:
        assert split_source(name) == (name, None)
    assert BASELINES["ensemble_canonical"].stream == BASELINES["ensemble"].stream


def _config(**variants):
    exp = {"dataset": "iris", "layer_sizes": [4, 6, 3], "alignment": {"references": ["ref0"]},
           "flows": ["geometric-ref0-ot", "geometric-ref0-ot-sphere", "euclidean-none-ot-ngt"],
           "model": {"name": "mlp", "width": 32, "depth": 2}, "flow": {"objective": "velocity", "iterations": 10},
           "canonical": {"last_layer": "free", "last_radius": None, "dead_tol": 1e-12},
           "variants": {"sphere": {"canonical": {"last_layer": "sphere"}}, "ngt": {"model": {"name": "ngt"}}, **variants}}
    return {"experiments": {"e": exp}}


def test_variants_override_only_their_sections():
    config = _config()
    params = flow_params(config, "e", "euclidean-none-ot-ngt", ("model", "flow"))
    assert params["model"] == {"name": "ngt", "width": 32, "depth": 2}
    assert params["flow"] == config["experiments"]["e"]["flow"]
    assert flow_params(config, "e", "geometric-ref0-ot", ("model",))["model"]["name"] == "mlp"
    assert flow_representation(config, "e", "geometric-ref0-ot") == "canonical-free"
    assert flow_representation(config, "e", "geometric-ref0-ot-sphere") == "canonical-sphere"
    assert flow_representation(config, "e", "euclidean-none-ot-ngt") == "raw"
    check_flows(config, SCHEMA)


def test_bad_variants_and_references_name_the_field():
    config = _config()
    config["experiments"]["e"]["flows"].append("geometric-ref0-ot-nope")
    with pytest.raises(ConfigError, match=r"experiments\.e\.flows\[3\].*variant 'nope'"):
        check_flows(config)
    config = _config()
    config["experiments"]["e"]["flows"].append("geometric-medoid-ot")
    with pytest.raises(ConfigError, match=r"experiments\.e\.flows\[3\].*'medoid'"):
        check_flows(config)
    with pytest.raises(ConfigError, match=r"experiments\.e\.variants\.wide\.model\.width"):
        check_flows(_config(wide={"model": {"width": -3}}), SCHEMA)
    with pytest.raises(ConfigError, match=r"experiments\.e\.variants\.bad\.canonical\.last_layer"):
        check_flows(_config(bad={"canonical": {"last_layer": "cube"}}), SCHEMA)
