"""Couplings of prior draws x0 and data x1 within a minibatch.

* ``independent``: pairs ``(x0[i], x1[i])`` as drawn.
* ``ot``: minibatch optimal transport — POT's exact EMD between the two uniform empirical measures with the
  squared geodesic cost ``geometry.pairwise_sq_dist(x0, x1)`` (flat squared distance in Euclidean space,
  squared great-circle distances summed over sphere factors on the product manifold).  With uniform weights
  and equal sizes the optimal plan is a permutation matrix / B, used as a **one-to-one** assignment: every
  x0 and every x1 appears exactly once (no resampling of pairs from the plan).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["ot_assignment", "couple", "COUPLINGS"]


def ot_assignment(x0: Tensor, x1: Tensor, geometry) -> Tensor:
    """The permutation ``perm [B]`` such that ``(x0[perm[j]], x1[j])`` is an optimal one-to-one coupling.

    Solved with ``ot.emd`` (network simplex, float64).  The simplex returns a vertex of the Birkhoff
    polytope, i.e. a permutation; if ties ever produce a plan whose row maxima are not a permutation, the
    same cost matrix is solved with SciPy's Hungarian algorithm instead (same optimum)."""
    if x0.shape != x1.shape:
        raise ValueError(f"OT coupling needs equally many x0 and x1, got {list(x0.shape)} and {list(x1.shape)}")
    import ot  # POT, imported on use: it loads slowly (~4 CPU s) and only OT couplings need it

    n = x0.shape[0]
    cost = geometry.pairwise_sq_dist(x0, x1).detach().to("cpu", torch.float64).numpy()
    uniform = np.full(n, 1.0 / n)
    plan = ot.emd(uniform, uniform, cost)
    x0_of = plan.argmax(axis=0)  # column j (an x1) → the x0 it is transported from
    if len(np.unique(x0_of)) != n:
        rows, cols = linear_sum_assignment(cost)
        x0_of = np.empty(n, dtype=np.int64)
        x0_of[cols] = rows
    return torch.as_tensor(x0_of, dtype=torch.long, device=x0.device)


def _independent(x0: Tensor, x1: Tensor, geometry) -> Tensor:
    return x0


def _ot(x0: Tensor, x1: Tensor, geometry) -> Tensor:
    return x0[ot_assignment(x0, x1, geometry)]


COUPLINGS = {"independent": _independent, "ot": _ot}


def couple(name: str, x0: Tensor, x1: Tensor, geometry) -> Tensor:
    """``x0`` reordered so that ``(x0[i], x1[i])`` are the coupled pairs of coupling ``name``."""
    if name not in COUPLINGS:
        raise ValueError(f"unknown coupling {name!r}; use one of {sorted(COUPLINGS)}")
    return COUPLINGS[name](x0, x1, geometry)
