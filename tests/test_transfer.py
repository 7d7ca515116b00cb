"""Transfer experiments: a graph flow carried to a wider architecture, guided transfer stages, learned initialization."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from weightflow.data import load_dataset
from weightflow.evaluate.initialization import steps_to_reach, train_from
from weightflow.evaluate.transfer import retarget
from weightflow.flow.model_file import FlowModel, build_network
from weightflow.flow.paths import build_path
from weightflow.flow.sampling import sample
from weightflow.weights import MLPLayout, init_weights

SIZES = [4, 5, 3]
PARAMS = {"prior_std": 0.5, "bias_prior_std": 0.5, "last_radius": math.sqrt(3), "last_layer": "free"}


def make_flow(geometry: str, model: str) -> FlowModel:
    config = {"flow_id": f"{geometry}-none-ot", "layer_sizes": SIZES, "geometry": geometry, "path_params": PARAMS,
              "model": {"name": model, "width": 8, "depth": 1, "time_size": 8, **({"heads": 2} if model == "ngt" else {})},
              "model_seed": 0, "flow": {"objective": "velocity", "sigma": 0.0, "time_distribution": "uniform"}}
    return FlowModel(build_path(geometry, MLPLayout(SIZES), PARAMS), build_network(config).eval(), config, [])


@pytest.mark.parametrize("geometry", ["euclidean", "geometric"])
def test_retargeted_graph_flow_samples_wider_networks_with_the_same_parameters(geometry):
    flow = make_flow(geometry, "ngt")
    wide = retarget(flow, [4, 11, 3])
    assert wide.layout.layer_sizes == (4, 11, 3)
    old, new = flow.model.state_dict(), wide.model.state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    nets = sample(wide, 6, steps=4, generator=torch.Generator().manual_seed(0))
    assert nets.shape == (6, MLPLayout([4, 11, 3]).dim) and torch.isfinite(nets).all()
    if geometry == "geometric":
        assert wide.geometry.check_on_manifold(nets, tol=1e-5)
    # the wide field is equivariant too: permuting the 11 hidden neurons of the input permutes the output
    from weightflow.align.permutations import apply_permutations, random_permutations

    x = wide.sample_prior(3, generator=torch.Generator().manual_seed(1))
    perms = random_permutations(3, MLPLayout([4, 11, 3]), generator=torch.Generator().manual_seed(2))
    t = torch.full((3,), 0.4)
    out = wide.model(apply_permutations(x, MLPLayout([4, 11, 3]), perms), t)
    assert torch.allclose(out, apply_permutations(wide.model(x, t), MLPLayout([4, 11, 3]), perms), atol=1e-5)


def test_flat_mlp_and_other_shapes_cannot_be_retargeted():
    with pytest.raises(ValueError, match="flat MLP"):
        retarget(make_flow("euclidean", "mlp"), [4, 11, 3])
    with pytest.raises(ValueError, match="only hidden widths"):
        retarget(make_flow("euclidean", "ngt"), [4, 11, 2])


def test_training_from_a_good_start_needs_fewer_steps():
    """Starts near a trained solution reach 90 % of the prior start's final accuracy in fewer steps; each seed's
    starts share one minibatch order (same generator key), so equal starts give equal curves."""
    data = load_dataset("iris", seed=0)
    prior = init_weights(SIZES, 3, init_std=0.5, generator=torch.Generator().manual_seed(0))
    trained = train_from(prior, SIZES, data, steps=150, lr=0.05, batch_size=16, eval_every=150,
                         orders=[torch.Generator().manual_seed(s) for s in range(3)])
    assert trained[trained.step == 150].test_accuracy.mean() > 0.8
    theta = torch.cat([prior, prior.clone()])
    orders = [torch.Generator().manual_seed(s) for s in (0, 1, 2, 0, 1, 2)]
    twice = train_from(theta, SIZES, data, steps=5, lr=0.05, batch_size=16, eval_every=1, orders=orders)
    a, b = twice[twice.network < 3], twice[twice.network >= 3]
    assert a.test_accuracy.tolist() == b.test_accuracy.tolist()
    curves = pd.DataFrame(
        [{"start": "prior", "flow": "", "seed": s, "step": k, "test_accuracy": acc}
         for s in range(3) for k, acc in ((0, 0.3), (10, 0.6), (20, 0.9), (30, 1.0))]
        + [{"start": "flow", "flow": "f", "seed": s, "step": k, "test_accuracy": acc}
           for s in range(3) for k, acc in ((0, 0.5), (10, 0.95 if s else 0.85), (20, 1.0), (30, 1.0))])
    summary = steps_to_reach(curves).set_index("start")
    assert summary.loc["prior", "steps_mean"] == 20 and summary.loc["prior", "target_accuracy"] == pytest.approx(0.9)
    assert summary.loc["flow", "steps_mean"] == pytest.approx(40 / 3) and summary.loc["flow", "seeds_reached"] == 3
