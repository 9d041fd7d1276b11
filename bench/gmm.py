"""Benchmark: a Gaussian mixture's negative log-likelihood with a Wishart prior (examples/gmm.spad,
the AD benchmark's GMM) at D = 10, K = 25 and 1,000 points, against JAX (optional).

    python bench/gmm.py

examples/gmm.spad's text with its constants set to these sizes, one sample per data point; the value
and gradient of the mean over the points in one call. JAX's version is the same formula, written
here from the published definition (Srajer, Kukelova and Fitzgibbon 2018), under `vmap` and
`jit(value_and_grad)`, float64. The gradients are checked against each other (and against a
central difference along a random direction) before timing; one core, timed in turn (bench/run.py's
`interleaved`).
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
    from bench.run import interleaved
    model = spadc.compile_source(source(), name="gmm_bench.spad")
    model.init_params(SEED)
    params = {k: v.copy() for k, v in model.params.items()}
    x = np.random.default_rng(SEED).standard_normal((SIZES["N_DATA"], SIZES["D"]))
    loss, grads = model.grad(x=x, threads=1)
    direction = {k: np.random.default_rng(SEED + 1).standard_normal(v.shape) for k, v in params.items()}
    step = 1e-6
    shifted = [model.loss(params={k: v + sign * step * direction[k] for k, v in params.items()}, x=x, threads=1)
               for sign in (1, -1)]
    central = float(np.mean(shifted[0]) - np.mean(shifted[1])) / (2 * step)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in params)
    assert abs(central - analytic) <= DIRECTION_RTOL * max(1.0, abs(analytic)), (central, analytic)
    calls = {"spadc": lambda: model.grad(x=x, threads=1)}
    theirs = jax_objective()
    if theirs is not None:
        jax_loss, jax_grads = theirs(params, x)
        assert abs(float(jax_loss) - loss) <= AGREEMENT * max(1.0, abs(loss)), (float(jax_loss), loss)
        for key, value in grads.items():
            reference = np.asarray(jax_grads[key])
            assert np.max(np.abs(value - reference)) <= AGREEMENT * max(1.0, np.max(np.abs(reference))), key
        calls["JAX (jit, vmap)"] = lambda: [v.block_until_ready() for v in theirs(params, x)[1].values()]
    times = interleaved(calls, budget)
    lines = [f"| Gaussian mixture, D = {SIZES['D']}, K = {SIZES['K']}, {SIZES['N_DATA']} points | gradient (ms) "
             f"| spadc / this |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds * 1e3:.2f} | {times['spadc'] / seconds:.2f} |" for name, seconds in times.items()]
    return lines


def main() -> int:
    from bench.run import print_rows_on_one_core
    return print_rows_on_one_core(rows, 2.0)


if __name__ == "__main__":
    sys.exit(main())
