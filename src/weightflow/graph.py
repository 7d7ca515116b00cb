"""Neural graphs: an MLP read as its own computational graph (Kofinas et al., 2024).

Every neuron is a node and every weight is an edge.  For ``layer_sizes = [n0, ..., nL]`` the nodes are
numbered layer by layer (``N = n0 + ... + nL``; neuron ``k`` of layer ``l`` is node ``node_start[l] + k``)
and the edges are numbered in the order of the weights in the flat layout of :mod:`weightflow.weights`
(``E = sum_l n_l * n_{l-1}``): edge ``e`` carries ``W_l[k, i]`` and goes from neuron ``i`` of layer
``l - 1`` (source) to neuron ``k`` of layer ``l`` (target).  There is one edge per weight; message passing
uses it in both directions.  The bias of a neuron is its node feature (input neurons have none: 0).

:class:`NeuralGraph` builds every index tensor once per architecture (as module buffers, so they follow
``.to(device)``).  A batch of ``B`` graphs is their disjoint union with node ids offset by ``b * N``
(:meth:`NeuralGraph.tiled_edge_index`): node states are ``[B * N, d]`` and edge states ``[B * E, d]``, in the
order of ``[B, N, d]`` / ``[B, E, d]``.  The *layered* order (:meth:`NeuralGraph.layered_edge_order`) lists the
same ``B * E`` edges layer by layer, each layer's as ``[n_l, B, n_{l-1}]`` (target, network, source): every layer
is then a dense block that the fused NG-T kernels (:mod:`weightflow.models.layered`) reduce by matrix products
instead of gathers and scatters.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from weightflow.weights import MLPLayout, as_layout

__all__ = ["NeuralGraph"]


class NeuralGraph(nn.Module):
    """Static graph of an MLP architecture and the index maps between it and the flat layout.

    Buffers (built once, non-persistent):
        edge_index: long ``[2, E]`` (source, target) node ids; edge ``e`` is the ``e``-th weight of the flat layout.
        edge_flat: long ``[E]`` flat coordinate of each edge's weight.
        edge_layer: long ``[E]`` 0-based affine layer of each edge.
        node_layer: long ``[N]`` layer of each node (0 = inputs, ..., L = outputs).
        node_position: long ``[N]`` positional-embedding slot of each node: input neuron ``i`` → ``i``; every
            neuron of hidden layer ``l`` → ``n0 + l - 1`` (one slot shared by the layer, so hidden neurons stay
            exchangeable); output neuron ``k`` → ``n0 + L - 1 + k``.
        bias_flat: long ``[N - n0]`` flat coordinate of the bias of nodes ``n0, ..., N - 1``.
        flat_order: long ``[D]`` with ``flat = cat([edge_values, bias_values], -1)[..., flat_order]``.
        degree: long ``[N]`` edges at each node, both directions (fan-in + fan-out).
    """

    def __init__(self, layer_sizes: Sequence[int] | MLPLayout) -> None:
        super().__init__()
        layout = as_layout(layer_sizes)
        sizes = layout.layer_sizes
        self.layout = layout
        self.layer_sizes = sizes
        self.num_nodes = sum(sizes)
        self.num_positions = sizes[0] + layout.num_layers - 1 + sizes[-1]
        self.node_start = tuple(sum(sizes[:l]) for l in range(len(sizes)))

        sources, targets = [], []
        for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            # W_l[k, i] is row-major: the target k varies slowest, the source i fastest.
            target, source = torch.meshgrid(torch.arange(fan_out), torch.arange(fan_in), indexing="ij")
            sources.append(self.node_start[l] + source.reshape(-1))
            targets.append(self.node_start[l + 1] + target.reshape(-1))
        edge_index = torch.stack([torch.cat(sources), torch.cat(targets)])
        self.num_edges = edge_index.shape[1]

        edge_flat = torch.nonzero(~layout.is_bias).squeeze(1)
        bias_flat = torch.nonzero(layout.is_bias).squeeze(1)
        flat_order = torch.empty(layout.dim, dtype=torch.long)
        flat_order[torch.cat([edge_flat, bias_flat])] = torch.arange(layout.dim)
        position = [torch.arange(sizes[0])]
        position += [torch.full((n,), sizes[0] + l - 1) for l, n in enumerate(sizes[1:-1], start=1)]
        position.append(sizes[0] + layout.num_layers - 1 + torch.arange(sizes[-1]))

        buffers = {
            "edge_index": edge_index,
            "edge_flat": edge_flat,
            "edge_layer": layout.layer_index[edge_flat],
            "node_layer": torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
            "node_position": torch.cat(position),
            "bias_flat": bias_flat,
            "flat_order": flat_order,
            "degree": torch.bincount(edge_index.reshape(-1), minlength=self.num_nodes),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def edge_features(self, flat: Tensor) -> Tensor:
        """Weights as edge features: ``[B, D] -> [B, E]``."""
        return flat.index_select(-1, self.edge_flat)

    def node_features(self, flat: Tensor) -> Tensor:
        """Biases as node features (0 at input neurons): ``[B, D] -> [B, N]``."""
        bias = flat.index_select(-1, self.bias_flat)
        return torch.cat([bias.new_zeros(*bias.shape[:-1], self.layer_sizes[0]), bias], dim=-1)

    def to_flat(self, edge_values: Tensor, node_values: Tensor) -> Tensor:
        """Per-edge ``[B, E]`` and per-node ``[B, N]`` values → flat ``[B, D]`` (input-node values are dropped)."""
        both = torch.cat([edge_values, node_values[..., self.layer_sizes[0]:]], dim=-1)
        return both.index_select(-1, self.flat_order)

    def tiled_edge_index(self, batch_size: int) -> Tensor:
        """``[2, B * E]``: the edges of ``B`` copies of the graph, copy ``b``'s node ids shifted by ``b * N``."""
        offsets = torch.arange(batch_size, device=self.edge_index.device) * self.num_nodes
        return (self.edge_index.unsqueeze(1) + offsets.view(1, -1, 1)).reshape(2, -1)

    def layered_edge_order(self, batch_size: int) -> Tensor:
        """Long ``[B * E]``: row ``r`` of the layered order is row ``order[r]`` of the ``[B * E]`` tiled order.

        Layer ``l`` (``fan_in = n_{l-1}``, ``fan_out = n_l``) takes ``fan_out * B * fan_in`` consecutive rows,
        ordered (target ``k``, network ``b``, source ``i``); its tiled row is ``b * E + w_l + k * fan_in + i`` with
        ``w_l`` the layer's first edge.
        """
        device = self.edge_index.device
        network = torch.arange(batch_size, device=device).view(1, -1, 1) * self.num_edges
        parts, first = [], 0
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            edge = first + torch.arange(fan_out * fan_in, device=device).view(fan_out, 1, fan_in)
            parts.append((edge + network).reshape(-1))
            first += fan_out * fan_in
        return torch.cat(parts)

    def degree_histogram(self) -> Tensor:
        """Long ``[max_degree + 1]``: number of nodes of each degree (the ``deg`` that PNA's scalers normalize by)."""
        return torch.bincount(self.degree.cpu())

    def extra_repr(self) -> str:
        return f"layer_sizes={list(self.layer_sizes)}, nodes={self.num_nodes}, edges={self.num_edges}"
