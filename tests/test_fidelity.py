"""Fidelity metrics against a reference posterior, on hand-computed predictives."""

import math

import pytest
import torch

from weightflow.evaluate import metrics
from weightflow.evaluate.fidelity import fidelity_scores, top1_agreement, total_variation


def _lp(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_identical_sources_agree_everywhere():
    gen = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(5, 7, 3, generator=gen, dtype=torch.float64), -1)
    y = torch.randint(0, 3, (7,), generator=gen)
    out = fidelity_scores(lp, lp, y)
    assert out["agreement"] == 1.0
    assert out["tv"] == pytest.approx(0.0, abs=1e-12)
    # the same networks in another order are the same BMA
    out = fidelity_scores(lp.flip(0), lp, y)
    assert out["agreement"] == 1.0 and out["tv"] == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_agreement_and_tv():
    source = _lp([[[0.9, 0.1], [0.4, 0.6]]])  # one network, two inputs
    reference = _lp([[[0.6, 0.4], [0.55, 0.45]]])
    # top-1: source (0, 1), reference (0, 0) -> agree on 1 of 2 inputs
    assert fidelity_scores(source, reference, torch.tensor([0, 1]))["agreement"] == 0.5
    # TV: input 0: (0.3 + 0.3)/2 = 0.3; input 1: (0.15 + 0.15)/2 = 0.15; mean 0.225
    assert total_variation(source[0], reference[0]).tolist() == pytest.approx([0.3, 0.15])
    assert fidelity_scores(source, reference, torch.tensor([0, 1]))["tv"] == pytest.approx(0.225)


def test_three_classes_tv_and_agreement():
    p = _lp([[0.2, 0.5, 0.3]])
    q = _lp([[0.6, 0.3, 0.1]])
    assert total_variation(p, q).item() == pytest.approx(0.5 * (0.4 + 0.2 + 0.2))
    assert top1_agreement(p, q).item() == 0.0


def test_bma_is_taken_before_comparing():
    # two confident networks disagreeing: their BMA is (0.5, 0.5), exactly the reference's
    source = _lp([[[0.99, 0.01]], [[0.01, 0.99]]])
    reference = _lp([[[0.5, 0.5]]])
    out = fidelity_scores(source, reference, torch.tensor([0]))
    assert out["tv"] == pytest.approx(0.0, abs=1e-12)
    # averaging per-network TVs instead would give 0.49
    assert total_variation(source, reference.expand(2, 1, 2)).mean().item() == pytest.approx(0.49)


def test_accuracy_nll_ece_are_those_of_the_source_bma():
    gen = torch.Generator().manual_seed(1)
    lp = torch.log_softmax(2 * torch.randn(4, 50, 3, generator=gen, dtype=torch.float64), -1)
    ref = torch.log_softmax(torch.randn(6, 50, 3, generator=gen, dtype=torch.float64), -1)
    y = torch.randint(0, 3, (50,), generator=gen)
    out = fidelity_scores(lp, ref, y, bins=10)
    bma = metrics.bma_log_probs(lp)
    assert out["accuracy"] == pytest.approx(metrics.accuracy(bma, y).item())
    assert out["nll"] == pytest.approx(metrics.nll(bma, y).item())
    assert out["ece"] == pytest.approx(metrics.ece(bma, y, 10).item())
    # and the mean NLL of the members is something else (pitfall 10)
    assert out["nll"] < metrics.nll(lp, y).mean().item() - 1e-3
    assert 0 <= out["tv"] <= 1 and not math.isnan(out["tv"])


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="different inputs"):
        fidelity_scores(torch.zeros(2, 5, 2), torch.zeros(2, 4, 2), torch.zeros(5, dtype=torch.long))


def test_fidelity_stage_scores_every_source_against_the_reference(tmp_path):
    """The stage on iris: the reference against itself (agreement 1, TV 0), the half-chain floor, a baseline weights
    file (a copy of the reference: TV 0) and a flow's selected samples (shifted networks: TV > 0); costs from
    benchmark files."""
    import pandas as pd

    from weightflow.evaluate.stages import fidelity_stage
    from weightflow.flow.samples import save_candidates
    from weightflow.io import WeightsFile, save_weights
    from weightflow.runner import StageJob
    from weightflow.weights import init_weights

    sizes = (4, 5, 3)
    nets = init_weights(sizes, 12, init_std=0.6, bias_std=0.2, generator=torch.Generator().manual_seed(0))
    reference = WeightsFile(nets, sizes, columns={"run": torch.arange(4).repeat(3)}, metadata={"dataset": "iris"})
    save_weights(tmp_path / "hmc.pt", reference)
    save_weights(tmp_path / "copy.pt", WeightsFile(nets, sizes, metadata={"dataset": "iris", "seed": 0}))
    save_candidates(tmp_path / "cand.pt", {"euler": nets + 0.3}, [{"name": "euler", "sampler": "euler", "options": {},
                    "guidance": 0.0, "control": False}], sizes, {"flow": "geometric-none-ot"})
    pd.DataFrame({"candidate": ["euler"], "selected": ["main"]}).to_csv(tmp_path / "sel.csv", index=False)
    (tmp_path / "bench.tsv").write_text("s\th:m:s\tcpu_time\n2.5\t0:00:02\t4.0\n")
    cfg = {"name": "toy", "dataset": "iris", "seed": 0, "layer_sizes": list(sizes), "device": "cpu",
           "evaluation": {"split": "test", "ece_bins": 10, "max_networks": 100}}
    sources = [{"source": "ensemble", "experiment": "toy", "label": "Target", "inputs": {"weights": "s0_weights"},
                "costs": [str(tmp_path / "bench.tsv")], "upstream": []},
               {"source": "geometric-none-ot", "experiment": "toy", "label": "flow", "trained_on": "ensemble",
                "inputs": {"candidates": "s1_candidates", "selection": "s1_selection"},
                "costs": [str(tmp_path / "bench.tsv")], "upstream": [str(tmp_path / "bench.tsv")]}]
    job = StageJob(inputs={"reference": str(tmp_path / "hmc.pt"), "s0_weights": str(tmp_path / "copy.pt"),
                           "s1_candidates": str(tmp_path / "cand.pt"), "s1_selection": str(tmp_path / "sel.csv")},
                   outputs={"csv": tmp_path / "f.csv", "tex": tmp_path / "f.tex"},
                   params={"cfg": cfg, "sources": sources,
                           "reference": {"source": "hmc", "experiment": "hmc", "label": "HMC", "costs": []}})
    fidelity_stage(job)
    table = pd.read_csv(tmp_path / "f.csv", keep_default_na=False).set_index("source")
    assert list(table.index) == ["hmc", "hmc_split", "ensemble", "geometric-none-ot"]
    assert table.loc["hmc", "agreement"] == 1 and table.loc["hmc", "tv"] == 0
    assert table.loc["ensemble", "tv"] == pytest.approx(0, abs=1e-12) and table.loc["geometric-none-ot", "tv"] > 0.01
    assert table.loc["hmc_split", "networks"] == 6
    assert table.loc["ensemble", "cpu_seconds"] == 4.0 and table.loc["geometric-none-ot", "cpu_seconds_with_data"] == 8.0
    assert "Fidelity to the HMC posterior" in (tmp_path / "f.tex").read_text()
