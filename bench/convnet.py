"""The RAD paper's ConvNet (issue 25): value and gradient at batch 150 on one core, spadc against
PyTorch eager and JAX jit, side by side, in float64 and float32.

    python -m bench.convnet [--batch 150] [--dtypes f64,f32]
    python -m bench.convnet --memory
    python -m bench.convnet --rad [--sparse-share 0.25]
    python -m bench.convnet --layers [--dtypes f32]

`--memory` prints the RAD paper's Table 1 row for this ConvNet (Oktay et al., ICLR 2021: peak MB at
each keep, hand-computed, batch 150, float32, weights included) beside spadc's for the same
configuration (f32, batch 150, one lane, one thread): the bytes it stores for the adjoint (the tape,
counted as it is written, times the batch, plus the weights: what a system holding a whole batch's
tape at once would need), and the bytes a gradient step actually allocates (tracemalloc's peak over
the first call of a model freshly loaded from the compile cache: the workspace, whose tape and
temporaries are reused sample after sample, the gradient, loading the kernel), plus the weights:
for a training step, `flat_grad` (the gradient an optimiser takes, float32 as the model), and for
`grad`, which also returns the gradient as float64 arrays by param name (as `params` are).

The model is examples/rad_convnet.spad (four 5x5 convolutions with padding 2 and ReLU, average
pooling after the second and the fourth, a dense layer 2048 -> 10, cross-entropy); PyTorch's and
JAX's are the same network on the same params and inputs. The three gradients are checked against
each other (AGREEMENT, relative to the largest entry: 1e-9 in f64, 1e-3 in f32) before anything is
timed; the systems are timed in turn ROUNDS times, each keeping its fastest round (the machine is
shared). The process pins itself to one core first (PyTorch is also held to one thread).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench import fastest_in_turn

ROUNDS = 5
CALLS = 2  # gradient calls per round
AGREEMENT = {"f64": 1e-9, "f32": 1e-3}
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "rad_convnet.spad")
LAYERS = ("w1", "w2", "w3", "w4")


def _torch_gradient(params, x, label, dtype):
    import torch
    torch.set_num_threads(1)
    F = torch.nn.functional
    kind = torch.float64 if dtype == "f64" else torch.float32
    p = {k: torch.tensor(v, dtype=kind, requires_grad=True) for k, v in params.items()}
    x, label = torch.tensor(x, dtype=kind), torch.tensor(label)

    def loss():
        h = x
        for k, name in enumerate(LAYERS):
            h = F.relu(F.conv2d(h, p[name], padding=2) + p[f"b{k + 1}"][None, :, :, :])
            if k in (1, 3):
                h = F.avg_pool2d(h, 2)
        logits = h.reshape(len(label), -1) @ p["wd"].T + p["bd"]
        return F.cross_entropy(logits, label)

    def run():
        value = loss()
        grads = torch.autograd.grad(value, list(p.values()))
        return float(value.detach()), {k: g.numpy() for k, g in zip(p, grads)}
    return run


def _jax_gradient(params, x, label, dtype):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    kind = jnp.float64 if dtype == "f64" else jnp.float32

    def conv(h, w):
        return jax.lax.conv_general_dilated(h, w, (1, 1), ((2, 2), (2, 2)), dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def pool(h):
        return jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2), "VALID") / 4

    def loss(p, x, label):
        h = x
        for k, name in enumerate(LAYERS):
            h = jax.nn.relu(conv(h, p[name]) + p[f"b{k + 1}"][None])
            if k in (1, 3):
                h = pool(h)
        logits = h.reshape(len(label), -1) @ p["wd"].T + p["bd"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(label)), label])

    step = jax.jit(jax.value_and_grad(loss))
    p = {k: jnp.asarray(v, dtype=kind) for k, v in params.items()}
    x, label = jnp.asarray(x, dtype=kind), jnp.asarray(label)

    def run():
        value, grads = step(p, x, label)
        jax.block_until_ready(grads)
        return float(value), {k: np.asarray(v) for k, v in grads.items()}
    return run


def row(dtype: str, batch: int) -> str:
    import spadc
    model = spadc.compile_file(EXAMPLE, dtype=dtype)
    model.init_params(seed=0)
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((batch, 3, 32, 32)), rng.integers(0, 10, batch)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
    ours = lambda: model.grad(x=x, label=label, threads=1)  # noqa: E731
    runs = [ours, _torch_gradient(params, x, label, dtype), _jax_gradient(params, x, label, dtype)]
    results = [run() for run in runs]
    for loss, grads in results[1:]:
        assert abs(results[0][0] - loss) <= AGREEMENT[dtype] * abs(loss), (results[0][0], loss)
        for name in grads:
            scale = np.max(np.abs(grads[name])) + 1e-300
            error = np.max(np.abs(results[0][1][name] - grads[name])) / scale
            assert error <= AGREEMENT[dtype], (name, error)
    spadc_time, torch_time, jax_time = fastest_in_turn(*runs, rounds=ROUNDS, calls=CALLS)
    faster = min(torch_time, jax_time)
    return (f"| {dtype} | {batch} | {1e3 * spadc_time:.0f} | {1e3 * torch_time:.0f} | {1e3 * jax_time:.0f} | "
            f"{spadc_time / faster:.2f} |")


PAPER_TABLE_1 = {1.0: 23.08, 0.8: 19.19, 0.5: 12.37, 0.3: 7.82, 0.1: 3.28, 0.05: 2.14}  # MB, batch 150
MB = 1e6


def memory_rows(batch: int) -> list[str]:
    import tracemalloc
    import warnings
    import spadc
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch)
    rows = []
    for keep, paper in PAPER_TABLE_1.items():
        estimator = None if keep == 1.0 else spadc.RAD(keep=keep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # compiled (and cached) first: a fresh model then loads its kernel, and allocates as a step does
            spadc.compile_file(EXAMPLE, dtype="f32", lanes=1).grad(x=x[:1], label=label[:1], estimator=estimator)
            allocated = {}
            for method in ("flat_grad", "grad"):
                model = spadc.compile_file(EXAMPLE, dtype="f32", lanes=1)
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                _, _, stats = getattr(model, method)(x=x, label=label, estimator=estimator, threads=1,
                                                     **({"stats": True} if method == "grad" else {}))
                allocated[method] = tracemalloc.get_traced_memory()[1] - base
                tracemalloc.stop()
        weights = 4 * model.layout["param_count"]
        tape = stats["tape_bytes"] * batch + weights
        rows.append(f"| {keep} | {paper:.2f} | {tape / MB:.2f} | {(allocated['flat_grad'] + weights) / MB:.2f} | "
                    f"{(allocated['grad'] + weights) / MB:.2f} | {stats['peak_workspace_bytes'] / MB:.2f} |")
    return rows


RAD_KEEPS = (0.05, 0.1, 0.25, 0.5)


def rad_rows(batch: int, sparse_share: float | None) -> list[str]:
    """RAD's gradient time against the exact one's on the ConvNet (f64, one core, timed in turn).
    `sparse_share`: the fusion pass's SPARSE_SHARE (a conv's weight gradient from its kept positions
    alone up to this share kept; 1 always, 0 never)."""
    import warnings
    import spadc
    from spadc.passes import fuse
    rng = np.random.default_rng(0)
    x, label = rng.standard_normal((batch, 3, 32, 32)), rng.integers(0, 10, batch)
    estimators = [None] + [spadc.RAD(keep=keep) for keep in RAD_KEEPS]
    saved = fuse.SPARSE_SHARE  # a compiler constant, swept here: set while this model's kernels compile
    if sparse_share is not None:
        fuse.SPARSE_SHARE = sparse_share
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = spadc.compile_file(EXAMPLE, cache=False)
            runs = [lambda e=e: model.grad(x=x, label=label, estimator=e, threads=1) for e in estimators]
            for run in runs:  # (each estimator's kernel is compiled at its first call)
                run()
        finally:
            fuse.SPARSE_SHARE = saved
        times = fastest_in_turn(*runs, rounds=ROUNDS, calls=CALLS)
    return [f"| {keep} | {1e3 * t:.0f} | {1e3 * times[0]:.0f} | {t / times[0]:.2f} |" for keep, t in zip(RAD_KEEPS, times[1:])]


# The ConvNet's convolutions (input channels, output channels, plane side), each timed alone.
CONV_LAYERS = {"conv1": (3, 16, 32), "conv2": (16, 32, 32), "conv3, conv4": (32, 32, 16)}


def layer_rows(batch: int, dtype: str) -> list[str]:
    """Each of the ConvNet's convolutions alone (5x5, padding 2): its forward, weight gradient and input
    gradient, as the differences of three programs' times (the forward's loss; the gradient of a
    param kernel; the same with the input scaled by a param, which asks for the input gradient too),
    and what each attains in GFLOP/s (2 x the multiply-adds of one convolution)."""
    import warnings
    import spadc
    rng = np.random.default_rng(0)
    float_type = np.float64 if dtype == "f64" else np.float32
    rows = []
    for name, (c_in, c_out, side) in CONV_LAYERS.items():
        head = f"input x: f64[{c_in}, {side}, {side}]\ninput r: f64[{c_out}, {side}, {side}]\n" \
               f"param w: f64[{c_out}, {c_in}, 5, 5] ~ normal(0, 0.05)\n"
        texts = {"forward": head + "param s: f64 = 1.0\nloss sum(conv(x, w, padding=2) * r) * s",
                 "weights": head + "loss sum(conv(x, w, padding=2) * r)",
                 "both": head + "param s: f64 = 1.0\nloss sum(conv(x * s, w, padding=2) * r)"}
        inputs = {"x": rng.standard_normal((batch, c_in, side, side)).astype(float_type),
                  "r": rng.standard_normal((batch, c_out, side, side)).astype(float_type)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = {k: spadc.compile_source(t, name=f"{k}.spad", dtype=dtype) for k, t in texts.items()}
            for model in models.values():
                model.init_params(0)
            forward = lambda: models["forward"].loss(**inputs, threads=1)  # noqa: E731
            runs = [forward] + [lambda m=models[k]: m.grad(**inputs, threads=1) for k in ("weights", "both")]
            for run in runs:
                run()
            plain, weights, both = fastest_in_turn(*runs, rounds=ROUNDS, calls=CALLS)
        flops = 2 * batch * c_in * c_out * 25 * side * side
        parts = [plain, weights - plain, both - weights]
        rows.append(f"| {name} | " + " | ".join(f"{1e3 * t:.1f} ({flops / t / 1e9:.0f})" for t in parts) + " |")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=150)
    parser.add_argument("--dtypes", default="f64,f32")
    parser.add_argument("--memory", action="store_true", help="the RAD paper's Table 1 row beside spadc's bytes")
    parser.add_argument("--rad", action="store_true", help="RAD's gradient time against the exact one's")
    parser.add_argument("--sparse-share", type=float, default=None, help="with --rad: the fusion pass's SPARSE_SHARE")
    parser.add_argument("--layers", action="store_true", help="each convolution alone: forward and both gradients")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.layers:
        for dtype in args.dtypes.split(","):
            print(f"{dtype}, batch {args.batch}: ms (GFLOP/s)\n")
            print("| layer | forward | weight gradient | input gradient |")
            print("|---|---:|---:|---:|")
            print("\n".join(layer_rows(args.batch, dtype)) + "\n", flush=True)
        return 0
    if args.rad:
        print("| keep | RAD grad (ms) | exact grad (ms) | RAD / exact |")
        print("|---:|---:|---:|---:|")
        print("\n".join(rad_rows(args.batch, args.sparse_share)))
        return 0
    if args.memory:
        print("| keep | paper, peak MB | spadc: tape x batch + weights (MB) | spadc: allocated by a training step "
              "(`flat_grad`) + weights (MB) | by `grad`, float64 arrays out, + weights (MB) | workspace (MB) |")
        print("|---:|---:|---:|---:|---:|---:|")
        print("\n".join(memory_rows(args.batch)))
        return 0
    print("| dtype | batch | spadc grad (ms) | PyTorch eager (ms) | JAX jit (ms) | spadc / faster peer |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        print(row(dtype, args.batch), flush=True)
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    raise SystemExit(main())
