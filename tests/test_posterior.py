"""Reference posterior and baselines on targets with known answers: HMC on Bayesian linear regression, dual
averaging, vectorized = per-chain HMC, VI on a conjugate model, Laplace where it is exact, SGHMC's stationary
moments, ArviZ diagnostics, and the stages end to end on a tiny config."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from weightflow.align.references import reference_row
from weightflow.data import load_dataset
from weightflow.ensemble import EnsembleConfig, _SGHMC, _SGLD, train_ensemble
from weightflow.io import load_weights, save_weights
from weightflow.posterior.diagnostics import _arviz, chain_index, convergence_table, mlp_diagnostics, summarize
from weightflow.posterior.hmc import HMCConfig, hmc_sample, run_hmc
from weightflow.posterior.laplace import (
    categorical_hessian_sqrt,
    gaussian_hessian_sqrt,
    hidden_features,
    kron_factors,
    last_layer_indices,
    last_layer_precision,
    sample_kron,
    sample_precision,
)
from weightflow.posterior.stages import (
    diagnostics_stage,
    hmc_ensemble_stage,
    hmc_stage,
    laplace_stage,
    vi_stage,
)
from weightflow.posterior.target import MLPPosterior
from weightflow.posterior.vi import VIConfig, fit_mean_field
from weightflow.runner import StageJob
from weightflow.weights import init_weights

F64 = torch.float64


def _blr(n=30, d=4, noise=0.5, prior=1.0, seed=0):
    """Bayesian linear regression y = X w + N(0, noise²), w ~ N(0, prior² I): potential and exact posterior."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64) * torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=F64)
    x[:, 3] += 0.8 * x[:, 0]  # correlated posterior
    y = x @ torch.randn(d, generator=gen, dtype=F64) + noise * torch.randn(n, generator=gen, dtype=F64)
    precision = x.T @ x / noise**2 + torch.eye(d, dtype=F64) / prior**2
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / noise**2

    def potential(w):
        return (y - w @ x.T).square().sum(-1) / (2 * noise**2) + w.square().sum(-1) / (2 * prior**2)

    return potential, mean, cov


def _within_mc_error(draws: np.ndarray, expected: float, k: float = 4.5) -> bool:
    """``|mean − expected| ≤ k · sd / sqrt(ESS_bulk)`` for draws [chains, draws] (ArviZ's ESS)."""
    az = _arviz()
    ess = float(az.ess(draws))
    return abs(draws.mean() - expected) <= k * draws.std() / math.sqrt(ess)


def test_hmc_matches_bayesian_linear_regression():
    potential, mean, cov = _blr()
    cfg = HMCConfig(chains=4, warmup=200, draws=600, thin=1, leapfrog_steps=8, dtype="float64", step_size=0.05)
    init = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)  # prior draws, far from the mode
    result = hmc_sample(potential, init, cfg, seed=3)
    theta = result.samples.transpose(0, 1).numpy()  # [chains, draws, d]
    assert result.accept_rate.min() > 0.5 and result.divergences.sum() == 0
    for i in range(4):
        assert _within_mc_error(theta[..., i], mean[i].item()), f"mean of coordinate {i}"
        for j in range(i, 4):
            centred = (theta[..., i] - mean[i].item()) * (theta[..., j] - mean[j].item())
            assert _within_mc_error(centred, cov[i, j].item()), f"covariance ({i}, {j})"


def test_hmc_detects_a_wrong_target():
    """The moment check above can fail: HMC of a target with a shifted mean misses the BLR posterior."""
    potential, mean, cov = _blr()
    cfg = HMCConfig(chains=4, warmup=100, draws=200, thin=1, leapfrog_steps=8, dtype="float64", step_size=0.05)
    shift = 3 * cov.diagonal().sqrt()
    result = hmc_sample(lambda w: potential(w - shift), torch.zeros(4, 4, dtype=F64), cfg, seed=3)
    theta = result.samples.transpose(0, 1).numpy()
    assert not all(_within_mc_error(theta[..., i], mean[i].item()) for i in range(4))


def _gaussian_potential(d=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 0, d, dtype=F64)
    return lambda th: 0.5 * (th / scales).square().sum(-1), scales, gen


def test_dual_averaging_reaches_target_acceptance():
    """The adapting iterates average the target acceptance; the frozen ε̄ (an average of log ε) is a little more
    conservative, and a higher target gives a smaller step and a higher acceptance."""
    potential, scales, _ = _gaussian_potential()
    results = {}
    for target in (0.65, 0.9):
        cfg = HMCConfig(chains=6, warmup=400, draws=100, thin=1, leapfrog_steps=10, target_accept=target,
                        dtype="float64", step_size=1.0)
        result = results[target] = hmc_sample(potential, torch.zeros(6, 10, dtype=F64), cfg, seed=5)
        assert abs(result.warmup_accept_rate.mean().item() - target) < 0.03
        assert target - 0.03 < result.accept_rate.mean().item() < target + 0.15
        assert result.step_size.std() < 0.2 * result.step_size.mean()  # each chain adapts to the same target
    assert results[0.9].step_size.max() < results[0.65].step_size.min()
    assert results[0.9].accept_rate.mean() > results[0.65].accept_rate.mean() + 0.05


def test_trajectory_length_sets_the_number_of_leapfrog_steps():
    potential, _, _ = _gaussian_potential()
    cfg = HMCConfig(chains=3, warmup=50, draws=10, leapfrog_steps=40, trajectory_length=1.0, jitter=0.0,
                    dtype="float64")
    result = hmc_sample(potential, torch.zeros(3, 10, dtype=F64), cfg, seed=0)
    assert torch.equal(result.leapfrog_steps, torch.ceil(1.0 / result.step_size).clamp(max=40))
    capped = HMCConfig(chains=3, warmup=5, draws=3, leapfrog_steps=7, trajectory_length=100.0, dtype="float64")
    assert (hmc_sample(potential, torch.zeros(3, 10, dtype=F64), capped, seed=0).leapfrog_steps == 7).all()


@pytest.mark.parametrize("init", ["prior", "map"])
def test_vectorized_chains_equal_chains_one_by_one(init):
    data = load_dataset("iris", seed=0)
    post = MLPPosterior.from_data([4, 5, 3], data.x_train, data.y_train, 0.5, dtype=F64)
    cfg = HMCConfig(chains=3, warmup=8, draws=4, thin=2, leapfrog_steps=5, dtype="float64", init=init, map_steps=20)
    together = run_hmc(post, cfg, seed=11)
    for k in range(3):
        alone = run_hmc(post, cfg, seed=11, chain_ids=[k])
        assert torch.allclose(alone.samples[:, 0], together.samples[:, k], rtol=1e-9, atol=1e-12)
        assert torch.allclose(alone.accept_prob[:, 0], together.accept_prob[:, k], atol=1e-9)
        assert alone.step_size.item() == pytest.approx(together.step_size[k].item(), rel=1e-9)
    assert not torch.allclose(together.samples[:, 0], together.samples[:, 1])  # chains do differ


def test_vi_recovers_a_conjugate_gaussian_posterior():
    gen = torch.Generator().manual_seed(0)
    n, d, prior = 40, 3, 1.0
    y = 0.7 + torch.randn(n, d, generator=gen)
    post_precision = 1 / prior**2 + n
    post_mean, post_std = n * y.mean(0) / post_precision, post_precision**-0.5

    def nll(theta, step):  # Σ_i ‖y_i − θ‖² / 2 (unit noise), per member and draw
        return 0.5 * (y.unsqueeze(0).unsqueeze(0) - theta.unsqueeze(2)).square().sum((-1, -2))

    cfg = VIConfig(members=3, steps=1500, lr=0.03, mc_samples=8, init_sigma=0.5, final_lr_fraction=0.001)
    fit = fit_mean_field(nll, torch.zeros(3, d), prior, cfg, num_data=n, generator=torch.Generator().manual_seed(1))
    assert (fit.mean - post_mean).abs().max() < 0.1 * post_std
    assert (fit.std / post_std - 1).abs().max() < 0.05
    assert fit.final_elbo.shape == (3,)


def _regression_last_layer(n=60, sizes=(3, 6, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    theta = init_weights(sizes, 1, init_std=0.8, bias_std=0.3, generator=gen, dtype=F64)
    x = torch.randn(n, sizes[0], generator=gen, dtype=F64)
    return theta, x


def test_last_layer_precision_is_the_exact_hessian_for_softmax():
    data = load_dataset("iris", seed=0)
    sizes = [4, 5, 3]
    theta = init_weights(sizes, 1, init_std=0.7, bias_std=0.3, generator=torch.Generator().manual_seed(2), dtype=F64)
    post = MLPPosterior.from_data(sizes, data.x_train, data.y_train, 0.5, dtype=F64)
    idx = last_layer_indices(sizes)

    def u_last(w):
        full = theta[0].clone()
        full[idx] = w
        return post.potential(full.unsqueeze(0))[0]

    hessian = torch.autograd.functional.hessian(u_last, theta[0, idx])
    from weightflow.posterior.laplace import _activations, as_layout

    inputs, pre = _activations(theta, as_layout(sizes), post.x)
    ours = last_layer_precision(inputs[-1], categorical_hessian_sqrt(pre[-1]), 1 / 0.5**2)[0]
    assert torch.allclose(ours, hessian, atol=1e-9)


def test_laplace_is_exact_for_linear_gaussian_regression():
    """A Gaussian likelihood on the last layer with fixed features is Bayesian linear regression: the last-layer
    Laplace precision (and the K-FAC block, exact here) is the closed-form posterior precision, and the draws
    have its covariance."""
    theta, x = _regression_last_layer()
    sizes, noise, prior = (3, 6, 2), 0.3, 0.7
    phi = torch.cat([hidden_features(theta, sizes, x)[0], torch.ones(len(x), 1, dtype=F64)], 1)  # [n, H+1]
    block = phi.T @ phi / noise**2 + torch.eye(phi.shape[1], dtype=F64) / prior**2  # per output, independent
    exact = torch.block_diag(block, block)
    from weightflow.posterior.laplace import _activations, as_layout

    inputs, pre = _activations(theta, as_layout(sizes), x)
    sqrt = gaussian_hessian_sqrt(noise)
    ours = last_layer_precision(inputs[-1], sqrt(pre[-1]), 1 / prior**2)[0]
    assert torch.allclose(ours, exact, atol=1e-9)
    a_last, g_last = kron_factors(theta, sizes, x, sqrt)[-1]
    kron = torch.kron(g_last[0], a_last[0]) + torch.eye(exact.shape[0], dtype=F64) / prior**2
    assert torch.allclose(kron, exact, atol=1e-9)

    cov = torch.linalg.inv(exact)
    num = 40000
    idx = last_layer_indices(sizes)
    draws = sample_precision(theta[:, idx], exact.unsqueeze(0), num, generator=torch.Generator().manual_seed(0))[0]
    kron_draws = sample_kron(theta, sizes, kron_factors(theta, sizes, x, sqrt), 1 / prior**2, num,
                             generator=torch.Generator().manual_seed(1))[0][:, idx]
    se = ((cov.diagonal().unsqueeze(0) * cov.diagonal().unsqueeze(1) + cov.square()) / num).sqrt()
    for sample in (draws, kron_draws):
        assert ((torch.cov(sample.T) - cov).abs() / se).max() < 5
    # the other layers of the K-FAC draws move too (every layer is random), the last-layer ones do not
    moved = (sample_kron(theta, sizes, kron_factors(theta, sizes, x, sqrt), 1 / prior**2, 2,
                         generator=torch.Generator().manual_seed(2))[0] != theta).any(0)
    assert moved.all()


def test_sghmc_stationary_moments_on_a_gaussian():
    """Full-batch SGHMC on U(θ) = λ_l ‖θ − m‖²/2 + ‖θ‖²/(2σ²): mean λ_l m / λ, variance 1/λ, λ = λ_l + 1/σ²."""
    chains, dim, lam_l, m, prior = 400, 2, 3.0, 1.5, 1.0
    lam = lam_l + 1 / prior**2
    theta = torch.zeros(chains, dim, dtype=F64)
    opt = _SGHMC(theta, friction=0.1, lr=2e-3, temperature=1.0, prior_std=prior, num_data=1,
                 gen=torch.Generator().manual_seed(0))
    kept = []
    for step in range(4000):
        theta.grad = lam_l * (theta - m)
        opt.step()
        if step >= 1500 and step % 25 == 0:
            kept.append(theta.clone())
    kept = torch.stack(kept)  # [draws, chains, dim]: chains independent, draws 25 steps apart
    chain_means = kept.mean(0)
    assert (chain_means.mean(0) - lam_l * m / lam).abs().max() < 4 * chain_means.std(0).max() / math.sqrt(chains)
    var = (kept - lam_l * m / lam).square().mean((0, 1))
    assert (var * lam - 1).abs().max() < 0.05


def test_sghmc_with_full_friction_is_sgld_with_twice_the_step():
    a = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    b = a.clone()
    sghmc = _SGHMC(a, friction=1.0, lr=0.01, temperature=1.0, prior_std=1.0, num_data=10,
                   gen=torch.Generator().manual_seed(4))
    sgld = _SGLD(b, lr=0.02, temperature=1.0, prior_std=1.0, num_data=10, gen=torch.Generator().manual_seed(4))
    for _ in range(20):
        a.grad, b.grad = a.clone(), b.clone()
        sghmc.step()
        sgld.step()
    assert torch.allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="ensemble.friction"):
        EnsembleConfig(optimizer="sghmc", friction=0.0)


def test_arviz_diagnostics_flag_unmixed_chains():
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(4, 500, generator=gen, dtype=F64)
    pred = torch.rand(4, 500, 3, 1, generator=gen, dtype=F64)
    table = convergence_table(draws, pred)
    summary = summarize(table)
    assert summary["log_posterior_r_hat_max"] < 1.01 and summary["predictive_r_hat_max"] < 1.01
    assert 1500 < summary["log_posterior_ess_bulk_min"] < 2500
    shifted = draws + torch.arange(4, dtype=F64).unsqueeze(1)  # chain k centred at k: not mixed
    assert summarize(convergence_table(shifted, pred))["log_posterior_r_hat_max"] > 1.5
    # a single chain with a trend: split R-hat catches what the between-chain one cannot
    trend = draws + torch.linspace(0, 3, 500, dtype=F64)
    assert summarize(convergence_table(trend, pred))["log_posterior_r_hat_split_max"] > 1.1


TINY = {
    "name": "tiny", "dataset": "iris", "layer_sizes": [4, 5, 3], "seed": 0, "device": "cpu", "data_root": None,
    "val_fraction": 0.2, "test_fraction": 0.2, "ensemble": {"init_std": 0.5},
    "posterior": {"prior_std": None,
                  "hmc": {"chains": 4, "warmup": 20, "draws": 10, "thin": 1, "leapfrog_steps": 5},
                  "laplace": {"subset": "last_layer", "members": 2, "samples_per_member": 3},
                  "vi": {"members": 2, "steps": 30, "samples_per_member": 4, "batch_size": 16}},
    "evaluation": {"split": "test", "max_networks": 2000, "ece_bins": 10},
}


def test_stages_end_to_end(tmp_path):
    hmc_path = tmp_path / "hmc" / "weights.pt"
    hmc_stage(StageJob({}, {"weights": hmc_path, "run": tmp_path / "run.json"}, {"cfg": TINY}))
    first = hmc_path.read_bytes()
    hmc_stage(StageJob({}, {"weights": hmc_path}, {"cfg": TINY}))
    assert hmc_path.read_bytes() == first  # same config, same bytes
    wf = load_weights(hmc_path, layer_sizes=[4, 5, 3])
    assert len(wf) == 40 and wf.metadata["kind"] == "hmc" and wf.metadata["prior_std"] == 0.5
    assert {"run", "chain", "draw", "step", "accept_prob", "accept_rate", "log_posterior", "final"} <= set(wf.columns)
    assert wf.columns["final"].sum() == 4 and wf.columns["draw"][wf.columns["final"] == 1].unique().tolist() == [9]
    assert wf.columns["run"][reference_row(wf, "ref0")] == 0  # alignment's reference works on HMC draws
    assert chain_index(wf).shape == (4, 10)
    # log_posterior is −U of the stored weights
    data = load_dataset("iris", seed=0)
    post = MLPPosterior.from_data([4, 5, 3], data.x_train, data.y_train, 0.5)
    assert torch.allclose(wf.columns["log_posterior"], -post.potential(wf.weights), rtol=1e-4)

    diagnostics_stage(StageJob({"weights": hmc_path, "run": tmp_path / "run.json"},
                               {"csv": tmp_path / "d.csv", "summary": tmp_path / "s.json"}, {"cfg": TINY}))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["chains"] == 4 and summary["draws"] == 10 and summary["cpu_seconds"] > 0
    assert summary["grad_evals"] == 4 * summary["grad_evals_per_chain"] >= 4 * 30 * 5
    table = mlp_diagnostics(wf, data.x_test, weights=3)
    assert set(table.quantity) == {"log_posterior", "predictive", "weight"}
    assert (table.quantity == "predictive").sum() == len(data.y_test) * 3

    ens = train_ensemble(data, [4, 5, 3], EnsembleConfig(runs=3, epochs=3, lr=0.01, init_std=0.5, burn_in_epochs=0))
    ens_path = tmp_path / "ensemble.pt"
    save_weights(ens_path, ens.snapshots)
    laplace_stage(StageJob({"ensemble": ens_path}, {"weights": tmp_path / "laplace.pt"}, {"cfg": TINY}))
    lap = load_weights(tmp_path / "laplace.pt")
    assert len(lap) == 6 and lap.columns["final"].sum() == 2 and lap.columns["run"].tolist() == [0, 1] * 3
    finals = ens.snapshots.weights[ens.snapshots.columns["final"] == 1][:2]
    idx = last_layer_indices([4, 5, 3])
    keep = torch.ones(lap.weights.shape[1], dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(lap.weights[:, keep], finals.repeat(3, 1)[:, keep])  # only the last layer is random
    vi_stage(StageJob({}, {"weights": tmp_path / "vi.pt"}, {"cfg": TINY}))
    assert len(load_weights(tmp_path / "vi.pt")) == 8

    hmc_ensemble_stage(StageJob({}, {"weights": tmp_path / "as_ensemble.pt", "metrics": tmp_path / "metrics.csv"},
                                {"cfg": TINY}))
    assert torch.equal(load_weights(tmp_path / "as_ensemble.pt").weights, wf.weights)
    history = pd.read_csv(tmp_path / "metrics.csv")
    assert len(history) == 40 and {"run", "epoch", "train_loss", "val_acc", "test_acc"} <= set(history.columns)
    assert np.allclose(history.train_loss, wf.columns["train_loss"].numpy(), rtol=1e-4)
