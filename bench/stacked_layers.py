"""Layers in a loop over stacked weights (issue 23): spadc against JAX, one core, side by side.

    python -m bench.stacked_layers [--widths 64,256] [--depths 2,8,32] [--batch 128] [--unrolled]

The model: `param W: f64[L, H, H]`, `param b: f64[L, H]`, `for l in 0..L { h = relu(W[l] @ h +
b[l]) }`, then cross-entropy over H classes; JAX's is the same network under `lax.scan` over the
stacked weights, `jit(value_and_grad)`. With `--unrolled`, the same network written layer by
layer (`param W1: f64[H, H]`, ..., one statement per layer) in both systems. Both gradients are checked against each other (1e-9)
before anything is timed; the systems are timed in turn ROUNDS times, each keeping its fastest round
(the machine is shared). The process pins itself to one core first.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench import fastest_in_turn

ROUNDS = 5
CALLS = 5  # gradient calls per round
AGREEMENT = 1e-9


def source(width: int, depth: int) -> str:
    return (f"input x: f64[{width}]\ninput label: i64\nparam W: f64[{depth}, {width}, {width}] ~ normal(0, "
            f"{1 / np.sqrt(width):.6f})\nparam b: f64[{depth}, {width}]\nlet h = x\nfor l in 0..{depth} {{\n"
            f"  h = relu(W[l] @ h + b[l])\n}}\nloss cross_entropy(h, label)\n")


def unrolled_source(width: int, depth: int) -> str:
    scale = f"{1 / np.sqrt(width):.6f}"
    lines = [f"input x: f64[{width}]", "input label: i64"]
    lines += [f"param W{l}: f64[{width}, {width}] ~ normal(0, {scale})\nparam b{l}: f64[{width}]" for l in range(depth)]
    lines += ["let h = x"] + [f"h = relu(W{l} @ h + b{l})" for l in range(depth)]
    return "\n".join(lines + ["loss cross_entropy(h, label)\n"])


def _layers(p):
    """(W, b) of each layer, in order, whichever way the network is written."""
    if "W" in p:
        return p["W"], p["b"]
    depth = sum(1 for name in p if name.startswith("W"))
    return [p[f"W{l}"] for l in range(depth)], [p[f"b{l}"] for l in range(depth)]


def _jax_gradient(params, x, label, unrolled: bool):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    def loss(p, x, label):
        def step(h, layer):
            w, b = layer
            return jax.nn.relu(h @ w.T + b), None
        if unrolled:
            h = x
            for layer in zip(*_layers(p)):
                h, _ = step(h, layer)
        else:
            h, _ = jax.lax.scan(step, x, _layers(p))
        return -jnp.mean(jax.nn.log_softmax(h)[jnp.arange(len(label)), label])

    step = jax.jit(jax.value_and_grad(loss))
    p = {k: jnp.asarray(v) for k, v in params.items()}
    x, label = jnp.asarray(x), jnp.asarray(label)

    def run():
        value, grads = step(p, x, label)
        jax.block_until_ready(grads)
        return float(value), {k: np.asarray(v) for k, v in grads.items()}

    return run


def row(width: int, depth: int, batch: int, unrolled: bool = False) -> str:
    import spadc
    model = spadc.compile_source((unrolled_source if unrolled else source)(width, depth), name="stacked.spad")
    model.init_params(seed=0)
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((batch, width)), rng.integers(0, width, batch)
    ours = lambda: model.grad(x=x, label=label)  # noqa: E731
    theirs = _jax_gradient(model.params, x, label, unrolled)
    (loss, grads), (their_loss, their_grads) = ours(), theirs()
    assert abs(loss - their_loss) <= AGREEMENT * abs(their_loss)
    for name in grads:
        scale = np.max(np.abs(their_grads[name])) + 1e-300
        assert np.max(np.abs(grads[name] - their_grads[name])) <= AGREEMENT * scale, name
    spadc_time, jax_time = fastest_in_turn(ours, theirs, rounds=ROUNDS, calls=CALLS)
    lanes = model.layout["variants"]["exact"]["lanes"]
    return f"| {width} | {depth} | {batch} | {lanes} | {1e3 * spadc_time:.2f} | {1e3 * jax_time:.2f} | " \
           f"{spadc_time / jax_time:.2f} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256")
    parser.add_argument("--depths", default="2,8,32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--unrolled", action="store_true", help="the network written layer by layer")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print("| H | L | batch | lanes | spadc grad (ms) | JAX grad (ms) | spadc / JAX |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for width in (int(w) for w in args.widths.split(",")):
        for depth in (int(d) for d in args.depths.split(",")):
            print(row(width, depth, args.batch, args.unrolled), flush=True)
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    raise SystemExit(main())
