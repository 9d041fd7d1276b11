"""Benchmark: what the PyTorch and JAX wrappers add per call (issue 26: at most 30 µs).

    python -m bench.wrappers [--batch 32]

The MLP example at one batch, one core. Each wrapper's gradient step (forward and backward: the
loss's mean differentiated with respect to the params) against what it computes, measured side by
side: a forward pass then the params' cotangents (one gradient kernel: `Model.forward` then
`Model.grad`), and `Model.grad` alone (what a user of the core calls). JAX's wrapper also computes
the inputs' cotangents (it cannot know they are not wanted). Times from Python, median of 7. JAX's step is jitted; each wrapper
is measured only where its framework is installed.
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

BUDGET = 2.0  # seconds of calls per row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    model = spadc.compile_file(os.path.join(ROOT, "examples", "mlp.spad"))
    model.init_params(seed=0)
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((args.batch, 64)), rng.integers(0, 10, args.batch)

    def direct():
        model.forward(x=x, label=label)
        model.grad(x=x, label=label)

    rows = [("Model.grad (one kernel)", timed(lambda: model.grad(x=x, label=label), BUDGET)),
            ("Model.forward + Model.grad (what a wrapper's step computes)", timed(direct, BUDGET))]
    try:
        import torch
        from spadc import torch as spadc_torch
        layer = spadc_torch.Module(model)
        xt, lt = torch.as_tensor(x), torch.as_tensor(label)

        def torch_step():
            layer.zero_grad()
            layer(x=xt, label=lt).loss.mean().backward()
        rows.append((f"spadc.torch.Module, forward and backward (torch {torch.__version__})", timed(torch_step, BUDGET)))
    except ImportError:
        pass
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        from spadc import jax as spadc_jax
        f = spadc_jax.function(model)
        params = {k: jax.numpy.asarray(v) for k, v in model.params.items()}
        step = jax.jit(jax.grad(lambda p: f(p, x=x, label=label)[0].mean()))

        def jax_step():
            jax.block_until_ready(step(params))
        rows.append((f"spadc.jax.function, jit(grad) (jax {jax.__version__})", timed(jax_step, BUDGET)))
    except ImportError:
        pass
    base = rows[1][1]
    print(f"Machine: {machine()}\nMLP (examples/mlp.spad), batch {args.batch}, one core.\n")
    print("| call | µs per step | added to forward + grad (µs) |\n|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.1f} | {(seconds - base) * 1e6:+.1f} |")
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
