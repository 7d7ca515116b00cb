"""Loss barriers: closed-form endpoint identities, agreement with nn.Module losses, alignment lowers barriers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from weightflow.align import apply_permutations, random_permutations, weight_matching
from weightflow.barriers import barrier_table, barriers_stage, lambda_grid, loss_barriers, path_losses, sample_pairs
from weightflow.data import load_dataset
from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights
from weightflow.plots.barriers import loss_barriers_stage
from weightflow.runner import StageJob
from weightflow.weights import forward, to_sequential

from trained_networks import seeded, train_networks

SIZES = [30, 16, 16, 2]
BCFG = {"pairs": 15, "grid_points": 5, "splits": ["test", "train"]}


@pytest.fixture(scope="module")
def cancer():
    return load_dataset("breast_cancer", seed=0)


@pytest.fixture(scope="module")
def trained(cancer):
    """8 breast-cancer networks 30-16-16-2 trained from different seeds (full-batch Adam)."""
    return train_networks(SIZES, 8, cancer, init_std=0.316, lr=0.01, steps=120)


def test_lambda_grid_has_endpoints_and_midpoint():
    assert lambda_grid(4).tolist() == pytest.approx([0, 1 / 3, 0.5, 2 / 3, 1])
    assert lambda_grid(3).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        lambda_grid(1)


def test_path_losses_match_torch_modules(trained, cancer):
    a, b = trained[:3], trained[3:6]
    lam = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    losses = path_losses(a, b, SIZES, cancer.x_test, cancer.y_test, lam, chunk_size=4)  # chunking across pairs
    for i in range(3):
        for g, value in enumerate(lam.tolist()):
            net = to_sequential((1 - value) * a[i] + value * b[i], SIZES)
            expected = nn.functional.cross_entropy(net(cancer.x_test), cancer.y_test)
            assert losses[i, g].item() == pytest.approx(expected.item(), rel=1e-5)


def test_barrier_identities(trained, cancer):
    a, b = trained[:4], trained[4:]
    res = loss_barriers(a, b, SIZES, cancer.x_test, cancer.y_test, grid_points=6)
    assert torch.equal(res.barriers[:, 0], torch.zeros(4)) and torch.allclose(res.barriers[:, -1], torch.zeros(4), atol=1e-6)
    assert (res.maximum >= res.midpoint).all() and (res.maximum >= 0).all()
    same = loss_barriers(a, a, SIZES, cancer.x_test, cancer.y_test)  # a network with itself: no barrier anywhere
    assert same.barriers.abs().max() <= 1e-5
    # the endpoints' losses do not depend on the permutation, the path does
    moved = apply_permutations(b, SIZES, random_permutations(4, SIZES, generator=seeded(1)))
    res_moved = loss_barriers(a, moved, SIZES, cancer.x_test, cancer.y_test)
    assert torch.allclose(res_moved.losses[:, [0, -1]], res.losses[:, [0, -1]], atol=1e-6)


def test_sample_pairs_are_distinct_and_across_runs():
    runs = torch.tensor([0, 0, 1, 1, 2, 2])
    pairs = sample_pairs(runs, 100, generator=seeded(0))
    assert pairs.shape == (12, 2)  # 15 unordered pairs, 3 within a run
    assert (runs[pairs[:, 0]] != runs[pairs[:, 1]]).all()
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 12
    assert torch.equal(sample_pairs(runs, 5, generator=seeded(3)), sample_pairs(runs, 5, generator=seeded(3)))
    with pytest.raises(ValueError, match="2 runs"):
        sample_pairs(torch.zeros(3, dtype=torch.long), 4)


def test_alignment_lowers_barriers_and_stages_write_csv_and_figure(trained, cancer, tmp_path):
    """Weight matching onto network 0 shrinks the mean midpoint barrier of trained networks on the training split."""
    perms = weight_matching(trained[0], trained, SIZES, generator=seeded(0))
    columns = {"run": torch.arange(8), "final": torch.ones(8, dtype=torch.long)}
    unaligned = WeightsFile(trained, SIZES, columns=columns)
    aligned = WeightsFile(apply_permutations(trained, SIZES, perms), SIZES, columns=columns)
    table = barrier_table(unaligned, aligned, cancer, BCFG, seed=0)
    assert len(table) == 2 * 2 * 15
    train = table[table.split == "train"]
    before = train[train.state == "unaligned"].midpoint_barrier.mean()
    after = train[train.state == "aligned"].midpoint_barrier.mean()
    assert after < 0.5 * before
    for split, grp in table.groupby("split"):  # endpoint losses are permutation invariant
        u, a = grp[grp.state == "unaligned"], grp[grp.state == "aligned"]
        assert u.loss_a.to_numpy() == pytest.approx(a.loss_a.to_numpy(), rel=1e-5)

    ens_path, al_path, csv = tmp_path / "ens.pt", tmp_path / "aligned.pt", tmp_path / "barriers" / "ref0.csv"
    save_weights(ens_path, unaligned)
    save_weights(al_path, aligned)
    cfg = {"name": "t", "dataset": "breast_cancer", "layer_sizes": SIZES, "seed": 0, "device": "cpu",
           "alignment": {"barriers": BCFG}}
    job = StageJob({"ensemble": str(ens_path), "aligned": str(al_path)}, {"csv": str(csv)}, {"cfg": cfg},
                   {"reference": "ref0"})
    barriers_stage(job)
    written = pd.read_csv(csv)
    assert set(written.reference) == {"ref0"} and len(written) == len(table)
    pdf, png = tmp_path / "fig" / "loss_barriers.pdf", tmp_path / "fig" / "loss_barriers.png"
    loss_barriers_stage(StageJob({"csvs": [str(csv)]}, {"pdf": str(pdf), "png": str(png)}, {"cfg": cfg}))
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0

    save_weights(al_path, aligned.select(torch.arange(6)))  # an aligned file of another ensemble
    with pytest.raises(WeightsFileError, match=r"aligned\.pt.*run"):
        barriers_stage(job)


@pytest.mark.slow
def test_smoke_workflow_aligns_and_plots_barriers(smoke_workdir):
    """The smoke DAG's aligned file computes the ensemble's functions; barriers and figure are written."""
    res = smoke_workdir / "results" / "smoke"
    ens = load_weights(res / "ensemble" / "weights.pt")
    aligned = load_weights(res / "aligned" / "ref0" / "weights.pt", layer_sizes=ens.layer_sizes)
    x = load_dataset("iris", seed=0).x_test
    assert (forward(aligned.weights, ens.layer_sizes, x) - forward(ens.weights, ens.layer_sizes, x)).abs().max() <= 1e-5
    table = pd.read_csv(res / "barriers" / "ref0.csv")
    assert set(table.state) == {"unaligned", "aligned"} and set(table.split) == {"test", "train"}
    assert (res / "figures" / "loss_barriers.pdf").stat().st_size > 0
    assert (res / "figures" / "loss_barriers.png").stat().st_size > 0
