"""Flow matching over network weights in three geometries (Euclidean, Normalized, Geometric).

* :mod:`~weightflow.flow.spec` — flow ids ``{geometry}-{alignment}-{coupling}`` and their data files;
* :mod:`~weightflow.flow.paths` — path and prior geometry of each flow;
* :mod:`~weightflow.flow.couplings` — independent and minibatch-OT (one-to-one EMD) couplings;
* :mod:`~weightflow.flow.objectives` — x1- and velocity-prediction losses, time distributions;
* :mod:`~weightflow.flow.training` — the training loop (EMA, schedule, validation, checkpoint/resume);
* :mod:`~weightflow.flow.sampling` — (Riemannian) Euler, torchdiffeq solvers, stochastic sampling, guidance;
* :mod:`~weightflow.flow.model_file` — :class:`FlowModel`, ``model.pt`` (:func:`save_flow`, :func:`load_flow`);
* :mod:`~weightflow.flow.stages` — the Snakemake stages.

The package imports its torch-based submodules lazily, so that the workflow's rules files can read flow ids
(:mod:`~weightflow.flow.spec`) without importing torch: every Snakemake (and SLURM) job parses them.
"""

import importlib

from weightflow.flow.spec import FlowSpec

_LAZY = {
    "FlowModel": "model_file", "load_flow": "model_file", "save_flow": "model_file",
    "sample": "sampling", "TrainSettings": "training", "train_flow": "training",
}

__all__ = ["FlowModel", "FlowSpec", "TrainSettings", "load_flow", "sample", "save_flow", "train_flow"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"weightflow.flow.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'weightflow.flow' has no attribute {name!r}")
