"""Benchmark: spadc's curvature against peers, side by side in one process, on one core.

    python -m bench.curvature [--part hvp|asdl|table|all] [--epochs 20]

1. hvp: the Hessian-vector products of the 64-64-10 MLP (examples/mlp.spad) and the 64-256-256-10
   digits MLP (examples/mlp_digits.spad) at batch 32, spadc's compiled forward-over-reverse against
   `jax.jvp(jax.grad(f))` (jit): values and times, and spadc's H v against its own gradient in time.
2. asdl: K-FAC (empirical Fisher) and Shampoo preconditioned gradients on the same MLP, weights
   and batch, against ASDL's `KfacGradientMaker` and `ShampooGradientMaker` (PyTorch, float64).
3. table: the digits MLP trained by SGD, Adam, K-FAC, Shampoo and NewtonCG (curvature interval 1
   and 10), in the style of ASDL's paper: test accuracy, epochs to SGD's final accuracy, time per
   step, peak memory (bytes NumPy and the runtime allocated during training, tracemalloc) relative
   to SGD. Writes docs/results/curvature.md.

JAX and PyTorch with `asdfghjkl` are optional: a part whose peer is missing says so and is skipped.
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: BLAS's threads too
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import platform
import sys
import time
import tracemalloc

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from bench.experiments import EXAMPLES, write  # noqa: E402
from bench.run import timed  # noqa: E402
from spadc import precondition  # noqa: E402

SEED = 0
BATCH = 32
DAMPING = 1e-2
LAYERS = [("W1", "b1"), ("W2", "b2"), ("W3", "b3")]


def digits(split: str) -> dict:
    with np.load(os.path.join(EXAMPLES, "data", f"digits_{split}.npz")) as data:
        return {"x": data["x"], "label": data["label"]}


def mlp(seed: int = SEED, name: str = "mlp_digits.spad"):
    model = spadc.compile_file(os.path.join(EXAMPLES, name))
    model.init_params(seed)
    return model


def batch(size: int = BATCH) -> dict:
    data = digits("train")
    return {k: v[:size] for k, v in data.items()}


def relative(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ---- 1. hvp ----------------------------------------------------------------------------------------

def hvp_part(lines: list[str]):
    lines += ["## Hessian-vector products (batch 32 of the digits, one core)", "",
              "| model | system | time per product | vs spadc's gradient | max relative difference from spadc |",
              "|---|---|---|---|---|"]
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
    except ImportError:
        jax = None
    for example in ("mlp.spad", "mlp_digits.spad"):
        model, inputs = mlp(name=example), batch()
        v = np.random.default_rng(SEED).standard_normal(model.layout["param_count"])
        _, _, hv = model.flat_hvp(v, threads=1, **inputs)
        grad_time = timed(lambda: model.flat_grad(threads=1, **inputs), 2.0)
        hvp_time = timed(lambda: model.flat_hvp(v, threads=1, **inputs), 2.0)
        lines += [f"| {example} | spadc gradient | {grad_time * 1e3:.3f} ms | 1.00 | |",
                  f"| {example} | spadc hvp (forward over reverse) | {hvp_time * 1e3:.3f} ms | "
                  f"{hvp_time / grad_time:.2f} | |"]
        if jax is None:
            continue
        product = jax.jit(lambda p, t, x, y: jax.jvp(lambda q: jax.grad(_jax_mlp_loss)(q, x, y), (p,), (t,))[1])
        arguments = ({k: jax.numpy.asarray(x) for k, x in model.params.items()},
                     {k: jax.numpy.asarray(x) for k, x in model._named(v).items()},
                     jax.numpy.asarray(inputs["x"]), jax.numpy.asarray(inputs["label"]))
        reference = jax.block_until_ready(product(*arguments))
        difference = relative(hv, np.concatenate([np.ravel(reference[k]) for k in model.param_names]))
        jax_time = timed(lambda: jax.block_until_ready(product(*arguments)), 2.0)
        lines.append(f"| {example} | JAX {jax.__version__} `jit(jvp(grad))` | {jax_time * 1e3:.3f} ms | "
                     f"{jax_time / grad_time:.2f} | {difference:.1e} |")
    if jax is None:
        lines += ["", "JAX is not installed: `pip install jax` for its rows."]


def _jax_mlp_loss(p, x, y):
    """The MLPs of examples/ (relu layers W_k, b_k, then cross-entropy), in JAX."""
    import jax
    count = len(p) // 2
    h = x
    for k in range(1, count):
        h = jax.nn.relu(h @ p[f"W{k}"].T + p[f"b{k}"])
    z = h @ p[f"W{count}"].T + p[f"b{count}"]
    return -jax.numpy.mean(jax.nn.log_softmax(z)[jax.numpy.arange(y.shape[0]), y])


# ---- 2. asdl ----------------------------------------------------------------------------------------

def asdl_part(lines: list[str]):
    lines += ["## K-FAC and Shampoo against ASDL (digits MLP, batch 32, same weights and batch)", ""]
    try:
        import asdl
        import torch
    except ImportError:
        lines += ["ASDL is not installed: `pip install -e '.[peers]' asdfghjkl` for this part."]
        return
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # ASDL makes its identity matrices in the default type
    model, inputs = mlp(), batch()
    _, g, _ = model.flat_grad(**inputs)
    kfac, shampoo = precondition.KFAC(damping=DAMPING), precondition.Shampoo(damping=DAMPING)
    rows = ["| method | spadc's | max relative difference from ASDL's |", "|---|---|---|"]
    for name, maker, method, as_asdl in [("K-FAC (empirical Fisher)", "kfac", kfac, kfac_separate_bias),
                                         ("Shampoo", "shampoo", shampoo, shampoo_as_asdl)]:
        theirs = _asdl_direction(asdl, torch, model, inputs, maker)
        method.start(model)
        ours = method.direction(model, g, {"inputs": inputs}, 0)
        rows.append(f"| {name} | `spadc.precondition.{type(method).__name__}` | {relative(ours, theirs):.1e} |")
        rows.append(f"| {name} | the same factors with ASDL's conventions | {relative(as_asdl(model, g, inputs), theirs):.1e} |")
    lines += rows + ["", "The conventions that differ are explained in docs/curvature.md."]


def _torch_mlp(torch, model):
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10)).double()
    for layer, (w, b) in zip([net[0], net[2], net[4]], LAYERS):
        layer.weight.data = torch.tensor(model.params[w])
        layer.bias.data = torch.tensor(model.params[b])
    return net


def _asdl_direction(asdl, torch, model, inputs, maker):
    net = _torch_mlp(torch, model)
    config = asdl.PreconditioningConfig(damping=DAMPING, data_size=len(inputs["x"]))
    if maker == "kfac":
        grad_maker = asdl.KfacGradientMaker(net, config, fisher_type="fisher_emp")
    else:
        grad_maker = asdl.ShampooGradientMaker(net, config)
    x, y = torch.tensor(inputs["x"]), torch.tensor(inputs["label"])
    dummy = grad_maker.setup_model_call(net, x)
    grad_maker.setup_loss_call(torch.nn.functional.cross_entropy, dummy, y)
    grad_maker.forward_and_backward()
    flat = []
    for layer, (w, b) in zip([net[0], net[2], net[4]], LAYERS):
        flat += [layer.weight.grad.numpy().ravel(), layer.bias.grad.numpy().ravel()]
    return np.concatenate(flat)


def kfac_separate_bias(model, g, inputs):
    """K-FAC as ASDL applies it: A without the bias's 1 for the weight, the bias by B^-1 alone."""
    from spadc import curvature
    tapped = curvature.taps(model, inputs=inputs)
    named = model._named(g)
    out = {}
    for layer in tapped.layers:
        a = layer.a[:, :-1]
        big_a, big_b = a.T @ a / tapped.n, layer.delta.T @ layer.delta / tapped.n
        a_inverse, b_inverse = precondition.kfac_inverses(big_a, big_b, DAMPING)
        out[layer.weight] = b_inverse @ named[layer.weight] @ a_inverse
        out[layer.bias] = b_inverse @ named[layer.bias]
    return np.concatenate([np.ravel(out[name]) for name in model.param_names])


def shampoo_as_asdl(model, g, inputs):
    """Shampoo as ASDL applies it: matrices only (vectors keep their gradient), and a ridge relative
    to the statistic's largest eigenvalue, `damping * lambda_max`, not `damping` itself."""
    named = model._named(g)
    out = {}
    for name, grad in named.items():
        if grad.ndim < 2:
            out[name] = grad
            continue
        roots = []
        for statistic in (precondition.SHAMPOO_START * np.eye(len(grad)) + grad @ grad.T,
                          precondition.SHAMPOO_START * np.eye(grad.shape[1]) + grad.T @ grad):
            ridge = DAMPING * np.linalg.eigvalsh(statistic)[-1]
            roots.append(precondition.shampoo_root(statistic, ridge, 4))
        out[name] = roots[0] @ grad @ roots[1]
    return np.concatenate([np.ravel(out[name]) for name in model.param_names])


# ---- 3. the table ------------------------------------------------------------------------------------

def methods():
    """(name, optimiser, preconditioner), with settings chosen by short runs: K-FAC at damping 1e-2
    and interval 10 diverges in its first epoch (0.1 with a running average does not), NewtonCG at
    damping 0.1 and lr 0.3 within 20 epochs (1.0 and 0.5 do not)."""
    kfac = dict(damping=0.1, ema=0.95)
    newton_cg = dict(damping=1.0, ggn=True)
    return [("SGD", spadc.SGD(lr=0.1), None),
            ("Adam", spadc.Adam(lr=1e-3), None),
            ("K-FAC, interval 1", spadc.SGD(lr=0.1), precondition.KFAC(interval=1, **kfac)),
            ("K-FAC, interval 10", spadc.SGD(lr=0.1), precondition.KFAC(interval=10, **kfac)),
            ("Shampoo, interval 1", spadc.SGD(lr=0.1), precondition.Shampoo(damping=DAMPING, interval=1)),
            ("Shampoo, interval 10", spadc.SGD(lr=0.1), precondition.Shampoo(damping=DAMPING, interval=10)),
            ("NewtonCG (GGN), interval 1", spadc.SGD(lr=0.5), precondition.NewtonCG(interval=1, **newton_cg)),
            ("NewtonCG (GGN), interval 10", spadc.SGD(lr=0.5), precondition.NewtonCG(interval=10, **newton_cg))]


def table_part(lines: list[str], epochs: int):
    train, test = digits("train"), digits("test")
    results = []
    for name, optimizer, method in methods():
        model = mlp()
        accuracies = []
        tracemalloc.start()
        tracemalloc.reset_peak()
        start = time.perf_counter()
        history = model.fit(train, epochs=epochs, batch_size=BATCH, optimizer=optimizer, precondition=method,
                            validation=test, seed=SEED, threads=1,
                            on_epoch=lambda epoch, h: accuracies.append(h.val_accuracy[-1]))
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results.append((name, accuracies, seconds / history.steps, peak))
        print(f"{name}: test accuracy {100 * accuracies[-1]:.1f}%, {1e3 * seconds / history.steps:.2f} ms per step")
    sgd = results[0]
    target = sgd[1][-1]
    settings = "; ".join(f"{name}: {type(optimizer).__name__} lr {optimizer.lr}" + (f", {method!r}" if method else "")
                         for name, optimizer, method in methods())
    lines += [f"## Training the digits MLP ({epochs} epochs, batch {BATCH}, one core)", "",
              f"Settings: {settings}.", "",
              f"Target: SGD's test accuracy after {epochs} epochs, {100 * target:.1f}%.", "",
              "| method | test accuracy | epochs to the target | time to the target | time per step | peak memory vs SGD |",
              "|---|---|---|---|---|---|"]
    for name, accuracies, per_step, peak in results:
        reached = next((k + 1 for k, a in enumerate(accuracies) if a >= target), None)
        steps_per_epoch = -(-len(train["x"]) // BATCH)
        to_target = f"{reached * steps_per_epoch * per_step:.2f} s" if reached else "not reached"
        lines.append(f"| {name} | {100 * accuracies[-1]:.1f}% | {reached or 'not reached'} | {to_target} | "
                     f"{per_step * 1e3:.2f} ms | {peak / sgd[3]:.1f}x |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("hvp", "asdl", "table", "all"), default="all")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    lines: list[str] = []
    if args.part in ("hvp", "all"):
        hvp_part(lines)
        lines.append("")
    if args.part in ("asdl", "all"):
        asdl_part(lines)
        lines.append("")
    if args.part in ("table", "all"):
        table_part(lines, args.epochs)
    print("\n".join(lines))
    if args.part == "all":
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        write("curvature", "Curvature: products, preconditioners, training", "python -m bench.curvature",
              f"Machine: {machine}; one core.", "\n".join(lines))
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
