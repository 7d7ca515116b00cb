"""One temperature per source of networks, fitted on the validation split (temperature scaling).

Probability-based metrics depend on the scale of the logits: networks in the thesis' canonical form compute the
raw network's logits divided by ``s_L`` (:mod:`weightflow.canonical`), so their NLL, ECE, Brier, BMA NLL and
diversity are not comparable with raw networks'.  Temperature scaling (Guo et al., 2017) puts every source on a
common footing: one scalar ``T > 0`` per source, the same for all its networks, minimizing the mean validation
NLL of the tempered networks,

    T* = argmin_T  (1/M) sum_m  NLL_val(softmax(logits_m / T)),

found by a bounded scalar search over ``log T`` in ``[log_t_min, log_t_max]`` (the objective is smooth and, for
one network, convex in ``1/T``).  Every calibrated metric is then the usual metric of the logits ``/ T*``.
``T*`` is fitted on the validation split only; the test split never influences it.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from weightflow.evaluate.metrics import nll

__all__ = ["fit_temperature", "LOG_T_BOUNDS"]

LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))


def fit_temperature(logits: Tensor, y: Tensor, *, bounds: tuple[float, float] = LOG_T_BOUNDS, xtol: float = 1e-5) -> float:
    """``T*`` minimizing the mean over networks of the NLL of ``log_softmax(logits / T)``.

    Args:
        logits: ``[M, N, C]`` logits of ``M`` networks on the ``N`` validation inputs (non-finite networks are
            left out of the fit).
        y: ``[N]`` validation labels.
    """
    finite = torch.isfinite(logits).flatten(1).all(-1)
    if not finite.any():
        return 1.0
    logits = logits[finite].double()
    y = y.to(logits.device)

    def mean_nll(log_t: float) -> float:
        return nll(torch.log_softmax(logits / math.exp(log_t), dim=-1), y).mean().item()

    result = minimize_scalar(mean_nll, bounds=bounds, method="bounded", options={"xatol": xtol})
    return float(math.exp(result.x))
