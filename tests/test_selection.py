"""Choosing samplers on the validation split: the candidates, the choice, and proof that the test split is never read."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

import weightflow.evaluate.stages as stages
from weightflow.data import load_dataset
from weightflow.evaluate.selection import sampler_candidates, select
from weightflow.flow.model_file import build_network, save_flow
from weightflow.flow.samples import load_candidates, load_samples
from weightflow.flow.stages import flow_config
from weightflow.flow.training import TrainSettings
from weightflow.runner import StageJob
from weightflow.weights import init_weights

SIZES = [4, 6, 3]
SAMPLING = {"num_samples": 12, "batch_size": 5, "main": None, "select": {"criterion": "nll"},
            "guidance_grid": [0.3, 3.0],
            "samplers": {"euler": {"method": "euler", "steps": 6},
                         "stochastic": {"method": "euler", "steps": 6, "noise": 0.5, "noise_range": [0.0, 0.9]},
                         "guided": {"method": "euler", "steps": 6, "guidance": 10.0, "guidance_batch": 32}}}


def test_candidates_expand_the_guidance_grid_with_controls():
    names = [c.name for c in sampler_candidates(SAMPLING)]
    assert names == ["euler", "stochastic", "guided_l0p3", "guided_l0p3_control", "guided_l3", "guided_l3_control"]
    cands = {c.name: c for c in sampler_candidates(SAMPLING)}
    assert cands["guided_l3"].guidance == 3.0 and cands["guided_l3_control"].control
    assert cands["stochastic"].options["noise_range"] == (0.0, 0.9) and "guidance" not in cands["euler"].options
    no_grid = dict(SAMPLING, guidance_grid=[])
    assert [c.name for c in sampler_candidates(no_grid)][2:] == ["guided_l10", "guided_l10_control"]


def test_select_picks_by_the_declared_criterion():
    scores = pd.DataFrame({
        "candidate": ["euler", "stochastic", "guided_l1", "guided_l1_control", "guided_l3", "guided_l3_control"],
        "sampler": ["euler", "stochastic", "guided", "guided", "guided", "guided"],
        "guidance": [0, 0, 1.0, 1.0, 3.0, 3.0], "control": [False, False, False, True, False, True],
        "nll": [0.5, 0.4, 0.30, 0.01, 0.35, 0.02], "accuracy": [0.8, 0.7, 0.9, 0.99, 0.95, 0.99]})
    assert select(scores, "nll") == {"main": "stochastic", "guided": "guided_l1", "control": "guided_l1_control"}
    assert select(scores, "accuracy") == {"main": "euler", "guided": "guided_l3", "control": "guided_l3_control"}
    assert select(scores, "nll", pinned_main="euler")["main"] == "euler"
    with pytest.raises(ValueError, match="sampling.main"):
        select(scores, "nll", pinned_main="guided")
    with pytest.raises(ValueError, match="criterion"):
        select(scores, "brier")
    nan = scores.assign(nll=[float("nan"), 0.9, 0.3, 0.3, 0.3, 0.3])
    assert select(nan, "nll")["main"] == "stochastic"  # a diverged (NaN) candidate never wins


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An (untrained) geometric flow on iris networks: the selection logic does not need a good flow."""
    data = init_weights(SIZES, 40, init_std=0.5, bias_std=0.1, generator=torch.Generator().manual_seed(0))
    cfg = {"name": "toy", "dataset": "iris", "seed": 0, "layer_sizes": SIZES,
           "ensemble": {"init_std": 0.5}, "canonical": {"last_layer": "free"},
           "model": {"name": "mlp", "width": 16, "depth": 1, "time_size": 8},
           "flow": dataclasses.asdict(TrainSettings(objective="velocity"))}
    config = flow_config(cfg, "geometric-none-ot", data)
    path = tmp_path_factory.mktemp("flow") / "model.pt"
    save_flow(path, build_network(config), config, holdout_runs=[])
    return path


def _run_select(model_file, out, data):
    cfg = {"name": "toy", "dataset": "iris", "seed": 0, "layer_sizes": SIZES, "device": "cpu", "sampling": SAMPLING,
           "val_fraction": 0.2, "test_fraction": 0.2}
    job = StageJob(inputs={"model": str(model_file)}, params={"cfg": cfg}, wildcards={"flow": "geometric-none-ot"},
                   outputs={"candidates": out / "candidates.pt", "selection": out / "selection.csv"})
    original = stages.load_experiment_data
    stages.load_experiment_data = lambda cfg: data
    try:
        stages.select_stage(job)
    finally:
        stages.load_experiment_data = original
    return out / "candidates.pt", out / "selection.csv"


def test_selection_never_reads_the_test_split(model_file, tmp_path):
    """Garbage test inputs and labels leave selection.csv (choices and every validation score) and every candidate's
    samples byte-identical; garbage validation labels change the scores."""
    data = load_dataset("iris", seed=0)
    gen = torch.Generator().manual_seed(9)
    garbage_test = dataclasses.replace(data, x_test=100 * torch.randn(data.x_test.shape, generator=gen),
                                       y_test=torch.randint(3, data.y_test.shape, generator=gen))
    garbage_val = dataclasses.replace(data, y_val=(data.y_val + 1) % 3)
    runs = {}
    for name, variant in (("clean", data), ("test", garbage_test), ("val", garbage_val)):
        (tmp_path / name).mkdir()
        runs[name] = _run_select(model_file, tmp_path / name, variant)
    clean, test, val = ([p.read_bytes() for p in runs[k]] for k in ("clean", "test", "val"))
    assert clean == test
    assert clean[1] != val[1]
    table = pd.read_csv(runs["clean"][1], keep_default_na=False)
    assert sorted(table["selected"]) == ["", "", "", "control", "guided", "main"]
    main = table.loc[table["selected"] == "main", "candidate"].item()
    assert main in ("euler", "stochastic")
    unguided = table[table["guidance"] == 0]
    assert table.loc[table["candidate"] == main, "val_nll"].item() == unguided["val_nll"].min()
    # every candidate starts from the same prior draws; the selected sets are the candidates' networks
    cands = load_candidates(runs["clean"][0], layer_sizes=SIZES)
    assert set(cands) == set(table["candidate"])
    own = load_samples(*runs["clean"], "main", layer_sizes=SIZES)
    assert torch.equal(own.weights, cands[main].weights) and own.metadata["samples"] == "main"
    guided = load_samples(*runs["clean"], "guided", layer_sizes=SIZES)
    control = load_samples(*runs["clean"], "control", layer_sizes=SIZES)
    assert control.metadata["candidate"] == guided.metadata["candidate"] + "_control"
    assert control.metadata["guidance"] == guided.metadata["guidance"] and control.metadata["control"]


def test_steps_figure_takes_the_selected_guidance_only_when_there_is_one():
    with_guided = pd.DataFrame({"candidate": ["euler", "guided_l3", "guided_l3_control"], "guidance": [0.0, 3.0, 3.0],
                                "selected": ["main", "guided", "control"]})
    unguided_only = pd.DataFrame({"candidate": ["euler"], "guidance": [0.0], "selected": ["main"]})
    assert stages.steps_guidance(with_guided, True) == [0.0, 3.0]
    assert stages.steps_guidance(with_guided, False) == [0.0]
    assert stages.steps_guidance(unguided_only, True) == [0.0]  # no guided sampler configured: no guided curve
