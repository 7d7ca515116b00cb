"""The one flat layout of MLP weights used everywhere in weightflow.

An MLP is described by ``layer_sizes = [n0, n1, ..., nL]``: ``n0`` inputs, ``L`` affine layers, ReLU after
every layer but the last.  A batch of ``B`` networks is one float tensor ``flat`` of shape ``[B, D]`` with

    D = sum_{l=1..L} (n_l * n_{l-1} + n_l)

and, for each layer ``l`` in order, the weight matrix ``W_l`` (shape ``[n_l, n_{l-1}]``, i.e. out x in,
row-major — the same orientation as ``torch.nn.Linear.weight``) followed by the bias ``b_l`` (``[n_l]``)::

    flat = [ W_1.ravel(), b_1, W_2.ravel(), b_2, ..., W_L.ravel(), b_L ]

Row ``k`` of ``W_l`` (``flat[w_start + k*n_{l-1} : w_start + (k+1)*n_{l-1}]``) is the incoming weight
vector of neuron ``k`` of layer ``l``.  Every module (alignment, canonicalization, graphs, flows, guidance)
reads and writes this layout only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MLPLayout",
    "as_layout",
    "unflatten",
    "flatten",
    "forward",
    "init_weights",
    "to_sequential",
    "from_sequential",
    "cross_entropy",
    "accuracy",
    "loss_and_grad",
    "loss_and_accuracy",
]


@dataclass(frozen=True)
class MLPLayout:
    """Offsets of every layer's ``W`` and ``b`` inside the flat vector of an MLP ``layer_sizes``."""

    layer_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = tuple(int(n) for n in self.layer_sizes)
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least an input and an output size, got {list(sizes)}")
        if any(n < 1 for n in sizes):
            raise ValueError(f"layer_sizes must be positive integers, got {list(sizes)}")
        object.__setattr__(self, "layer_sizes", sizes)

    @property
    def num_layers(self) -> int:
        """Number of affine layers ``L``."""
        return len(self.layer_sizes) - 1

    @property
    def num_features(self) -> int:
        return self.layer_sizes[0]

    @property
    def num_classes(self) -> int:
        return self.layer_sizes[-1]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return self.layer_sizes[1:-1]

    @cached_property
    def offsets(self) -> tuple[tuple[int, int, int], ...]:
        """Per layer ``(w_start, b_start, end)``: ``W_l = flat[w_start:b_start]``, ``b_l = flat[b_start:end]``."""
        out, pos = [], 0
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            w_start, b_start = pos, pos + fan_in * fan_out
            pos = b_start + fan_out
            out.append((w_start, b_start, pos))
        return tuple(out)

    @property
    def dim(self) -> int:
        """Total number of parameters ``D``."""
        return self.offsets[-1][2]

    def shapes(self, layer: int) -> tuple[tuple[int, int], int]:
        """``((out, in), out)`` of layer ``layer`` (0-based)."""
        fan_in, fan_out = self.layer_sizes[layer], self.layer_sizes[layer + 1]
        return (fan_out, fan_in), fan_out

    @cached_property
    def is_bias(self) -> Tensor:
        """Bool ``[D]``: True at bias coordinates."""
        mask = torch.zeros(self.dim, dtype=torch.bool)
        for _, b_start, end in self.offsets:
            mask[b_start:end] = True
        return mask

    @cached_property
    def layer_index(self) -> Tensor:
        """Long ``[D]``: the (0-based) layer each coordinate belongs to."""
        idx = torch.empty(self.dim, dtype=torch.long)
        for layer, (w_start, _, end) in enumerate(self.offsets):
            idx[w_start:end] = layer
        return idx


def as_layout(layer_sizes: Sequence[int] | MLPLayout) -> MLPLayout:
    """Accept either a layout or a list of layer sizes."""
    return layer_sizes if isinstance(layer_sizes, MLPLayout) else MLPLayout(tuple(layer_sizes))


def _check_flat(flat: Tensor, layout: MLPLayout) -> None:
    if flat.shape[-1] != layout.dim:
        raise ValueError(
            f"flat weights have {flat.shape[-1]} coordinates in their last dimension, but layer_sizes "
            f"{list(layout.layer_sizes)} needs D={layout.dim}"
        )


def unflatten(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout) -> list[tuple[Tensor, Tensor]]:
    """Views ``[(W_l [..., out, in], b_l [..., out]) for each layer]`` of ``flat [..., D]`` (no copy)."""
    layout = as_layout(layer_sizes)
    _check_flat(flat, layout)
    layers = []
    for layer, (w_start, b_start, end) in enumerate(layout.offsets):
        (fan_out, fan_in), _ = layout.shapes(layer)
        layers.append((flat[..., w_start:b_start].unflatten(-1, (fan_out, fan_in)), flat[..., b_start:end]))
    return layers


def flatten(layers: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """Inverse of :func:`unflatten`: ``[(W [..., out, in], b [..., out])] -> flat [..., D]``."""
    parts = []
    for w, b in layers:
        parts += [w.flatten(-2), b]
    return torch.cat(parts, dim=-1)


def _shared_input_layer(w: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """``x [n, in] @ W^T + b`` for every network of ``w [..., out, in]`` as ONE matrix product → ``[..., n, out]``.

    The networks' weight matrices are stacked into ``[(...)·out, in]`` (one copy out of the flat layout), so the
    product has ``(...)·out`` columns instead of ``out``: a batch of products with 10 output columns each runs far
    below the CPU's matmul rate, one wide product near it (and its backward, ``dW = dZ x``, is one product too).
    """
    lead, (fan_out, fan_in) = w.shape[:-2], w.shape[-2:]
    z = (w.reshape(-1, fan_in) @ x.transpose(0, 1)).reshape(*lead, fan_out, x.shape[0])
    return z.transpose(-1, -2) + b.unsqueeze(-2)


def forward(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor) -> Tensor:
    """Logits of a batch of MLPs.

    Args:
        flat: ``[B, D]`` weights (or ``[D]`` for one network).
        x: ``[n, n0]`` inputs shared by every network, or ``[B, n, n0]`` one input batch per network.

    Returns:
        ``[B, n, nL]`` logits (``[n, nL]`` when ``flat`` is ``[D]``).  ReLU after every layer but the last.
        With shared inputs the first layer of all networks is one matrix product (:func:`_shared_input_layer`).
    """
    layers = unflatten(flat, layer_sizes)
    h = x
    for layer, (w, b) in enumerate(layers):
        if layer == 0 and x.ndim == 2 and flat.ndim >= 2:
            h = _shared_input_layer(w, b, x)
        else:
            h = torch.matmul(h, w.transpose(-1, -2)) + b.unsqueeze(-2)
        if layer < len(layers) - 1:
            h = torch.relu(h)
    return h.contiguous()  # a one-layer network's shared-input product is a transposed view


def cross_entropy(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy (nats) of each network: ``flat [B, D]``, ``x [n, n0]`` or ``[B, n, n0]``, ``y [n]`` or ``[B, n]`` → ``[B]``.

    Differentiable in ``flat``; the loss of network ``i`` depends only on ``flat[i]``."""
    logits = forward(flat, layer_sizes, x)
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, y.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)


def accuracy(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct argmax predictions of each network → ``[B]`` (same shapes as :func:`cross_entropy`)."""
    logits = forward(flat, layer_sizes, x)
    return (logits.argmax(-1) == y.expand(logits.shape[:-1])).float().mean(-1)


def loss_and_accuracy(
    flat: Tensor, layer_sizes: Sequence[int] | MLPLayout, x: Tensor, y: Tensor, *, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and accuracy of each network ``flat [B, D]`` on shared inputs ``x [n, n0]``, ``y [n]``
    → ``(loss [B], acc [B])`` in ``flat``'s dtype (no gradient).

    Computed ``chunk`` examples at a time (memory ``O(B · max(n_l) · chunk)``) in the feature-major layout
    ``[B, n_l, chunk]``: the first layer of all networks is one matrix product ``[B·n1, n0] @ [n0, chunk]``, and the
    softmax and argmax reduce over the (few) classes with the examples contiguous — on ``[B, chunk, C]`` those
    reductions over 10 classes cost several times the matrix product.  Equals :func:`cross_entropy` and
    :func:`accuracy` up to rounding (sums in float64)."""
    layout = as_layout(layer_sizes)
    layers = unflatten(flat.detach(), layout)
    num = flat.shape[0]
    w_first = layers[0][0].reshape(-1, layout.num_features)  # [B·n1, n0]: one copy for all chunks
    loss = torch.zeros(num, dtype=torch.float64, device=flat.device)
    correct = torch.zeros(num, dtype=torch.float64, device=flat.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            xc, yc = x[start:start + chunk], y[start:start + chunk]
            h = None
            for layer, (w, b) in enumerate(layers):
                if layer == 0:
                    z = (w_first @ xc.transpose(0, 1)).view(num, w.shape[-2], -1)
                else:
                    z = torch.bmm(w, h)
                z += b.unsqueeze(-1)  # [B, out, chunk]
                h = z.clamp_min_(0) if layer < len(layers) - 1 else z
            top = z.amax(1, keepdim=True)
            lse = (z - top).exp_().sum(1).log_() + top.squeeze(1)  # [B, chunk]
            picked = z.gather(1, yc.view(1, 1, -1).expand(num, 1, -1)).squeeze(1)
            loss += (lse - picked).sum(-1, dtype=torch.float64)
            # argmax over the classes as a running comparison (first maximum wins, like torch.argmax): an argmax over
            # a non-last dimension is slow on the CPU, and the classes are few
            best, label = z[:, 0], torch.zeros_like(z[:, 0], dtype=torch.long)
            for k in range(1, z.shape[1]):
                better = z[:, k] > best
                best = torch.where(better, z[:, k], best)
                label.masked_fill_(better, k)
            correct += (label == yc).sum(-1)
    n = max(1, x.shape[0])
    return (loss / n).to(flat.dtype), (correct / n).to(flat.dtype)


def loss_and_grad(
    flat: Tensor,
    layer_sizes: Sequence[int] | MLPLayout,
    x: Tensor,
    y: Tensor,
    *,
    matmul_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of each network and its gradient, by hand-written back-propagation (no autograd).

    Args:
        flat: ``[B, D]`` weights (not differentiated; ``requires_grad`` is ignored).
        x: ``[B, n, n0]`` one input batch per network, or ``[n, n0]`` shared inputs.
        y: ``[B, n]`` or ``[n]`` labels.
        matmul_dtype: dtype of the input layer's two matrix products (forward ``x W_1^T`` and ``dW_1 = dZ_1^T x``),
            e.g. ``torch.bfloat16`` (AMX on recent x86 CPUs); ``None`` = ``flat``'s dtype.  Pass ``x`` already in
            that dtype to avoid a conversion per call.  Everything else is computed in ``flat``'s dtype.

    Returns:
        ``(loss [B], grad [B, D])``: ``loss`` equals :func:`cross_entropy` and row ``i`` of ``grad`` is the gradient
        of ``loss[i]`` with respect to ``flat[i]`` (up to rounding; exactly what ``cross_entropy(...).sum()
        .backward()`` gives).  Written for ensemble training: one pass of each matrix product and no autograd
        bookkeeping (the slices of the flat vector, zero-filled gradient buffers) per step.
    """
    layout = as_layout(layer_sizes)
    flat = flat.detach()
    dtype = flat.dtype
    low = matmul_dtype if matmul_dtype is not None and matmul_dtype != dtype else None
    layers = unflatten(flat, layout)
    shared = x.ndim == 2
    inputs, masks = [], []  # inputs[l]: the input of layer l; masks[l]: relu'(z_l) of hidden layer l
    h = x
    for layer, (w, b) in enumerate(layers):
        if layer == 0:
            h0 = x if low is None or x.dtype == low else x.to(low)
            w0 = w if low is None else w.to(low)
            if shared:
                z = (w0.reshape(-1, w0.shape[-1]) @ h0.transpose(0, 1)).to(dtype)
                z = z.view(flat.shape[0], w.shape[-2], -1).transpose(1, 2)
            else:
                z = torch.bmm(h0, w0.transpose(1, 2)).to(dtype)
            inputs.append(h0)
        else:
            inputs.append(h)
            z = torch.bmm(h, w.transpose(1, 2))
        z = z + b.unsqueeze(1)
        if layer < len(layers) - 1:
            mask = z > 0
            h = z.mul_(mask)
            masks.append(mask)
    logits = z  # [B, n, C]
    top = logits.amax(-1, keepdim=True)
    e = (logits - top).exp_()
    total = e.sum(-1, keepdim=True)
    target = y.expand(logits.shape[:-1]).unsqueeze(-1)
    loss = (top + total.log() - logits.gather(-1, target)).squeeze(-1).mean(-1)
    dz = e.div_(total)  # softmax, then minus the one-hot target, over n: d(mean CE)/d logits
    dz.scatter_add_(-1, target, torch.full_like(target, -1.0, dtype=dtype))
    dz.div_(logits.shape[1])
    grad = torch.empty_like(flat)
    for layer in range(len(layers) - 1, -1, -1):
        gw, gb = unflatten(grad, layout)[layer]
        gb.copy_(dz.sum(1))
        if layer == 0:
            dzt = dz.transpose(1, 2)  # [B, out, n]
            dzt = dzt.to(low) if low is not None else dzt
            if shared:
                gw.copy_((dzt.reshape(-1, dzt.shape[-1]) @ inputs[0]).view_as(gw))
            else:
                gw.copy_(torch.bmm(dzt.contiguous(), inputs[0]))
        else:
            gw.copy_(torch.bmm(dz.transpose(1, 2), inputs[layer]))
            dz = torch.bmm(dz, layers[layer][0]).mul_(masks[layer - 1])
    return loss, grad


def init_weights(
    layer_sizes: Sequence[int] | MLPLayout,
    num: int,
    *,
    init_std: float,
    bias_std: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``num`` draws from the Gaussian prior: weights ~ N(0, init_std²), biases ~ N(0, bias_std²) → ``[num, D]``."""
    layout = as_layout(layer_sizes)
    flat = torch.randn(num, layout.dim, generator=generator, dtype=dtype)
    std = torch.where(layout.is_bias, torch.tensor(float(bias_std)), torch.tensor(float(init_std))).to(dtype)
    return flat * std


def to_sequential(flat: Tensor, layer_sizes: Sequence[int] | MLPLayout) -> nn.Sequential:
    """One network ``flat [D]`` as ``nn.Sequential(Linear, ReLU, ..., Linear)`` (weights copied)."""
    layout = as_layout(layer_sizes)
    modules: list[nn.Module] = []
    for layer, (w, b) in enumerate(unflatten(flat.detach(), layout)):
        linear = nn.Linear(w.shape[1], w.shape[0], dtype=flat.dtype)
        with torch.no_grad():
            linear.weight.copy_(w)
            linear.bias.copy_(b)
        modules.append(linear)
        if layer < layout.num_layers - 1:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def from_sequential(module: nn.Sequential) -> Tensor:
    """The flat vector ``[D]`` of an ``nn.Sequential`` of ``Linear`` (and activation) modules."""
    linears = [m for m in module if isinstance(m, nn.Linear)]
    return flatten((m.weight.detach(), m.bias.detach()) for m in linears)
