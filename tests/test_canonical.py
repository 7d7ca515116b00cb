"""ReLU-scale canonicalization: function preservation, idempotence, orbit invariance, dead neurons."""

from __future__ import annotations

import math

import pytest
import torch

from weightflow.canonical import canonical_stage, canonicalize, canonicalize_chunked, scale_extras
from weightflow.data import load_dataset
from weightflow.ensemble import EnsembleConfig, train_ensemble
from weightflow.io import WeightsFile, load_weights, save_weights
from weightflow.manifold import ProductSpheres
from weightflow.plots.canonical import geometry_stage, layer_angles
from weightflow.runner import StageJob
from weightflow.utils import generator
from weightflow.weights import MLPLayout, accuracy, flatten, forward, init_weights, unflatten

SIZES = (13, 8, 6, 3)


def random_nets(n=32, sizes=SIZES, *keys):
    """Gaussian networks whose neurons have very different incoming scales (log-normal factors)."""
    gen = generator(0, "test_canonical", *keys)
    flat = init_weights(sizes, n, init_std=0.5, bias_std=0.3, generator=gen)
    layers = unflatten(flat, sizes)
    scaled = [(w * torch.exp(torch.randn(*w.shape[:-1], 1, generator=gen)), b) for w, b in layers]
    return flatten(scaled)


@pytest.fixture(scope="module")
def wine():
    return load_dataset("wine", seed=0)


@pytest.fixture(scope="module")
def wine_ensemble(wine):
    """A real (small) trained ensemble: 8 runs of a 13-8-6-3 MLP on wine, all snapshots."""
    cfg = EnsembleConfig(runs=8, epochs=6, batch_size=32, lr=0.01, burn_in_epochs=2, snapshot_every=4)
    return train_ensemble(wine, SIZES, cfg, seed=0).snapshots


def relative_error(a, b):
    return ((a - b).norm(dim=(-2, -1)) / b.norm(dim=(-2, -1))).max().item()


def check_function(flat, canonical, scales, x):
    """Logits of the canonical nets times s_L equal the raw logits; labels are unchanged."""
    raw, canon = forward(flat, SIZES, x), forward(canonical, SIZES, x)
    s_last = scales[-1][:, :, None]
    assert (s_last > 0).all()
    assert relative_error(canon * s_last, raw) <= 1e-5
    assert torch.equal(canon.argmax(-1), raw.argmax(-1))
    return raw, canon


def test_function_preserved_on_random_networks(wine):
    flat = random_nets()
    canonical, scales = canonicalize(flat, SIZES)
    check_function(flat, canonical, scales, wine.x_test)
    # hidden canonicalization alone leaves the logits unchanged: with last_radius = the last layer's norm
    # after the hidden steps (= sqrt(C) s_L), the last step is the identity
    for i in range(3):  # last_radius is a scalar: check three networks one by one
        radius = math.sqrt(3) * float(scales[-1][i])
        one, s = canonicalize(flat[i:i + 1], SIZES, last_radius=radius)
        assert s[-1].item() == pytest.approx(1.0, abs=1e-6)
        raw = forward(flat[i:i + 1], SIZES, wine.x_test)
        assert relative_error(forward(one, SIZES, wine.x_test), raw) <= 1e-5


def test_function_preserved_on_trained_ensemble(wine, wine_ensemble):
    flat = wine_ensemble.weights
    canonical, scales = canonicalize(flat, SIZES)
    check_function(flat, canonical, scales, wine.x_test)
    x, y = wine.split("test")
    assert torch.equal(accuracy(canonical, SIZES, x, y), accuracy(flat, SIZES, x, y))
    assert ProductSpheres(SIZES).norm_deviation(canonical).max() <= 1e-6


@pytest.mark.parametrize("last_radius", [None, 2.0])
def test_unit_norms_and_idempotence(last_radius):
    flat = random_nets(64)
    geom = ProductSpheres(SIZES, last_radius=last_radius)
    canonical, scales = canonicalize(flat, SIZES, last_radius)
    assert canonical.dtype == flat.dtype and canonical.shape == flat.shape
    assert [tuple(s.shape) for s in scales] == [(64, 8), (64, 6), (64, 1)]
    assert geom.norm_deviation(canonical).max() <= 1e-6
    last = unflatten(canonical, SIZES)[-1][0].flatten(-2).norm(dim=-1)
    expected = math.sqrt(3) if last_radius is None else last_radius
    assert torch.allclose(last, torch.full_like(last, expected), rtol=1e-6)
    again, scales2 = canonicalize(canonical, SIZES, last_radius)
    assert (again - canonical).abs().max() <= 1e-6
    for s in scales2:
        assert (s - 1).abs().max() <= 1e-6


def test_orbit_invariance():
    """Any positive rescaling of hidden neurons (and of the last layer) has the same canonical form."""
    flat = random_nets(16, SIZES, "orbit").double()
    gen = generator(0, "orbit-scales")
    layers = [list(p) for p in unflatten(flat, SIZES)]
    for l in range(len(layers) - 1):
        s = torch.exp(2 * torch.randn(16, layers[l][1].shape[-1], generator=gen, dtype=flat.dtype))
        layers[l][0] = layers[l][0] * s[..., None]
        layers[l][1] = layers[l][1] * s
        layers[l + 1][0] = layers[l + 1][0] / s[:, None, :]
    c = torch.rand(16, 1, generator=gen, dtype=flat.dtype) + 0.1
    layers[-1] = [layers[-1][0] * c[..., None], layers[-1][1] * c]
    moved = flatten(layers)
    assert torch.allclose(canonicalize(moved, SIZES)[0], canonicalize(flat, SIZES)[0], atol=1e-10)


def test_batched_equals_one_by_one():
    flat = random_nets(6)
    canonical, scales = canonicalize(flat, SIZES)
    chunked, chunked_scales = canonicalize_chunked(flat, SIZES, chunk_size=4)
    assert torch.equal(chunked, canonical) and all(torch.equal(a, b) for a, b in zip(chunked_scales, scales))
    for i in range(6):
        one, s = canonicalize(flat[i:i + 1], SIZES)
        assert torch.allclose(one, canonical[i:i + 1], atol=1e-7)
        assert all(torch.allclose(a, b[i:i + 1]) for a, b in zip(s, scales))


def test_dead_neurons_are_folded_without_nan(wine):
    flat = random_nets(4, SIZES, "dead").double()
    layers = [list(p) for p in unflatten(flat.clone(), SIZES)]
    layers[0][0][0, 2] = 0.0   # net 0, layer 1, neuron 2: zero incoming weights ...
    layers[0][1][0, 2] = 0.8   # ... and a positive bias: constant output relu(0.8) = 0.8
    layers[1][0][1, :5, :] = 0.0  # net 1: five of the six neurons of layer 2 are dead
    layers[1][1][1, :5] = torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3], dtype=flat.dtype)
    flat = flatten(layers)
    canonical, scales = canonicalize(flat, SIZES)
    assert torch.isfinite(canonical).all() and all(torch.isfinite(s).all() for s in scales)
    assert scales[0][0, 2] == 0 and (scales[1][1, :5] == 0).all() and scales[1][1, 5] > 0
    assert ProductSpheres(SIZES).norm_deviation(canonical).max() <= 1e-12
    x = wine.x_test.double()
    raw, canon = forward(flat, SIZES, x), forward(canonical, SIZES, x)
    assert relative_error(canon * scales[-1][:, :, None], raw) <= 1e-10
    canon_layers = unflatten(canonical, SIZES)
    assert torch.equal(canon_layers[0][0][0, 2], torch.eye(13, dtype=flat.dtype)[0])  # incoming e_1
    assert canon_layers[0][1][0, 2] == 0 and (canon_layers[1][0][0, :, 2] == 0).all()  # bias 0, outgoing 0
    again, scales2 = canonicalize(canonical, SIZES)
    assert torch.allclose(again, canonical, atol=1e-12)
    assert all(torch.allclose(s, torch.ones_like(s)) for s in scales2)


def test_dead_last_layer_is_finite():
    flat = random_nets(2)
    w_start, b_start, _ = MLPLayout(SIZES).offsets[-1]
    flat[1, w_start:b_start] = 0.0
    canonical, scales = canonicalize(flat, SIZES)
    assert torch.isfinite(canonical).all() and scales[-1][1, 0] == 0 and scales[-1][0, 0] > 0
    assert ProductSpheres(SIZES).norm_deviation(canonical).max() <= 1e-6
    assert torch.equal(canonical[1, b_start:], flat[1, b_start:])  # the constant logits' bias is kept


def test_canonical_stage_keeps_columns_and_adds_scales(tmp_path, wine_ensemble):
    src, dst = tmp_path / "aligned.pt", tmp_path / "canonical.pt"
    n = len(wine_ensemble)
    wf = WeightsFile(wine_ensemble.weights, SIZES, columns=wine_ensemble.columns,
                     extras={"perm.0": torch.arange(8).repeat(n, 1)}, metadata={"dataset": "wine"})
    save_weights(src, wf)
    cfg = {"layer_sizes": list(SIZES), "canonical": {"last_layer": "free", "last_radius": 1.5, "dead_tol": 1e-12}}
    job = StageJob(inputs={"weights": str(src)}, outputs={"weights": str(dst)}, params={"cfg": cfg},
                   wildcards={"experiment": "wine", "reference": "ref0", "form": "sphere"})
    canonical_stage(job)
    out = load_weights(dst, layer_sizes=SIZES)
    assert set(out.columns) == set(wf.columns)
    assert all(torch.equal(out.columns[k], wf.columns[k]) for k in wf.columns)
    assert torch.equal(out.extras["perm.0"], wf.extras["perm.0"])
    assert out.extras["scale.0"].shape == (n, 8) and out.extras["scale.2"].shape == (n, 1)
    assert out.metadata["dataset"] == "wine" and out.metadata["canonical"]["reference"] == "ref0"
    assert out.metadata["canonical"]["last_layer"] == "sphere"  # the {form} wildcard, not the config default
    expect, _ = canonicalize(wf.weights, SIZES, 1.5)
    assert torch.equal(out.weights, expect)
    job.inputs, job.outputs = {"weights": str(dst)}, {"weights": str(tmp_path / "twice.pt")}
    with pytest.raises(ValueError, match="canonical already"):
        canonical_stage(job)


def test_free_form_keeps_the_logits_exactly(wine, wine_ensemble):
    """Function-preserving form: hidden neurons on unit spheres, the last layer absorbs the scales; the canonical
    networks compute the raw networks' logits (relative error <= 1e-5 in float32) and lie on the manifold with a
    Euclidean last layer."""
    flat = wine_ensemble.weights
    canonical, scales = canonicalize(flat, SIZES, last_layer="free")
    raw, canon = forward(flat, SIZES, wine.x_test), forward(canonical, SIZES, wine.x_test)
    assert relative_error(canon, raw) <= 1e-5
    assert torch.equal(scales[-1], torch.ones_like(scales[-1]))
    geom = ProductSpheres(SIZES, last_layer="free")
    assert geom.num_factors == 8 + 6 and geom.norm_deviation(canonical).max() <= 1e-6
    # the hidden part is the sphere form's: the two forms differ only by the last layer's scale s_L
    sphere, sphere_scales = canonicalize(flat, SIZES, last_layer="sphere")
    w_start = MLPLayout(SIZES).offsets[-1][0]
    assert torch.allclose(canonical[:, :w_start], sphere[:, :w_start])
    assert torch.allclose(canonical[:, w_start:], sphere[:, w_start:] * sphere_scales[-1], rtol=1e-5, atol=1e-6)
    # idempotent, and invariant to any positive rescaling of hidden neurons
    again, scales2 = canonicalize(canonical, SIZES, last_layer="free")
    assert (again - canonical).abs().max() <= 1e-5 and all((s - 1).abs().max() <= 1e-5 for s in scales2)
    layers = [list(p) for p in unflatten(flat.double(), SIZES)]
    s = torch.exp(torch.randn(len(flat), 8, generator=generator(0, "free-orbit"), dtype=torch.float64))
    layers[0][0], layers[0][1] = layers[0][0] * s[..., None], layers[0][1] * s
    layers[1][0] = layers[1][0] / s[:, None, :]
    moved = canonicalize(flatten(layers), SIZES, last_layer="free")[0]
    assert torch.allclose(moved, canonicalize(flat.double(), SIZES, last_layer="free")[0], atol=1e-9)


def test_layer_angles_and_figure_stage(tmp_path):
    geom = ProductSpheres(SIZES)
    x = geom.sample_prior(5, generator(0, "figure"), dtype=torch.float64)
    assert layer_angles(x, x[2], geom)[2].abs().max() < 1e-7
    antipodes = geom.project(torch.where(geom.sphere_mask, -x[0], x[0]))
    assert torch.allclose(layer_angles(x[:1], antipodes, geom), torch.full((1, 3), math.pi, dtype=x.dtype))
    flat = random_nets(12, SIZES, "figure")
    canonical, scales = canonicalize(flat, SIZES)
    columns = {"run": torch.arange(12), "final": torch.ones(12, dtype=torch.long)}
    paths = {"none": tmp_path / "none.pt", "ref0": tmp_path / "ref0.pt"}
    for name, path in paths.items():
        save_weights(path, WeightsFile(canonical, SIZES, columns=columns, extras=scale_extras(scales),
                                       metadata={"reference_row": 3} if name == "ref0" else {}))
    cfg = {"name": "test", "layer_sizes": list(SIZES), "canonical": {"last_radius": None, "dead_tol": 1e-12}}
    outputs = {"pdf": str(tmp_path / "fig.pdf"), "png": str(tmp_path / "fig.png")}
    geometry_stage(StageJob(inputs={k: str(v) for k, v in paths.items()}, outputs=outputs, params={"cfg": cfg}))
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("fig.pdf", "fig.png"))


@pytest.mark.slow
def test_smoke_pipeline_canonical_weights(smoke_workdir):
    """The `canonical` rule's outputs on the smoke DAG, in both forms: on their manifold, same rows as their
    sources; the free form computes the same logits, the sphere form the logits divided by s_L."""
    results = smoke_workdir / "results" / "smoke"
    sizes = (4, 6, 3)
    x = load_dataset("iris", seed=0).x_test
    checked = 0
    for form in ("free", "sphere"):
        for reference, source in (("none", "ensemble/weights.pt"), ("ref0", "aligned/ref0/weights.pt")):
            path = results / "canonical" / form / reference / "weights.pt"
            if not path.exists():  # the smoke DAG builds the forms and references its flows use
                continue
            raw, out = load_weights(results / source), load_weights(path)
            assert ProductSpheres(sizes, last_layer=form).norm_deviation(out.weights).max() <= 1e-6
            assert all(torch.equal(out.columns[k], v) for k, v in raw.columns.items())
            assert set(raw.extras) < set(out.extras) and out.metadata["canonical"]["reference"] == reference
            assert out.metadata["canonical"]["last_layer"] == form
            logits = forward(out.weights, sizes, x) * out.extras["scale.1"][:, :, None]
            assert relative_error(logits, forward(raw.weights, sizes, x)) <= 1e-5
            checked += 1
    assert checked >= 3
    assert (results / "figures" / "canonical_geometry.png").stat().st_size > 1000
