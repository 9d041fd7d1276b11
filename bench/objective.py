"""A hand-written objective against JAX: spadc's gradient checked (against a central difference
along a random direction, and against JAX's when JAX is installed), then both timed in turn on one
core (bench/run.py's `interleaved`). Used by bench/bundle_adjustment.py and bench/gmm.py."""

from __future__ import annotations

import numpy as np

STEP = 1e-6  # of the central difference


def rows(title: str, model, params: dict, inputs: dict, theirs, budget: float, agreement: float,
         direction_rtol: float, seed: int) -> list[str]:
    """The table's rows for `model` at `params` on `inputs`; `theirs(params, **inputs)` is JAX's
    jitted value_and_grad of the same mean loss, or None."""
    from bench.run import interleaved
    model.set_params(params)
    loss, grads = model.grad(**inputs, threads=1)
    direction = {k: np.random.default_rng(seed + 1).standard_normal(v.shape) for k, v in params.items()}
    shifted = [model.loss(params={k: v + sign * STEP * direction[k] for k, v in params.items()}, **inputs, threads=1)
               for sign in (1, -1)]
    central = float(np.mean(shifted[0]) - np.mean(shifted[1])) / (2 * STEP)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in params)
    assert abs(central - analytic) <= direction_rtol * max(1.0, abs(analytic)), (central, analytic)
    calls = {"spadc": lambda: model.grad(**inputs, threads=1)}
    if theirs is not None:
        jax_loss, jax_grads = theirs(params, **inputs)
        assert abs(float(jax_loss) - loss) <= agreement * max(1.0, abs(loss)), (float(jax_loss), loss)
        for key, value in grads.items():
            reference = np.asarray(jax_grads[key])
            assert np.max(np.abs(value - reference)) <= agreement * max(1.0, np.max(np.abs(reference))), key
        calls["JAX (jit, vmap)"] = lambda: [v.block_until_ready() for v in theirs(params, **inputs)[1].values()]
    times = interleaved(calls, budget)
    lines = [f"| {title} | gradient (ms) | spadc / this |", "|---|---:|---:|"]
    return lines + [f"| {name} | {seconds * 1e3:.2f} | {times['spadc'] / seconds:.2f} |" for name, seconds in times.items()]
