"""Benchmark: a Gaussian mixture's negative log-likelihood with a Wishart prior (examples/gmm.spad,
the AD benchmark's GMM) at D = 10, K = 25 and 1,000 points, against JAX (optional).

    python bench/gmm.py

examples/gmm.spad's text with its constants set to these sizes, one sample per data point; the value
and gradient of the mean over the points in one call. JAX's version is the same formula, written
here from the published definition (Srajer, Kukelova and Fitzgibbon 2018), under `vmap` and
`jit(value_and_grad)`, float64. Checked and timed by bench/objective.py.
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


def main() -> int:
    from bench.run import print_rows_on_one_core
    return print_rows_on_one_core(rows, 2.0)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
