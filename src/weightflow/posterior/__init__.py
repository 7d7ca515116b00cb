"""Reference posteriors and standard Bayesian baselines over the flat weights of an MLP.

The target everywhere is the Bayesian posterior of an MLP classifier with the Gaussian prior that the MAP
ensemble's weight decay and SGLD already use (every coordinate, biases included, ~ N(0, σ²), σ =
``posterior.prior_std`` or ``ensemble.init_std``), at temperature 1::

    p(θ | D) ∝ exp(−U(θ)),   U(θ) = −Σ_i log softmax(f_θ(x_i))_{y_i} + ‖θ‖² / (2σ²)      (full training split)

Modules:

* :mod:`~weightflow.posterior.target` — the posterior ``U(θ)`` of an MLP (batched over chains/members), MAP init;
* :mod:`~weightflow.posterior.hmc` — full-batch Hamiltonian Monte Carlo over many chains at once, step size by
  dual averaging during warm-up (the gold standard);
* :mod:`~weightflow.posterior.vi` — mean-field Gaussian variational inference (Bayes by backprop), vectorized
  over independent members;
* :mod:`~weightflow.posterior.laplace` — Laplace approximations around the MAP ensemble's members (last layer,
  exact GGN; or all layers, Kronecker-factored);
* :mod:`~weightflow.posterior.diagnostics` — ArviZ convergence diagnostics (split R-hat, bulk/tail ESS);
* :mod:`~weightflow.posterior.stages` — the Snakemake stages (weights files ``results/{e}/posterior/{method}/``).

Every method writes the standard weights file (:mod:`weightflow.io`), so alignment, canonicalization, flows and
evaluation take its networks as input like an ensemble's.  SGHMC lives next to SGLD in
:mod:`weightflow.ensemble` (optimizer ``sghmc``); fidelity metrics against HMC in
:mod:`weightflow.evaluate.fidelity`.
"""
