"""Speed and float32 accuracy of the product-of-spheres geometry vs a per-neuron loop over geoopt's Sphere.

    python benchmarks/manifold.py [--batch 256] [--layers 64 16 10] [--repeats 20] [--threads 2]

For ``B`` networks drawn from the prior of :class:`weightflow.manifold.ProductSpheres`, times the flow-matching
hot path (``interpolate`` + ``velocity_from_x1``) and the OT cost ``pairwise_sq_dist``, next to the same path
written with geoopt's ``Sphere`` one neuron (factor) at a time.  Also prints, at t = 0.999 in float32, the
relative error of the target velocity norm against the geodesic distance (float64 reference) for both.
"""

from __future__ import annotations

import argparse
import time

import geoopt
import torch

from weightflow.canonical import canonicalize
from weightflow.manifold import ProductSpheres
from weightflow.utils import generator
from weightflow.weights import unflatten


def seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def geoopt_velocity(geom: ProductSpheres, x0, x1, t):
    """The path velocity target ``log_{x_t}(x1) / (1 - t)`` with geoopt, looping over sphere factors."""
    sphere = geoopt.Sphere()
    layers0, layers1 = unflatten(x0, geom.layout), unflatten(x1, geom.layout)
    tt = t[:, None]
    sq = torch.zeros(x0.shape[0], dtype=x0.dtype)
    last = geom.layout.num_layers - 1
    for l, ((w0, b0), (w1, b1)) in enumerate(zip(layers0, layers1)):
        rows0 = [w0.flatten(-2) / geom.last_radius] if l == last else list(w0.unbind(-2))
        rows1 = [w1.flatten(-2) / geom.last_radius] if l == last else list(w1.unbind(-2))
        r = geom.last_radius if l == last else 1.0
        for a, b in zip(rows0, rows1):
            xt = sphere.expmap(a, tt * sphere.logmap(a, b))
            sq += (r * sphere.logmap(xt, b) / (1 - tt)).pow(2).sum(-1)
        sq += ((b1 - b0) / 1.0).pow(2).sum(-1)  # biases: (x1 - x_t) / (1 - t) = x1 - x0
    return sq.sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--layers", type=int, nargs="+", default=[64, 16, 10])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    geom = ProductSpheres(args.layers)
    gen = generator(0, "benchmark", "manifold")
    x0, x1 = geom.sample_prior(args.batch, gen), geom.sample_prior(args.batch, gen)
    t = torch.rand(args.batch, generator=gen)
    raw = torch.randn(args.batch, geom.dim, generator=gen)

    def ours():
        x_t, _ = geom.interpolate(x0, x1, t)
        return geom.velocity_from_x1(x_t, x1, t)

    rows = [
        ("interpolate + velocity_from_x1 (weightflow)", seconds(ours, args.repeats)),
        ("same path, geoopt Sphere per factor (loop)", seconds(lambda: geoopt_velocity(geom, x0, x1, t), args.repeats)),
        ("pairwise_sq_dist B x B (float64 inside)", seconds(lambda: geom.pairwise_sq_dist(x0, x1), args.repeats)),
        ("canonicalize B raw networks", seconds(lambda: canonicalize(raw, args.layers), args.repeats)),
    ]
    print(f"layers {args.layers}, D = {geom.dim}, {geom.num_factors} sphere factors, B = {args.batch}, "
          f"{args.threads} threads")
    print(f"{'operation':48s} {'ms':>10s}")
    for name, sec in rows:
        print(f"{name:48s} {1e3 * sec:10.2f}")

    t999 = torch.full((args.batch,), 0.999)
    dist = geom.dist(x0.double(), x1.double())
    x_t, _ = geom.interpolate(x0, x1, t999)
    ours_err = (geom.velocity_from_x1(x_t, x1, t999).norm(dim=-1).double() / dist - 1).abs().max().item()
    geoopt_err = (geoopt_velocity(geom, x0, x1, t999).double() / dist - 1).abs().max().item()
    print("\nfloat32, t = 0.999: max relative error of |velocity| vs geodesic distance")
    print(f"{'weightflow (atan2 angles, closed-form velocity)':48s} {ours_err:10.2e}")
    print(f"{'geoopt Sphere (clamped acos)':48s} {geoopt_err:10.2e}")


if __name__ == "__main__":
    main()
