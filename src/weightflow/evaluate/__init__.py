"""Evaluation of sets of networks: metrics, Bayesian model averaging, diversity, OOD detection, tables.

Modules: :mod:`~weightflow.evaluate.metrics` (accuracy, NLL, Brier, ECE, entropy — batched over networks; BMA
predictive), :mod:`~weightflow.evaluate.bma` (BMA curves), :mod:`~weightflow.evaluate.diversity` (pairwise JS
divergence, disagreement), :mod:`~weightflow.evaluate.ood` (OOD inputs, AUROC),
:mod:`~weightflow.evaluate.networks` (everything for one set of networks), :mod:`~weightflow.evaluate.steps`
(sample quality vs integration steps), :mod:`~weightflow.evaluate.tables` (CSV/LaTeX tables) and
:mod:`~weightflow.evaluate.stages` (Snakemake stages).

From a notebook::

    from weightflow.evaluate import metrics
    lp = metrics.log_probs_from_logits(weightflow.weights.forward(wf.weights, wf.layer_sizes, x))  # [M, N, C]
    metrics.accuracy(lp, y)                          # [M] per network
    metrics.nll(metrics.bma_log_probs(lp), y)        # NLL of the BMA predictive
"""
