"""Statistics of the Gaussian sanity experiment: energy distance, its noise floor, the per-network-mean spread."""

import math

import pandas as pd
import pytest
import torch

from weightflow.flow.samples import save_candidates
from weightflow.io import WeightsFile, save_weights
from weightflow.plots.gaussian import (
    energy_distance,
    fitted_reference,
    net_mean_std_ratio,
    noise_floor,
    sanity_figure,
    sanity_stage,
    sanity_stats,
    target_draws,
)
from weightflow.runner import StageJob

N, D = 600, 802


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_energy_distance_is_zero_for_one_distribution_and_positive_otherwise():
    floor = noise_floor(N, D, 1.0, 1.0, repeats=4, gen=_gen(0))
    assert abs(floor["energy_floor_mean"]) < 3 * floor["energy_floor_std"]  # unbiased: 0 in expectation
    assert floor["net_mean_ratio_floor_mean"] == pytest.approx(1.0, abs=3 / math.sqrt(2 * (N - 1)))
    fresh = target_draws(N, D, 1.0, 1.0, _gen(1))
    narrow = 1.0 + 0.9 * (target_draws(N, D, 1.0, 1.0, _gen(2)) - 1.0)  # every coordinate's std 0.9
    assert energy_distance(narrow, fresh) > floor["energy_floor_mean"] + 10 * floor["energy_floor_std"]
    shifted = target_draws(N, D, 1.05, 1.0, _gen(3))
    assert energy_distance(shifted, fresh) > floor["energy_floor_mean"] + 10 * floor["energy_floor_std"]
    assert energy_distance(fresh, fresh) < 0  # the U-statistic drops the zero self-distances


def test_the_per_network_mean_ratio_sees_what_the_energy_distance_misses():
    """Halving the spread along the mean direction 1/sqrt(D) — the flat MLP's defect before its time-only shift —
    moves the energy distance by less than its noise floor; the per-network-mean std ratio reads 0.5."""
    x = target_draws(N, D, 1.0, 1.0, _gen(4))
    means = x.mean(dim=1, keepdim=True)
    squeezed = x - 0.5 * (means - 1.0)
    floor = noise_floor(N, D, 1.0, 1.0, repeats=4, gen=_gen(5))
    stats = sanity_stats(squeezed, 1.0, 1.0, fresh=target_draws(N, D, 1.0, 1.0, _gen(6)))
    assert stats["net_mean_std_ratio"] == pytest.approx(0.5 * net_mean_std_ratio(x, 1.0), rel=1e-9)
    assert abs(stats["net_mean_std_ratio"] - 0.5) < 0.1
    assert stats["energy_distance"] < floor["energy_floor_mean"] + 3 * floor["energy_floor_std"]
    assert stats["std_ratio_median"] == pytest.approx(1.0, abs=0.05)  # per coordinate nothing shows


def test_the_fitted_reference_sits_above_the_floor_by_the_finite_training_set():
    """A flow can at best learn its M training draws: a Gaussian fitted to M = 300 draws scores an energy distance
    well above the floor of N = 600 samples (each coordinate's mean off by ~1/sqrt(M)); with M = 20000 draws, close
    to it."""
    floor = noise_floor(N, D, 1.0, 1.0, repeats=3, gen=_gen(12))
    few = fitted_reference(target_draws(300, D, 1.0, 1.0, _gen(13)), N, repeats=3, gen=_gen(14))
    many = fitted_reference(target_draws(20000, D, 1.0, 1.0, _gen(15)), N, repeats=3, gen=_gen(16))
    assert few["energy_fit_mean"] > floor["energy_floor_mean"] + 5 * floor["energy_floor_std"]
    assert many["energy_fit_mean"] < floor["energy_floor_mean"] + 3 * floor["energy_floor_std"]


def test_sanity_figure_with_the_energy_panel(tmp_path):
    sets = {"target draws": target_draws(200, D, 1.0, 1.0, _gen(7)).float(),
            "sampler": (1.0 + 0.95 * target_draws(200, D, 0.0, 1.0, _gen(8))).float()}
    floor = {**noise_floor(200, D, 1.0, 1.0, repeats=2, gen=_gen(9)),
             **fitted_reference(sets["target draws"], 200, repeats=2, gen=_gen(11))}
    table = pd.DataFrame([{"source": name, **sanity_stats(x, 1.0, 1.0, fresh=target_draws(200, D, 1.0, 1.0, _gen(10))),
                           **floor} for name, x in sets.items()])
    sanity_figure(sets, 1.0, 1.0, [tmp_path / "sanity.png"], table=table)
    assert (tmp_path / "sanity.png").stat().st_size > 0


def test_sanity_stage_writes_the_table_and_figure(tmp_path):
    """The stage scores the target draws and every candidate sampler of the flows' candidate files: a sampler that
    halves the spread along the mean direction reads 0.5 there, the exact draws 1 ± noise."""
    sizes = (30, 16, 16, 2)
    target = tmp_path / "target.pt"
    save_weights(target, WeightsFile(target_draws(400, D, 1.0, 1.0, _gen(20)).float(), sizes))
    good = target_draws(300, D, 1.0, 1.0, _gen(21)).float()
    squeezed = good - 0.5 * (good.mean(dim=1, keepdim=True) - 1.0)
    candidates = [{"name": n, "sampler": "euler", "guidance": 0.0, "control": False, "options": {"noise": 0.0}}
                  for n in ("good", "squeezed")]
    samples = tmp_path / "flows" / "euclidean-none-independent" / "candidates.pt"
    save_candidates(samples, {"good": good, "squeezed": squeezed}, candidates, sizes,
                    {"flow": "euclidean-none-independent"})
    outputs = {k: str(tmp_path / f"sanity.{k}") for k in ("csv", "pdf", "png")}
    cfg = {"dataset": "gaussian", "seed": 0, "layer_sizes": list(sizes)}
    sanity_stage(StageJob({"target": str(target), "samples": str(samples)}, outputs, {"cfg": cfg}))
    table = pd.read_csv(outputs["csv"]).set_index("source")
    assert list(table.index) == ["target draws", "good (ε = 0)", "squeezed (ε = 0)"]
    se = 1 / math.sqrt(2 * 299)
    assert abs(table.loc["good (ε = 0)", "net_mean_std_ratio"] - 1) < 3 * se
    assert abs(table.loc["squeezed (ε = 0)", "net_mean_std_ratio"] - 0.5) < 3 * se
    for column in ("energy_distance", "energy_floor_mean", "energy_floor_std", "energy_fit_mean"):
        assert table[column].notna().all(), column
    assert (tmp_path / "sanity.png").stat().st_size > 0
