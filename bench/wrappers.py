"""Benchmark: what the PyTorch and JAX wrappers add per call (issue 26: at most 30 µs).

    python -m bench.wrappers [--batch 32]

The MLP example at one batch, one core. Each wrapper's gradient step (forward and backward: the
loss's mean differentiated with respect to the params) against what it computes: a forward pass
then the params' cotangents (`Model.forward` then `Model.grad`, one gradient kernel each), and
`Model.grad` alone (what a user of the core calls). A framework has a cost of its own for any
custom operation: a step through a custom op that does no work (a `torch.autograd.Function` in
an `nn.Module`, a `jax.custom_vjp` of XLA zeros) is measured too. What spadc's wrapper adds is
its step against that step and the direct calls run one after the other in one loop: run between
a framework's steps, the kernels find their code and data cold in the caches, and that is no cost
of the wrapper (on this machine the interleaved pair takes tens of µs more than its parts timed
apart; both are printed). For JAX, the wrapper's two calls of host code through XLA FFI targets
are its own. All rows are timed in turn (`bench.fastest_in_turn`); JAX's steps are jitted; each
wrapper is measured only where its framework is installed.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from bench import fastest_in_turn  # noqa: E402
from bench.run import machine  # noqa: E402

ROUNDS, CALLS = 15, 200


def _torch_rows(model, x, label) -> list[tuple]:
    """(name, step, the framework's own step) of the PyTorch wrapper."""
    import torch
    from spadc import torch as spadc_torch
    torch.set_num_threads(1)
    layer = spadc_torch.Module(model)
    xt, lt = torch.as_tensor(x), torch.as_tensor(label)

    class Nothing(torch.autograd.Function):  # the framework's floor: a custom op doing no work
        @staticmethod
        def forward(ctx, *params):
            return torch.zeros(len(x), dtype=params[0].dtype)

        @staticmethod
        def backward(ctx, cotangent):
            return tuple(torch.zeros_like(p) for p in layer.params.values())

    def step():
        layer.zero_grad()
        layer(x=xt, label=lt).loss.mean().backward()

    class NothingLayer(torch.nn.Module):  # a layer over it: nn.Module's own call is PyTorch's cost too
        def forward(self, **inputs):
            return Nothing.apply(*layer.params.values())

    nothing = NothingLayer()

    def floor():
        layer.zero_grad()
        nothing(x=xt, label=lt).mean().backward()
    return [(f"spadc.torch.Module, forward and backward (torch {torch.__version__})", step, floor)]


def _jax_rows(model, x, label) -> list[tuple]:
    import jax
    jax.config.update("jax_enable_x64", True)
    from spadc import jax as spadc_jax
    f = spadc_jax.function(model)
    params = {k: jax.numpy.asarray(v) for k, v in model.params.items()}
    step = jax.jit(jax.grad(lambda p: f(p, x=x, label=label)[0].mean()))

    @jax.custom_vjp
    def nothing(p):  # the framework's floor: a custom op, forward and backward, doing no work
        return jax.numpy.zeros(len(x))

    def nothing_forward(p):
        return nothing(p), p

    def nothing_backward(p, cotangent):
        return (jax.tree_util.tree_map(jax.numpy.zeros_like, p),)
    nothing.defvjp(nothing_forward, nothing_backward)
    floor = jax.jit(jax.grad(lambda p: nothing(p).mean()))
    return [(f"spadc.jax.function, jit(grad) (jax {jax.__version__})", lambda: jax.block_until_ready(step(params)),
             lambda: jax.block_until_ready(floor(params)))]


def _host_call_table() -> list[str]:
    """What calling host code from a jitted JAX function costs: a call doing nothing through
    spadc.xla_ffi.host_call (the JAX wrapper's path) and through jax.pure_callback, against the same
    jitted function without it (the MLP's params as arguments, a batch of 32 losses as result)."""
    import jax
    from spadc.xla_ffi import host_call
    params = {"W1": np.zeros((64, 64)), "b1": np.zeros(64), "W2": np.zeros((10, 64)), "b2": np.zeros(10)}
    params = {k: jax.numpy.asarray(v) for k, v in params.items()}
    shape, zeros = jax.ShapeDtypeStruct((32,), np.float64), np.zeros(32)
    runs = {"jit, no host call": jax.jit(lambda p: p["b2"].sum()),
            "jit, spadc.xla_ffi.host_call": jax.jit(lambda p: host_call(lambda q: zeros, shape, p).sum()),
            "jit, jax.pure_callback": jax.jit(lambda p: jax.pure_callback(lambda q: zeros, shape, p).sum())}
    calls = [lambda f=f: jax.block_until_ready(f(params)) for f in runs.values()]
    for call in calls:
        call()
    times = fastest_in_turn(*calls, rounds=ROUNDS, calls=CALLS)
    lines = ["| JAX: host code doing nothing | µs per call | added to jit |", "|---|---:|---:|"]
    return lines + [f"| {name} | {t * 1e6:.1f} | {(t - times[0]) * 1e6:+.1f} |" for name, t in zip(runs, times)]


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

    wrappers = []
    for rows in (_torch_rows, _jax_rows):
        try:
            wrappers += rows(model, x, label)
        except ImportError:
            pass
    runs = [lambda: model.grad(x=x, label=label), direct]
    for _, step, floor in wrappers:
        runs += [step, floor, lambda floor=floor: (floor(), direct())]
    for run in runs:  # compiled kernels, traced steps
        run()
    times = fastest_in_turn(*runs, rounds=ROUNDS, calls=CALLS)
    base = times[1]
    print(f"Machine: {machine()}\nMLP (examples/mlp.spad), batch {args.batch}, one core; µs per step, the fastest "
          f"of {ROUNDS} rounds of {CALLS}.\n")
    print("| call | µs per step | the framework's own step (a custom op doing nothing) | that step, then "
          "Model.forward + Model.grad | added by spadc's wrapper |")
    print("|---|---:|---:|---:|---:|")
    print(f"| Model.grad (one kernel) | {times[0] * 1e6:.1f} | | | |")
    print(f"| Model.forward + Model.grad (what a wrapper's step computes) | {base * 1e6:.1f} | | | |")
    for k, (name, _, _) in enumerate(wrappers):
        step, floor, together = times[2 + 3 * k: 5 + 3 * k]
        print(f"| {name} | {step * 1e6:.1f} | {floor * 1e6:.1f} | {together * 1e6:.1f} | "
              f"{(step - together) * 1e6:+.1f} |")
    if any("jax" in name for name, _, _ in wrappers):
        print("\n" + "\n".join(_host_call_table()))
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
