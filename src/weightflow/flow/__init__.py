"""Flow matching over network weights in three geometries (Euclidean, Normalized, Geometric).

* :mod:`~weightflow.flow.spec` — flow ids ``{geometry}-{alignment}-{coupling}`` and their data files;
* :mod:`~weightflow.flow.paths` — path and prior geometry of each flow;
* :mod:`~weightflow.flow.couplings` — independent and minibatch-OT (one-to-one EMD) couplings;
* :mod:`~weightflow.flow.objectives` — x1- and velocity-prediction losses, time distributions;
* :mod:`~weightflow.flow.training` — the training loop (EMA, schedule, validation, checkpoint/resume);
* :mod:`~weightflow.flow.sampling` — (Riemannian) Euler, torchdiffeq solvers, stochastic sampling, guidance;
* :mod:`~weightflow.flow.model_file` — :class:`FlowModel`, ``model.pt`` (:func:`save_flow`, :func:`load_flow`);
* :mod:`~weightflow.flow.stages` — the Snakemake stages.
"""

from weightflow.flow.model_file import FlowModel, load_flow, save_flow
from weightflow.flow.sampling import sample
from weightflow.flow.spec import FlowSpec
from weightflow.flow.training import TrainSettings, train_flow

__all__ = ["FlowModel", "FlowSpec", "TrainSettings", "load_flow", "sample", "save_flow", "train_flow"]
