"""Benchmark: bundle adjustment's reprojection objective (bench/bundle_adjustment.spad), one sample
per observation, against JAX (optional) on the same synthetic problem.

    python bench/bundle_adjustment.py

The problem: N_CAMS cameras looking at N_POINTS points from about 5 units away, every observation
the point's projection plus noise, all weights near 1; the value and gradient (with respect to every
camera, point and weight) of the mean over all N_OBS observations, in one call. JAX's version is the
same formula under `vmap` and `jit(value_and_grad)`, float64. Both gradients are checked against
each other (and against a central difference along a random direction) before timing; one core,
timed in turn (bench/run.py's `interleaved`).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402

SEED = 0
AGREEMENT = 1e-10  # spadc's gradient against JAX's, relative to the largest entry
DIRECTION_RTOL = 1e-6  # against a central difference of step 1e-6 along a random direction
N_CAMS, N_POINTS, N_OBS = 49, 7776, 31843  # as the .spad file's constants (the AD benchmark's smallest problem's sizes)


def problem(rng):
    """(params, inputs): small rotations, centres near the origin, points 4-6 units ahead."""
    cams = np.zeros((N_CAMS, 11))
    cams[:, 0:3] = rng.normal(0, 0.1, (N_CAMS, 3))
    cams[:, 3:6] = rng.normal(0, 0.2, (N_CAMS, 3))
    cams[:, 6] = rng.uniform(0.8, 1.2, N_CAMS)
    cams[:, 7:9] = rng.normal(0, 0.01, (N_CAMS, 2))
    cams[:, 9:11] = rng.normal(0, 0.01, (N_CAMS, 2))
    points = np.column_stack([rng.uniform(-1, 1, (N_POINTS, 2)), rng.uniform(4, 6, N_POINTS)])
    weights = rng.uniform(0.9, 1.1, N_OBS)
    cam = np.arange(N_OBS) % N_CAMS
    point = rng.integers(0, N_POINTS, N_OBS)
    feature = rng.normal(0, 0.2, (N_OBS, 2))
    return ({"cams": cams, "X": points, "w": weights},
            {"cam": cam, "point": point, "obs": np.arange(N_OBS), "feature": feature})


def residual_in(xp, cross):
    """The weighted reprojection error of one observation, (camera, point, weight, feature) -> e,
    in an array library `xp` (jax.numpy, torch) with its cross product `cross`."""
    def rotate(r, x):
        theta2 = xp.sum(r * r)
        theta = xp.sqrt(theta2 + 1e-300)
        axis = r / theta
        turned = (x * xp.cos(theta) + cross(axis, x) * xp.sin(theta)
                  + axis * (xp.sum(axis * x) * (1.0 - xp.cos(theta))))
        return xp.where(theta2 > 1e-20, turned, x + cross(r, x))

    def residual(camera, point, weight, feature):
        p = rotate(camera[0:3], point - camera[3:6])
        q = p[0:2] / p[2]
        s = xp.sum(q * q)
        projected = camera[6] * (1.0 + camera[9] * s + camera[10] * s * s) * q + camera[7:9]
        return weight * (projected - feature)

    return residual


def jax_residual(jax):
    """The residual in JAX."""
    return residual_in(jax.numpy, jax.numpy.cross)


def jax_objective():
    """value_and_grad of the same mean loss in JAX (jit), or None without JAX."""
    if importlib.util.find_spec("jax") is None:
        return None
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    residual = jax_residual(jax)

    def one(camera, point, weight, feature):
        e = residual(camera, point, weight, feature)
        return jnp.sum(e * e) + (1.0 - weight * weight) ** 2

    def loss(params, cam, point, obs, feature):
        return jnp.mean(jax.vmap(one)(params["cams"][cam], params["X"][point], params["w"][obs], feature))

    return jax.jit(jax.value_and_grad(loss))


def rows(budget: float) -> list[str]:
    from bench import objective
    params, inputs = problem(np.random.default_rng(SEED))
    model = spadc.compile_file(os.path.join(ROOT, "bench", "bundle_adjustment.spad"))
    title = f"bundle adjustment, {N_CAMS} cameras, {N_POINTS} points, {N_OBS} observations"
    return objective.rows(title, model, params, inputs, jax_objective(), budget, AGREEMENT, DIRECTION_RTOL, SEED)


def main() -> int:
    from bench.run import print_rows_on_one_core
    return print_rows_on_one_core(rows, 2.0)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
