"""Benchmark: a Gaussian mixture's negative log-likelihood with a Wishart prior (examples/gmm.spad,
the AD benchmark's GMM) at D = 10, K = 25 and 1,000 points, against JAX (optional).

    python bench/gmm.py [--per-call]

examples/gmm.spad's text with its constants set to these sizes, one sample per data point; the value
and gradient of the mean over the points in one call. JAX's version is the same formula, written
here from the published definition (Srajer, Kukelova and Fitzgibbon 2018), under `vmap` and
`jit(value_and_grad)`, float64. Checked and timed by bench/objective.py. With `--per-call`, what
a kernel call costs besides its samples (`per_call_rows`), spadc alone.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402

SEED = 0
AGREEMENT = 1e-10  # spadc's gradient against JAX's, relative to the largest entry
DIRECTION_RTOL = 1e-6  # against a central difference of step 1e-6 along a random direction
SIZES = {"K": 25, "D": 10, "N_DATA": 1000}


def source() -> str:
    """examples/gmm.spad with the benchmark's sizes."""
    with open(os.path.join(ROOT, "examples", "gmm.spad")) as f:
        text = f.read()
    for name, value in SIZES.items():
        text, count = re.subn(rf"^const {name} = \d+$", f"const {name} = {value}", text, flags=re.M)
        assert count == 1, name
    terms = " + ".join(f"lgamma(0.5 * WISHART_DOF - {0.5 * j})" for j in range(SIZES["D"]))  # (the file's: D = 2)
    text, count = re.subn(r"^const LOG_MULTIGAMMA = .*$", f"const LOG_MULTIGAMMA = 0.25 * D * (D - 1) * log(pi) + {terms}",
                          text, flags=re.M)
    assert count == 1
    return text


def jax_objective():
    """value_and_grad of the same mean loss in JAX (jit), or None without JAX."""
    if importlib.util.find_spec("jax") is None:
        return None
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import gammaln, logsumexp
    jax.config.update("jax_enable_x64", True)
    k, d, n = SIZES["K"], SIZES["D"], SIZES["N_DATA"]
    gamma, m = 1.0, 0
    dof = d + m + 1
    log_multigamma = 0.25 * d * (d - 1) * math.log(math.pi) + sum(float(gammaln(0.5 * dof - 0.5 * j)) for j in range(d))
    wishart = k * (dof * d * (math.log(gamma) - 0.5 * math.log(2.0)) - log_multigamma)
    lower = jnp.tril(jnp.ones((d, d)), -1)

    def one(params, x):
        q = jax.vmap(jnp.diag)(jnp.exp(params["d"])) + params["L"] * lower
        z = jnp.einsum("kij,kj->ki", q, x - params["mu"])
        terms = params["alpha"] + params["d"].sum(axis=1) - 0.5 * jnp.sum(z * z, axis=1)
        prior = 0.5 * gamma ** 2 * (jnp.sum(jnp.exp(2.0 * params["d"])) + jnp.sum((params["L"] * lower) ** 2)) \
            - m * jnp.sum(params["d"])
        return (-logsumexp(terms) + logsumexp(params["alpha"]) + 0.5 * d * math.log(2 * math.pi)
                + (prior - wishart) / n)

    def loss(params, x):
        return jnp.mean(jax.vmap(one, in_axes=(None, 0))(params, x))

    return jax.jit(jax.value_and_grad(loss))


def rows(budget: float) -> list[str]:
    from bench import objective
    model = spadc.compile_source(source(), name="gmm_bench.spad")
    model.init_params(SEED)
    params = {k: v.copy() for k, v in model.params.items()}
    x = np.random.default_rng(SEED).standard_normal((SIZES["N_DATA"], SIZES["D"]))
    title = f"Gaussian mixture, D = {SIZES['D']}, K = {SIZES['K']}, {SIZES['N_DATA']} points"
    return objective.rows(title, model, params, {"x": x}, jax_objective(), budget, AGREEMENT, DIRECTION_RTOL, SEED)


CHUNKS = (128, 512, 1024)  # samples per kernel call tried by `per_call_rows` (the kernel's own: 128)
TRIVIAL = "input x: f64[10]\nparam w: f64[10]\nloss sum(w * x)\n"  # a call's cost without a model


def per_call_rows(budget: float) -> list[str]:
    """What a call of the gradient kernel costs besides its samples: one sample's gradient, this
    model's and a trivial one's (Python and ctypes, nothing to compute), and the 1,000 points'
    gradient with the runtime given other chunk sizes (each a kernel of its own: a kernel's chunk
    is a constant of it, `kernels.samples_per_call`), all timed in turn."""
    from bench.run import interleaved
    from spadc.backend import kernels
    x = np.random.default_rng(SEED).standard_normal((SIZES["N_DATA"], SIZES["D"]))
    models = {}
    original = kernels.samples_per_call
    try:
        for chunk in CHUNKS:
            kernels.samples_per_call = lambda work, size, chunk=chunk: chunk
            models[chunk] = spadc.compile_source(source(), name=f"gmm_chunk_{chunk}.spad", cache=False)
            models[chunk].init_params(SEED)
    finally:
        kernels.samples_per_call = original
    trivial = spadc.compile_source(TRIVIAL, name="trivial.spad")
    calls = {"one sample": lambda: models[CHUNKS[0]].grad(x=x[:1], threads=1),
             "one sample, trivial model": lambda: trivial.grad(x=x[:1], threads=1)}
    calls.update({f"1,000 points, chunks of {chunk}": (lambda m: lambda: m.grad(x=x, threads=1))(models[chunk])
                  for chunk in CHUNKS})
    times = interleaved(calls, budget)
    lines = ["| Gaussian mixture's gradient, per call | µs |", "|---|---:|"]
    return lines + [f"| {name} | {seconds * 1e6:.1f} |" for name, seconds in times.items()]


def main(argv=None) -> int:
    import argparse
    from bench.run import print_rows_on_one_core
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-call", action="store_true", help="what a kernel call costs besides its samples")
    args = parser.parse_args(argv)
    return print_rows_on_one_core(per_call_rows if args.per_call else rows, 2.0)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
