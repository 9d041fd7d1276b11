"""Benchmark: bundle adjustment's Jacobian, each observation's residual (bench/ba_residual.spad)
differentiated with respect to its camera (11 numbers), point (3) and weight, against JAX's
`vmap(jacrev)` and PyTorch's `torch.func.vmap(jacrev)` (each optional), one core.

    python -m bench.ba_jacobian

The problem is bench/bundle_adjustment.py's (49 cameras, 7,776 points, 31,843 observations, made
here from a seed); each observation's camera and point are gathered into its inputs before the
call, for both systems alike (not timed). spadc's `Model.jacobian(output, "inputs")` takes one
reverse sweep per entry of the output, two for `e`, in one kernel call that evaluates the model
once for both. The Jacobians are checked against each other
before timing; timed in turn (bench/run.py's `interleaved`).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from bench.bundle_adjustment import SEED, jax_residual, problem, residual_in  # noqa: E402

AGREEMENT = 1e-10  # spadc's Jacobian against JAX's, relative to the largest entry


def jax_jacobian():
    """jit(vmap(jacrev)) of the residual with respect to camera, point and weight, or None."""
    if importlib.util.find_spec("jax") is None:
        return None
    import jax
    jax.config.update("jax_enable_x64", True)
    return jax.jit(jax.vmap(jax.jacrev(jax_residual(jax), argnums=(0, 1, 2))))


def torch_jacobian():
    """torch.func's vmap(jacrev) of the same residual (float64, eager), or None without PyTorch."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    torch.set_num_threads(1)

    def cross(a, b):
        return torch.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])

    residual = residual_in(torch, cross)
    jacobian = torch.func.vmap(torch.func.jacrev(residual, argnums=(0, 1, 2)))
    return lambda *arrays: jacobian(*[torch.as_tensor(a) for a in arrays])


def rows(budget: float) -> list[str]:
    from bench.run import interleaved
    params, indices = problem(np.random.default_rng(SEED))
    inputs = {"camera": params["cams"][indices["cam"]], "point": params["X"][indices["point"]],
              "weight": params["w"][indices["obs"]], "feature": indices["feature"]}
    model = spadc.compile_file(os.path.join(ROOT, "bench", "ba_residual.spad"))
    ours = model.jacobian("e", "inputs", **inputs, threads=1)
    calls = {"spadc (Model.jacobian, reverse mode)": lambda: model.jacobian("e", "inputs", **inputs, threads=1)}
    theirs = jax_jacobian()
    if theirs is not None:
        reference = theirs(inputs["camera"], inputs["point"], inputs["weight"], inputs["feature"])
        for name, expected in zip(("camera", "point", "weight"), reference):
            expected = np.asarray(expected).reshape(ours[name].shape)
            assert np.max(np.abs(ours[name] - expected)) <= AGREEMENT * max(1.0, np.max(np.abs(expected))), name
        calls["JAX (jit, vmap, jacrev)"] = lambda: [x.block_until_ready() for x in theirs(
            inputs["camera"], inputs["point"], inputs["weight"], inputs["feature"])]
    torch_version = torch_jacobian()
    if torch_version is not None:
        tensors = [np.ascontiguousarray(inputs[k]) for k in ("camera", "point", "weight", "feature")]
        for name, found in zip(("camera", "point", "weight"), torch_version(*tensors)):
            found = found.numpy().reshape(ours[name].shape)
            assert np.max(np.abs(ours[name] - found)) <= AGREEMENT * max(1.0, np.max(np.abs(found))), name
        calls["PyTorch (torch.func: vmap, jacrev)"] = lambda: torch_version(*tensors)
    times = interleaved(calls, budget)
    first = next(iter(times.values()))
    lines = [f"| bundle adjustment's Jacobian, {len(inputs['weight'])} observations | ms | spadc / this |",
             "|---|---:|---:|"]
    lines += [f"| {name} | {seconds * 1e3:.2f} | {first / seconds:.2f} |" for name, seconds in times.items()]
    return lines


def main() -> int:
    from bench.run import print_rows_on_one_core
    return print_rows_on_one_core(rows, 2.0)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
