"""Checks shared by the model tests (a helper module, not collected: its name does not start with ``test_``)."""

from __future__ import annotations

import torch


def assert_fused_matches_reference(model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The sparse NG-T's fused path and its plain-autograd reference (``fused=False``) agree in their outputs and in
    every parameter's gradient; returns the fused path's output."""
    results = []
    for fused in (False, True):
        model.fused = fused
        model.zero_grad()
        out = model(x, t)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (ref_out, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    return out
