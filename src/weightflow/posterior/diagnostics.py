"""Convergence diagnostics of multi-chain samples, computed by ArviZ (nothing here re-implements them).

For each scalar quantity ``q`` with draws ``q[k, s]`` (chain ``k``, draw ``s``) ArviZ gives

* ``r_hat`` — rank-normalized split R-hat (Vehtari et al. 2021; ArviZ's default, the max of the bulk and the
  folded version), ``r_hat_split`` — the classic split R-hat (Gelman et al., BDA3), both over half-chains;
* ``ess_bulk`` / ``ess_tail`` — bulk (rank-normalized) and tail (5 % and 95 % quantiles) effective sample sizes;
* ``mcse_mean`` — the Monte-Carlo standard error of the mean.

The quantities of an MLP posterior (:func:`mlp_diagnostics`): the log-posterior ``−U(θ)``, the predictive
probabilities ``p(y = c | x_i, θ)`` of the inputs ``x_i`` (every class, or class 1 only when there are two —
class 0 is its complement, with the same R-hat and ESS) and a few weight coordinates, evenly spaced over the flat
vector.  Weights are not identified (hidden-neuron permutations, sign flips in the last layer's effect), so their
R-hat across chains is expected to be large; the predictive probabilities are what a converged reference must get
right.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightflow.io import WeightsFile, WeightsFileError
from weightflow.weights import forward

__all__ = ["convergence_table", "summarize", "chain_index", "predictive_probs", "diagnostic_coordinates",
           "mlp_diagnostics"]

COLUMNS = ("quantity", "input", "class", "coordinate", "mean", "sd", "r_hat", "r_hat_split", "ess_bulk", "ess_tail",
           "mcse_mean")


def _arviz():
    with warnings.catch_warnings():  # ArviZ 0.2x announces its 1.0 refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """ArviZ diagnostics of ``values [K, S, *shape]`` → ``{name: [*shape]}``."""
    az = _arviz()
    ds = az.convert_to_dataset({"q": np.ascontiguousarray(values, dtype=np.float64)})
    out = {
        "r_hat": az.rhat(ds, method="rank")["q"].values,
        "r_hat_split": az.rhat(ds, method="split")["q"].values,
        "ess_bulk": az.ess(ds, method="bulk")["q"].values,
        "ess_tail": az.ess(ds, method="tail")["q"].values,
        "mcse_mean": az.mcse(ds, method="mean")["q"].values,
    }
    out["mean"] = values.mean(axis=(0, 1))
    out["sd"] = values.std(axis=(0, 1), ddof=1)
    return out


def convergence_table(log_posterior: np.ndarray | Tensor, predictive: np.ndarray | Tensor,
                      weights: np.ndarray | Tensor | None = None, coordinates: np.ndarray | Tensor | None = None
                      ) -> pd.DataFrame:
    """One row per scalar quantity with ArviZ's diagnostics (see the module docstring).

    Args:
        log_posterior: ``[K, S]`` (chains × draws).
        predictive: ``[K, S, n, C']`` probabilities of ``n`` inputs and ``C'`` reported classes (the class labels
            are ``range(C')``, or ``[1]`` when ``C' = 1``: the positive class of a binary problem).
        weights: ``[K, S, w]`` weight coordinates ``coordinates [w]`` (optional).
    """
    def as_np(a):
        return a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, np.float64)

    log_posterior, predictive = as_np(log_posterior), as_np(predictive)
    if log_posterior.ndim != 2 or predictive.ndim != 4 or predictive.shape[:2] != log_posterior.shape:
        raise ValueError(f"need log_posterior [K, S] and predictive [K, S, n, C] with the same K, S; got "
                         f"{list(log_posterior.shape)} and {list(predictive.shape)}")
    if log_posterior.shape[0] < 2 or log_posterior.shape[1] < 4:
        raise ValueError(f"R-hat needs at least 2 chains of 4 draws, got {list(log_posterior.shape)}")
    frames = []
    s = _stats(log_posterior)
    frames.append(pd.DataFrame({"quantity": ["log_posterior"], "input": -1, "class": -1, "coordinate": -1,
                                **{k: [float(v)] for k, v in s.items()}}))
    n, c = predictive.shape[2:]
    classes = np.array([1]) if c == 1 else np.arange(c)
    s = _stats(predictive)
    frames.append(pd.DataFrame({"quantity": "predictive", "input": np.repeat(np.arange(n), c),
                                "class": np.tile(classes, n), "coordinate": -1,
                                **{k: v.reshape(-1) for k, v in s.items()}}))
    if weights is not None:
        weights = as_np(weights)
        coords = np.arange(weights.shape[2]) if coordinates is None else as_np(coordinates).astype(np.int64)
        s = _stats(weights)
        frames.append(pd.DataFrame({"quantity": "weight", "input": -1, "class": -1, "coordinate": coords,
                                    **{k: v.reshape(-1) for k, v in s.items()}}))
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)]


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Worst cases per quantity: ``{quantity}_r_hat_max``, ``_r_hat_split_max``, ``_ess_bulk_min``, ``_ess_tail_min``
    (and the median bulk ESS)."""
    out: dict[str, Any] = {}
    for quantity, rows in table.groupby("quantity", sort=False):
        out[f"{quantity}_r_hat_max"] = float(rows.r_hat.max())
        out[f"{quantity}_r_hat_split_max"] = float(rows.r_hat_split.max())
        out[f"{quantity}_ess_bulk_min"] = float(rows.ess_bulk.min())
        out[f"{quantity}_ess_tail_min"] = float(rows.ess_tail.min())
        out[f"{quantity}_ess_bulk_median"] = float(rows.ess_bulk.median())
    return out


def chain_index(wf: WeightsFile) -> Tensor:
    """Row indices ``[K, S]`` of an HMC weights file (columns ``chain`` and ``draw``; every chain the same draws)."""
    for col in ("chain", "draw"):
        if col not in wf.columns:
            raise WeightsFileError(f"column '{col}' is missing; diagnostics need an HMC weights file")
    chain, draw = wf.columns["chain"].long(), wf.columns["draw"].long()
    chains, draws = torch.unique(chain), torch.unique(draw)
    if len(wf) != len(chains) * len(draws):
        raise WeightsFileError(f"{len(wf)} rows are not {len(chains)} chains × {len(draws)} draws")
    index = torch.full((len(chains), len(draws)), -1, dtype=torch.long)
    index[torch.searchsorted(chains, chain), torch.searchsorted(draws, draw)] = torch.arange(len(wf))
    if (index < 0).any():
        raise WeightsFileError("some (chain, draw) pairs are missing or duplicated")
    return index


def predictive_probs(weights: Tensor, layer_sizes, x: Tensor, *, chunk: int = 1024) -> Tensor:
    """``softmax(f_θ(x))`` of every network → ``[N, n, C]`` (float64, in chunks of networks)."""
    with torch.no_grad():
        parts = [torch.softmax(forward(w, layer_sizes, x.to(w.dtype)), -1).double() for w in weights.split(chunk)]
    return torch.cat(parts)


def diagnostic_coordinates(dim: int, num: int) -> Tensor:
    """``num`` coordinates evenly spaced over ``range(dim)`` (first and last included)."""
    return torch.linspace(0, dim - 1, max(1, min(num, dim))).round().long().unique()


def mlp_diagnostics(wf: WeightsFile, x: Tensor, *, weights: int = 8) -> pd.DataFrame:
    """:func:`convergence_table` of an HMC weights file: column ``log_posterior``, the predictive probabilities of
    ``x`` and ``weights`` evenly spaced coordinates."""
    if "log_posterior" not in wf.columns:
        raise WeightsFileError("column 'log_posterior' is missing; diagnostics need an HMC weights file")
    index = chain_index(wf)
    probs = predictive_probs(wf.weights, wf.layer_sizes, x)
    if probs.shape[-1] == 2:
        probs = probs[..., 1:]
    coords = diagnostic_coordinates(wf.layout.dim, weights)
    return convergence_table(wf.columns["log_posterior"][index], probs[index], wf.weights[index][..., coords], coords)
