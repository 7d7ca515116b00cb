"""Metrics, BMA, diversity and AUROC against hand-computed values and reference implementations."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from weightflow.evaluate import metrics
from weightflow.evaluate.bma import bma_curve, random_subsets
from weightflow.evaluate.diversity import diversity, pairwise_disagreement, pairwise_js
from weightflow.evaluate.ood import auroc

# Two networks, two inputs, both labelled class 0 (probabilities chosen away from the ECE bin edges k/15).
P_A = [[0.9, 0.1], [0.35, 0.65]]
P_B = [[0.7, 0.3], [0.15, 0.85]]
Y = torch.tensor([0, 0])


def lp(*nets):
    return torch.tensor(nets, dtype=torch.float64).log()


def test_per_network_metrics_by_hand():
    log_probs = lp(P_A, P_B)  # [2, 2, 2]
    # accuracy: each network is right on input 1 only.
    assert metrics.accuracy(log_probs, Y).tolist() == [0.5, 0.5]
    # NLL: -(ln 0.9 + ln 0.35)/2 and -(ln 0.7 + ln 0.15)/2.
    assert metrics.nll(log_probs, Y).tolist() == pytest.approx([0.5775913, 1.1268975], abs=1e-6)
    # Brier: A: (0.1² + 0.1²  + 0.65² + 0.65²)/2 = 0.4325; B: (0.3²·2 + 0.85²·2)/2 = 0.8125.
    assert metrics.brier(log_probs, Y).tolist() == pytest.approx([0.4325, 0.8125])
    # ECE: two inputs in different bins: A (|1-0.9| + |0-0.65|)/2, B (|1-0.7| + |0-0.85|)/2.
    assert metrics.ece(log_probs, Y).tolist() == pytest.approx([0.375, 0.575])


def test_bma_metrics_use_the_averaged_probabilities():
    log_probs = lp(P_A, P_B)
    bma = metrics.bma_log_probs(log_probs, dim=0)  # averaged probabilities [[0.8, 0.2], [0.25, 0.75]]
    assert bma.exp().flatten().tolist() == pytest.approx([0.8, 0.2, 0.25, 0.75])
    # Brier of the BMA: (0.2²·2 + 0.75²·2)/2 = 0.6025, while the members' mean Brier is (0.4325 + 0.8125)/2 = 0.6225.
    assert metrics.brier(bma, Y).item() == pytest.approx(0.6025)
    assert metrics.brier(log_probs, Y).mean().item() == pytest.approx(0.6225)
    # NLL of the BMA: -(ln 0.8 + ln 0.25)/2 < the members' mean NLL 0.8522444 (Jensen).
    assert metrics.nll(bma, Y).item() == pytest.approx(0.8047190, abs=1e-6)
    assert metrics.nll(log_probs, Y).mean().item() == pytest.approx(0.8522444, abs=1e-6)
    assert metrics.accuracy(bma, Y).item() == 0.5


def test_ece_pools_inputs_within_a_bin():
    # Both inputs fall in bin (11/15, 12/15]: ECE = |acc_b - conf_b| = |0.5 - 0.77| = 0.27
    # (the mean of per-input gaps would be (0.22 + 0.76)/2 = 0.49).
    log_probs = lp([[0.78, 0.22], [0.24, 0.76]])
    rel = metrics.reliability(log_probs, Y)
    assert rel.count[0, 11].item() == 2 and rel.count.sum().item() == 2
    assert metrics.ece(log_probs, Y).item() == pytest.approx(0.27)


def test_ece_batched_equals_single_and_confidence_one_is_last_bin():
    gen = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(3 * torch.randn(5, 40, 4, generator=gen, dtype=torch.float64), -1)
    y = torch.randint(0, 4, (40,), generator=gen)
    batched = metrics.ece(log_probs, y, bins=15)
    assert batched.tolist() == pytest.approx([metrics.ece(lp_i, y, bins=15).item() for lp_i in log_probs])
    one_hot = torch.tensor([[[0.0, -math.inf]]], dtype=torch.float64)  # confidence exactly 1
    assert metrics.reliability(one_hot, torch.tensor([0])).count[0, -1].item() == 1
    assert metrics.ece(one_hot, torch.tensor([0])).item() == 0.0


def test_entropy_extremes():
    uniform = torch.full((1, 3, 5), -math.log(5.0), dtype=torch.float64)
    assert metrics.entropy(uniform).flatten().tolist() == pytest.approx([math.log(5.0)] * 3)
    certain = torch.tensor([[[0.0, -math.inf, -math.inf]]], dtype=torch.float64)
    assert metrics.entropy(certain).item() == 0.0


def test_js_and_disagreement_by_hand_and_against_scipy():
    # p = (1/2, 1/2), q = (1, 0): JS = H(3/4, 1/4) - (ln 2 + 0)/2 = 0.5623351 - 0.3465736.
    js = pairwise_js(lp([[0.5, 0.5]], [[1.0, 0.0]]))
    assert js[0, 1].item() == pytest.approx(0.2157616, abs=1e-6)
    assert js[0, 0].item() == pytest.approx(0.0, abs=1e-12)
    gen = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(2 * torch.randn(6, 7, 3, generator=gen, dtype=torch.float64), -1)
    p = log_probs.exp().numpy()
    expected = np.array([[np.mean([jensenshannon(p[i, k], p[j, k]) ** 2 for k in range(7)]) for j in range(6)]
                         for i in range(6)])
    assert pairwise_js(log_probs).numpy() == pytest.approx(expected, abs=1e-10)
    # Disagreement: predictions [0, 1, 1] vs [0, 0, 1] differ on one input of three.
    pred_lp = lp([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], [[0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    assert pairwise_disagreement(pred_lp)[0, 1].item() == pytest.approx(1 / 3)
    div = diversity(pred_lp)
    assert div["disagreement"] == pytest.approx(1 / 3)
    assert div["js"] == pytest.approx(pairwise_js(pred_lp)[0, 1].item())


def test_auroc_matches_sklearn_with_ties():
    gen = torch.Generator().manual_seed(2)
    score_in = torch.randint(0, 5, (3, 30), generator=gen).double()
    score_out = torch.randint(2, 8, (3, 20), generator=gen).double()
    got = auroc(score_in, score_out)
    for i in range(3):
        labels = np.r_[np.zeros(30), np.ones(20)]
        assert got[i].item() == pytest.approx(roc_auc_score(labels, np.r_[score_in[i], score_out[i]]))
    assert auroc(torch.zeros(4), torch.ones(4)).item() == 1.0


def test_random_subsets_are_distinct_and_bma_curve_at_full_size():
    gen = torch.Generator().manual_seed(3)
    idx = random_subsets(10, 4, 50, generator=gen)
    assert idx.shape == (50, 4)
    assert all(len(set(row.tolist())) == 4 for row in idx)
    log_probs = torch.log_softmax(torch.randn(8, 25, 3, generator=gen, dtype=torch.float64), -1)
    y = torch.randint(0, 3, (25,), generator=gen)
    curve = bma_curve(log_probs, y, [1, 2, 8, 16], subsets=5, generator=gen)
    assert curve["n"].tolist() == [1, 2, 8]  # 16 > 8 networks becomes 8: all networks
    full = curve.set_index("n").loc[8]
    assert full["nll_mean"] == pytest.approx(metrics.nll(metrics.bma_log_probs(log_probs), y).item())
    assert full["nll_std"] == 0.0
    # n = 1: every subset is one network, so the mean lies within the members' range.
    per_net = metrics.nll(log_probs, y)
    assert per_net.min() <= curve.set_index("n").loc[1, "nll_mean"] <= per_net.max()
