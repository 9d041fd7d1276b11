"""Benchmark: a model written per data point against the same model over the whole data set.

    python bench/hoisting.py

The Gaussian mixture of examples/gmm.spad (per data point, a batch of N_DATA = 100 points per call)
against bench/gmm_whole.spad (all points as one input, one call): the same loss and gradient. What
depends on params alone (the per-component matrices, the prior, logsumexp(alpha)) is computed once
per call in the per-point form (spadc/passes/hoist.py); the row "without hoisting" compiles the
per-point form with the split turned off, to show what it saves. One core, float64, the three
timed in turn (bench/run.py's `interleaved`), gradients checked against each other first.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from spadc.passes import hoist  # noqa: E402

SEED = 0
AGREEMENT = 1e-12


@contextmanager
def hoisting_off():
    split = hoist.split
    hoist.split = lambda program: None
    try:
        yield
    finally:
        hoist.split = split


def rows(budget: float) -> list[str]:
    from bench.run import interleaved
    per_point = spadc.compile_file(os.path.join(ROOT, "examples", "gmm.spad"))
    per_point.init_params(SEED)
    params = {k: v.copy() for k, v in per_point.params.items()}
    with hoisting_off():  # another name: the disk cache keys kernels by the file's name too
        plain = spadc.compile_source(open(os.path.join(ROOT, "examples", "gmm.spad")).read(), name="gmm_unhoisted.spad",
                                     cache=False)
    whole = spadc.compile_file(os.path.join(ROOT, "bench", "gmm_whole.spad"))
    for model in (plain, whole):
        model.set_params(params)
    data = np.random.default_rng(SEED).standard_normal((100, 2))
    calls = {"per data point (hoisted)": lambda: per_point.grad(x=data, threads=1),
             "per data point, without hoisting": lambda: plain.grad(x=data, threads=1),
             "whole data set": lambda: whole.grad(X=data[None], threads=1)}
    reference = calls["whole data set"]()
    for name, call in calls.items():
        loss, grads = call()
        assert abs(loss - reference[0]) <= AGREEMENT * abs(reference[0]), name
        for key, value in reference[1].items():
            assert np.max(np.abs(grads[key] - value)) <= AGREEMENT * max(1.0, np.max(np.abs(value))), (name, key)
    times = interleaved(calls, budget)
    base = times["whole data set"]
    lines = ["| Gaussian mixture, K = 3, D = 2, 100 points | gradient (µs) | / whole data set |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds * 1e6:.1f} | {seconds / base:.2f} |" for name, seconds in times.items()]
    return lines


def main() -> int:
    from bench.run import print_rows_on_one_core
    return print_rows_on_one_core(rows, 1.0)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
