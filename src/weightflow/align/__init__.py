"""Permutation alignment of MLPs onto reference networks (weight matching, Sinkhorn re-basin).

* :mod:`weightflow.align.permutations` — apply, invert, compose, draw hidden-neuron permutations (batched).
* :mod:`weightflow.align.weight_matching` — data-free coordinate-descent weight matching (Ainsworth et al. 2023).
* :mod:`weightflow.align.sinkhorn` — Sinkhorn re-basin with the ``l2``, ``mid`` and ``rnd`` objectives (Peña et al. 2023).
* :mod:`weightflow.align.references` — reference networks (``ref{k}``, ``medoid``), aligning a weights file, the stage.
"""

from weightflow.align.permutations import (
    apply_permutations,
    compose_permutations,
    identity_permutations,
    invert_permutations,
    permutation_matrices,
    random_permutations,
    soft_permute,
)
from weightflow.align.sinkhorn import OBJECTIVES, log_sinkhorn, sinkhorn_rebasin
from weightflow.align.weight_matching import batched_assignments, solve_assignments, weight_matching

__all__ = [
    "apply_permutations",
    "compose_permutations",
    "identity_permutations",
    "invert_permutations",
    "permutation_matrices",
    "random_permutations",
    "soft_permute",
    "OBJECTIVES",
    "log_sinkhorn",
    "sinkhorn_rebasin",
    "solve_assignments",
    "batched_assignments",
    "weight_matching",
]
