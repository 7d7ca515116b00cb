"""Log-likelihoods of networks under flows (instantaneous change of variables), Euclidean and Riemannian.

* :mod:`weightflow.likelihood.divergence` — exact and Hutchinson divergences of tangent-projected fields;
* :mod:`weightflow.likelihood.ode` — :func:`log_likelihood`, the backward integration of ``[x, ∫ div]``;
* :mod:`weightflow.likelihood.flows` — :func:`flow_log_likelihood` for trained flows and which density each
  flow geometry reports;
* :mod:`weightflow.likelihood.stage` — the Snakemake stage (``flows/{flow}/loglik.csv``).

From a notebook::

    from weightflow.flow import load_flow
    from weightflow.likelihood import LikelihoodSettings, flow_log_likelihood, log_likelihood
    flow = load_flow("results/breast_cancer/flows/geometric-none-independent/model.pt")
    res = flow_log_likelihood(flow, networks, LikelihoodSettings(probes=8, t_start=0.99))
    res.logp, res.logp_se, res.nfe, res.seconds
    # any field v(x [B, D], t [B]) and geometry:
    res = log_likelihood(v, x1, geometry, divergence="exact", method="dopri5")
"""

from weightflow.likelihood.divergence import draw_probes, field_and_divergence, tangent_field
from weightflow.likelihood.flows import LikelihoodSettings, density_measure, flow_log_likelihood
from weightflow.likelihood.ode import LogLikResult, log_likelihood, time_grid, trapezoid_weights

__all__ = [
    "LogLikResult",
    "log_likelihood",
    "time_grid",
    "trapezoid_weights",
    "draw_probes",
    "field_and_divergence",
    "tangent_field",
    "LikelihoodSettings",
    "flow_log_likelihood",
    "density_measure",
]
