"""Benchmark: the matrix products of lane kernels, in GFLOP/s on one core, against NumPy's DGEMM.

    python -m bench.products [--lanes 64] [--size 256]

One spadc model per product, a size x size weight (256 unless told) and one call of `lanes` samples (one block of
lanes): `W @ x` (forward kernel), `x @ W` (forward kernel), and `W @ x` with its weight gradient
(the gradient kernel: the product and the outer products' running sum). NumPy multiplies a
size x size matrix by a size x lanes one (OpenBLAS, one thread). Times from Python: the products
timed in turn ROUNDS times, each time the median of 7 repeats, the fastest round kept (the
machine is shared: a neighbour's load only slows a round down).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from bench.run import machine, timed  # noqa: E402

PRODUCTS = {
    "W @ x": ("sum(W @ x)", "loss", 1),
    "x @ W": ("sum(x @ W)", "loss", 1),
    "W @ x and its weight gradient": ("sum(W @ x)", "grad", 2),
}


ROUNDS = 5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    rng = np.random.default_rng(0)
    N = args.size
    x = rng.standard_normal((args.lanes, N))
    calls = {}  # label -> (call, products)
    for label, (loss, kind, products) in PRODUCTS.items():
        text = f"input x: f64[{N}]\nparam W: f64[{N}, {N}] ~ normal(0, 0.1)\nloss {loss}"
        model = spadc.compile_source(text, name="products.spad", lanes=args.lanes)
        call = (lambda m=model: m.loss(x=x, threads=1)) if kind == "loss" else (lambda m=model: m.grad(x=x, threads=1))
        calls[f"spadc {label}"] = (call, products)
    a, b = rng.standard_normal((N, N)), rng.standard_normal((N, args.lanes))
    calls[f"NumPy {N}x{N} @ {N}x{args.lanes}"] = (lambda: a @ b, 1)
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(ROUNDS):
        for label, (call, _) in calls.items():
            best[label] = min(best[label], timed(call, 0.2))
    print(f"Machine: {machine()}\n\n| product | µs per call | GFLOP/s |\n|---|---:|---:|")
    for label, (_, products) in calls.items():
        print(f"| {label} | {best[label] * 1e6:.1f} | {products * 2 * N * N * args.lanes / best[label] / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
