"""Neural graphs: the graph of an MLP computes the MLP, index maps invert each other, batches tile."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import scatter

from weightflow.data import load_dataset
from weightflow.graph import NeuralGraph
from weightflow.weights import forward, init_weights

LAYOUTS = [[4, 6, 3], [4, 5, 7, 3], [4, 3, 5, 6, 3]]


def weights(sizes, num, seed=0):
    return init_weights(sizes, num, init_std=0.5, bias_std=0.3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_message_passing_on_the_graph_is_the_mlp(sizes):
    """h_target = relu(sum_edges w_e h_source + b_target), layer by layer over the graph, equals weights.forward."""
    x = load_dataset("iris", seed=0).x_train[:20]
    graph = NeuralGraph(sizes)
    flat = weights(sizes, 3)
    w, b = graph.edge_features(flat), graph.node_features(flat)  # [B, E], [B, N]
    source, target = graph.edge_index
    h = torch.zeros(3, x.shape[0], graph.num_nodes)
    h[:, :, : sizes[0]] = x
    for layer in range(1, len(sizes)):
        on = graph.edge_layer == layer - 1
        summed = scatter(w[:, None, on] * h[:, :, source[on]], target[on], dim=2, dim_size=graph.num_nodes)
        nodes = graph.node_layer == layer
        pre = summed[:, :, nodes] + b[:, None, nodes]
        h[:, :, nodes] = pre if layer == len(sizes) - 1 else torch.relu(pre)
    torch.testing.assert_close(h[:, :, graph.node_layer == len(sizes) - 1], forward(flat, sizes, x))


@pytest.mark.parametrize("sizes", LAYOUTS)
def test_features_and_to_flat_invert_each_other(sizes):
    graph = NeuralGraph(sizes)
    flat = weights(sizes, 4)
    edges, nodes = graph.edge_features(flat), graph.node_features(flat)
    assert edges.shape == (4, graph.num_edges) and nodes.shape == (4, graph.num_nodes)
    assert torch.all(nodes[:, : sizes[0]] == 0)
    assert torch.equal(graph.to_flat(edges, nodes), flat)
    assert graph.num_edges + graph.num_nodes - sizes[0] == flat.shape[1]


def test_structure_of_a_small_graph():
    graph = NeuralGraph([2, 3, 1])
    # W_1 is 3x2 row-major: edges (0->2), (1->2), (0->3), (1->3), (0->4), (1->4); W_2 is 1x3: (2->5), (3->5), (4->5)
    assert graph.edge_index.tolist() == [[0, 1, 0, 1, 0, 1, 2, 3, 4], [2, 2, 3, 3, 4, 4, 5, 5, 5]]
    assert graph.edge_flat.tolist() == [0, 1, 2, 3, 4, 5, 9, 10, 11]
    assert graph.bias_flat.tolist() == [6, 7, 8, 12]
    assert graph.degree.tolist() == [3, 3, 3, 3, 3, 3]
    # inputs get their own slots, the hidden layer one shared slot, the output its own
    assert graph.node_position.tolist() == [0, 1, 2, 2, 2, 3] and graph.num_positions == 4
    assert graph.degree_histogram().tolist() == [0, 0, 0, 6]


def test_tiled_edge_index_is_the_disjoint_union():
    graph = NeuralGraph([4, 5, 7, 3])
    tiled = graph.tiled_edge_index(3)
    assert tiled.shape == (2, 3 * graph.num_edges)
    for b in range(3):
        block = tiled[:, b * graph.num_edges : (b + 1) * graph.num_edges]
        assert torch.equal(block, graph.edge_index + b * graph.num_nodes)
    # degrees: fan-in + fan-out of every neuron
    sizes = graph.layer_sizes
    expected = [sizes[1]] * sizes[0] + [sizes[0] + sizes[2]] * sizes[1] + [sizes[1] + sizes[3]] * sizes[2] + [sizes[2]] * sizes[3]
    assert graph.degree.tolist() == expected
