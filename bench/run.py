"""Benchmark: forward pass and exact gradient, spadc against peers run side by side in one process.

    python bench/run.py [--out bench/results.md] [--quick]

Cases: Rosenbrock in d = 1000 (one point), and the 64-256-256-10 MLP of examples/mlp_digits.spad
(one sample, and a batch of 32 with the mean loss). Peers: a hand-written NumPy gradient always;
JAX (`jit(value_and_grad)`) and PyTorch (eager autograd) when installed. Everything runs in float64
on one thread, so that the comparison is of code generation, not of parallelism. Every system's
loss and gradient are checked against spadc's before anything is timed.

Prints a Markdown table of times (median of repeated runs), the gradient/forward ratio of each
system, spadc's time relative to each peer, and compile times, and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

import spadc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGREEMENT = 1e-9  # relative agreement of every system's loss and gradient with spadc's
SEED = 0


def timed(fn, budget: float) -> float:
    """Median seconds per call, over repeats of as many calls as fit in a slice of the budget."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < budget / 10:
        fn()
        calls += 1
    per_repeat = max(calls, 1)
    samples = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(per_repeat):
            fn()
        samples.append((time.perf_counter() - start) / per_repeat)
    return float(np.median(samples))


# ---- the problems, in each system --------------------------------------------------------------

def rosenbrock_numpy(x):
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def rosenbrock_numpy_grad(x):
    a = x[1:] - x[:-1] ** 2
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * a - 2 * (1 - x[:-1])
    g[1:] += 200 * a
    return rosenbrock_numpy(x), {"x": g}


def mlp_numpy(p, x, y):
    h1 = np.maximum(x @ p["W1"].T + p["b1"], 0)
    h2 = np.maximum(h1 @ p["W2"].T + p["b2"], 0)
    z = h2 @ p["W3"].T + p["b3"]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), (x, h1, h2, logp)


def mlp_numpy_grad(p, x, y):
    loss, (x, h1, h2, logp) = mlp_numpy(p, x, y)
    n = len(y)
    g = np.exp(logp)
    g[np.arange(n), y] -= 1
    g /= n
    d2 = (g @ p["W3"]) * (h2 > 0)
    d1 = (d2 @ p["W2"]) * (h1 > 0)
    return loss, {"W1": d1.T @ x, "b1": d1.sum(0), "W2": d2.T @ h1, "b2": d2.sum(0), "W3": g.T @ h2, "b3": g.sum(0)}


def jax_systems():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)

    def rosenbrock(p):
        x = p["x"]
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    def mlp(p, x, y):
        h1 = jax.nn.relu(x @ p["W1"].T + p["b1"])
        h2 = jax.nn.relu(h1 @ p["W2"].T + p["b2"])
        z = h2 @ p["W3"].T + p["b3"]
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(y.shape[0]), y])

    return {"version": jax.__version__, "rosenbrock": rosenbrock, "mlp": mlp, "jit": jax.jit,
            "value_and_grad": jax.value_and_grad, "asarray": jnp.asarray,
            "block": lambda tree: jax.block_until_ready(tree)}


def torch_systems():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)

    def rosenbrock(p):
        x = p["x"]
        return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    def mlp(p, x, y):
        h1 = torch.relu(x @ p["W1"].T + p["b1"])
        h2 = torch.relu(h1 @ p["W2"].T + p["b2"])
        z = h2 @ p["W3"].T + p["b3"]
        return torch.nn.functional.cross_entropy(z, y)

    return {"version": torch.__version__, "torch": torch, "rosenbrock": rosenbrock, "mlp": mlp}


# ---- measuring one case ---------------------------------------------------------------------------

def _check(name, loss, grads, reference_loss, reference_grads):
    assert abs(loss - reference_loss) <= AGREEMENT * max(1.0, abs(reference_loss)), (name, loss, reference_loss)
    for key, value in reference_grads.items():
        scale = max(1.0, float(np.abs(value).max()))
        assert float(np.abs(np.asarray(grads[key]) - value).max()) <= AGREEMENT * scale, (name, key)


def measure_case(label, model, compile_seconds, params, inputs, numpy_fns, jax_fn, torch_fn, budget):
    rows = []
    reference_loss, reference_grads = model.grad(**inputs)
    forward = timed(lambda: model.loss(**inputs), budget)
    gradient = timed(lambda: model.grad(**inputs), budget)
    rows.append(dict(case=label, system="spadc", compile=compile_seconds, forward=forward, gradient=gradient))

    numpy_forward, numpy_grad = numpy_fns
    loss, grads = numpy_grad()
    _check(f"{label}/numpy", loss, grads, reference_loss, reference_grads)
    rows.append(dict(case=label, system="NumPy (hand-written gradient)", compile=None,
                     forward=timed(numpy_forward, budget), gradient=timed(numpy_grad, budget)))

    if jax_fn is not None:
        jx, fn, args = jax_fn
        f = jx["jit"](fn)
        g = jx["jit"](jx["value_and_grad"](fn))
        start = time.perf_counter()
        jx["block"](f(*args))
        value, grads = g(*args)
        jx["block"](grads)
        jax_compile = time.perf_counter() - start
        _check(f"{label}/jax", float(value), {k: np.asarray(v) for k, v in grads.items()}, reference_loss,
               reference_grads)
        rows.append(dict(case=label, system=f"JAX {jx['version']} jit", compile=jax_compile,
                         forward=timed(lambda: jx["block"](f(*args)), budget),
                         gradient=timed(lambda: jx["block"](g(*args)), budget)))

    if torch_fn is not None:
        tc, fn, make_args = torch_fn
        torch = tc["torch"]

        def torch_grad():
            tparams, rest = make_args()
            loss = fn(tparams, *rest)
            loss.backward()
            return float(loss.detach()), {k: v.grad.numpy() for k, v in tparams.items()}

        def torch_forward():
            with torch.no_grad():
                tparams, rest = make_args()
                return float(fn(tparams, *rest))

        loss, grads = torch_grad()
        _check(f"{label}/torch", loss, grads, reference_loss, reference_grads)
        rows.append(dict(case=label, system=f"PyTorch {tc['version']} eager", compile=None,
                         forward=timed(torch_forward, budget), gradient=timed(torch_grad, budget)))
    return rows


def run(budget: float) -> list[dict]:
    jx, tc = jax_systems(), torch_systems()
    rows = []

    start = time.perf_counter()
    rosenbrock = spadc.compile_file(os.path.join(ROOT, "bench", "rosenbrock_1000.spad"))
    compile_seconds = time.perf_counter() - start
    x = rosenbrock.params["x"].copy()
    rows += measure_case(
        "Rosenbrock d=1000", rosenbrock, compile_seconds, {"x": x}, {},
        (lambda: rosenbrock_numpy(x), lambda: rosenbrock_numpy_grad(x)),
        (jx, jx["rosenbrock"], ({"x": jx["asarray"](x)},)) if jx else None,
        (tc, tc["rosenbrock"], lambda: ({"x": tc["torch"].tensor(x, requires_grad=True)}, ())) if tc else None,
        budget)

    start = time.perf_counter()
    mlp = spadc.compile_file(os.path.join(ROOT, "examples", "mlp_digits.spad"))
    compile_seconds = time.perf_counter() - start
    mlp.init_params(SEED)
    params = {k: v.copy() for k, v in mlp.params.items()}
    rng = np.random.default_rng(SEED)
    for batch in (1, 32):
        xs, ys = rng.standard_normal((batch, 64)), rng.integers(0, 10, batch)
        inputs = {"x": xs, "label": ys}
        rows += measure_case(
            f"MLP 64-256-256-10, batch {batch}", mlp, compile_seconds if batch == 1 else None, params, inputs,
            (lambda xs=xs, ys=ys: mlp_numpy(params, xs, ys)[0], lambda xs=xs, ys=ys: mlp_numpy_grad(params, xs, ys)),
            (jx, jx["mlp"], ({k: jx["asarray"](v) for k, v in params.items()}, jx["asarray"](xs),
                             jx["asarray"](ys))) if jx else None,
            (tc, tc["mlp"], lambda xs=xs, ys=ys: ({k: tc["torch"].tensor(v, requires_grad=True) for k, v in params.items()},
                                                  (tc["torch"].tensor(xs), tc["torch"].tensor(ys)))) if tc else None,
            budget)
    return rows


# ---- the table --------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores (all systems on 1 thread), Python {platform.python_version()}, "
            f"NumPy {np.__version__}, {platform.system()} {platform.machine()}")


def table(rows: list[dict]) -> str:
    lines = ["| case | system | compile (s) | forward (µs) | gradient (µs) | gradient / forward | "
             "gradient time, spadc / this |", "|---|---|---:|---:|---:|---:|---:|"]
    spadc_gradient = {}
    for row in rows:
        if row["system"] == "spadc":
            spadc_gradient[row["case"]] = row["gradient"]
        compile_text = f"{row['compile']:.2f}" if row["compile"] is not None else "–"
        relative = spadc_gradient[row["case"]] / row["gradient"]
        lines.append(f"| {row['case']} | {row['system']} | {compile_text} | {row['forward'] * 1e6:.1f} | "
                     f"{row['gradient'] * 1e6:.1f} | {row['gradient'] / row['forward']:.1f} | "
                     f"{'1' if row['system'] == 'spadc' else f'{relative:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    parser.add_argument("--quick", action="store_true", help="a shorter time budget per measurement")
    args = parser.parse_args(argv)
    rows = run(budget=0.2 if args.quick else 1.0)
    text = (f"Machine: {machine()}\n\nTimes per call from Python (median of 7 repeats). Compile: spadc's "
            f"whole pipeline to machine code; JAX's first call.\n\n{table(rows)}\n")
    print(text)
    with open(args.out, "w") as f:
        f.write(f"# Benchmark results\n\nProduced by `python bench/run.py`.\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
