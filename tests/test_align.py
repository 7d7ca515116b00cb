"""Permutation alignment: function invariance, exact recovery of permuted copies, references, the stage."""

from __future__ import annotations

import pytest
import torch

from weightflow.align import (
    apply_permutations,
    compose_permutations,
    identity_permutations,
    invert_permutations,
    log_sinkhorn,
    permutation_matrices,
    random_permutations,
    sinkhorn_rebasin,
    soft_permute,
    solve_assignments,
    weight_matching,
)
from weightflow.align.references import align, align_stage, align_weights_file, medoid_index, reference_row
from weightflow.align.weight_matching import layer_similarity
from weightflow.data import load_dataset
from weightflow.io import WeightsFile, WeightsFileError, load_weights, save_weights
from weightflow.runner import StageJob
from weightflow.weights import as_layout, cross_entropy, forward, init_weights

from trained_networks import seeded, train_networks

DEEP = [4, 8, 7, 6, 3]  # three hidden layers: permutations act on inputs and outputs of a middle layer
ACFG = dict(method="weight_matching", objective="l2", max_sweeps=100, tau=1.0, sinkhorn_iterations=20, steps=40,
            lr=0.1, batch_size=32, chunk_size=4096, eval_samples=4096)


@pytest.fixture(scope="module")
def iris():
    return load_dataset("iris", seed=0)


@pytest.fixture(scope="module")
def trained(iris):
    """12 iris networks 4-8-8-3 trained from different seeds (full-batch Adam): genuinely different solutions."""
    sizes = [4, 8, 8, 3]
    return sizes, train_networks(sizes, 12, iris, init_std=0.5, bias_std=0.1, lr=0.02, steps=150)


def _ensemble_file(flat: torch.Tensor, sizes, snapshots: int = 1) -> WeightsFile:
    """A weights file of runs 0..R-1 (last block = final weights) as the ensemble stage writes it."""
    runs = flat.shape[0] // snapshots
    return WeightsFile(flat, sizes, columns={
        "run": torch.arange(runs).repeat(snapshots),
        "final": (torch.arange(flat.shape[0]) >= flat.shape[0] - runs).long(),
        "step": torch.arange(snapshots).repeat_interleave(runs),
    }, metadata={"dataset": "iris"})


def test_permutations_keep_the_function_and_invert(iris):
    flat = init_weights(DEEP, 5, init_std=1.0, bias_std=0.5, generator=seeded(1))
    perms = random_permutations(5, DEEP, generator=seeded(2))
    moved = apply_permutations(flat, DEEP, perms)
    assert not torch.allclose(moved, flat)
    assert (forward(moved, DEEP, iris.x_test) - forward(flat, DEEP, iris.x_test)).abs().max() <= 1e-5
    assert torch.equal(apply_permutations(moved, DEEP, invert_permutations(perms)), flat)
    assert torch.allclose(soft_permute(flat, DEEP, permutation_matrices(perms)), moved, atol=1e-6)
    second = random_permutations(5, DEEP, generator=seeded(3))
    assert torch.equal(apply_permutations(moved, DEEP, second),
                       apply_permutations(flat, DEEP, compose_permutations(perms, second)))
    assert torch.equal(apply_permutations(flat, DEEP, identity_permutations(5, DEEP)), flat)


def test_bad_permutation_shapes_are_rejected():
    flat = init_weights(DEEP, 2, init_std=1.0, generator=seeded(0))
    with pytest.raises(ValueError, match="hidden layer 1"):
        apply_permutations(flat, DEEP, [torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long),
                                        torch.zeros(2, 6, dtype=torch.long)])


def test_solve_assignments_maximizes_the_score():
    scores = torch.randn(20, 5, 5, generator=seeded(0))
    best = solve_assignments(scores)
    import itertools
    all_perms = torch.tensor(list(itertools.permutations(range(5))))  # [120, 5]
    totals = scores[:, torch.arange(5), all_perms].sum(-1)  # [20, 120]
    assert torch.allclose(scores.gather(2, best.unsqueeze(-1)).sum((1, 2)), totals.max(1).values)


def test_weight_matching_recovers_permuted_copies_exactly():
    flat = init_weights(DEEP, 6, init_std=1.0, bias_std=0.5, generator=seeded(4))
    perms = random_permutations(6, DEEP, generator=seeded(5))
    copies = apply_permutations(flat, DEEP, perms)
    found = weight_matching(flat, copies, DEEP, generator=seeded(6))  # one reference per network
    for f, p in zip(found, invert_permutations(perms)):
        assert torch.equal(f, p)
    one_ref = apply_permutations(flat[:1].expand(6, -1), DEEP, perms)
    found = weight_matching(flat[0], one_ref, DEEP, generator=seeded(6))  # a single reference for all
    assert torch.equal(apply_permutations(one_ref, DEEP, found), flat[:1].expand(6, -1))


def test_weight_matching_is_a_coordinatewise_optimum_and_lowers_l2(trained):
    sizes, theta = trained
    ref, nets = theta[0], theta[1:]
    perms = weight_matching(ref, nets, sizes, generator=seeded(0))
    aligned = apply_permutations(nets, sizes, perms)
    assert ((ref - aligned).pow(2).sum(-1) <= (ref - nets).pow(2).sum(-1) + 1e-5).all()
    assert ((ref - aligned).pow(2).sum(-1) < (ref - nets).pow(2).sum(-1) - 1e-3).any()
    layout = as_layout(sizes)
    for h in range(len(layout.hidden_sizes)):  # no single layer's assignment can still improve
        sim = layer_similarity(ref, nets, layout, perms, h)
        current = sim.gather(2, perms[h].unsqueeze(-1)).sum((1, 2))
        best = sim.gather(2, solve_assignments(sim).unsqueeze(-1)).sum((1, 2))
        assert torch.allclose(current, best, rtol=1e-5)


def test_log_sinkhorn_is_doubly_stochastic_and_sharpens():
    scores = torch.randn(4, 6, 6, generator=seeded(0), dtype=torch.float64)
    p = log_sinkhorn(scores, tau=1.0, iterations=200)
    assert torch.allclose(p.sum(-1), torch.ones(4, 6, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(p.sum(-2), torch.ones(4, 6, dtype=torch.float64), atol=1e-6)
    perms = random_permutations(4, [1, 6, 1], generator=seeded(1))
    hard = permutation_matrices(perms, torch.float64)[0]
    assert torch.allclose(log_sinkhorn(hard, tau=0.01, iterations=20), hard, atol=1e-6)


def test_sinkhorn_l2_recovers_permuted_copies_from_identity():
    flat = init_weights(DEEP, 6, init_std=1.0, bias_std=0.5, generator=seeded(7))
    perms = random_permutations(6, DEEP, generator=seeded(8))
    copies = apply_permutations(flat, DEEP, perms)
    found = sinkhorn_rebasin(flat, copies, DEEP, objective="l2", tau=1.0, iterations=20, steps=200, lr=0.1)
    for f, p in zip(found, invert_permutations(perms)):
        assert torch.equal(f, p)


@pytest.mark.parametrize("objective", ["mid", "rnd"])
def test_sinkhorn_task_objectives_keep_the_function_and_lower_the_path_loss(trained, iris, objective):
    sizes, theta = trained
    ref, nets = theta[0], theta[1:]
    acfg = dict(ACFG, method="sinkhorn", objective=objective)
    data = (iris.x_train, iris.y_train)
    perms, value = align(ref, nets, sizes, acfg, data=data, seed=0)
    wm_perms, wm_value = align(ref, nets, sizes, dict(acfg, steps=0), data=data, seed=0)  # weight matching only
    aligned = apply_permutations(nets, sizes, perms)
    assert (forward(aligned, sizes, iris.x_test) - forward(nets, sizes, iris.x_test)).abs().max() <= 1e-5
    assert (value <= wm_value + 1e-6).all()
    unaligned_mid = cross_entropy((ref + nets) / 2, sizes, *data)
    aligned_mid = cross_entropy((ref + aligned) / 2, sizes, *data)
    assert aligned_mid.mean() < unaligned_mid.mean()


def test_align_rejects_a_task_objective_for_weight_matching(trained):
    sizes, theta = trained
    with pytest.raises(ValueError, match="alignment.objective"):
        align(theta[0], theta, sizes, dict(ACFG, objective="mid"))


def test_medoid_is_the_center_of_a_permuted_line():
    base = init_weights(DEEP, 1, init_std=1.0, bias_std=0.5, generator=seeded(9))
    direction = init_weights(DEEP, 1, init_std=0.05, generator=seeded(10))
    line = base + torch.tensor([[-2.0], [-1.0], [0.0], [1.0], [2.0]]) * direction  # center: index 2
    order = torch.tensor([3, 0, 4, 2, 1])
    nets = apply_permutations(line[order], DEEP, random_permutations(5, DEEP, generator=seeded(11)))
    assert medoid_index(nets, DEEP) == 3


def test_reference_rows_and_out_of_range_error(trained):
    sizes, theta = trained
    wf = _ensemble_file(theta, sizes, snapshots=2)  # 6 runs x 2 snapshots
    assert reference_row(wf, "ref4") == 10
    with pytest.raises(WeightsFileError, match=r"ens\.pt.*ref6.*run"):
        reference_row(wf, "ref6", source="ens.pt")
    with pytest.raises(ValueError, match="unknown reference"):
        reference_row(wf, "best", source="ens.pt")
    assert wf.columns["final"][reference_row(wf, "medoid")] == 1


def test_align_stage_writes_an_aligned_file_with_the_same_functions(trained, iris, tmp_path):
    sizes, theta = trained
    src, dst = tmp_path / "ensemble.pt", tmp_path / "aligned" / "ref1" / "weights.pt"
    save_weights(src, _ensemble_file(theta, sizes, snapshots=2))
    cfg = {"name": "t", "dataset": "iris", "layer_sizes": sizes, "seed": 0, "device": "cpu",
           "alignment": dict(ACFG, method="sinkhorn", objective="mid", steps=5)}
    align_stage(StageJob({"weights": str(src)}, {"weights": str(dst)}, {"cfg": cfg}, {"reference": "ref1"}))
    out, ens = load_weights(dst, layer_sizes=sizes), load_weights(src)
    assert set(out.columns) == set(ens.columns) | {"align_objective"}
    assert set(out.extras) == {"perm.0", "perm.1"} and out.extras["perm.0"].shape == (12, 8)
    assert out.metadata["reference"] == "ref1" and out.metadata["reference_row"] == 7
    assert out.metadata["method"] == "sinkhorn" and out.metadata["objective"] == "mid"
    assert torch.equal(out.weights[7], ens.weights[7])  # the reference is aligned onto itself
    assert (forward(out.weights, sizes, iris.x_test) - forward(ens.weights, sizes, iris.x_test)).abs().max() <= 1e-5
    assert torch.equal(apply_permutations(ens.weights, sizes, [out.extras["perm.0"], out.extras["perm.1"]]), out.weights)

    bad = dict(cfg, layer_sizes=[4, 8, 3])
    with pytest.raises(WeightsFileError, match=r"ensemble\.pt.*layer_sizes"):
        align_stage(StageJob({"weights": str(src)}, {"weights": str(dst)}, {"cfg": bad}, {"reference": "ref1"}))
    with pytest.raises(WeightsFileError, match=r"ensemble\.pt.*ref9"):
        align_stage(StageJob({"weights": str(src)}, {"weights": str(dst)}, {"cfg": cfg}, {"reference": "ref9"}))


def test_align_weights_file_with_weight_matching_is_seeded(trained):
    sizes, theta = trained
    wf = _ensemble_file(theta, sizes)
    a = align_weights_file(wf, "ref0", ACFG, seed=3)
    b = align_weights_file(wf, "ref0", ACFG, seed=3)
    assert torch.equal(a.weights, b.weights)
    assert torch.allclose(a.columns["align_objective"], (a.weights - a.weights[0]).pow(2).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 10])
def test_batched_assignments_are_optimal_like_scipy(n):
    """The vectorized Hungarian solver reaches scipy's optimal total on random, tied, constant and large scores."""
    from weightflow.align.weight_matching import batched_assignments

    gen = seeded(n)
    cases = {
        "gaussian": torch.randn(100, n, n, generator=gen, dtype=torch.float64),
        "ties": torch.randint(0, 3, (100, n, n), generator=gen).double(),  # many optimal permutations
        "constant": torch.zeros(20, n, n, dtype=torch.float64),
        "large": 1e6 * torch.randn(50, n, n, generator=gen, dtype=torch.float64),
        "float32": torch.randn(50, n, n, generator=gen),
    }
    for name, scores in cases.items():
        got = batched_assignments(scores)
        assert torch.equal(got.sort(-1).values, torch.arange(n).expand(len(scores), n)), name  # permutations
        ref = solve_assignments(scores, method="scipy")
        total = lambda p: scores.double().gather(2, p.unsqueeze(-1)).sum((1, 2))  # noqa: E731
        assert torch.allclose(total(got), total(ref), rtol=1e-12, atol=1e-9), name
        assert torch.equal(solve_assignments(scores, method="batched"), got)
    with pytest.raises(ValueError, match="finite"):
        batched_assignments(torch.full((1, n, n), float("nan")))


def test_permutation_objectives_equal_the_objectives_of_permuted_networks(trained, iris):
    """Scoring permutations through the shared input-layer product gives the objective of the permuted networks."""
    from weightflow.align.references import RND_LAMBDAS, hard_objective, permutation_objectives

    sizes, theta = trained
    layout = as_layout(sizes)
    ref, nets = theta[0], theta[1:]
    data = (iris.x_train, iris.y_train)
    perms = random_permutations(len(nets), sizes, generator=seeded(12))
    for objective in ("l2", "mid", "rnd"):
        got = permutation_objectives(objective, ref, nets, layout, [None, perms], data, chunk_size=4)
        for value, p in zip(got, [None, perms]):
            moved = nets if p is None else apply_permutations(nets, sizes, p)
            if objective == "l2":
                expected = (ref - moved).pow(2).sum(-1)
            else:
                lams = [0.5] if objective == "mid" else RND_LAMBDAS.tolist()
                expected = sum(cross_entropy((1 - lam) * ref + lam * moved, sizes, *data) for lam in lams) / len(lams)
            assert torch.allclose(value, expected, rtol=1e-5, atol=1e-6), objective
            assert torch.allclose(hard_objective(objective, ref, moved, layout, data), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", ["l2", "mid", "rnd"])
def test_sinkhorn_objectives_equal_those_of_the_soft_permuted_networks(iris, objective):
    """The Sinkhorn objectives, computed without permuting the input layer, equal the objective of the networks
    soft-permuted by the doubly stochastic matrices (and interpolated with the reference)."""
    from weightflow.align.sinkhorn import _objective

    flat = init_weights(DEEP, 5, init_std=1.0, bias_std=0.5, generator=seeded(13), dtype=torch.float64)
    layout = as_layout(DEEP)
    data = (iris.x_train.double(), iris.y_train)
    for ref in (flat[0], init_weights(DEEP, 5, init_std=1.0, bias_std=0.5, generator=seeded(14), dtype=torch.float64)):
        mats = [log_sinkhorn(torch.randn(5, n, n, generator=seeded(n), dtype=torch.float64), 1.0, 30)
                for n in layout.hidden_sizes]
        moved = soft_permute(flat, DEEP, mats)
        got = _objective(objective, ref, flat, layout, mats, data, 16, seeded(15), {})
        if objective == "l2":
            expected = (ref - moved).pow(2).sum(-1)
        else:
            gen = seeded(15)
            idx = torch.randperm(len(data[1]), generator=gen)[:16]
            lam = torch.full((5, 1), 0.5, dtype=torch.float64) if objective == "mid" else \
                torch.rand(5, 1, generator=gen).double()
            expected = cross_entropy((1 - lam) * ref + lam * moved, DEEP, data[0][idx], data[1][idx])
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_alignment_in_chunks_equals_one_chunk(trained):
    """Chunks bound memory only: weight matching gives the same permutations, objectives and file in any chunking."""
    sizes, theta = trained
    wf = _ensemble_file(theta, sizes)
    whole = align_weights_file(wf, "ref0", ACFG, seed=2)
    chunked = align_weights_file(wf, "ref0", dict(ACFG, chunk_size=5), seed=2)
    assert torch.equal(whole.weights, chunked.weights)
    assert torch.equal(whole.columns["align_objective"], chunked.columns["align_objective"])
    assert all(torch.equal(whole.extras[k], chunked.extras[k]) for k in whole.extras)
