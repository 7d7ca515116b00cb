"""Test helpers: seeded generators and small ensembles trained from different seeds (full-batch Adam)."""

from __future__ import annotations

from typing import Sequence

import torch

from weightflow.data import Dataset
from weightflow.weights import cross_entropy, init_weights


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def train_networks(sizes: Sequence[int], num: int, data: Dataset, *, init_std: float, lr: float, steps: int,
                   bias_std: float = 0.0) -> torch.Tensor:
    """``num`` networks ``[num, D]`` of ``sizes`` trained on ``data``'s train split by full-batch Adam, each from
    its own draw of one seeded init: genuinely different solutions (different permutation modes)."""
    theta = init_weights(sizes, num, init_std=init_std, bias_std=bias_std, generator=seeded(0)).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        cross_entropy(theta, sizes, data.x_train, data.y_train).sum().backward()
        opt.step()
    return theta.detach()
